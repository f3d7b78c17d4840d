"""The run-time selector and its live estimates: hand-made candidate sets whose right
answers are worked out in the comments, a cost-model oracle, bandwidth steps and noise
replayed through the estimator, and the real mahimahi uplink traces. Pure Python and
NumPy: runs in seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import shared_data
from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.runtime import (
    CloudOnly,
    Conditions,
    DeviceOnly,
    Fixed8Bit,
    HighestThroughput,
    LinkEstimator,
    LowestLatency,
    Neurosurgeon,
    Onloading,
    Selector,
    UplinkTrace,
    make_policy,
    predict,
)
from dyno_compile.runtime.link import LOAD_LIMITS, PRIOR_BANDWIDTH, PRIOR_RTT_S

BASELINE = 0.92
BUDGET = 1.0
MBIT = 1e6 / 8  # bytes/s


def ev(
    cut: int, bits: str, device_s: float, cloud_s: float, nbytes: float, accuracy: float = BASELINE, **config: str
) -> Evaluation:
    return Evaluation(Config(cut, bits, **config), device_s, cloud_s, nbytes, accuracy, accuracy)


# A CIFAR-sized network on a phone; cut 0 uploads the input, cut 12 is device-only.
CLOUD_ONLY = ev(0, "float32", 0.0002, 0.0040, 12_288)
INPUT_8BIT = ev(0, "8", 0.0004, 0.0041, 3_072, 0.918)
MID_FLOAT = ev(3, "float32", 0.008, 0.0030, 65_536)
MID_4BIT = ev(3, "4", 0.009, 0.0031, 6_000, 0.915, granularity="channel", layout="bitplane", codec="zstd")
LATE_8BIT = ev(9, "8", 0.024, 0.0006, 4_096, 0.919)
LATE_2BIT = ev(10, "2", 0.027, 0.0002, 16, 0.911)
DEVICE_ONLY = ev(12, "float32", 0.030, 0.0, 0)
#: Fewest bytes of all offloading configurations, but 32 points below the float model.
OVER_BUDGET = ev(0, "1", 0.0004, 0.0041, 384, 0.60, granularity="channel")
ALL = [CLOUD_ONLY, INPUT_8BIT, MID_FLOAT, MID_4BIT, LATE_8BIT, LATE_2BIT, DEVICE_ONLY, OVER_BUDGET]

FAST = Conditions(100 * MBIT, 0.005)
TEN = Conditions(10 * MBIT, 0.005)
SLOW = Conditions(0.5 * MBIT, 0.005)


def selector(policy=None, candidates=ALL, **options) -> Selector:
    return Selector(
        candidates, policy or LowestLatency(), accuracy_baseline=BASELINE, accuracy_budget=BUDGET, **options
    )


def latency(e: Evaluation, c: Conditions) -> float:
    """The cost model, written out independently of the selector's matrix form."""
    device = e.device_s * c.device_load
    if e.bytes == 0 and e.cloud_s == 0:
        return device
    return device + e.bytes / c.bandwidth + c.rtt_s + e.cloud_s * c.cloud_load


def bottleneck(e: Evaluation, c: Conditions) -> float:
    return max(e.device_s * c.device_load, e.bytes / c.bandwidth, e.cloud_s * c.cloud_load)


# --- cost model and lowest latency ---------------------------------------------------------


def test_high_bandwidth_offloads_the_input_low_bandwidth_keeps_work_on_the_device():
    # 100 Mbit/s: input at 8 bits 0.4 + 0.25 + 5 + 4.1 ms = 9.7 ms beats cloud-only 10.2 ms
    # and device-only 30 ms (the 1-bit input, 9.5 ms, is over budget).
    assert selector().select(FAST).evaluation == INPUT_8BIT
    # 0.5 Mbit/s: the 3 KB input alone takes 49 ms; device-only (30 ms) beats the 16-byte
    # late cut (27 + 0.3 + 5 + 0.2 ms) because of the 5 ms round trip...
    assert selector().select(SLOW).evaluation == DEVICE_ONLY
    # ...and with a 1 ms round trip the late cut wins (28.5 ms).
    assert selector().select(Conditions(0.5 * MBIT, 0.001)).evaluation == LATE_2BIT


