"""One set of observation rules for the live client and the trace replay: the rules of
:class:`LinkObserver` on their own, and the same events fed through the live client's
observation path (its requests and its prober, on a clock the test moves) and the
replay's (its event handlers) leaving the same estimates."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import dyno_compile.runtime.client as client_module
from dyno_compile.artifact.load import load_artifact
from dyno_compile.evaluate.replay import ReplaySettings, _Replay, _Request
from dyno_compile.packing import decode_packed
from dyno_compile.runtime import Selector, make_policy
from dyno_compile.runtime.client import DeviceClient, _Endpoint
from dyno_compile.runtime.link import PRIOR_RTT_S, LinkEstimator, UplinkTrace
from dyno_compile.runtime.observations import MIN_SAMPLE_BYTES, LinkObserver, ping_timeout_s
from dyno_compile.runtime.protocol import Kind, Status, decode_reply, decode_request, encode_reply
from dyno_compile.runtime.transport import Reason, Transport, TransportError

PROBE_EVERY_S = 2.0
PROBE_BYTES = 16_384
PING_TIMEOUT_S = 1.0


def _observer() -> LinkObserver:
    return LinkObserver(
        LinkEstimator(), probe_every_s=PROBE_EVERY_S, probe_bytes=PROBE_BYTES, ping_timeout_s=PING_TIMEOUT_S
    )


def test_ping_timeout_is_the_request_timeout_up_to_a_second():
    assert ping_timeout_s(0.3) == 0.3 and ping_timeout_s(2.0) == 1.0


def test_an_offload_samples_the_cloud_and_the_uplink_and_defers_the_padded_ping():
    obs = _observer()
    assert obs.padding(0.0) == PROBE_BYTES  # nothing known of the uplink yet
    obs.offload(MIN_SAMPLE_BYTES - 1, 1.0, server_s=0.2, compute_s=0.1, profiled_cloud_s=0.05, now_s=1.0)
    assert obs.link.conditions().cloud_load == pytest.approx(4.0)  # the queue counts: 0.2 s for 0.05 s of work
    assert obs.padding(1.0) == PROBE_BYTES  # too small a frame to sample the uplink
    obs.offload(50_000, 0.75, server_s=0.2, compute_s=0.1, profiled_cloud_s=0.05, now_s=3.0)
    assert obs.link.conditions().bandwidth == pytest.approx(50_000 / (0.75 - 0.2 - PRIOR_RTT_S))
    assert obs.padding(3.0 + PROBE_EVERY_S / 2) == 0 and obs.padding(3.0 + PROBE_EVERY_S) > 0
    bandwidth = obs.link.conditions().bandwidth
    obs.offload(50_000, 0.2, server_s=0.2, compute_s=0.1, profiled_cloud_s=0.05, now_s=9.0)  # nothing left for it
    assert obs.link.conditions().bandwidth == bandwidth and obs.padding(9.0) > 0


def test_a_busy_reply_reads_as_the_queue_over_the_workers():
    obs = _observer()
    obs.busy(0.05, in_flight=3, workers=2)
    assert obs.link.conditions().cloud_load == pytest.approx(2.0)
    obs.busy(0.0, in_flight=9, workers=1)  # no cloud part: nothing to learn
    assert obs.link.conditions().cloud_load == pytest.approx(2.0)


def test_a_timed_out_padded_ping_took_the_whole_timeout():
    obs = _observer()
    obs.round_trip(0.08)
    again = obs.padded_ping(0.06, PROBE_BYTES, None, now_s=5.0)
    # The padding took the timeout and the round trip estimated before (0.08), less the
    # lower of this probe's round trip and the estimate after it (the median of both).
    assert not again and obs.link.conditions().bandwidth == pytest.approx(PROBE_BYTES / (PING_TIMEOUT_S + 0.08 - 0.06))
    assert obs.padding(5.0) == 0


# --- the live client and the replay, event by event ----------------------------------------


class _Clock:
    """The client's ``time`` module, moved only by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        return self.t

    monotonic = perf_counter


class _ScriptedCloud(Transport):
    """A cloud endpoint whose answers take what the test scripts, on the test's clock:
    each ping the next of ``pings`` (seconds, or None to time out), each request
    ``answer`` = (network seconds, queue seconds, compute seconds). Records the paddings
    and request sizes it was sent."""

    def __init__(self, clock: _Clock, output_shape: tuple[int, ...]) -> None:
        super().__init__("scripted://cloud")
        self.clock, self.output_shape = clock, output_shape
        self.pings: list[float | None] = []
        self.answer = (0.0, 0.0, 0.0)
        self.paddings: list[int] = []
        self.request_bytes: list[int] = []

    def call(self, request: bytes, timeout_s: float) -> bytes:
        envelope = decode_request(request)
        if envelope.kind is Kind.PING:
            self.paddings.append(len(envelope.body))
            took = self.pings.pop(0)
            if took is None:
                self.clock.t += timeout_s
                raise TransportError(self.endpoint, Reason.TIMEOUT, "scripted")
            self.clock.t += took
            return encode_reply(Status.OK, output=np.zeros(0, np.float32))
        self.request_bytes.append(len(request))
        network_s, queue_s, compute_s = self.answer
        self.clock.t += network_s
        return encode_reply(
            Status.OK,
            request_id=decode_packed(envelope.body).request_id,
            output=np.zeros(self.output_shape, np.float32),
            queue_s=queue_s,
            compute_s=compute_s,
        )


