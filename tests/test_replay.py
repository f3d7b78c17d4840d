"""The trace replay: its figures against the cost model on synthetic uplinks where the
answer is known, the estimator and prober rules it mirrors from the client, and a smoke
run of every policy on real mahimahi uplinks."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import shared_data
from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.evaluate.replay import ReplaySettings, delivered_bytes, oracle, replay
from dyno_compile.runtime import (
    Conditions,
    DeviceOnly,
    HighestThroughput,
    LinkEstimator,
    LowestLatency,
    Pinned,
    Policy,
    Selector,
    UplinkTrace,
    make_policy,
    predict,
)
from dyno_compile.runtime.link import PACKET_BYTES
from dyno_compile.runtime.observations import (
    MAX_PROBE_BYTES,
    MIN_SAMPLE_BYTES,
    PROBE_GROWTH,
    PROBE_SECONDS,
    UplinkProbe,
)
from dyno_compile.runtime.protocol import REQUEST_HEADER_BYTES

BASELINE = 0.92
RTT = 0.04
DEVICE_ONLY = Evaluation(Config(20), 0.05, 0.0, 0.0, BASELINE, 1.0)


def constant_trace(every_ms: int, seconds: float = 100.0) -> UplinkTrace:
    """One 1500-byte opportunity every ``every_ms`` ms: 1.5 MB/s at 1 ms."""
    stamps = np.arange(every_ms, int(seconds * 1000) + 1, every_ms, dtype=np.int64)
    return UplinkTrace(f"constant-{every_ms}ms", stamps, int(stamps[-1]))


def step_trace(first_ms: int, then_ms: int, step_s: float, seconds: float) -> UplinkTrace:
    """Opportunities every ``first_ms`` until ``step_s``, every ``then_ms`` after."""
    step = int(step_s * 1000)
    stamps = np.concatenate(
        [np.arange(first_ms, step + 1, first_ms), np.arange(step + then_ms, int(seconds * 1000) + 1, then_ms)]
    ).astype(np.int64)
    return UplinkTrace(f"step-{first_ms}-{then_ms}ms", stamps, int(stamps[-1]))


def offloaded(
    cut: int, bits: str, device_s: float, nbytes: float, cloud_s: float, accuracy: float = BASELINE
) -> Evaluation:
    return Evaluation(Config(cut, bits), device_s, cloud_s, nbytes, accuracy, 1.0)


def selector(candidates: list[Evaluation], policy: Policy) -> Selector:
    return Selector(candidates, policy, accuracy_baseline=BASELINE, accuracy_budget=1.0)


def pinned(evaluation: Evaluation) -> Selector:
    return selector([evaluation, DEVICE_ONLY], Pinned(evaluation.config))


def test_sequential_latency_is_the_cost_models_once_converged() -> None:
    config = offloaded(3, "8", device_s=0.010, nbytes=30_000, cloud_s=0.005)
    trace, estimator = constant_trace(1), LinkEstimator()
    result = replay(pinned(config), trace, ReplaySettings(rtt_s=RTT, requests=60), estimator=estimator)
    truth = predict(config, Conditions(1.5e6, RTT))[0]  # 1.5 MB/s: 10 + 20 + 40 + 5 ms
    estimated = predict(config, estimator.conditions())[0]
    assert truth == pytest.approx(0.075) and estimated == pytest.approx(truth, abs=1e-3)
    for r in result.requests[5:]:
        assert r.where == "cloud" and r.bytes == 30_000 and r.cloud_s == pytest.approx(0.005)
        assert r.latency_s == pytest.approx(truth, abs=1e-3)
        assert r.predicted_s == pytest.approx(r.latency_s, abs=1e-3)  # what the selector expected
    assert result.throughput_rps == pytest.approx(1 / truth, rel=0.01)
    # one padded probe, the first (nothing was known of the uplink); frames sample it after
    assert result.bytes_per_inference == 30_000 and [p.start_s for p in result.probes] == [0.0]
    assert result.cloud_s_per_inference == pytest.approx(0.005) and result.switches == 0


def test_device_only_runs_at_the_devices_rate_and_sends_nothing() -> None:
    sel = selector([DEVICE_ONLY, offloaded(0, "float32", 0.001, 600_000, 0.003)], DeviceOnly())
    for mode in ("sequential", "pipelined"):
        result = replay(sel, constant_trace(1), ReplaySettings(rtt_s=RTT, requests=200, mode=mode))
        assert result.throughput_rps == pytest.approx(1 / DEVICE_ONLY.device_s)
        assert result.mean_latency_s == pytest.approx(DEVICE_ONLY.device_s)
        assert result.bytes_per_inference == 0 and result.cloud_s_per_inference == 0
        assert {r.where for r in result.requests} == {"device"} and result.accuracy == pytest.approx(BASELINE)


def test_device_load_slows_the_device_and_the_estimator_learns_it() -> None:
    estimator = LinkEstimator()
    result = replay(
        selector([DEVICE_ONLY], DeviceOnly()),
        constant_trace(1),
        ReplaySettings(rtt_s=RTT, requests=50, device_load=2.0),
        estimator=estimator,
    )
    assert result.throughput_rps == pytest.approx(1 / (2 * DEVICE_ONLY.device_s))
    assert estimator.conditions().device_load == pytest.approx(2.0)


@pytest.mark.parametrize(
    "device_s, nbytes, cloud_s",
    [
        (0.005, 30_000, 0.003),  # uplink: 20 packets at 1 ms
        (0.020, 15_000, 0.005),  # device
        (0.005, 7_500, 0.0125),  # cloud
    ],
)
def test_pipelined_throughput_is_one_over_the_bottleneck(device_s: float, nbytes: float, cloud_s: float) -> None:
    config = offloaded(3, "8", device_s, nbytes, cloud_s)
    settings = ReplaySettings(rtt_s=RTT, requests=500, mode="pipelined", max_in_flight=8)
    result = replay(pinned(config), constant_trace(1), settings)
    bottleneck = max(device_s, nbytes / 1.5e6, cloud_s)
    assert result.throughput_rps == pytest.approx(1 / bottleneck, rel=0.02)
    assert result.throughput_rps == pytest.approx(predict(config, Conditions(1.5e6, RTT))[1], rel=0.02)
    sequential = replay(pinned(config), constant_trace(1), ReplaySettings(rtt_s=RTT, requests=100))
    assert sequential.throughput_rps < 0.6 * result.throughput_rps


def test_in_flight_limit_caps_pipelined_throughput() -> None:
    """Little's law: one request outstanding is the sequential client."""
    config = offloaded(3, "8", 0.005, 30_000, 0.003)
    one = replay(
        pinned(config), constant_trace(1), ReplaySettings(rtt_s=RTT, requests=100, mode="pipelined", max_in_flight=1)
    )
    sequential = replay(pinned(config), constant_trace(1), ReplaySettings(rtt_s=RTT, requests=100))
    assert one.throughput_rps == pytest.approx(sequential.throughput_rps, rel=0.01)