def test_decision_carries_the_predicted_latency_and_throughput():
    decision = selector().select(TEN)
    assert decision.evaluation == INPUT_8BIT and decision.policy == "LowestLatency" and decision.note == ""
    assert decision.latency_s == pytest.approx(0.0004 + 3_072 / (10 * MBIT) + 0.005 + 0.0041)
    assert decision.throughput_rps == pytest.approx(1 / 0.0041)  # the cloud stage is the slowest
    assert predict(DEVICE_ONLY, TEN) == pytest.approx((0.030, 1 / 0.030))  # no round trip, no link


def test_lowest_latency_and_highest_throughput_match_the_oracle_on_random_sets():
    rng = np.random.default_rng(0)
    for _ in range(200):
        candidates = [ev(i, "8", *rng.uniform(0.0, 0.05, 2), rng.uniform(0, 1e5)) for i in range(20)]
        candidates.append(ev(99, "float32", rng.uniform(0.001, 0.1), 0.0, 0))
        c = Conditions(10 ** rng.uniform(4, 8), rng.uniform(0, 0.2), *rng.uniform(0.5, 3, 2))
        fastest = selector(LowestLatency(), candidates, switch_margin=0.0).select(c)
        assert fastest.latency_s == pytest.approx(min(latency(e, c) for e in candidates))
        assert fastest.latency_s == pytest.approx(latency(fastest.evaluation, c))
        busiest = selector(HighestThroughput(), candidates, switch_margin=0.0).select(c)
        # the slowest stage, or the latency over the requests in flight (Little's law)
        window = HighestThroughput().max_in_flight

        def score(e: Evaluation) -> float:
            return max(bottleneck(e, c), latency(e, c) / window)

        assert score(busiest.evaluation) == pytest.approx(min(score(e) for e in candidates))
        assert 1 / busiest.throughput_rps == pytest.approx(bottleneck(busiest.evaluation, c))


def test_highest_throughput_looks_past_a_round_trip_the_window_covers_and_follows_the_cloud_load():
    far = Conditions(10 * MBIT, 0.2)
    assert selector().select(far).evaluation == DEVICE_ONLY  # 30 ms vs 209.5 ms
    # slowest stage: cloud 4.1 ms; 8 requests in flight cover the 0.2 s round trip
    assert selector(HighestThroughput()).select(far).evaluation == INPUT_8BIT
    # A cloud 4x slower than profiled: input at 8 bits 16.4 ms, cloud-only 16 ms, the
    # mid cut max(9, 4.8, 12.4) = 12.4 ms.
    busy_cloud = Conditions(10 * MBIT, 0.005, cloud_load=4.0)
    assert selector(HighestThroughput()).select(busy_cloud).evaluation == MID_4BIT


def test_device_load_moves_work_to_the_cloud():
    # At 0.5 Mbit/s device-only wins (above); a device 3x slower makes it 90 ms, so
    # uploading the 8-bit input (0.4*3 + 49.2 + 5 + 4.1 = 59.5 ms) wins.
    assert selector().select(Conditions(0.5 * MBIT, 0.005, device_load=3.0)).evaluation == INPUT_8BIT


# --- accuracy budget --------------------------------------------------------------------


def test_the_accuracy_budget_is_respected():
    # At 0.5 Mbit/s the 1-bit input would take 0.4 + 6.1 + 5 + 4.1 = 15.6 ms, half of device-only.
    assert latency(OVER_BUDGET, SLOW) < latency(DEVICE_ONLY, SLOW)
    for policy in (LowestLatency(), HighestThroughput(), Onloading(0.02)):
        assert OVER_BUDGET not in selector(policy).candidates.evaluations
    assert selector().select(SLOW).evaluation == DEVICE_ONLY
    lax = Selector(ALL, LowestLatency(), accuracy_baseline=BASELINE, accuracy_budget=40.0)
    assert lax.select(SLOW).evaluation == OVER_BUDGET