@pytest.fixture(scope="module")
def artifact(searched_resnet20):
    return load_artifact(searched_resnet20)


def test_the_client_and_the_replay_observe_the_same_events_alike(artifact, monkeypatch):
    entry = next(d for d in artifact.manifest["search"]["pareto"] if d["bytes"] > 0)
    config, profiled_device_s, profiled_cloud_s = entry["config"], entry["device_s"], entry["cloud_s"]
    clock = _Clock()
    monkeypatch.setattr(client_module, "time", clock)
    client = DeviceClient(artifact, [], policy=make_policy("pinned", config=config))  # no prober thread
    cloud = _ScriptedCloud(clock, client.device.output_shape)
    endpoint = _Endpoint(cloud)
    endpoint.connected = True  # no handshake ping
    client._endpoints.append(endpoint)
    device = {"s": 0.0}
    real_start = client.device.start

    def start(x, position):
        clock.t += device["s"]
        return real_start(x, position)

    monkeypatch.setattr(client.device, "start", start)
    x = np.zeros(client.device.input_shape, client.device.input_dtype)

    settings = ReplaySettings(rtt_s=0.01, requests=100)
    assert (settings.probe_every_s, settings.probe_bytes, settings.ping_timeout_s) == (
        client.options.probe_every_s,
        client.options.probe_bytes,
        ping_timeout_s(client.options.timeout_s),
    )
    trace = UplinkTrace("1ms", np.arange(1, 100_001, dtype=np.int64), 100_000)
    run = _Replay(
        Selector.from_manifest(artifact.manifest, make_policy("pinned", config=config)),
        trace,
        settings,
        LinkEstimator(),
    )

    def same() -> None:
        live, replayed = client.link.conditions(), run.link.conditions()
        assert dataclasses.astuple(live) == pytest.approx(dataclasses.astuple(replayed), rel=1e-9)
        assert client._observer.last_uplink_sample_s == pytest.approx(run.observer.last_uplink_sample_s, rel=1e-9)

    def request(device_s: float, network_s: float, queue_s: float, compute_s: float) -> None:
        t0 = clock.t
        device["s"], cloud.answer = device_s, (network_s, queue_s, compute_s)
        result = client.run(x)
        assert result.where == "cloud", result.error
        evaluation = dataclasses.replace(result.decision.evaluation, bytes=float(cloud.request_bytes[-1]))
        wire = decode_reply(
            encode_reply(Status.OK, output=np.zeros(1, np.float32), queue_s=queue_s, compute_s=compute_s)
        )  # the times as the reply carries them
        r = _Request(
            len(cloud.request_bytes),
            t0,
            evaluation,
            result.decision.latency_s,
            device_s=device_s,
            cloud_s=wire.compute_s,
            server_s=wire.server_s,
        )
        run.now = t0 + device_s
        run.device_done(r)
        assert r.sent_s == run.now
        run.now = r.sent_s + network_s
        run.reply(r)
        same()

    def probe(rtt_s: float, padded_s: float | None = math.nan) -> None:
        """The prober's measurement at the clock's time: an empty ping of ``rtt_s``, then,
        unless NaN (no padding expected), a padded one of ``padded_s`` (None: timed out)."""
        t0 = clock.t
        cloud.pings = [rtt_s] if padded_s is not None and math.isnan(padded_s) else [rtt_s, padded_s]
        sent = len(cloud.paddings)
        client._last_rtt_probe = t0
        client._measure_link(endpoint, t0)
        assert cloud.pings == []
        paddings = cloud.paddings[sent:]
        probes = len(run.probes)
        run.now = t0
        run.probe()
        assert [p.bytes for p in run.probes[probes:]] == paddings[1:]  # the same padding, or none
        run.now = t0 + rtt_s
        rtt = run.now - t0
        if len(paddings) == 1:
            run.ping_reply(0, rtt)
        else:
            sent_s = run.now
            run.now = sent_s + (settings.ping_timeout_s if padded_s is None else padded_s)
            run.padded_reply(paddings[1], sent_s, padded_s is None, rtt)
        assert (client._last_rtt_probe == -math.inf) == (run.next_probe == run.now)  # again at once, or not
        same()

    probe(0.060, 0.300)  # t=0: nothing known of the uplink: padded
    clock.t = 1.0
    request(
        device_s=1.5 * profiled_device_s,
        network_s=0.400,
        queue_s=0.5 * profiled_cloud_s,
        compute_s=1.2 * profiled_cloud_s,
    )
    clock.t = 2.0
    probe(0.050)  # the frame sampled the uplink under probe_every_s ago: no padding
    clock.t = 4.0
    probe(0.055, None)  # padded, and held past the ping timeout
    clock.t = 7.5
    probe(0.050, 0.040)  # a padding the round trip hides: a bigger one at once
    assert client._last_rtt_probe == -math.inf
    probe(0.050, 0.500)
    bandwidth = client.link.conditions().bandwidth
    clock.t = 9.0
    request(device_s=0.9 * profiled_device_s, network_s=0.045, queue_s=0.0, compute_s=2.0 * profiled_cloud_s)
    assert client.link.conditions().bandwidth == bandwidth  # the round trip explains the whole wait
    assert len(run.probes) == 4 and run.probes[3].bytes == 4 * run.probes[2].bytes
    client.close()
