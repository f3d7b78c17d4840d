"""The selector follows a bandwidth trace live: a device client talks to a loopback cloud
server through the user-space link shaper, the shaper's uplink steps between two
segments of real mahimahi uplink traces (and, second, between two constant rates), and
after each step the client's lowest-latency decision must reach the configuration that
is best under the new link within 5 requests, for a drop and for a rise, and keep it.

Why an emulated device. On loopback the device and the cloud are the same CPU (resnet20
takes ~0.6 ms on either), so running everything on the device beats any offload by the
round trip at every rate, and without device-only cut 0 beats cut 6 below ~1 GB/s: with
the host's own times nothing would ever switch. DynO's question only arises when the
device is slower than the cloud, so the client's device runs as a low-end phone CPU
would: each request's device part (the segments before the cut and the frame, or the
whole network) takes the host's profiled time of that configuration times the factor
(~85x) that makes the whole network take :data:`DEVICE_ONLY_S` (50 ms): the real work,
then a sleep for the difference. The candidates' profiled device times are scaled by the
same factor, so the client's device-load estimate stays near 1, as for a device profiled
on itself. The candidates are the fixture's Pareto set (its 10-evaluation search kept
cut 0 and cut 6 at float32 within the 1-point budget) plus device-only, which a longer
search always keeps (no bytes, no cloud time): its device time is the sum of the search's
measured device segment times, its accuracy the float model's.

The link: 10 ms one-way delay (20 ms round trip). High: the 3 s of Verizon-LTE-short.up
from 19 s (1.49 MB/s, the trace's fastest 3 s); low: the 3 s of TMobile-UMTS-driving.up
from 83 s (39 kB/s, no gap between delivery opportunities over 90 ms); each replayed
looping. The cost model (``predict``) puts cut 0 at 32 ms against device-only's 50 ms
(cut 6: 74 ms) on the LTE segment, and device-only at 50 ms against cut 0's 340 ms on the
3G one; at the constant 4 MB/s and 40 kB/s, 27 vs 50 ms and 50 vs 332 ms. Each link has
one best configuration, with no other within the selector's 10 % switch margin.

Counting requests: the app sends one request every :data:`REQUEST_PERIOD_S` (200 ms,
5 requests/s) or, when one takes longer, as soon as it returns. After a drop the slow
frames themselves measure the uplink: 3 requests (the third low sample moves the
windowed median; ~1.2 s of 0.4-0.6 s requests). After a rise while device-only is chosen
nothing is sent, so the prober's padded pings (every :data:`PROBE_EVERY_S`, 8 KiB) supply
the samples: the old link drains its last ping (up to ~0.2 s), then the bandwidth and
round-trip medians need 3 fresh samples each, ~0.1 s apart: 0.4-0.8 s measured, i.e.
2-4 requests at 5 requests/s. At 10 requests/s the same 0.4-0.9 s is 4-10 requests, so
the 5-request bound for a rise assumes 5 requests/s or fewer (or faster probing).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import shared_data
from dyno_compile.artifact.load import Artifact, load_artifact
from dyno_compile.configs import Config, Evaluation
from dyno_compile.datasets.cifar10 import load_test
from dyno_compile.evaluate.emulate import emulate_device, emulated_artifact, sleep_until
from dyno_compile.evaluate.shaper import LinkShaper
from dyno_compile.runtime.client import DeviceClient, Result
from dyno_compile.runtime.engine import CloudEngine
from dyno_compile.runtime.link import PACKET_BYTES, Conditions, LinkEstimator, UplinkTrace
from dyno_compile.runtime.selector import DEFAULT_SWITCH_MARGIN, predict
from dyno_compile.runtime.server import CloudServer

#: The emulated device's time for the whole network (a low-end phone CPU on resnet20).
DEVICE_ONLY_S = 0.050
ONE_WAY_DELAY_S = 0.010
#: Real uplink segments: (trace file, start second, seconds), replayed looping.
HIGH_SEGMENT = ("Verizon-LTE-short.up", 19, 3)
LOW_SEGMENT = ("TMobile-UMTS-driving.up", 83, 3)
#: Constant rates for the second test: a fast LTE uplink and a slow 3G one (bytes/s).
HIGH_RATE = 4_000_000.0
LOW_RATE = 40_000.0
REQUEST_PERIOD_S = 0.2
PROBE_EVERY_S = 0.05
#: Padded pings of 8 KiB: a sample of ~6 packets, 0.2 s on the 3G segment (under the
#: prober's 1 s ping timeout even through its slowest stretch).
PROBE_BYTES = 8192
FOLLOW_WITHIN = 5
#: Requests after the switch that must keep the new choice (no flapping back).
HOLD = 5
#: Requests the client may take to settle on the first link from its priors.
SETTLE_WITHIN = 40


# --- the link ------------------------------------------------------------------------------


def trace_segment(name: str, start_s: int, seconds: int) -> UplinkTrace:
    """``seconds`` of a real mahimahi uplink from ``start_s``, as a trace that loops them."""
    full = UplinkTrace.read(shared_data("traces", "mahimahi_cellular", name))
    stamps = full.opportunities_ms
    begin, end = 1000 * start_s, 1000 * (start_s + seconds)
    inside = stamps[(stamps >= begin) & (stamps < end)] - begin
    return UplinkTrace(f"{name}[{start_s}s+{seconds}s]", inside, 1000 * seconds)


def mean_rate(uplink: UplinkTrace | float) -> float:
    """Bytes/s the uplink delivers on average (over one period of a trace)."""
    if isinstance(uplink, UplinkTrace):
        return uplink.opportunities_ms.size * PACKET_BYTES / (uplink.period_ms / 1000.0)
    return float(uplink)


def true_conditions(uplink: UplinkTrace | float) -> Conditions:
    return Conditions(mean_rate(uplink), 2 * ONE_WAY_DELAY_S)


# --- the emulated device --------------------------------------------------------------------


def emulated_client(artifact: Artifact, endpoint: str) -> DeviceClient:
    """A lowest-latency client on the emulated device."""
    return emulate_device(
        DeviceClient(
            artifact,
            [endpoint],
            policy="lowest-latency",
            probe_every_s=PROBE_EVERY_S,
            probe_bytes=PROBE_BYTES,
            link=LinkEstimator(),
        )
    )


# --- what counts as following -----------------------------------------------------------------


def acceptable(evaluations: list[Evaluation], conditions: Conditions) -> set[Config]:
    """The best configuration under ``conditions`` and any within the selector's switch
    margin of its predicted latency (the selector may rightly keep one of those)."""
    latency = {e.config: predict(e, conditions)[0] for e in evaluations}
    best = min(latency.values())
    return {c for c, s in latency.items() if s <= best * (1.0 + DEFAULT_SWITCH_MARGIN)}


class Requests:
    """Sends real CIFAR-10 test images at a steady rate and keeps a log for failures."""

    def __init__(self, client: DeviceClient) -> None:
        self.client = client
        self.images, _ = load_test(limit=64)
        self.sent = 0
        self.log: list[str] = []
        self._next_at = time.perf_counter()

    def one(self) -> Result:
        sleep_until(self._next_at)
        self._next_at = max(self._next_at + REQUEST_PERIOD_S, time.perf_counter())
        result = self.client.run(self.images[self.sent % len(self.images)][None])
        self.sent += 1
        c = self.client.link.conditions()
        self.log.append(
            f"{self.sent:3d} {result.decision.evaluation.config.label:40s} {result.where:8s} "
            f"{1e3 * result.latency_s:7.1f} ms  estimate {c.bandwidth / 1e3:8.1f} kB/s "
            f"rtt {1e3 * c.rtt_s:6.1f} ms device x{c.device_load:.2f} cloud x{c.cloud_load:.2f}"
        )
        return result

    def note(self, text: str) -> None:
        self.log.append(f"--- {text}")

    def follow(self, target: set[Config], within: int) -> int:
        """Requests until the decision is in ``target`` (1 = the first after the step),
        then :data:`HOLD` more that must stay in it; fails beyond ``within``."""
        for k in range(1, within + 1):  # noqa: B007 - k is returned after the loop
            if self.one().decision.evaluation.config in target:
                break
        else:
            pytest.fail(f"no switch to {_labels(target)} within {within} requests:\n" + "\n".join(self.log))
        for _ in range(HOLD):
            config = self.one().decision.evaluation.config
            assert config in target, f"left {_labels(target)} after switching:\n" + "\n".join(self.log)
        return k


def _labels(configs: set[Config]) -> str:
    return ", ".join(sorted(c.label for c in configs))


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(searched_resnet20: Path) -> Iterator[tuple[str, int]]:
    """The fixture artifact's cloud half on loopback (its own copy of the artifact)."""
    artifact = load_artifact(searched_resnet20)
    server = CloudServer(CloudEngine(artifact))
    server.start()
    with DeviceClient(
        artifact,
        [server.endpoint],
        policy="pinned",  # warm the server's VM up
        policy_options={"config": artifact.manifest["search"]["pareto"][0]["config"]},
    ) as warm:
        for x in load_test(limit=3)[0]:
            assert warm.run(x[None]).where == "cloud"
    yield ("127.0.0.1", server.port)
    server.stop(grace_s=0)


