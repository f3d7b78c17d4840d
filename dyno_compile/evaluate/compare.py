"""DynO against the baselines on real traces: every policy replayed over every trace.

For one model and one (device, cloud) target pair, each policy gets a :class:`Selector`
over the measured configurations and is replayed twice per trace: one request at a time
(latency: mean and p95) and pipelined (throughput). Ours is the lowest-latency policy in
the first and the highest-throughput policy in the second, always within the accuracy
budget; the baselines are what they are (their accuracy is reported, not constrained).
Round trips per trace set are assumptions, labelled in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dyno_compile.configs import Config, Evaluation
from dyno_compile.evaluate.jpeg import JpegUpload
from dyno_compile.evaluate.prepare import PreparedModel
from dyno_compile.evaluate.replay import ReplayResult, ReplaySettings, replay
from dyno_compile.evaluate.traces import LabelledTrace
from dyno_compile.runtime.selector import (
    CloudOnly,
    DeviceOnly,
    HighestThroughput,
    Jalad,
    LowestLatency,
    Neurosurgeon,
    Policy,
    Selector,
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


def jpeg_evaluation(jpeg: JpegUpload, evaluations: list[Evaluation]) -> Evaluation:
    """Cloud-only with a JPEG upload: the device encodes, the cloud decodes and runs the
    whole model (the cloud time of cut 0 at float32)."""
    raw = next(e for e in evaluations if e.config == Config(0, "float32"))
    return Evaluation(
        Config(0, "float32"),
        jpeg.encode_s,
        jpeg.decode_s + raw.cloud_s,
        jpeg.bytes,
        jpeg.accuracy,
        jpeg.agreement,
        {
            **raw.sources,
            "device_s": "measured:host:jpeg-encode",
            "bytes": f"measured:jpeg:q{jpeg.quality}",
            "accuracy": f"measured:jpeg:q{jpeg.quality}",
        },
    )


def policies(
    prepared: PreparedModel, evaluations: list[Evaluation], jpeg: Evaluation | None
) -> dict[str, Callable[[str], Selector]]:
    """Each policy's selector factory by name; the mode ("sequential" or "pipelined")
    picks ours' objective."""

    def make(candidates: list[Evaluation], policy: Policy, budget: float) -> Selector:
        return Selector(candidates, policy, accuracy_baseline=prepared.baseline_accuracy, accuracy_budget=budget)

    out: dict[str, Callable[[str], Selector]] = {
        "device-only": lambda mode: make(evaluations, DeviceOnly(), UNCONSTRAINED),
        "cloud-only (raw)": lambda mode: make(evaluations, CloudOnly(), UNCONSTRAINED),
        "Neurosurgeon": lambda mode: make(evaluations, Neurosurgeon(), UNCONSTRAINED),
        "JALAD (8-bit + zstd)": lambda mode: make(evaluations, Jalad(), UNCONSTRAINED),
        OURS: lambda mode: make(
            evaluations, LowestLatency() if mode == "sequential" else HighestThroughput(), prepared.accuracy_budget
        ),
    }
    if jpeg is not None:
        out["cloud-only (JPEG)"] = lambda mode: make([jpeg], LowestLatency(), UNCONSTRAINED)
    return out


def compare(
    prepared: PreparedModel,
    traces: list[LabelledTrace],
    *,
    device: str,
    cloud: str,
    jpeg: JpegUpload | None,
    requests: int,
) -> list[PolicyRun]:
    evaluations = prepared.evaluations(device, cloud)
    factories = policies(prepared, evaluations, jpeg_evaluation(jpeg, evaluations) if jpeg else None)
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
