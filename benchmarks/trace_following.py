"""How a live client follows real uplink traces: switches, and requests to follow each large step.

A loopback cloud server, the user-space link shaper replaying a window of a real mahimahi
uplink trace (``../shared/data/traces/mahimahi_cellular``, ``--one-way-ms`` of delay each
way), and one lowest-latency :class:`~dyno_compile.runtime.client.DeviceClient` sending a
real CIFAR-10 test image every ``--period`` seconds (or as soon as the previous returns).

The device is emulated as a slower CPU than this host, as in
``tests/test_trace_following.py`` (which explains why: on loopback the device and the
cloud are the same CPU, so device-only would always win and nothing would switch): each
configuration's device part takes its profiled host time times the factor that makes
the whole network take ``--device-ms``, and the candidates' device times are scaled alike.
The candidates are the artifact's Pareto set plus device-only (no bytes, no cloud time,
device time from the search's measured profile).

The oracle: for each second of the trace, the configuration the cost model (``predict``)
ranks best under that second's real throughput and the emulated round trip. A *large
step* is a second where the oracle's choice changes, the throughput of the two seconds
after differs from the two seconds before by at least ``--step-ratio``, and the new choice
holds at least two seconds. Requests to follow: counting from the first request sent in
that second, the one whose decision is the new best or within the selector's switch
margin of it under the mean throughput of the run the new choice holds for ("-" when the
run ends first). Printed per trace: requests and where they ran, the client's switches
against the oracle's, each large step, and the mean measured latency beside the mean
latency the cost model predicts for the oracle's choices.

    .venv/bin/python benchmarks/trace_following.py                     # builds resnet20 first (~45 s)
    .venv/bin/python benchmarks/trace_following.py --artifact out/resnet20 --trace Verizon-LTE-short.up:0:140
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from dyno_compile.artifact.load import Artifact, load_artifact
from dyno_compile.configs import Config, Evaluation
from dyno_compile.datasets import data_root
from dyno_compile.datasets.cifar10 import load_test
from dyno_compile.evaluate.emulate import emulate_device, emulated_artifact
from dyno_compile.evaluate.shaper import LinkShaper
from dyno_compile.runtime.client import DeviceClient
from dyno_compile.runtime.engine import CloudEngine
from dyno_compile.runtime.link import BANDWIDTH_LIMITS, PACKET_BYTES, Conditions, LinkEstimator, UplinkTrace
from dyno_compile.runtime.selector import DEFAULT_SWITCH_MARGIN, is_device_only, predict
from dyno_compile.runtime.server import CloudServer

#: Two real LTE uplinks: Verizon from 10 s (1 MB/s falling to 0.24-0.37 MB/s at 14-17 s,
#: back to 1-1.6 MB/s, down to 0.1-0.4 MB/s from 38 s) and AT&T from its start (bursts to
#: 1.6 MB/s between near-outages of 0-18 kB/s, then 0.1-0.2 MB/s from 14 s). With the
#: ~45 s build, the default run takes under 2 minutes.
DEFAULT_TRACES = ("Verizon-LTE-short.up:10:30", "ATT-LTE-driving-2016.up:0:20")
HOLD_S = 2


def _parse() -> argparse.Namespace:
    from served_artifact import add_artifact_option

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_artifact_option(p)
    p.add_argument(
        "--trace",
        action="append",
        metavar="FILE[:START_S[:SECONDS]]",
        help=f"a mahimahi uplink in the shared traces and the window to replay; repeatable "
        f"(default: {' '.join(DEFAULT_TRACES)})",
    )
    p.add_argument("--device-ms", type=float, default=50.0, help="the emulated device's time for the whole network")
    p.add_argument("--one-way-ms", type=float, default=10.0, help="propagation delay each way (default 10)")
    p.add_argument("--period", type=float, default=0.2, help="seconds between requests (default 0.2: 5/s)")
    p.add_argument("--probe-every", type=float, default=0.05, help="the client's probe interval, s (default 0.05)")
    p.add_argument("--probe-bytes", type=int, default=8192, help="padded ping size (default 8192)")
    p.add_argument("--step-ratio", type=float, default=2.0, help="throughput change that makes a step large")
    p.add_argument("--verbose", action="store_true", help="print every request")
    args = p.parse_args()
    args.trace = args.trace or list(DEFAULT_TRACES)
    return args


# --- the trace window and the emulated device (as in tests/test_trace_following.py) ----------


def trace_window(spec: str) -> UplinkTrace:
    name, *rest = spec.split(":")
    full = UplinkTrace.read(data_root() / "traces" / "mahimahi_cellular" / name)
    start = int(rest[0]) if rest else 0
    seconds = int(rest[1]) if len(rest) > 1 else full.period_ms // 1000 - start
    if not 0 <= start < start + seconds <= full.period_ms // 1000:
        sys.exit(f"{spec}: the window must lie within the trace's {full.period_ms // 1000} s")
    stamps = full.opportunities_ms
    inside = stamps[(stamps >= 1000 * start) & (stamps < 1000 * (start + seconds))] - 1000 * start
    return UplinkTrace(f"{name}[{start}-{start + seconds} s]", inside, 1000 * seconds)


def client_for(artifact: Artifact, endpoint: str, args: argparse.Namespace) -> DeviceClient:
    return emulate_device(
        DeviceClient(
            artifact,
            [endpoint],
            policy="lowest-latency",
            probe_every_s=args.probe_every,
            probe_bytes=args.probe_bytes,
            link=LinkEstimator(),
        )
    )


# --- replay and analysis ---------------------------------------------------------------------


@dataclass
class Request:
    at_s: float  # trace time the request started
    config: Config
    where: str
    latency_s: float


def replay(
    target: tuple[str, int], artifact: Artifact, trace: UplinkTrace, images: np.ndarray, args: argparse.Namespace
) -> list[Request]:
    seconds = trace.period_ms / 1000.0
    log: list[Request] = []
    with LinkShaper(target, uplink=None, one_way_delay_s=args.one_way_ms / 1e3) as shaper:
        host, port = shaper.address
        with client_for(artifact, f"grpc://{host}:{port}", args) as client:
            shaper.set_uplink(trace)
            origin = shaper.uplink_origin
            next_at = time.monotonic()
            while (now := time.monotonic()) - origin < seconds:
                if now < next_at:
                    time.sleep(next_at - now)
                next_at = max(next_at + args.period, time.monotonic())
                at = time.monotonic() - origin
                result = client.run(images[len(log) % len(images)][None])
                log.append(Request(at, result.decision.evaluation.config, result.where, result.latency_s))
                if args.verbose:
                    c = client.link.conditions()
                    print(
                        f"  {at:6.2f} s {result.decision.evaluation.config.label:36s} {result.where:8s} "
                        f"{1e3 * result.latency_s:7.1f} ms  estimate {c.bandwidth / 1e3:7.0f} kB/s "
                        f"rtt {1e3 * c.rtt_s:5.1f} ms",
                        flush=True,
                    )
    return log


def latencies(evaluations: list[Evaluation], bandwidth: float, rtt_s: float) -> dict[Config, float]:
    conditions = Conditions(max(bandwidth, BANDWIDTH_LIMITS[0]), rtt_s)
    return {e.config: predict(e, conditions)[0] for e in evaluations}


def analyse(trace: UplinkTrace, log: list[Request], evaluations: list[Evaluation], args: argparse.Namespace) -> None:
    rtt = 2 * args.one_way_ms / 1e3
    rate = trace.throughput_per_second()
    oracle = [min(p := latencies(evaluations, r, rtt), key=p.get) for r in rate]
    label = {
        e.config: ("device-only" if is_device_only(e) else f"cut {e.config.cut} {e.config.bits}") for e in evaluations
    }
    switches = sum(a.config != b.config for a, b in zip(log, log[1:]))
    oracle_switches = sum(a != b for a, b in zip(oracle, oracle[1:]))
    where = {w: sum(r.where == w for r in log) for w in ("cloud", "device", "fallback")}
    mean_rate = trace.opportunities_ms.size * PACKET_BYTES / (trace.period_ms / 1000.0)
    predicted = [
        latencies(evaluations, rate[min(int(r.at_s), len(rate) - 1)], rtt)[oracle[min(int(r.at_s), len(rate) - 1)]]
        for r in log
    ]
    print(
        f"\n{trace.name}: {len(rate)} s, mean {mean_rate / 1e3:.0f} kB/s; {len(log)} requests "
        f"({where['cloud']} cloud, {where['device']} device, {where['fallback']} fallback); switches: client "
        f"{switches}, oracle {oracle_switches}; mean latency {1e3 * statistics.mean(r.latency_s for r in log):.1f} ms "
        f"measured, {1e3 * statistics.mean(predicted):.1f} ms predicted for the oracle's choices"
    )
    follows = []
    for i in range(1, len(rate)):
        run = 1
        while i + run < len(rate) and oracle[i + run] == oracle[i]:
            run += 1
        before, after = rate[max(i - 2, 0) : i].mean(), rate[i : i + 2].mean()
        ratio = max(before, after, 1.0) / max(min(before, after), 1.0)
        if oracle[i] == oracle[i - 1] or run < HOLD_S or ratio < args.step_ratio:
            continue
        p = latencies(evaluations, float(rate[i : i + run].mean()), rtt)
        best = min(p.values())
        good = {c for c, s in p.items() if s <= best * (1 + DEFAULT_SWITCH_MARGIN)}
        window = [r for r in log if i <= r.at_s < i + run]
        k = next((n for n, r in enumerate(window, 1) if r.config in good), None)
        follows.append(k)
        print(
            f"  step at {i:3d} s: {before / 1e3:6.0f} -> {after / 1e3:6.0f} kB/s, {label[oracle[i - 1]]} -> "
            f"{label[oracle[i]]} for {run} s: followed in {k if k is not None else '-'} of {len(window)} requests"
        )
    if not follows:
        print("  no large step")
    else:
        done = [k for k in follows if k is not None]
        print(
            f"  {len(follows)} large step(s), {len(done)} followed; requests to follow: "
            f"median {statistics.median(done) if done else '-'}, max {max(done) if done else '-'}"
        )


def main() -> None:
    from served_artifact import served_artifact

    args = _parse()
    traces = [trace_window(spec) for spec in args.trace]
    with tempfile.TemporaryDirectory() as tmp:
        path = served_artifact(args.artifact, tmp)
        served = load_artifact(path)
        device, factor = emulated_artifact(load_artifact(path), args.device_ms / 1e3)
        print(f"emulated device: {factor:.0f}x this host's profiled device times")
        evaluations = [Evaluation.from_dict(d) for d in device.manifest["search"]["pareto"]]
        print(
            f"candidates: {', '.join(e.config.label for e in evaluations)}; one-way delay {args.one_way_ms:g} ms, "
            f"a request every {args.period:g} s, probes every {args.probe_every:g} s ({args.probe_bytes} B)"
        )
        images, _ = load_test(limit=200)
        server = CloudServer(CloudEngine(served))
        server.start()
        try:
            with DeviceClient(
                served,
                [server.endpoint],
                policy="pinned",  # warm the server's VM up
                policy_options={"config": evaluations[0].config.to_dict()},
            ) as warm:
                for x in images[:3]:
                    warm.run(x[None])
            for trace in traces:
                log = replay(("127.0.0.1", server.port), device, trace, images, args)
                analyse(trace, log, evaluations, args)
        finally:
            server.stop(grace_s=0)


if __name__ == "__main__":
    main()