def test_a_loss_of_exactly_the_budget_is_within_it():
    # 0.92 - 0.91 = 1.0000000000000009 points in floats; rounded as the search rounds it.
    exactly = ev(5, "4", 0.01, 0.001, 100, 0.91)
    assert exactly in selector(candidates=[exactly, DEVICE_ONLY]).candidates.evaluations


# --- onloading --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bound_s, expected",
    [
        (0.031, DEVICE_ONLY),  # device-only (30 ms) meets it and uses no cloud at all
        (0.025, MID_4BIT),  # meeting it: 8-bit input 12 ms, cloud-only 19 ms, mid cut 21.9 ms; least cloud 3.1 ms
        (0.015, INPUT_8BIT),  # only the 8-bit input (12 ms) meets it
    ],
)
def test_onloading_picks_the_least_cloud_compute_that_meets_the_bound(bound_s, expected):
    decision = selector(Onloading(bound_s, headroom=0.0)).select(TEN)
    assert decision.evaluation == expected and decision.note == ""
    assert decision.latency_s <= bound_s


def test_onloading_aims_inside_its_bound_by_the_headroom():
    """With headroom h it takes the least cloud among those predicted within (1 - h) x the
    bound; only when none is does it settle for the bound itself."""
    bound = 0.031
    s = selector(Onloading(bound, headroom=0.3))
    latency = [(e, predict(e, TEN)[0]) for e in s.candidates.evaluations]
    inside = [e for e, t in latency if t <= 0.7 * bound]
    assert inside and any(0.7 * bound < t <= bound for _, t in latency)  # the headroom matters here
    decision = s.select(TEN)
    assert decision.evaluation == min(inside, key=lambda e: e.cloud_s) and decision.evaluation != DEVICE_ONLY
    # 8-bit input (12 ms) is the only one within 0.025; none within 0.7 x 0.016 = 11.2 ms
    assert selector(Onloading(0.016, headroom=0.3)).select(TEN).evaluation == INPUT_8BIT


def test_onloading_falls_back_to_the_lowest_latency_and_says_so():
    decision = selector(Onloading(0.005)).select(TEN)
    assert decision.evaluation == INPUT_8BIT
    assert "no configuration meets the 5 ms bound" in decision.note and "lowest latency" in decision.note


# --- fixed comparison policies ----------------------------------------------------------


@pytest.mark.parametrize(
    "policy, fast, slow",
    [
        (DeviceOnly(), DEVICE_ONLY, DEVICE_ONLY),
        (CloudOnly(), CLOUD_ONLY, CLOUD_ONLY),
        (Neurosurgeon(), CLOUD_ONLY, DEVICE_ONLY),  # float32 cuts only: never the quantised input
        (Fixed8Bit(), INPUT_8BIT, DEVICE_ONLY),  # 8-bit cuts (or device-only): never the 4-bit mid cut
    ],
)
def test_fixed_policies_choose_within_their_kind(policy, fast, slow):
    assert selector(policy).select(TEN).evaluation == fast
    assert selector(policy).select(SLOW).evaluation == slow


def test_fixed_policies_admit_only_their_kind():
    def admitted(policy) -> list[Evaluation]:
        return list(selector(policy).candidates.evaluations)

    assert admitted(Neurosurgeon()) == [CLOUD_ONLY, MID_FLOAT, DEVICE_ONLY]
    assert admitted(Fixed8Bit()) == [INPUT_8BIT, LATE_8BIT, DEVICE_ONLY]


