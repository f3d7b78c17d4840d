"""The device client over HTTP (the Ray Serve path) reads a loaded or slow deployment as
it reads a loaded or slow gRPC server: a 429 or 503 is busy, not down, and a padded ping
held past the ping timeout is a slow uplink, not a dead endpoint. The front here is a
plain HTTP server on loopback around a real :class:`CloudEngine`, as the deployment's
replica is, so no Ray is needed."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from dyno_compile.artifact.load import load_artifact
from dyno_compile.runtime import make_policy
from dyno_compile.runtime.client import DeviceClient
from dyno_compile.runtime.engine import CloudEngine
from dyno_compile.runtime.link import PRIOR_BANDWIDTH, PRIOR_RTT_S
from dyno_compile.runtime.protocol import REQUEST_HEADER_BYTES, is_ping

#: Longest the front holds a padded ping (the test releases it sooner).
HOLD_S = 10.0
DEADLINE_S = 15.0


class _Front(http.server.ThreadingHTTPServer):
    """``POST`` the request envelope, get the engine's reply with 200. ``busy``: an HTTP
    status to answer calls with instead (back-pressure), pings too unless ``busy_pings`` is
    False; ``hold_padded``: keep padded pings unanswered until ``release`` is set. Counts
    the pings it answered."""

    daemon_threads = True

    def __init__(self, engine: CloudEngine) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.engine = engine
        self.busy: int | None = None
        self.busy_pings = True
        self.hold_padded = False
        self.release = threading.Event()
        self.pings = 0
        self.padded_pings = 0
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dyno"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Front

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        front = self.server
        padded = is_ping(body) and len(body) > REQUEST_HEADER_BYTES
        if padded and front.hold_padded:
            front.release.wait(HOLD_S)  # a slow uplink: the client times out first
        refused = front.busy and (front.busy_pings or not is_ping(body))
        status, out = (front.busy, b"busy") if refused else (200, front.engine.handle(body))
        if is_ping(body):
            with front.lock:
                front.pings += 1
                front.padded_pings += padded
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a held ping

    def log_message(self, *args):
        pass


@contextmanager
def _front(engine: CloudEngine) -> Iterator[_Front]:
    front = _Front(engine)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    try:
        yield front
    finally:
        front.release.set()
        front.shutdown()
        front.server_close()


@pytest.fixture(scope="module")
def artifact(searched_resnet20):
    return load_artifact(searched_resnet20)


@pytest.fixture(scope="module")
def engine(artifact):
    return CloudEngine(artifact)


@pytest.fixture(scope="module")
def config(artifact) -> dict:
    """An offloaded configuration of the Pareto set (as the manifest holds it)."""
    return next(d["config"] for d in artifact.manifest["search"]["pareto"] if d["bytes"] > 0)


@pytest.fixture(scope="module")
def x(artifact):
    return np.random.default_rng(0).normal(size=tuple(artifact.manifest["inputs"][0]["shape"])).astype(np.float32)


def _poll(condition, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)


@pytest.mark.parametrize("status, busy_pings", [(429, True), (503, True), (503, False)])
def test_a_busy_http_front_keeps_the_endpoint(artifact, engine, config, x, status, busy_pings):
    """Back-pressure over HTTP is busy, as gRPC's RESOURCE_EXHAUSTED is: the prober's
    refused pings and the refused requests keep the endpoint, each request finishes on the
    device, and the first one after the load is gone is served by the cloud."""
    with _front(engine) as front:
        front.busy, front.busy_pings = status, busy_pings
        with DeviceClient(
            artifact,
            [front.endpoint],
            policy=make_policy("pinned", config=config),
            retry_after_s=30.0,
            max_retry_after_s=30.0,
            probe_every_s=0.05,
        ) as client:
            _poll(lambda: front.pings >= 3 or not client.endpoints_up)
            assert client.endpoints_up == [front.endpoint], "a busy ping marked the endpoint down"
            results = [client.run(x) for _ in range(3)]
            assert [r.where for r in results] == ["fallback"] * 3, [(r.where, r.error) for r in results]
            assert all(f"HTTP {status}" in r.error for r in results)
            assert client.endpoints_up == [front.endpoint]
            front.busy = None
            assert client.run(x).where == "cloud"


def test_a_padded_ping_held_past_the_timeout_over_http_is_a_slow_link(artifact, engine, config, x):
    """The prober's first measurement pads its ping (nothing is known of the uplink yet);
    the front holds it past the ping timeout. The empty ping had just been answered, so
    the uplink is slow, not down: the endpoint stays up and the padding reads as taking
    the whole timeout."""
    timeout_s = 0.4
    with _front(engine) as front:
        front.hold_padded = True
        with DeviceClient(
            artifact,
            [front.endpoint],
            policy=make_policy("pinned", config=config),
            timeout_s=timeout_s,
            retry_after_s=30.0,
            max_retry_after_s=30.0,
            probe_every_s=60.0,
        ) as client:
            _poll(lambda: client.link.conditions().bandwidth != PRIOR_BANDWIDTH or not client.endpoints_up)
            assert client.endpoints_up == [front.endpoint], "a slow padded ping marked the endpoint down"
            assert front.padded_pings == 0  # still held: the client gave up on it
            # The padding took the timeout and the round trip estimated before it (the prior),
            # less this probe's round trip (now the estimate: the only sample).
            conditions = client.link.conditions()
            seconds = client.options.probe_bytes / conditions.bandwidth
            assert seconds == pytest.approx(timeout_s + PRIOR_RTT_S - conditions.rtt_s)
            front.release.set()
            assert client.run(x).where == "cloud"