STEP_CANDIDATES = [
    offloaded(0, "float32", device_s=0.001, nbytes=30_000, cloud_s=0.003),  # 64 ms at 1.5 MB/s, > 1 s at 30 kB/s
    offloaded(5, "4", device_s=0.030, nbytes=3_000, cloud_s=0.003),  # 75 ms fast, ~150 ms slow
    Evaluation(Config(20), 0.2, 0.0, 0.0, BASELINE, 1.0),  # device-only, 200 ms
]


def test_lowest_latency_follows_a_step_down_within_a_few_requests() -> None:
    trace = step_trace(1, 50, step_s=10.0, seconds=200.0)  # 1.5 MB/s, then 30 kB/s
    settings = ReplaySettings(rtt_s=RTT, duration_s=20.0)
    result = replay(selector(STEP_CANDIDATES, LowestLatency()), trace, settings)
    before = [r for r in result.requests if 9.0 <= r.start_s < 10.0]
    after = [r for r in result.requests if r.start_s >= 10.0]
    assert before and all(r.config.cut == 0 for r in before)
    first_lean = next(i for i, r in enumerate(after) if r.config.cut == 5)
    assert first_lean <= 4 and all(r.config.cut == 5 for r in after[first_lean:])
    changes = result.cut_over_time(changes_only=True)
    assert changes[-1][1] == 5 and 10.0 <= changes[-1][0] < 15.0
    assert len(result.cut_over_time()) == len(result.requests) and result.switches == len(changes) - 1
    # the oracle, knowing each second's throughput, changes at the step itself
    best = oracle(selector(STEP_CANDIDATES, LowestLatency()), trace, settings)
    assert len(best) == 20 and [c.evaluation.config.cut for c in best] == [0] * 10 + [5] * 10
    assert best[0].bandwidth == pytest.approx(1.5e6, rel=1e-2) and best[15].bandwidth == 30_000