def test_fixed_policies_need_their_configurations():
    # A Pareto set without the float32 input: cloud-only cannot be compared.
    with pytest.raises(InputError, match="CloudOnly admits none.*all the search's evaluations"):
        selector(CloudOnly(), [INPUT_8BIT, DEVICE_ONLY])


def test_make_policy_by_name():
    assert isinstance(make_policy("neurosurgeon"), Neurosurgeon)
    assert make_policy("onloading", latency_bound_s=0.1).latency_bound_s == 0.1
    assert selector(make_policy("onloading", latency_bound_s=0.1)).select(TEN).evaluation == DEVICE_ONLY


# --- estimates: steps, noise, bad samples ---------------------------------------------------


def test_priors_before_any_observation_and_the_first_sample_replaces_them():
    estimator = LinkEstimator()
    assert estimator.conditions() == Conditions(PRIOR_BANDWIDTH, PRIOR_RTT_S, 1.0, 1.0)
    estimator.observe_transfer(30_000, 0.1, rtt_s=0.08)
    estimator.observe_device(0.02, 0.01)
    assert estimator.conditions() == Conditions(300_000, 0.08, 2.0, 1.0)


@pytest.mark.parametrize("before, after", [(10.0, 0.5), (0.5, 10.0)])
def test_the_bandwidth_estimate_follows_a_step_in_three_samples(before, after):
    estimator = LinkEstimator()
    for _ in range(10):
        estimator.observe_transfer(before * MBIT, 1.0)
    for _ in range(2):
        estimator.observe_transfer(after * MBIT, 1.0)
    assert estimator.conditions().bandwidth == pytest.approx(before * MBIT)  # a blip is ignored...
    estimator.observe_transfer(after * MBIT, 1.0)
    assert estimator.conditions().bandwidth == pytest.approx(after * MBIT)  # ...a step is followed


def test_a_padded_ping_after_a_slow_link_counts_against_its_own_round_trip():
    """The round-trip median still holds a slow link's 200 ms; a probe on the now fast link
    (empty ping 20 ms, 8 KB padded ping 25 ms) samples 5 ms of transfer, not a negative."""
    estimator = LinkEstimator()
    for _ in range(5):
        estimator.observe_rtt(0.2)
    assert estimator.observe_padded_ping(0.02, 8_000, 0.025)
    assert estimator.conditions().rtt_s == pytest.approx(0.2)
    assert not estimator.observe_padded_ping(0.02, 8_000, 0.015)  # faster than its own ping: no sample


def replay(sel: Selector, estimator: LinkEstimator, bandwidths, rng, sigma: float) -> list[Evaluation]:
    """One request per bandwidth: choose, then observe the chosen frame's transfer (a
    3 KB probe while device-only) at that bandwidth with lognormal noise."""
    chosen = []
    for bandwidth in bandwidths:
        e = sel.select(estimator.conditions()).evaluation
        chosen.append(e)
        sent = e.bytes or 3_072
        estimator.observe_transfer(sent, sent / bandwidth * math.exp(rng.normal(0, sigma)), rtt_s=0.005)
    return chosen


def test_after_a_bandwidth_step_the_selector_switches_within_five_requests():
    rng = np.random.default_rng(0)
    new_best = selector(switch_margin=0.0).select(Conditions(0.5 * MBIT, 0.005)).evaluation
    assert new_best == DEVICE_ONLY
    for _ in range(50):
        chosen = replay(selector(), LinkEstimator(), [10 * MBIT] * 20 + [0.5 * MBIT] * 20, rng, sigma=0.2)
        assert chosen[19] == INPUT_8BIT  # the best at 10 Mbit/s
        assert new_best in chosen[20:25]
        assert all(e == new_best for e in chosen[chosen.index(new_best, 20) :])


def count_switches(chosen: list[Evaluation]) -> int:
    return sum(a != b for a, b in zip(chosen, chosen[1:]))