@pytest.fixture(scope="module")
def device_artifact(searched_resnet20: Path) -> Artifact:
    artifact, factor = emulated_artifact(load_artifact(searched_resnet20), DEVICE_ONLY_S)
    assert factor > 10, (
        f"the search profiled resnet20 at {1e3 * DEVICE_ONLY_S / factor:.1f} ms on the device: "
        "this host was too busy to emulate a device much slower than itself"
    )
    return artifact


LINKS = {
    "real-trace": lambda: (trace_segment(*HIGH_SEGMENT), trace_segment(*LOW_SEGMENT)),
    "constant-rate": lambda: (HIGH_RATE, LOW_RATE),
}


@pytest.mark.parametrize("link", sorted(LINKS))
def test_selector_follows_a_step_within_5_requests(link, served, device_artifact) -> None:
    high, low = LINKS[link]()
    if isinstance(high, UplinkTrace):  # the segments are what the docstring says
        assert 1.3e6 < mean_rate(high) < 1.6e6 and 30e3 < mean_rate(low) < 50e3
    with LinkShaper(served, uplink=high, one_way_delay_s=ONE_WAY_DELAY_S) as shaper:
        host, port = shaper.address
        with emulated_client(device_artifact, f"grpc://{host}:{port}") as client:
            candidates = list(client.selector.candidates.evaluations)
            fast, slow = acceptable(candidates, true_conditions(high)), acceptable(candidates, true_conditions(low))
            assert not fast & slow, "the two links must have different best configurations"
            device_only = device_artifact.manifest["search"]["space"]["device_only_cut"]
            assert {c.cut for c in slow} == {device_only} and device_only not in {c.cut for c in fast}
            requests = Requests(client)
            requests.note(f"uplink {mean_rate(high) / 1e3:.0f} kB/s; best {_labels(fast)}")
            requests.follow(fast, SETTLE_WITHIN)

            requests.note(f"drop to {mean_rate(low) / 1e3:.0f} kB/s; best {_labels(slow)}")
            shaper.set_uplink(low)
            drop = requests.follow(slow, FOLLOW_WITHIN)

            requests.note(f"rise to {mean_rate(high) / 1e3:.0f} kB/s; best {_labels(fast)}")
            shaper.set_uplink(high)
            rise = requests.follow(fast, FOLLOW_WITHIN)
    print(f"\n{link}: followed the drop in {drop} and the rise in {rise} requests\n" + "\n".join(requests.log))
