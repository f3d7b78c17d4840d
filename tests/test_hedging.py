"""Robust to what the selector cannot foresee (issue 19 item 4): the hedged offload, the
backlog-aware conditions and the device that never idles while a frame is unanswered, in
the replay and in the live client alike.

* replay, sequential: over a link that stalls after frames are sent, hedged latency never
  exceeds device-only's by more than the packing; without the hedge it does, many-fold;
* replay, pipelined: under the same stall, hedged throughput is at least device-only's;
  without it the window fills with stalled frames and the device idles;
* the rules themselves: local remainders, the backlog in the cost model, work sharing in
  ``HighestThroughput``, the observer's backlog, stall-aware and optimistic bandwidth;
* the live client, with a transport that stalls: it finishes on the device, with the float
  model's answer, long before the reply, and still observes the late reply.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from conftest import shared_data
from dyno_compile.artifact.load import load_artifact, run_split
from dyno_compile.configs import Config, Evaluation
from dyno_compile.evaluate.replay import ReplaySettings, replay
from dyno_compile.packing import decode_packed
from dyno_compile.runtime import (
    Conditions,
    HighestThroughput,
    LinkEstimator,
    LowestLatency,
    Onloading,
    Selector,
    UplinkTrace,
    make_policy,
)
from dyno_compile.runtime.client import DeviceClient, _Endpoint
from dyno_compile.runtime.observations import MIN_SAMPLE_BYTES, OPTIMISTIC_BANDWIDTH, LinkObserver
from dyno_compile.runtime.protocol import Kind, Status, decode_request, encode_reply
from dyno_compile.runtime.selector import Prediction, local_remainders
from dyno_compile.runtime.transport import Transport
from dyno_compile.search.calibration import load_calibration

BASELINE = 0.9
RTT = 0.05
DEVICE_ONLY_S = 0.25
DEVICE_ONLY = Evaluation(Config(20), DEVICE_ONLY_S, 0.0, 0.0, BASELINE, 1.0)
#: Early cut: 20 ms of device work (prefix 18 ms + 2 ms packing), 20 kB, 5 ms in the cloud.
EARLY = Evaluation(Config(3, "8"), 0.020, 0.005, 20_000, BASELINE, 1.0)
EARLY_F32 = Evaluation(Config(3, "float32"), 0.018, 0.005, 80_000, BASELINE, 1.0)
CANDIDATES = [DEVICE_ONLY, EARLY, EARLY_F32]
#: The packing an offload of EARLY costs over running alone (its device time less the cut's cheapest).
PACKING_S = EARLY.device_s - EARLY_F32.device_s


def stalling_trace(fast_s: float = 1.0, stall_s: float = 20.0, seconds: float = 60.0) -> UplinkTrace:
    """2 MB/s (a packet a millisecond and then some) until ``fast_s``, nothing for
    ``stall_s``, then fast again: a link that dies after the selector trusted it."""
    fast = np.arange(1, int(fast_s * 1000) + 1)
    again = np.arange(int((fast_s + stall_s) * 1000), int(seconds * 1000) + 1)
    stamps = np.repeat(np.concatenate([fast, again]), 2).astype(np.int64)
    return UplinkTrace("stall", stamps, int(stamps[-1]))


def selector(policy) -> Selector:
    return Selector(CANDIDATES, policy, accuracy_baseline=BASELINE, accuracy_budget=1.0)


def settings(**options) -> ReplaySettings:
    return ReplaySettings(rtt_s=RTT, **{"requests": 200, **options})


# --- the replay ------------------------------------------------------------------------


def test_hedged_latency_never_exceeds_device_only_by_more_than_the_packing() -> None:
    trace = stalling_trace()
    hedged = replay(selector(LowestLatency()), trace, settings(hedge=True))
    assert hedged.offloaded_fraction > 0.2  # it offloads while the link is good
    assert {r.where for r in hedged.requests} >= {"cloud", "local"}  # and the stall is met locally
    assert hedged.latencies_s.max() <= DEVICE_ONLY_S + PACKING_S + 1e-9
    assert hedged.mean_latency_s < DEVICE_ONLY_S
    plain = replay(selector(LowestLatency()), trace, settings())
    assert plain.latencies_s.max() > 10 * DEVICE_ONLY_S  # the mechanism is what bounds it


def test_pipelined_throughput_under_a_stall_is_at_least_device_onlys() -> None:
    trace = stalling_trace(stall_s=100.0, seconds=200.0)  # longer than the run takes on the device
    device_only = 1.0 / DEVICE_ONLY_S
    hedged = replay(selector(HighestThroughput()), trace, settings(mode="pipelined", hedge=True))
    assert hedged.throughput_rps >= device_only
    assert hedged.offloaded_fraction > 0.2
    plain = replay(selector(HighestThroughput()), trace, settings(mode="pipelined"))
    assert plain.throughput_rps < 0.8 * device_only  # stalled frames fill the window, the device idles


def test_a_reply_after_the_local_finish_is_still_observed() -> None:
    estimator = LinkEstimator()
    result = replay(selector(LowestLatency()), stalling_trace(stall_s=3.0), settings(hedge=True), estimator=estimator)
    local = [r for r in result.requests if r.where == "local"]
    assert local and all(r.bytes == EARLY.bytes for r in local)
    # after the stall the stalled frames' replies came in and the link looks fast again
    assert result.requests[-1].where == "cloud"
    assert estimator.conditions().bandwidth > 1e6


def test_onloading_meets_its_slo_through_a_stall_when_hedged() -> None:
    """The SLO above device-only's latency plus packing is always met hedged; not without."""
    slo = DEVICE_ONLY_S + PACKING_S + 1e-6
    hedged = replay(selector(Onloading(0.1)), stalling_trace(), settings(hedge=True))
    assert np.mean(hedged.latencies_s <= slo) == 1.0
    plain = replay(selector(Onloading(0.1)), stalling_trace(), settings())
    assert plain.latencies_s.max() > 10 * slo