def test_noise_around_a_constant_bandwidth_does_not_make_it_flap():
    # 2 Mbit/s is two-thirds above the 1.2 Mbit/s where device-only overtakes the 8-bit
    # input; samples vary by sigma 0.3 (log) and 2 % of them come out 10x too slow.
    def run(sel: Selector, estimator: LinkEstimator) -> int:
        rng = np.random.default_rng(1)
        chosen = []
        for _ in range(1_000):
            e = sel.select(estimator.conditions()).evaluation
            chosen.append(e)
            noise = math.exp(rng.normal(0, 0.3)) * (10.0 if rng.random() < 0.02 else 1.0)
            estimator.observe_transfer(3_072, 3_072 / (2 * MBIT) * noise, rtt_s=0.005)
        return count_switches(chosen)

    assert run(selector(), LinkEstimator()) <= 2
    # The same replay with no window and no margin flaps: the test can tell.
    assert run(selector(switch_margin=0.0), LinkEstimator(window=1)) > 50


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.observe_transfer(1_000, 0.0),
        lambda e: e.observe_transfer(1_000, -0.1),
        lambda e: e.observe_transfer(0, 0.1),
        lambda e: e.observe_transfer(1_000, math.nan),
        lambda e: e.observe_rtt(-0.01),
        lambda e: e.observe_device(0.0, 0.01),
        lambda e: e.observe_cloud(0.01, 0.0),
        lambda e: e.observe_cloud(math.inf, 0.01),
    ],
)
def test_zero_negative_or_non_finite_samples_are_errors(call):
    with pytest.raises(InputError, match="must be a finite number"):
        call(LinkEstimator())


def test_absurd_samples_are_clamped():
    estimator = LinkEstimator()
    estimator.observe_device(1e3, 1e-3)
    estimator.observe_cloud(1e-9, 1.0)
    assert (estimator.conditions().device_load, estimator.conditions().cloud_load) == (LOAD_LIMITS[1], LOAD_LIMITS[0])


def test_loads_are_smoothed():
    estimator = LinkEstimator(load_alpha=0.5)
    estimator.observe_cloud(0.01, 0.01)
    estimator.observe_cloud(0.03, 0.01)
    assert estimator.conditions().cloud_load == pytest.approx(2.0)