def test_probes_only_while_nothing_samples_the_uplink() -> None:
    """The prober pads its first ping (nothing is known of the uplink), then a ping only
    after ``probe_every_s`` without a frame of at least MIN_SAMPLE_BYTES; the padding is
    sized to PROBE_SECONDS at the estimate."""
    trace = constant_trace(1)
    settings = ReplaySettings(rtt_s=RTT, duration_s=10.0, probe_every_s=1.0, probe_bytes=4_000)
    device = replay(selector([DEVICE_ONLY], DeviceOnly()), trace, settings)
    # ticks at 0, 1, 2, ...: the first is padded; a padded reply counts as a sample, so
    # the next due is two ticks later
    assert [p.start_s for p in device.probes] == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    # What the client's estimator makes of it: each empty ping is a packet on the link
    # (RTT + 1-2 ms here); the padded one's time over the lower of that estimate and its
    # own empty ping is its transfer.
    link = LinkEstimator()
    ping = RTT + trace.transfer_seconds(0.0, REQUEST_HEADER_BYTES)
    link.observe_rtt(ping)
    padded = trace.transfer_seconds(ping, 4_000) + RTT
    link.observe_transfer(4_000, padded - min(ping, link.conditions().rtt_s))
    assert device.probes[0].bytes == 4_000
    assert device.probes[1].bytes == pytest.approx(PROBE_SECONDS * link.conditions().bandwidth, abs=1)
    assert device.probe_bytes_total == sum(p.bytes for p in device.probes) and device.bytes_per_inference == 0

    big = replay(pinned(offloaded(3, "8", 0.01, 30_000, 0.005)), trace, settings)
    small = replay(pinned(offloaded(3, "2", 0.01, MIN_SAMPLE_BYTES - 1, 0.005)), trace, settings)
    assert [p.start_s for p in big.probes] == [0.0] and len(small.probes) == len(device.probes)
    silent = ReplaySettings(rtt_s=RTT, duration_s=10.0, probe_every_s=1.0, probe_bytes=0)
    assert replay(selector([DEVICE_ONLY], DeviceOnly()), trace, silent).probes == []


def test_probes_find_a_recovered_uplink_and_stop() -> None:
    """Device-only on a dead-slow uplink until a probe sees it recover; probes only while
    no frame has sampled the uplink for probe_every_s, and they delay frames behind them."""
    trace = step_trace(500, 1, step_s=10.0, seconds=200.0)  # 3 kB/s, then 1.5 MB/s
    settings = ReplaySettings(rtt_s=RTT, duration_s=30.0, probe_every_s=1.0)
    result = replay(selector(STEP_CANDIDATES, LowestLatency()), trace, settings)
    assert all(r.where == "device" for r in result.requests if 2.0 <= r.start_s < 10.0)
    # a padded reply is a sample, so probes come every other tick, and the median of five
    # follows after three: recovery is seen within ~3 x 2 ticks of the step, and ~2 more
    # for the round trip's median to forget the pings that queued up to 0.5 s for the slow
    # link's rare packets
    recovered = next(r.start_s for r in result.requests if r.start_s >= 10.0 and r.where == "cloud")
    assert recovered < 10.0 + (3 * 2 + 2) * settings.probe_every_s + 1.0
    assert all(r.config.cut == 0 for r in result.requests if r.start_s >= recovered)
    assert result.probes and max(p.start_s for p in result.probes) < recovered
    for probe in result.probes:
        recent = [r for r in result.requests if probe.start_s - 1.0 <= r.end_s <= probe.start_s]
        assert all(r.bytes < MIN_SAMPLE_BYTES for r in recent)


