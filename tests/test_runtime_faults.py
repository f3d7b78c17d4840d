"""Faults between a device client and a real ``serve`` process: no request is ever lost.

* The server is SIGKILLed at random points (mid-request included) during 1,000 requests
  and restarted on the same port: every request returns the right answer — from the cloud,
  or finished on the device — and the client is back on the cloud after each restart.
* The server hangs (SIGSTOP): requests time out within about ``timeout_s`` and finish on
  the device; after SIGCONT the client is back on the cloud.
* The connection drops mid-transfer (a slow user-space link, stopped during a request):
  the request finishes on the device, well before its timeout, with the right answer.

Right answers: a cloud result equals ``run_split`` at the pinned cut and width; a device or
fallback result equals the float model (``run_split`` at the device-only cut).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grpc")

from conftest import rel_err, shared_data  # noqa: E402
from dyno_compile.artifact.load import load_artifact, run_split  # noqa: E402
from dyno_compile.configs import Config  # noqa: E402
from dyno_compile.evaluate.shaper import LinkShaper  # noqa: E402
from dyno_compile.runtime.client import DeviceClient  # noqa: E402
from dyno_compile.search.calibration import load_calibration  # noqa: E402

REQUESTS = 1000
KILLS = 5
IMAGES = 100
TIMEOUT_S = 0.5
RETRY_AFTER_S = 0.1
#: The prober's longest wait between pings to a dead server: the client sees a restarted
#: server within this of its coming back.
MAX_RETRY_AFTER_S = 0.5
#: While the server is down, requests go on at this pace (they finish on the device in a
#: few ms; pacing keeps the 1,000 spread over all the restarts).
DOWN_PACE_S = 0.05
START_TIMEOUT_S = 60.0
TOLERANCE = 1e-5
SEED = int(os.environ.get("DYNO_FAULTS_SEED", "20240521"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``python -m dyno_compile serve ARTIFACT --port P`` as a real process, on a fixed
    port so a restart comes back at the same endpoint."""

    def __init__(self, artifact: Path, log: Path) -> None:
        self.artifact, self.log = artifact, log
        self.port = _free_port()
        self.endpoint = f"grpc://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> float:
        """Start and wait until it prints its endpoint (it is then listening); seconds taken."""
        t0 = time.perf_counter()
        for attempt in range(5):  # the port may linger a moment after a SIGKILL
            with open(self.log, "a") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "dyno_compile", "serve", str(self.artifact), "--port", str(self.port)],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            line = _readline(self.proc, START_TIMEOUT_S)
            if line == self.endpoint:
                self.starts += 1
                return time.perf_counter() - t0
            self.proc.kill()
            self.proc.wait()
            time.sleep(0.2 * (attempt + 1))
        pytest.fail(f"serve did not come up on {self.endpoint}; log:\n{self.log.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the server is not running"
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def ensure_up(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def close(self) -> int | None:
        """SIGTERM (serve stops gracefully on it); its exit status, None if it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    """The first stdout line, or "" if the process exits or stays silent too long."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return out[0].strip() if out else ""


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(searched_resnet20):
    return load_artifact(searched_resnet20)


@pytest.fixture(scope="module")
def config(artifact) -> Config:
    """An offloaded configuration of the Pareto set: the latest cut, so both sides work."""
    pareto = [Config.from_dict(d["config"]) for d in artifact.manifest["search"]["pareto"] if d["bytes"] > 0]
    assert pareto, "the Pareto set has no offloaded configuration"
    return max(pareto, key=lambda c: c.cut)


@pytest.fixture(scope="module")
def data(artifact, config):
    """Real CIFAR-10 test images, with the cloud answer (run_split at the pinned
    configuration) and the float model's (device-only) for each."""
    x = load_calibration(
        shared_data("cifar10", "test_932.npz"), input_shape=(1, 3, 32, 32), preprocess="cifar10", limit=IMAGES
    ).x
    last = max(c["position"] for c in artifact.cuts)
    float_ref = [run_split(artifact, x[i : i + 1], last) for i in range(len(x))]
    cloud_ref = (
        float_ref
        if config.bits == "float32"
        else [run_split(artifact, x[i : i + 1], config.cut, config.bits) for i in range(len(x))]
    )
    return x, cloud_ref, float_ref


@pytest.fixture(scope="module")
def server(searched_resnet20, tmp_path_factory):
    srv = ServeProcess(searched_resnet20, tmp_path_factory.mktemp("serve") / "serve.log")
    srv.start()
    yield srv
    status = srv.close()
    assert status == 0, f"serve did not stop cleanly on SIGTERM (status {status}); log:\n{srv.log.read_text()[-2000:]}"


def _client(artifact, endpoint: str, config: Config, **options) -> DeviceClient:
    fields = dict(
        policy="pinned",
        policy_options={"config": config},
        timeout_s=TIMEOUT_S,
        retry_after_s=RETRY_AFTER_S,
        max_retry_after_s=MAX_RETRY_AFTER_S,
    )
    fields.update(options)
    return DeviceClient(artifact, [endpoint], **fields)


def _check(result, k: int, data) -> None:
    """The result's output is the right answer for image ``k`` for where it was computed."""
    _, cloud_ref, float_ref = data
    assert result.where in ("cloud", "device", "fallback"), result.where
    ref = cloud_ref[k] if result.where == "cloud" else float_ref[k]
    assert result.output.shape == ref.shape and np.all(np.isfinite(result.output))
    err = rel_err(result.output, ref)
    assert err <= TOLERANCE, f"image {k} answered by {result.where}: relative error {err:.2e}"


def _until_cloud(client: DeviceClient, data, deadline_s: float, pace_s: float = 0.02) -> list:
    """Requests (each checked) until one is served by the cloud; all of them."""
    x = data[0]
    results, end = [], time.monotonic() + deadline_s
    while time.monotonic() < end:
        k = len(results) % len(x)
        r = client.run(x[k : k + 1])
        _check(r, k, data)
        results.append(r)
        if r.where == "cloud":
            return results
        time.sleep(pace_s)
    pytest.fail(
        f"the client did not return to the cloud within {deadline_s} s: {[(r.where, r.error) for r in results[-3:]]}"
    )


# --- the tests -----------------------------------------------------------------------------


def test_server_killed_at_random_points_loses_no_request(artifact, config, data, server):
    """SIGKILL at KILLS random request indices (after a random delay of 0-8 ms, so during
    a request or between two), restart on the same port in the background, keep going."""
    x = data[0]
    rng = random.Random(SEED)
    span = (REQUESTS - 250) // KILLS
    planned = [50 + k * span + rng.randrange(span // 2) for k in range(KILLS)]
    kills: list[dict] = []  # per kill: index, mid-request?, restart seconds, back-on-cloud index
    restarting = threading.Event()
    errors: list[BaseException] = []

    def kill_and_restart(delay_s: float, record: dict) -> None:
        try:
            time.sleep(delay_s)
            record["killed_at"] = time.perf_counter()
            server.kill()
            record["restart_s"] = server.start()
            record["up_at"] = time.perf_counter()
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)
        finally:
            restarting.clear()

    client = _client(artifact, server.endpoint, config)
    try:
        _until_cloud(client, data, 10.0)  # connected and served once before the count starts
        results, started, chaos = [], time.perf_counter(), None
        for i in range(REQUESTS):
            on_cloud = bool(results) and results[-1].where == "cloud"
            # A planned kill waits until the last restart is over and the client is back on the cloud.
            if len(kills) < KILLS and i >= planned[len(kills)] and on_cloud and not restarting.is_set():
                record = {"index": i, "delay_s": rng.uniform(0.0, 0.008)}
                kills.append(record)
                restarting.set()
                chaos = threading.Thread(target=kill_and_restart, args=(record["delay_s"], record), daemon=True)
                chaos.start()
            k = i % len(x)
            t0 = time.perf_counter()
            r = client.run(x[k : k + 1])
            t1 = time.perf_counter()
            results.append(r)
            if kills and "killed_at" in kills[-1] and "mid" not in kills[-1] and kills[-1]["index"] == i:
                kills[-1]["mid"] = t0 <= kills[-1]["killed_at"] <= t1
            if (
                kills
                and "back" not in kills[-1]
                and "up_at" in kills[-1]
                and r.where == "cloud"
                and t0 > kills[-1]["up_at"]
            ):
                kills[-1]["back"] = i
                kills[-1]["back_s"] = t1 - kills[-1]["up_at"]
            if r.where != "cloud":
                time.sleep(DOWN_PACE_S)
        elapsed = time.perf_counter() - started
        if chaos is not None:
            chaos.join(START_TIMEOUT_S)
    finally:
        client.close()
    assert not errors, errors

    where = [r.where for r in results]
    counts = {w: where.count(w) for w in ("cloud", "device", "fallback")}
    print(
        f"\n{REQUESTS} requests in {elapsed:.1f} s with {len(kills)} kills: {counts}; kills "
        + "; ".join(
            f"#{k['index']} +{1e3 * k['delay_s']:.1f} ms{' mid-request' if k.get('mid') else ''}, "
            f"restart {k.get('restart_s', float('nan')):.1f} s, cloud again at #{k.get('back')} "
            f"({k.get('back_s', float('nan')):.2f} s after)"
            for k in kills
        )
    )

    # None lost, every answer right.
    assert len(results) == REQUESTS
    for i, r in enumerate(results):
        _check(r, i % len(x), data)
    # Every planned kill happened, each cost at least one request its cloud answer (finished
    # on the device), and after each restart the client went back to the cloud.
    assert len(kills) == KILLS, f"only {len(kills)} kills happened: restarts too slow for {REQUESTS} requests"
    assert counts["fallback"] >= 1 and all(r.error for r in results if r.where == "fallback")
    for n, kill in enumerate(kills):
        end = kills[n + 1]["index"] if n + 1 < len(kills) else REQUESTS
        assert any(w != "cloud" for w in where[kill["index"] : end]), f"kill {n} at #{kill['index']} went unnoticed"
        assert "back" in kill, f"no cloud answer after restart {n} (killed at #{kill['index']})"
    assert where[-1] == "cloud"


def test_hung_server_times_out_to_the_device_and_recovers(artifact, config, data, server):
    """SIGSTOP: the next request finishes on the device after about timeout_s; the ones
    after it run device-only at once; after SIGCONT the client is back on the cloud."""
    server.ensure_up()
    x = data[0]
    # No periodic link probe: a ping must not find the hung server before the request does.
    client = _client(artifact, server.endpoint, config, probe_every_s=60.0)
    try:
        _until_cloud(client, data, 10.0)
        server.signal(signal.SIGSTOP)
        try:
            hung = client.run(x[1:2])
            _check(hung, 1, data)
            assert hung.where == "fallback" and "DEADLINE_EXCEEDED" in hung.error, (hung.where, hung.error)
            assert TIMEOUT_S * 0.9 <= hung.latency_s <= TIMEOUT_S + 0.5, hung.latency_s
            after = [client.run(x[k : k + 1]) for k in range(2, 12)]
            for k, r in enumerate(after, start=2):
                _check(r, k, data)
                assert r.where == "device" and r.latency_s < TIMEOUT_S, (r.where, r.latency_s)
            time.sleep(1.0)  # the prober keeps failing against the stopped server meanwhile
            assert client.endpoints_up == []
        finally:
            server.signal(signal.SIGCONT)
        t0 = time.perf_counter()
        back = _until_cloud(client, data, 10.0)
        print(
            f"\nhung: fallback after {hung.latency_s:.3f} s (timeout {TIMEOUT_S} s), device-only "
            f"{1e3 * max(r.latency_s for r in after):.1f} ms max; cloud again {time.perf_counter() - t0:.2f} s "
            f"after SIGCONT ({len(back)} requests)"
        )
    finally:
        client.close()


def test_connection_dropped_mid_transfer_falls_back_with_the_right_answer(artifact, config, data, server):
    """A slow link (a user-space TCP proxy) is torn down while a frame is crossing it."""
    server.ensure_up()
    x = data[0]
    rate = 16_000.0  # bytes/s: the frame (tens of kB) takes seconds to cross
    with LinkShaper(("127.0.0.1", server.port), uplink=None) as shaper:
        host, port = shaper.address
        # A long timeout: what ends the request must be the dropped connection, not the deadline.
        client = _client(artifact, f"grpc://{host}:{port}", config, timeout_s=10.0, probe_every_s=60.0)
        try:
            _until_cloud(client, data, 10.0)  # the HTTP/2 connection is up, through the shaper
            shaper.set_uplink(rate)
            sent_before = shaper.bytes_up
            dropper = threading.Timer(0.5, shaper.stop)
            dropper.start()
            try:
                r = client.run(x[3:4])
            finally:
                dropper.join()
            crossed = shaper.bytes_up - sent_before
        finally:
            client.close()
    _check(r, 3, data)
    assert r.where == "fallback", (r.where, r.error)
    assert "DEADLINE_EXCEEDED" not in r.error and any(
        code in r.error for code in ("UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN")
    ), r.error
    assert r.latency_s < 3.0, r.latency_s
    assert 0 < crossed < r.bytes_sent, (crossed, r.bytes_sent)  # it was dropped part-way through
    print(f"\ndropped: {crossed} of {r.bytes_sent} bytes had crossed; fell back after {r.latency_s:.2f} s: {r.error}")
