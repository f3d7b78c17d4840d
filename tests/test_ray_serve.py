"""The cloud half as a Ray Serve deployment on a local single-node Ray: a split request over
HTTP gives the in-process answer exactly; refusals come back as envelopes and leave the
deployment serving; two replicas take concurrent requests; and the HTTP transport turns
every failure to get a reply into a TransportError."""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import socket
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import ray  # the test extra installs it: a missing Ray fails here rather than skipping
from starlette.requests import Request

with warnings.catch_warnings():  # Ray 2.60's own config models warn under Pydantic 2.x on import
    warnings.simplefilter("ignore", DeprecationWarning)
    from ray import serve

from dyno_compile import zoo
from dyno_compile.artifact.build import build_artifact
from dyno_compile.artifact.load import load_artifact, run_split
from dyno_compile.artifact.plan import candidate_cuts, plan_build
from dyno_compile.configs import Config
from dyno_compile.errors import InputError
from dyno_compile.frontend.jax_import import from_jax
from dyno_compile.passes import run_passes
from dyno_compile.runtime import protocol, ray_serve
from dyno_compile.runtime.endpoint import connect
from dyno_compile.runtime.http_transport import HttpTransport
from dyno_compile.runtime.protocol import Status
from dyno_compile.runtime.sides import DeviceSide
from dyno_compile.runtime.transport import Reason, TransportError

#: ray.init forks its daemons after JAX has started threads (the artifact build): subprocess
#: forks and execs at once, so the warning does not apply.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")