# --- bad inputs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: selector(candidates=[]), "at least one candidate"),
        (lambda: selector(candidates=[OVER_BUDGET]), "no candidate is within the accuracy budget of 1.0 points"),
        (lambda: selector("lowest-latency"), "policy must be a Policy"),
        (lambda: selector(switch_margin=1.5), "switch_margin"),
        (lambda: selector(candidates=[ev(1, "8", -0.01, 0.0, 10)]), "finite and >= 0"),
        (lambda: selector(candidates=[CLOUD_ONLY.to_dict()]), "Evaluation objects"),
        (lambda: Selector(ALL, LowestLatency(), accuracy_baseline=92.0, accuracy_budget=1.0), "fraction"),
        (lambda: Selector(ALL, LowestLatency(), accuracy_baseline=0.92, accuracy_budget=-1.0), ">= 0"),
        (lambda: make_policy("fastest"), "unknown policy 'fastest'"),
        (lambda: make_policy("onloading"), "bad options"),
        (lambda: make_policy("lowest-latency", latency_bound_s=0.1), "bad options"),
        (lambda: make_policy("onloading", latency_bound_s=-1.0), "latency_bound_s must be"),
        (lambda: Onloading("fast"), "latency_bound_s must be"),
        (lambda: Onloading(0.1, headroom=1.0), "headroom must be a fraction"),
        (lambda: Conditions(0.0, 0.01), "bandwidth must be"),
        (lambda: Selector.from_manifest({"name": "m"}, LowestLatency()), "no search results"),
        (lambda: Selector.from_manifest({"search": {"pareto": []}}, LowestLatency()), "incomplete or malformed"),
    ],
)
def test_bad_inputs_are_input_errors(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_from_manifest_reads_the_pareto_set_baseline_and_budget():
    manifest = {
        "search": {"pareto": [e.to_dict() for e in ALL], "baseline_accuracy": BASELINE, "accuracy_budget": BUDGET}
    }
    sel = Selector.from_manifest(manifest, LowestLatency())
    assert OVER_BUDGET not in sel.candidates.evaluations and sel.select(FAST).evaluation == INPUT_8BIT


# --- real uplink traces -----------------------------------------------------------------

TRACES = ("ATT-LTE-driving-2016.up", "TMobile-UMTS-driving.up", "Verizon-EVDO-driving.up", "Verizon-LTE-short.up")
#: Mean uplink throughput, Mbit/s, from ../shared/data/README.md.
TRACE_MEANS = {
    "ATT-LTE-driving-2016.up": 1.89,
    "TMobile-UMTS-driving.up": 0.94,
    "Verizon-EVDO-driving.up": 0.84,
    "Verizon-LTE-short.up": 5.95,
}


def trace(name: str) -> UplinkTrace:
    return UplinkTrace.read(shared_data("traces", "mahimahi_cellular", name))


@pytest.mark.parametrize("name", TRACES)
def test_trace_reader_reproduces_the_documented_mean_uplink(name):
    # The README's means divide by the seconds the timestamps touch (121 for ATT's
    # 120.002 s, so 1.894); whole seconds here (1.910), so within 1.5 %.
    assert trace(name).throughput_per_second().mean() * 8 / 1e6 == pytest.approx(TRACE_MEANS[name], rel=0.015)


def test_transfer_times_follow_the_delivery_opportunities(tmp_path):
    path = tmp_path / "one_per_ms.up"
    path.write_text("\n".join(str(ms) for ms in range(1, 101)) + "\n")  # 12 Mbit/s, looping every 100 ms
    t = UplinkTrace.read(path)
    assert t.transfer_seconds(0.0, 15_000) == pytest.approx(0.011)  # 10 packets: ms 1..10, done at 11 ms
    assert t.transfer_seconds(0.0, 1) == pytest.approx(0.002)  # never 0 s
    assert t.transfer_seconds(0.095, 15_000) == pytest.approx(0.010)  # ms 95..100, then 101..104 (next loop)
    assert t.transfer_seconds(0.2955, 1_500) == pytest.approx(0.0015)  # third loop: ms 296, done at 297
    assert t.throughput_per_second().tolist() == []  # no whole second in a 100 ms trace


@pytest.mark.parametrize("text", ["", "5\n3\n", "1\nx\n", "0\n"])
def test_bad_traces_are_input_errors(tmp_path, text):
    path = tmp_path / "bad.up"
    path.write_text(text)
    with pytest.raises(InputError, match="mahimahi trace"):
        UplinkTrace.read(path)


@pytest.mark.parametrize("name", TRACES)
def test_the_estimator_tracks_a_real_uplink(name):
    """20 KB frames back to back (10 ms apart): after each, the estimate against the
    throughput of the second the frame ended in. Bound: median error under 1.32x and at
    least 85 % of requests within 2x. Measured: median 1.06x (UMTS) to 1.29x (ATT LTE,
    the burstiest), 89-98 % within 2x; the previous second's throughput, known exactly,
    would be within 2x only 80-92 % of the time."""
    t = trace(name)
    truth, estimator, now, errors = t.throughput_per_second(), LinkEstimator(), 0.0, []
    while (second := int(now)) < len(truth):
        if truth[second] > 0:
            errors.append(abs(math.log2(estimator.conditions().bandwidth / truth[second])))
        seconds = t.transfer_seconds(now, 20_000)
        estimator.observe_transfer(20_000, seconds)
        now += seconds + 0.01
    errors = np.array(errors)
    assert len(errors) > 1_000
    assert np.median(errors) <= 0.4
    assert np.mean(errors < 1.0) >= 0.85