def test_a_padding_the_round_trip_hides_grows_and_goes_again() -> None:
    """On a link faster than the padding can show (the empty and the padded ping arrive
    in the same millisecond), the prober does not wait ``probe_every_s`` on the prior: it
    grows the padding (UplinkProbe) and sends it again at once, until it is a sample."""
    stamps = np.repeat(np.arange(1, 10_001, dtype=np.int64), 200)  # 200 packets per ms: 2.4 Gbit/s
    trace = UplinkTrace("fast", stamps, 10_000)
    settings = ReplaySettings(rtt_s=RTT, duration_s=3.0, probe_every_s=2.0)
    result = replay(selector([DEVICE_ONLY], DeviceOnly()), trace, settings)
    sizes = [p.bytes for p in result.probes]
    first = [p for p in result.probes if p.start_s < 1.0]
    assert [p.bytes for p in first] == [16_384 * PROBE_GROWTH**k for k in range(len(first))]
    assert 2 <= len(first) <= 4 and max(p.start_s for p in first) < 0.2
    assert all(s <= MAX_PROBE_BYTES for s in sizes)


def test_uplink_probe_rule() -> None:
    probe = UplinkProbe(16_384)
    assert probe.size(1e5) == 16_384 and probe.size(1e8) == int(PROBE_SECONDS * 1e8)
    assert probe.again(False, 16_384) and probe.size(1e5) == 16_384 * PROBE_GROWTH
    assert not probe.again(True, 65_536) and probe.size(1e5) == 16_384  # a sample resets it
    probe.scale = 1 << 10
    assert probe.size(1e5) == MAX_PROBE_BYTES and not probe.again(False, MAX_PROBE_BYTES)


def test_a_probe_delays_the_frame_behind_it() -> None:
    """A small frame (not an uplink sample) keeps the prober padding; a frame handed to
    the uplink while a probe's padding is on it waits."""
    trace = constant_trace(10)  # 150 kB/s: 16 kB of padding holds the link ~110 ms
    config = offloaded(3, "2", device_s=0.045, nbytes=1_000, cloud_s=0.005)
    settings = ReplaySettings(rtt_s=RTT, duration_s=6.0, probe_every_s=1.0)
    result = replay(pinned(config), trace, settings)
    latencies = result.latencies_s
    assert result.probes and latencies.max() > np.median(latencies) + 0.05