def test_hedge_is_off_by_default_and_checked() -> None:
    assert ReplaySettings(rtt_s=RTT, requests=1).hedge is False
    with pytest.raises(Exception, match="hedge"):
        ReplaySettings(rtt_s=RTT, requests=1, hedge=1)  # type: ignore[arg-type]


# --- the rules ---------------------------------------------------------------------------


def test_local_remainders_are_device_only_less_the_cuts_cheapest() -> None:
    assert local_remainders(CANDIDATES) == {20: 0.0, 3: pytest.approx(DEVICE_ONLY_S - EARLY_F32.device_s)}
    assert local_remainders([EARLY]) == {}
    decision = selector(LowestLatency()).select(Conditions(1e9, RTT))
    assert decision.evaluation in (EARLY, EARLY_F32)
    assert decision.remainder_s == pytest.approx(DEVICE_ONLY_S - EARLY_F32.device_s)


def test_the_backlog_delays_an_offload_by_what_its_device_part_does_not_cover() -> None:
    candidates = selector(LowestLatency()).candidates
    free = Prediction(candidates, Conditions(1e6, RTT))
    behind = Prediction(candidates, Conditions(1e6, RTT, uplink_backlog_s=0.1))
    early = candidates.evaluations.index(EARLY)
    assert behind.latency[early] == pytest.approx(free.latency[early] + 0.1 - EARLY.device_s)
    assert behind.of(early)[0] == pytest.approx(behind.latency[early])
    only = candidates.evaluations.index(DEVICE_ONLY)
    assert behind.latency[only] == free.latency[only]


def test_highest_throughput_shares_work_with_the_device_behind_a_backlog() -> None:
    s = selector(HighestThroughput())
    assert s.select(Conditions(1e6, RTT, uplink_backlog_s=0.1)).evaluation is not DEVICE_ONLY  # worth queueing
    s = selector(HighestThroughput())
    assert s.select(Conditions(1e6, RTT, uplink_backlog_s=DEVICE_ONLY_S + 0.01)).evaluation is DEVICE_ONLY


def test_a_hedged_client_keeps_the_uplink_fed_behind_a_backlog() -> None:
    """Hedged, unanswered requests are finished on the device in its idle time, so a
    backlog does not turn the choice to device-only (which would hold the device while
    nobody feeds the uplink); device-only is still chosen where it scores best."""
    backlog = Conditions(1e6, RTT, uplink_backlog_s=DEVICE_ONLY_S + 0.01)
    assert selector(HighestThroughput()).select(backlog).evaluation is DEVICE_ONLY  # work sharing
    assert selector(HighestThroughput(hedged=True)).select(backlog).evaluation is not DEVICE_ONLY
    dead = Conditions(1.0, RTT)  # a byte a second: no offload can help
    assert selector(HighestThroughput(hedged=True)).select(dead).evaluation is DEVICE_ONLY


