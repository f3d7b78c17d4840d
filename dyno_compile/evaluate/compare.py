"""DynO against the baselines on real traces: every policy replayed over every trace.

For one model and one (device, cloud) target pair, each policy gets a :class:`Selector`
over the measured configurations and is replayed twice per trace: one request at a time
(latency: mean and p95) and pipelined (throughput). Ours is the lowest-latency policy in
the first and the highest-throughput policy in the second, always within the accuracy
budget; the published baselines are what they are (their accuracy is reported, not
constrained), except the image-coded upload, which is held to the budget: it sends the
image codec's fewest bytes within it (what an app tuning its JPEG quality would do).
Every baseline's configurations are among ours', so ours should never do worse than the
best of them (:func:`contained_check`). Round trips per trace set are assumptions,
labelled in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyno_compile.configs import Evaluation
from dyno_compile.errors import InputError
from dyno_compile.evaluate.prepare import PreparedModel
from dyno_compile.evaluate.replay import ReplayResult, ReplaySettings, replay
from dyno_compile.evaluate.traces import LabelledTrace
from dyno_compile.runtime.selector import (
    CloudOnly,
    DeviceOnly,
    HighestThroughput,
    ImageUpload,
    Jalad,
    LowestLatency,
    Neurosurgeon,
    Onloading,
    Policy,
    Selector,
    is_device_only,
)

#: Assumed propagation round trip per trace set (the traces give throughput only).
RTT_S = {"3g": 0.100, "lte": 0.050, "5g": 0.020}
#: No accuracy constraint for the baselines: 100 points.
UNCONSTRAINED = 100.0
OURS = "DynO (ours)"
#: The policies replayed with the client's hedged offload (``ReplaySettings.hedge``): ours;
#: the published baselines are replayed as published, waiting for the cloud.
HEDGED = frozenset({OURS})


@dataclass(frozen=True)
class PolicyRun:
    """One policy on one trace: the sequential and the pipelined replay."""

    policy: str
    trace: LabelledTrace
    sequential: ReplayResult
    pipelined: ReplayResult


#: The image-coded cloud-only baseline's name in tables.
IMAGE_UPLOAD = "cloud-only (image)"
#: The fixed baselines every one of whose configurations ours may also choose: ours must
#: not fall more than :data:`CONTAINED_TOLERANCE` below the best of them.
CONTAINED = ("device-only", "cloud-only (raw)", "Neurosurgeon", "JALAD (8-bit + zstd)", IMAGE_UPLOAD)
CONTAINED_TOLERANCE = 0.03


def policies(prepared: PreparedModel, evaluations: list[Evaluation]) -> dict[str, Callable[[str], Selector]]:
    """Each policy's selector factory by name; the mode ("sequential" or "pipelined")
    picks ours' objective. The image upload is there when some image codec's upload is
    within the accuracy budget."""

    def make(candidates: list[Evaluation], policy: Policy, budget: float) -> Selector:
        return Selector(candidates, policy, accuracy_baseline=prepared.baseline_accuracy, accuracy_budget=budget)

    out: dict[str, Callable[[str], Selector]] = {
        "device-only": lambda mode: make(evaluations, DeviceOnly(), UNCONSTRAINED),
        "cloud-only (raw)": lambda mode: make(evaluations, CloudOnly(), UNCONSTRAINED),
        "Neurosurgeon": lambda mode: make(evaluations, Neurosurgeon(), UNCONSTRAINED),
        "JALAD (8-bit + zstd)": lambda mode: make(evaluations, Jalad(), UNCONSTRAINED),
        OURS: lambda mode: make(
            evaluations,
            LowestLatency() if mode == "sequential" else HighestThroughput(hedged=OURS in HEDGED),
            prepared.accuracy_budget,
        ),
    }
    try:
        make(evaluations, ImageUpload(), prepared.accuracy_budget)
    except InputError:  # no image upload within the budget (or the input is no image)
        return out
    out[IMAGE_UPLOAD] = lambda mode: make(evaluations, ImageUpload(), prepared.accuracy_budget)
    return out


def compare(
    prepared: PreparedModel,
    traces: list[LabelledTrace],
    *,
    device: str,
    cloud: str,
    requests: int,
) -> list[PolicyRun]:
    evaluations = prepared.evaluations(device, cloud)
    factories = policies(prepared, evaluations)
    runs = []
    for trace in traces:
        rtt = RTT_S[trace.set]
        for name, factory in factories.items():
            hedge = name in HEDGED
            seq = replay(factory("sequential"), trace.trace, ReplaySettings(rtt_s=rtt, requests=requests, hedge=hedge))
            pipe = replay(
                factory("pipelined"),
                trace.trace,
                ReplaySettings(rtt_s=rtt, requests=requests, mode="pipelined", hedge=hedge),
            )
            runs.append(PolicyRun(name, trace, seq, pipe))
    return runs


def _mean_sent(values: list[float]) -> float:
    """Mean over the traces on which anything was sent (NaN if on none)."""
    sent = [v for v in values if not np.isnan(v)]
    return float(np.mean(sent)) if sent else float("nan")


def summarise(runs: list[PolicyRun]) -> dict[str, dict[str, float]]:
    """Per policy, the mean over traces of each figure the report shows."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.policy for r in runs):
        mine = [r for r in runs if r.policy == name]
        out[name] = {
            "throughput_rps": float(np.mean([r.pipelined.throughput_rps for r in mine])),
            "mean_latency_ms": 1e3 * float(np.mean([r.sequential.mean_latency_s for r in mine])),
            "p95_latency_ms": 1e3 * float(np.mean([r.sequential.p95_latency_s for r in mine])),
            "bytes": float(np.mean([r.sequential.bytes_per_inference for r in mine])),
            "offload_bytes": _mean_sent([r.sequential.bytes_per_offload for r in mine]),
            "cloud_ms": 1e3 * float(np.mean([r.sequential.cloud_s_per_inference for r in mine])),
            "accuracy": float(np.mean([r.sequential.accuracy for r in mine])),
        }
    return out