def test_replays_are_deterministic_and_noise_follows_the_seed() -> None:
    trace = UplinkTrace.read(shared_data("traces", "mahimahi_cellular", "Verizon-LTE-short.up"))
    runs = [
        replay(
            selector(STEP_CANDIDATES, LowestLatency()),
            trace,
            ReplaySettings(rtt_s=RTT, requests=200, noise=0.2, seed=seed),
        ).requests
        for seed in (1, 1, 2)
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize(
    "options",
    [
        {"rtt_s": -0.01, "requests": 10},
        {"rtt_s": float("nan"), "requests": 10},
        {"rtt_s": 1.5, "requests": 10},
        {"rtt_s": RTT},
        {"rtt_s": RTT, "requests": 10, "duration_s": 5.0},
        {"rtt_s": RTT, "requests": 0},
        {"rtt_s": RTT, "requests": True},
        {"rtt_s": RTT, "requests": 2.5},
        {"rtt_s": RTT, "duration_s": 0.0},
        {"rtt_s": RTT, "requests": 10, "mode": "parallel"},
        {"rtt_s": RTT, "requests": 10, "start_s": -1.0},
        {"rtt_s": RTT, "requests": 10, "probe_every_s": 0},
        {"rtt_s": RTT, "requests": 10, "probe_bytes": -1},
        {"rtt_s": RTT, "requests": 10, "max_in_flight": 0},
        {"rtt_s": RTT, "requests": 10, "device_load": 0.0},
        {"rtt_s": RTT, "requests": 10, "cloud_load": float("inf")},
        {"rtt_s": RTT, "requests": 10, "noise": -0.1},
    ],
)
def test_bad_settings_raise(options: dict) -> None:
    with pytest.raises(InputError):
        ReplaySettings(**options)


def test_bad_arguments_raise() -> None:
    settings = ReplaySettings(rtt_s=RTT, requests=10)
    with pytest.raises(InputError):
        replay(LowestLatency(), constant_trace(1), settings)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        replay(selector([DEVICE_ONLY], DeviceOnly()), "trace.up", settings)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        oracle(selector([DEVICE_ONLY], DeviceOnly()), constant_trace(1), settings, seconds=0)


def test_delivered_bytes_counts_across_loops() -> None:
    trace = constant_trace(2, seconds=1.0)  # 500 opportunities a second, looping every 1 s
    assert delivered_bytes(trace, 0.0, 1.0) == 500 * PACKET_BYTES
    assert delivered_bytes(trace, 0.5, 2.5) == 1000 * PACKET_BYTES


#: A CIFAR-sized network on a slow phone-class device (device-only 200 ms): the kinds of
#: configuration each policy picks from (cloud-only raw, Neurosurgeon's float32 cuts,
#: 8-bit, DynO's narrower widths).
SLOW_DEVICE_ONLY = Evaluation(Config(20), 0.2, 0.0, 0.0, BASELINE, 1.0)
REAL_CANDIDATES = [
    SLOW_DEVICE_ONLY,
    offloaded(0, "float32", 0.001, 600_000, 0.004),
    offloaded(0, "8", 0.002, 150_000, 0.004, accuracy=0.918),
    offloaded(8, "float32", 0.080, 64_000, 0.002),
    offloaded(8, "8", 0.082, 12_000, 0.003, accuracy=0.919),
    offloaded(8, "4", 0.081, 6_000, 0.003, accuracy=0.915),
    offloaded(14, "float32", 0.160, 4_000, 0.0005),
    offloaded(14, "2", 0.161, 300, 0.0006, accuracy=0.914),
]
#: The baselines by the runtime's names for them (``make_policy``), then ours.
POLICIES = ("device-only", "cloud-only", "neurosurgeon", "fixed-8bit", "lowest-latency")


@pytest.mark.parametrize("name", ["TMobile-UMTS-driving.up", "Verizon-LTE-short.up"])
def test_policies_on_real_uplinks(name: str) -> None:
    trace = UplinkTrace.read(shared_data("traces", "mahimahi_cellular", name))
    settings = ReplaySettings(rtt_s=RTT, requests=300, start_s=5.0)
    results = {p: replay(selector(REAL_CANDIDATES, make_policy(p)), trace, settings) for p in POLICIES}
    ours = results.pop("lowest-latency")
    for r in (*results.values(), ours):
        figures = r.summary()
        nothing_sent = {"bytes_per_offload"} if r.offloaded_fraction == 0 else set()  # NaN: no such request
        assert figures["requests"] == 300 and all(
            np.isfinite(v) for k, v in figures.items() if isinstance(v, float) and k not in nothing_sent
        )
        assert r.p95_latency_s >= r.mean_latency_s * 0.5 and 0.914 <= r.accuracy <= BASELINE
    assert results["device-only"].mean_latency_s == pytest.approx(SLOW_DEVICE_ONLY.device_s)
    assert results["cloud-only"].bytes_per_inference == 600_000
    best_baseline = min(r.mean_latency_s for r in results.values())
    assert ours.mean_latency_s <= 1.05 * best_baseline
    if "LTE" in name:  # measured: ours 138 ms, offloading every request at 4 bits, vs 160-875 ms
        assert ours.offloaded_fraction > 0.5 and ours.mean_latency_s < 0.9 * best_baseline
    pipelined = replay(
        selector(REAL_CANDIDATES, HighestThroughput()),
        trace,
        ReplaySettings(rtt_s=RTT, requests=300, start_s=5.0, mode="pipelined"),
    )
    assert pipelined.throughput_rps > results["device-only"].throughput_rps


def test_thousand_requests_over_a_hundred_candidates_well_under_a_second() -> None:
    widths = ("float32", "float16", "8", "6", "4", "2")
    candidates = [
        offloaded(
            cut,
            bits,
            0.001 + 0.003 * cut,
            600_000 / (cut + 1) * (1 if bits[0] == "f" else int(bits) / 32),
            0.02 - 0.001 * cut,
        )
        for cut in range(17)
        for bits in widths
    ][:99] + [DEVICE_ONLY]
    trace = UplinkTrace.read(shared_data("traces", "mahimahi_cellular", "ATT-LTE-driving-2016.up"))
    sel = selector(candidates, LowestLatency())
    assert len(sel.candidates) == 100
    start = time.perf_counter()
    result = replay(sel, trace, ReplaySettings(rtt_s=RTT, requests=1000))
    elapsed = time.perf_counter() - start
    assert len(result.requests) == 1000 and elapsed < 1.0