def test_the_observer_prices_frames_in_flight_and_reads_a_stall() -> None:
    observer = LinkObserver(LinkEstimator(), probe_every_s=2.0, probe_bytes=16384, ping_timeout_s=1.0)
    assert observer.conditions(0.0).bandwidth == OPTIMISTIC_BANDWIDTH  # never sampled: optimistic
    observer.offload(100_000, 0.1 + RTT, server_s=0.0, compute_s=0.0, profiled_cloud_s=0.0, now_s=1.0)
    base = observer.link.conditions()  # 1 MB/s
    assert base.bandwidth == pytest.approx(1e6)
    observer.sent("a", 100_000, now_s=2.0)
    observer.sent("b", 100_000, now_s=2.0)
    fresh = observer.conditions(2.0)
    assert fresh.bandwidth == base.bandwidth and fresh.uplink_backlog_s == pytest.approx(0.2)
    late = observer.conditions(3.0)  # "a" should have been answered at 2.1 + RTT
    assert late.bandwidth == pytest.approx(100_000 / (1.0 - base.rtt_s))
    overdue = 1.0 - 0.1 - base.rtt_s
    assert late.uplink_backlog_s == pytest.approx(overdue + 100_000 / late.bandwidth)
    observer.settled("a")
    observer.settled("b")
    assert observer.outstanding == 0 and observer.conditions(3.0) == base


# --- the live client -----------------------------------------------------------------------


class _StallingCloud(Transport):
    """Answers every request with zeros once ``release`` is set (at once if it is);
    pings at once."""

    def __init__(self, output_shape: tuple[int, ...]) -> None:
        super().__init__("stalling://cloud")
        self.output_shape = output_shape
        self.release = threading.Event()
        self.answered = threading.Event()

    def call(self, request: bytes, timeout_s: float) -> bytes:
        envelope = decode_request(request)
        if envelope.kind is Kind.PING:
            return encode_reply(Status.OK, output=np.zeros(0, np.float32))
        self.release.wait(timeout_s)
        reply = encode_reply(
            Status.OK,
            request_id=decode_packed(envelope.body).request_id,
            output=np.zeros(self.output_shape, np.float32),
            compute_s=1e-4,
        )
        self.answered.set()
        return reply


@pytest.fixture(scope="module")
def artifact(searched_resnet20):
    return load_artifact(searched_resnet20)


@pytest.fixture(scope="module")
def images():
    return load_calibration(shared_data("cifar10", "test_932.npz"), input_shape=(1, 3, 32, 32), preprocess="cifar10").x


def _hedged_client(artifact) -> tuple[DeviceClient, _StallingCloud, Config]:
    entry = next(d for d in artifact.manifest["search"]["pareto"] if d["bytes"] > 0)
    config = Config.from_dict(entry["config"])
    client = DeviceClient(artifact, [], policy=make_policy("pinned", config=config), hedge=True, timeout_s=30.0)
    cloud = _StallingCloud(client.device.output_shape)
    endpoint = _Endpoint(cloud)
    endpoint.connected = True
    client._endpoints.append(endpoint)  # no prober thread: the test alone talks to the cloud
    return client, cloud, config


def test_a_stalled_offload_finishes_on_the_device_and_the_late_reply_is_observed(artifact, images):
    client, cloud, config = _hedged_client(artifact)
    x = images[:1]
    began = time.perf_counter()
    result = client.run(x)
    assert result.where == "local" and result.error is None and result.bytes_sent >= MIN_SAMPLE_BYTES
    assert time.perf_counter() - began < 5.0  # the device did not wait out the 30 s timeout
    last = max(c["position"] for c in artifact.cuts)
    np.testing.assert_allclose(result.output, run_split(artifact, x, last), rtol=1e-5, atol=1e-5)
    assert client._observer.outstanding == 1  # the frame still occupies the link
    stalled = client._observer.conditions(time.monotonic() + 10.0)
    assert stalled.uplink_backlog_s > 5.0  # overdue: read as a stall until the reply comes
    assert math.isinf(client._observer.last_uplink_sample_s)  # nothing has sampled the uplink yet
    time.sleep(0.3)  # a stall well past the prior round trip: the reply's wait is a transfer
    cloud.release.set()
    assert cloud.answered.wait(5.0)
    deadline = time.monotonic() + 5.0
    while client._observer.outstanding and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client._observer.outstanding == 0
    assert math.isfinite(client._observer.last_uplink_sample_s)  # the late reply was a sample
    client.close()


def test_a_prompt_reply_stops_the_device(artifact, images):
    client, cloud, config = _hedged_client(artifact)
    cloud.release.set()
    result = client.run(images[:1])
    assert result.where == "cloud" and result.reply is not None
    assert result.decision.evaluation.config == config
    assert client._observer.outstanding == 0
    client.close()