def contained_check(runs: list[PolicyRun], floor: float) -> list[dict[str, Any]]:
    """Per trace, ours against the best baseline it contains (:data:`CONTAINED`): mean
    latency as best ÷ ours and throughput as ours ÷ best, so 1 is a tie and below
    ``1 - CONTAINED_TOLERANCE`` a miss. A baseline is contained only if every request it
    served, in both replays, was within ours' accuracy budget (accuracy at least
    ``floor``): ours may not choose the others (JALAD's 8 bits at the input lose more
    than a point of agreement on mobilenet_v2), so they are listed, not compared."""
    rows = []
    for trace in dict.fromkeys(r.trace.name for r in runs):
        mine = {r.policy: r for r in runs if r.trace.name == trace}
        present = [name for name in CONTAINED if name in mine]
        base = [mine[name] for name in present if _within_floor(mine[name], floor)]
        fastest = min(base, key=lambda r: r.sequential.mean_latency_s)
        busiest = max(base, key=lambda r: r.pipelined.throughput_rps)
        ours = mine[OURS]
        latency = fastest.sequential.mean_latency_s / ours.sequential.mean_latency_s
        throughput = ours.pipelined.throughput_rps / busiest.pipelined.throughput_rps
        rows.append(
            {
                "trace": trace,
                "set": ours.trace.set,
                "latency_ratio": latency,
                "latency_best": fastest.policy,
                "throughput_ratio": throughput,
                "throughput_best": busiest.policy,
                "over_budget": [r.policy for r in (mine[name] for name in present) if r not in base],
                "met": min(latency, throughput) >= 1.0 - CONTAINED_TOLERANCE,
            }
        )
    return rows


def _within_floor(run: PolicyRun, floor: float) -> bool:
    """Every request of both replays at an accuracy of at least ``floor`` (to 1e-9, as the
    selector rounds)."""
    return all(q.accuracy >= floor - 1e-9 for q in (*run.sequential.requests, *run.pipelined.requests))


#: The onloading runs' latency SLOs, as fractions of device-only's latency on the device
#: (a bound at or above it is met with no cloud at all).
SLO_FRACTIONS = (0.9, 0.7, 0.5)
#: The share of requests an onloading run must answer within its SLO.
SLO_TARGET = 0.99


def onloading(prepared: PreparedModel, runs: list[PolicyRun], *, device: str, cloud: str) -> list[dict[str, Any]]:
    """DynO's own objective: the least cloud compute within a latency SLO. Per trace of
    ``runs`` (a :func:`compare` of the same device and cloud) and SLO (:data:`SLO_FRACTIONS`
    of device-only's latency), one sequential replay of the :class:`Onloading` policy as
    long as ours': the share of requests within the SLO, and the cloud milliseconds per
    inference against cloud-only's (the whole model in the cloud). An SLO is *feasible*
    when our lowest-latency run met it on at least :data:`SLO_TARGET` of its requests:
    no policy choosing among these configurations is expected to do better there."""
    evaluations = prepared.evaluations(device, cloud)
    device_only_s = min(e.device_s for e in evaluations if is_device_only(e))
    cloud_only_s = next(e.cloud_s for e in evaluations if CloudOnly().admits(e))
    rows = []
    for fastest in (r for r in runs if r.policy == OURS):
        settings = fastest.sequential.settings
        for fraction in SLO_FRACTIONS:
            slo = fraction * device_only_s
            selector = Selector(
                evaluations,
                Onloading(slo),
                accuracy_baseline=prepared.baseline_accuracy,
                accuracy_budget=prepared.accuracy_budget,
            )
            run = replay(selector, fastest.trace.trace, settings)
            rows.append(
                {
                    "trace": fastest.trace.name,
                    "set": fastest.trace.set,
                    "slo_fraction": fraction,
                    "slo_ms": 1e3 * slo,
                    "feasible": _within(fastest.sequential, slo) >= SLO_TARGET,
                    "fastest_met": _within(fastest.sequential, slo),
                    "met": _within(run, slo),
                    "mean_latency_ms": 1e3 * run.mean_latency_s,
                    "cloud_ms": 1e3 * run.cloud_s_per_inference,
                    "cloud_only_ms": 1e3 * cloud_only_s,
                    "cloud_share": run.cloud_s_per_inference / cloud_only_s,
                    "offloaded": run.offloaded_fraction,
                    "accuracy": run.accuracy,
                }
            )
    return rows


def _within(result: ReplayResult, slo_s: float) -> float:
    """The share of ``result``'s requests answered within ``slo_s`` (to a nanosecond)."""
    return float(np.mean(result.latencies_s <= slo_s + 1e-9))