TOKEN = "ray-serve-test-token"
REPLICAS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """resnet20 with one split cut (plus both ends), float32 and 8-bit, host libraries: ~6 s."""
    m = zoo.get_model("resnet20")
    graph = run_passes(from_jax(m.fn, m.params, m.random_input()))
    splits = [c for c in candidate_cuts(graph) if c.kind == "split"]
    plan = plan_build(graph, [splits[len(splits) // 2]], bits=("float32", 8))
    root, _ = build_artifact(
        plan, tmp_path_factory.mktemp("art") / "resnet20", device_targets=["host"], cloud_targets=["host"]
    )
    return load_artifact(root)


@pytest.fixture(scope="module")
def endpoint(artifact):
    """A fresh local Ray (never an existing cluster), Serve on a free port, the artifact
    deployed with two replicas and a token; everything torn down after the module."""
    ray_dir = tempfile.mkdtemp(prefix="dyno-ray-")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("RAY_AUTH_MODE", "disabled")  # Ray 2.60 would otherwise write ~/.ray/auth_token
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        start = time.perf_counter()
        ray.init(address="local", num_cpus=REPLICAS, include_dashboard=False, log_to_driver=False, _temp_dir=ray_dir)
        try:
            url = ray_serve.run(str(artifact.root), port=_free_port(), num_replicas=REPLICAS, token=TOKEN)
            print(f"\nRay + Serve up, {REPLICAS} replicas deployed in {time.perf_counter() - start:.1f} s")
            yield url
        finally:
            serve.shutdown()
            ray.shutdown()
            shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def device(artifact):
    return DeviceSide(artifact)


@pytest.fixture(scope="module")
def case(artifact, device):
    """An input, its split cut, and the in-process answer at 8 bits."""
    x = np.random.default_rng(0).normal(size=device.input_shape).astype(np.float32)
    cut = next(c["position"] for c in artifact.cuts if c["kind"] == "split")
    return x, cut, run_split(artifact, x, cut, "8")


_ids = iter(range(1, 1 << 30))


def _request(artifact, device, x, cut) -> bytes:
    frame = device.frame(device.start(x, cut), Config(cut, "8"), request_id=next(_ids))
    return protocol.encode_request(frame, model=protocol.model_id(artifact.model_hash))


def test_split_request_over_http_matches_in_process(artifact, device, case, endpoint):
    x, cut, expected = case
    transport = connect(endpoint, token=TOKEN)
    try:
        reply = protocol.decode_reply(transport.call(_request(artifact, device, x, cut), 30.0))
    finally:
        transport.close()
    assert reply.status is Status.OK, reply.message
    assert reply.workers == 1
    np.testing.assert_array_equal(reply.output, expected)


def test_refusals_are_envelopes_and_the_deployment_keeps_serving(artifact, device, case, endpoint):
    x, cut, expected = case
    wrong = connect(endpoint, token="not-the-token")
    anonymous = connect(endpoint)
    good = connect(endpoint, token=TOKEN)
    try:
        for transport in (wrong, anonymous):
            reply = protocol.decode_reply(transport.call(_request(artifact, device, x, cut), 30.0))
            assert reply.status is Status.UNAUTHENTICATED
        for garbage in (b"", b"garbage", os.urandom(4096), b"DYRQ" + os.urandom(100)):
            reply = protocol.decode_reply(good.call(garbage, 30.0))
            assert reply.status is Status.BAD_REQUEST, reply
        replayed = _request(artifact, device, x, cut)
        assert protocol.decode_reply(good.call(replayed, 30.0)).ok
        # The replay guard is per replica, so a replay may reach the other one and pass:
        # it is a second answer, never an error of the transport.
        assert protocol.decode_reply(good.call(replayed, 30.0)).status in (Status.OK, Status.REPLAYED)
        reply = protocol.decode_reply(good.call(_request(artifact, device, x, cut), 30.0))
        assert reply.ok
        np.testing.assert_array_equal(reply.output, expected)
    finally:
        for transport in (wrong, anonymous, good):
            transport.close()


def test_two_replicas_serve_concurrent_requests(artifact, device, case, endpoint):
    x, cut, expected = case
    status = serve.status().applications[ray_serve.DEPLOYMENT_NAME].deployments[ray_serve.DEPLOYMENT_NAME]
    assert status.replica_states.get("RUNNING") == REPLICAS
    threads, each = 8, 4
    frames = [
        device.frame(device.start(x, cut), Config(cut, "8"), request_id=next(_ids)) for _ in range(threads * each)
    ]  # one VM: the device halves run here, before the threads
    model = protocol.model_id(artifact.model_hash)
    transport = connect(endpoint, token=TOKEN)  # one transport shared by every thread

    def client(k: int) -> list[protocol.Reply]:
        return [
            protocol.decode_reply(transport.call(protocol.encode_request(frame, model=model), 60.0))
            for frame in frames[k::threads]
        ]

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as pool:
            replies = [r for batch in pool.map(client, range(threads)) for r in batch]
    finally:
        transport.close()
    elapsed = time.perf_counter() - start
    print(f"\n{len(replies)} requests from {threads} threads in {elapsed:.2f} s")
    assert len(replies) == threads * each
    assert [r.status for r in replies] == [Status.OK] * len(replies), [r.message for r in replies if not r.ok]
    for r in replies:
        np.testing.assert_array_equal(r.output, expected)


def test_wrong_route_is_a_transport_error(endpoint):
    transport = connect(endpoint.rsplit("/", 1)[0] + "/no-such-route", token=TOKEN)
    with pytest.raises(TransportError) as e:
        transport.call(b"x", 10.0)
    assert e.value.reason is Reason.REJECTED and "HTTP 404" in str(e.value)


def test_closed_port_fails_promptly():
    transport = HttpTransport(f"http://127.0.0.1:{_free_port()}/dyno", token=TOKEN)
    start = time.perf_counter()
    with pytest.raises(TransportError) as e:
        transport.call(b"x", 5.0)
    assert time.perf_counter() - start < 1.0
    assert e.value.reason is Reason.UNREACHABLE and "ConnectionRefusedError" in str(e.value)


def test_silent_server_times_out():
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        transport = HttpTransport(f"http://127.0.0.1:{listener.getsockname()[1]}/dyno")
        start = time.perf_counter()
        with pytest.raises(TransportError) as e:
            transport.call(b"x" * 1000, 0.3)
        assert e.value.reason is Reason.TIMEOUT
        assert 0.25 < time.perf_counter() - start < 2.0


class _ClosingHandler(http.server.BaseHTTPRequestHandler):
    """Answers 200 with keep-alive, then closes the connection anyway — what a server does
    to an idle keep-alive connection — or an error status when the path asks for one."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 503 if self.path == "/busy" else 200
        out = body[::-1] + self.headers.get("Authorization", "").encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_reconnects_after_the_server_closes_and_after_errors():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ClosingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        transport = HttpTransport(f"{base}/dyno", token="t")
        for i in range(5):  # every reuse meets a closed connection: retried once on a fresh one
            assert transport.call(f"req{i}".encode(), 5.0) == f"req{i}"[::-1].encode() + b"Bearer t"
        busy = HttpTransport(f"{base}/busy")
        with pytest.raises(TransportError) as e:
            busy.call(b"abc", 5.0)
        assert e.value.reason is Reason.BUSY and "HTTP 503" in str(e.value)
        assert transport.call(b"after", 5.0) == b"retfa" + b"Bearer t"
        transport.close()
        with pytest.raises(TransportError) as e:
            transport.call(b"closed", 5.0)
        assert e.value.reason is Reason.CLOSED
    finally:
        server.shutdown()
        server.server_close()


def test_bad_options_are_refused_before_deploying(artifact, tmp_path):
    with pytest.raises(InputError, match="workers"):
        ray_serve.deployment(artifact.root, workers=0)
    with pytest.raises(InputError, match="no such artifact"):
        ray_serve.deployment(tmp_path / "missing")
    with pytest.raises(InputError, match="num_replicas"):
        ray_serve.deployment(artifact.root, num_replicas=0)
    with pytest.raises(InputError, match="artifact=PATH"):
        ray_serve.build_app({})
    assert ray_serve._bearer("Bearer abc ") == "abc"
    assert ray_serve._bearer("Basic abc") is None and ray_serve._bearer(None) is None


def _starlette_request(body: bytes, *, content_length: bool, token: str | None = None) -> Request:
    headers = [(b"content-length", str(len(body)).encode())] if content_length else []
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    parts = [body[i : i + 100] for i in range(0, len(body), 100)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i + 1 < len(parts)} for i, p in enumerate(parts)]

    async def receive():
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "path": "/dyno", "headers": headers}, receive)


def test_replica_refuses_an_oversized_body_with_an_envelope(artifact, device, case):
    """The replica's handler on its own (no Ray): the size limit holds with and without a
    Content-Length, and a request within it is served."""
    x, cut, expected = case
    replica = ray_serve.CloudReplica(str(artifact.root), TOKEN, 1, 65536)
    for content_length in (True, False):
        response = asyncio.run(replica(_starlette_request(b"\0" * 70000, content_length=content_length, token=TOKEN)))
        reply = protocol.decode_reply(response.body)
        assert response.status_code == 200 and response.media_type == "application/octet-stream"
        assert reply.status is Status.BAD_REQUEST and "exceeds the limit" in reply.message
    request = _request(artifact, device, x, cut)
    assert len(request) <= 65536
    reply = protocol.decode_reply(
        asyncio.run(replica(_starlette_request(request, content_length=False, token=TOKEN))).body
    )
    assert reply.ok
    np.testing.assert_array_equal(reply.output, expected)
