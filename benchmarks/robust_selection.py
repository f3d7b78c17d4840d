"""Ours against the best baseline it contains, on a slow device (issue 19 item 4).

Every (model, trace) cell: ours' mean latency (sequential replay) and throughput
(pipelined replay) over the best of device-only, cloud-only and the fixed-cut baselines
(``compare.CONTAINED``), as ``baseline / ours`` for latency and ``ours / baseline`` for
throughput, so 1 is a tie and a cell below 0.97 is flagged. The device is a Raspberry Pi
4 class board: until its profiles exist, every configuration's host device time is
scaled so that device-only takes the published figure (:data:`PI4_DEVICE_ONLY_S`); the
cloud is the evaluation's GPU. Traces, round trips and request counts are the report's.

    python benchmarks/robust_selection.py            # ours as the evaluation replays it
    python benchmarks/robust_selection.py --no-hedge # ours without the hedged offload

Models are prepared under ``out/robust`` (cached after the first run: a few minutes
each on a laptop).
"""

from __future__ import annotations

import argparse
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dyno_compile.configs import Evaluation
from dyno_compile.evaluate import compare as compare_module
from dyno_compile.evaluate.compare import OURS, PolicyRun, compare
from dyno_compile.evaluate.emulate import slower_device
from dyno_compile.evaluate.prepare import PreparedModel, prepare_model
from dyno_compile.evaluate.traces import trace_set
from dyno_compile.runtime.selector import is_device_only

#: Device-only latency on a Raspberry Pi 4 (published figures, seconds).
PI4_DEVICE_ONLY_S = {"squeezenet": 0.047, "mobilenet_v2": 0.062, "resnet50": 0.263}
SETS = ("3g", "lte", "5g")
REQUESTS = 200
TRACES_PER_SET = 2
FLAG_BELOW = 0.97
#: The baselines ours contains, when compare.py does not name them.
CONTAINED = ("device-only", "cloud-only (raw)", "Neurosurgeon", "JALAD (8-bit + zstd)")
CLOUD = "cuda-sm80"


@dataclass
class Pi4StandIn:
    """A prepared model whose device is the host scaled to the Pi 4's device-only time."""

    prepared: PreparedModel
    device_only_s: float

    def __getattr__(self, name: str) -> Any:
        return getattr(self.prepared, name)

    def evaluations(self, device: str = "host", cloud: str = CLOUD) -> list[Evaluation]:
        evaluations = self.prepared.evaluations("host", cloud)
        host = min(e.device_s for e in evaluations if is_device_only(e))
        return slower_device(evaluations, self.device_only_s / host)


def cells(runs: list[PolicyRun]) -> list[dict[str, Any]]:
    contained = getattr(compare_module, "CONTAINED", CONTAINED)
    rows = []
    for trace in dict.fromkeys(r.trace.name for r in runs):
        mine = {r.policy: r for r in runs if r.trace.name == trace}
        base = [mine[n] for n in contained if n in mine]
        fastest = min(base, key=lambda r: r.sequential.mean_latency_s)
        busiest = max(base, key=lambda r: r.pipelined.throughput_rps)
        ours = mine[OURS]
        rows.append(
            {
                "trace": trace,
                "set": ours.trace.set,
                "latency": fastest.sequential.mean_latency_s / ours.sequential.mean_latency_s,
                "latency_best": fastest.policy,
                "ours_ms": 1e3 * ours.sequential.mean_latency_s,
                "throughput": ours.pipelined.throughput_rps / busiest.pipelined.throughput_rps,
                "throughput_best": busiest.policy,
                "ours_rps": ours.pipelined.throughput_rps,
                "offloaded": (ours.sequential.offloaded_fraction, ours.pipelined.offloaded_fraction),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-hedge", action="store_true", help="replay ours without the hedged offload")
    parser.add_argument("--cache", type=Path, default=Path("out/robust"))
    parser.add_argument("--models", nargs="+", default=list(PI4_DEVICE_ONLY_S))
    args = parser.parse_args()
    if args.no_hedge:
        compare_module.HEDGED = frozenset()  # type: ignore[attr-defined]
    traces = {s: trace_set(s, limit=TRACES_PER_SET) for s in SETS}
    # compare() before the image-upload baseline took the JPEG upload as an argument
    legacy: dict[str, Any] = {"jpeg": None} if "jpeg" in inspect.signature(compare).parameters else {}
    worst = [np.inf, np.inf]
    flagged = 0
    slo: list[tuple[str, str, dict[str, Any]]] = []
    print(f"{'model':13s} {'trace':28s} {'latency':>8s} {'(best)':22s} {'thru':>6s} {'(best)':22s} offloaded")
    for model in args.models:
        began = time.perf_counter()
        prepared = Pi4StandIn(prepare_model(model, args.cache, minutes=1.0), PI4_DEVICE_ONLY_S[model])
        for s, ts in traces.items():
            runs = compare(prepared, ts, device="host", cloud=CLOUD, requests=REQUESTS, **legacy)  # type: ignore[arg-type]
            for row in getattr(compare_module, "onloading", lambda *a, **k: [])(
                prepared, runs, device="host", cloud=CLOUD
            ):
                slo.append((model, s, row))
            for c in cells(runs):
                bad = min(c["latency"], c["throughput"]) < FLAG_BELOW
                flagged += bad
                worst = [min(worst[0], c["latency"]), min(worst[1], c["throughput"])]
                print(
                    f"{model:13s} {s + ':' + c['trace']:28s} {c['latency']:8.3f} ({c['latency_best'][:20]:20s}) "
                    f"{c['throughput']:6.3f} ({c['throughput_best'][:20]:20s}) "
                    f"{c['offloaded'][0]:.2f}/{c['offloaded'][1]:.2f}{'  <-- below 0.97' if bad else ''}"
                )
        print(f"# {model}: {time.perf_counter() - began:.1f} s")
    print(f"worst latency ratio {worst[0]:.3f}, worst throughput ratio {worst[1]:.3f}; {flagged} cells below 0.97")
    if slo:
        print("onloading (least cloud within an SLO, a fraction of device-only): share of requests within it")
        for model, s, row in slo:
            print(
                f"{model:13s} {s + ':' + row['trace'].split('/')[-1]:36s} SLO x{row['slo_fraction']:.1f} "
                f"({row['slo_ms']:6.1f} ms): met {row['met']:.3f} (feasible: {row['feasible']}; ours-fastest "
                f"{row['fastest_met']:.3f}), cloud share {row['cloud_share']:.2f}"
            )


if __name__ == "__main__":
    main()
