"""The evaluation report: Markdown tables and PNG plots, every figure from a measurement or
a labelled estimate.

``run_evaluation`` prepares each model (:mod:`.prepare`), measures its JPEG baseline
(:mod:`.jpeg`), replays every policy over the chosen traces (:mod:`.compare`) for each
device target, and writes ``report.md``, ``results.json`` and the plots to a folder.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dyno_compile.errors import InputError  # noqa: E402
from dyno_compile.evaluate.compare import OURS, RTT_S, PolicyRun, compare, summarise  # noqa: E402
from dyno_compile.evaluate.jpeg import measure_jpeg_upload, raw_images  # noqa: E402
from dyno_compile.evaluate.live import live_comparison  # noqa: E402
from dyno_compile.evaluate.prepare import MODELS, PreparedModel, prepare_model  # noqa: E402
from dyno_compile.evaluate.traces import TRACE_SETS, mean_rate, trace_set  # noqa: E402
from dyno_compile.progress import Progress

#: Which real images and preprocessing each model's JPEG baseline uses, and whether the
#: labels mean anything (the zoo's ImageNet models have random weights).
JPEG_DATA = {
    "resnet20": ("cifar10", "cifar10", True),
    "resnet56": ("cifar10", "cifar10", True),
    "squeezenet": ("imagenet", "squeezenet", True),
    "resnet50": ("imagenet", "imagenet", False),
    "mobilenet_v2": ("imagenet", "imagenet", False),
}
DEVICES = ("host", "arm64")
CLOUD = "cuda-sm80"
#: The live run's model, trace set and trace (index in the set): Verizon-LTE-short. The
#: set's first, ATT-LTE-driving, stalls 1-2 s at times; the live client's 1 s ping
#: time-out then marks the cloud down and runs on the device until a ping gets through,
#: which the replay does not model (measured: 1 such request of 32, 194 ms live against
#: 184 ms replayed).
LIVE = ("resnet20", "lte", 1)


def run_evaluation(
    out: Path,
    *,
    models: Sequence[str] = MODELS,
    sets: Sequence[str] = tuple(TRACE_SETS),
    traces_per_set: int = 2,
    requests: int = 200,
    minutes: float = 1.0,
    cache: Path | None = None,
    live: tuple[str, str, int] | None = LIVE,
    progress: Progress = print,
) -> dict:
    """``live``: (model, trace set, trace index) of the live run checking the replay, or
    None for none."""
    unknown = [m for m in models if m not in MODELS] + [s for s in sets if s not in TRACE_SETS]
    if live is not None and (live[0] not in models or live[1] not in sets or not 0 <= live[2] < traces_per_set):
        unknown.append(f"live {':'.join(map(str, live))} (not among the models, sets and traces evaluated)")
    if unknown:
        raise InputError(f"unknown models or trace sets {unknown}; models: {MODELS}, sets: {tuple(TRACE_SETS)}")
    out.mkdir(parents=True, exist_ok=True)
    cache = cache or out / "artifacts"
    start = time.perf_counter()
    traces = {s: trace_set(s, limit=traces_per_set) for s in sets}
    results: dict = {
        "models": {},
        "traces": {s: [_trace_info(t) for t in ts] for s, ts in traces.items()},
        "rtt_s": {s: RTT_S[s] for s in sets},
        "requests": requests,
    }
    for model in models:
        prepared = prepare_model(model, cache, minutes=minutes, targets=("arm64", "cuda"), progress=progress)
        dataset, preset, labelled = JPEG_DATA[model]
        images, labels = raw_images(dataset)
        progress(f"{model}: measuring the JPEG upload baseline on {len(images)} images")
        jpeg = measure_jpeg_upload(prepared.artifact, images, labels if labelled else None, preset)
        entry: dict[str, Any] = {
            "metric": prepared.metric,
            "baseline_accuracy": prepared.baseline_accuracy,
            "accuracy_budget": prepared.accuracy_budget,
            "calibration": prepared.calibration,
            "jpeg": jpeg.__dict__,
            "configurations": len(prepared.measured),
            "devices": {},
        }
        for device in DEVICES:
            progress(f"{model}: replaying {len(sets)} trace sets on device {device}, cloud {CLOUD}")
            per_set = {}
            for s, ts in traces.items():
                runs = compare(prepared, ts, device=device, cloud=CLOUD, jpeg=jpeg, requests=requests)
                per_set[s] = {"summary": summarise(runs), "runs": [_run_info(r) for r in runs]}
                if device == DEVICES[-1]:
                    _plot_cut_over_time(runs, out / f"{model}_{s}_cuts.png", model)
            entry["devices"][device] = {"sources": _sources(prepared, device), "sets": per_set}
            _plot_vs_bandwidth(per_set, out / f"{model}_{device}_vs_bandwidth.png", f"{model} on {device}")
        results["models"][model] = entry
        if live is not None and live[0] == model:
            trace = traces[live[1]][live[2]]
            compared = live_comparison(prepared, trace, rtt_s=RTT_S[live[1]], progress=progress)
            results["live"] = {
                "model": model,
                "set": live[1],
                "trace": trace.name,
                "runs": [r.summary() for r in compared],
            }
    results["seconds"] = time.perf_counter() - start
    results["headline"] = headline(results)
    (out / "results.json").write_text(json.dumps(_strict_json(results), indent=1, default=str, allow_nan=False))
    (out / "report.md").write_text(markdown(results))
    return results


def _strict_json(value):
    """``value`` with NaN and infinities as null: a ratio where nothing was sent is
    undefined, and strict JSON readers (jq, browsers) refuse the bare ``NaN`` token."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _trace_info(t) -> dict:
    return {
        "name": t.name,
        "direction": t.direction,
        "mean_mbit_s": 8 * mean_rate(t.trace) / 1e6,
        "source": str(t.source),
    }


def _run_info(r: PolicyRun) -> dict:
    return {
        "policy": r.policy,
        "trace": r.trace.name,
        "mean_mbit_s": 8 * mean_rate(r.trace.trace) / 1e6,
        "throughput_rps": r.pipelined.throughput_rps,
        "mean_latency_s": r.sequential.mean_latency_s,
        "bytes": r.sequential.bytes_per_inference,
        "cuts": r.sequential.cut_over_time(changes_only=True) if r.policy == OURS else [],
    }


def _sources(prepared: PreparedModel, device: str) -> dict:
    return {"device": prepared.profile("device", device).label, "cloud": prepared.profile("cloud", CLOUD).label}


def headline(results: dict) -> dict:
    """Ours against each baseline, per model, device and set; and the best of them."""
    rows = []
    for model, entry in results["models"].items():
        for device, d in entry["devices"].items():
            for s, v in d["sets"].items():
                m = v["summary"]
                ours = m[OURS]
                rows.append(
                    {
                        "model": model,
                        "device": device,
                        "set": s,
                        "throughput_vs_device_only": ours["throughput_rps"] / m["device-only"]["throughput_rps"],
                        "throughput_vs_neurosurgeon": ours["throughput_rps"] / m["Neurosurgeon"]["throughput_rps"],
                        "latency_vs_neurosurgeon": m["Neurosurgeon"]["mean_latency_ms"] / ours["mean_latency_ms"],
                        "bytes_vs_float32_input": _ratio(m["cloud-only (raw)"]["offload_bytes"], ours["offload_bytes"]),
                        "bytes_vs_jpeg": _ratio(
                            m.get("cloud-only (JPEG)", {}).get("offload_bytes", math.nan), ours["offload_bytes"]
                        ),
                        "bytes_vs_neurosurgeon": _ratio(m["Neurosurgeon"]["offload_bytes"], ours["offload_bytes"]),
                    }
                )
    best = {
        k: max((r[k] for r in rows if math.isfinite(r[k])), default=math.nan)
        for k in rows[0]
        if k not in ("model", "device", "set")
    }
    return {"rows": rows, "best": best}


def _ratio(a: float, b: float) -> float:
    """``a / b``; NaN where either side sent nothing (no ratio to speak of)."""
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def markdown(results: dict) -> str:
    lines = [
        "# dyno-compile evaluation",
        "",
        f"Replays of {results['requests']} requests per policy and trace (sequential for latency, pipelined "
        "for throughput). Round trips assumed per set: "
        + ", ".join(f"{s} {1e3 * r:.0f} ms" for s, r in results["rtt_s"].items())
        + f". Took {results['seconds'] / 60:.1f} min.",
        "",
        "## Traces",
        "",
        "| set | trace | direction | mean Mbit/s |",
        "| --- | --- | --- | ---: |",
    ]
    for s, ts in results["traces"].items():
        lines += [f"| {s} | {t['name']} | {t['direction']} | {t['mean_mbit_s']:.2f} |" for t in ts]
    b = results["headline"]["best"]
    lines += [
        "",
        "## Headline (best over models, devices and sets)",
        "",
        f"- throughput, ours vs device-only: {b['throughput_vs_device_only']:.2f}x",
        f"- throughput, ours vs Neurosurgeon: {b['throughput_vs_neurosurgeon']:.2f}x",
        "- bytes per offloaded inference (where both offload):",
        f"  - float32 input upload vs ours: {b['bytes_vs_float32_input']:.1f}x",
        f"  - JPEG upload vs ours: {b['bytes_vs_jpeg']:.1f}x",
        f"  - Neurosurgeon (float32 split) vs ours: {b['bytes_vs_neurosurgeon']:.1f}x",
        "",
    ]
    if "live" in results:
        lines += _live_markdown(results["live"])
    for model, entry in results["models"].items():
        j = entry["jpeg"]
        lines += [
            f"## {model}",
            "",
            f"Accuracy metric: {entry['metric']} (float model {100 * entry['baseline_accuracy']:.2f} %, budget "
            f"{entry['accuracy_budget']} points) on {entry['calibration']}; {entry['configurations']} "
            f"configurations measured. JPEG q{j['quality']}: {j['bytes']:.0f} B, "
            f"{100 * j['accuracy']:.2f} % (measured on {j['samples']} images).",
            "",
        ]
        for device, d in entry["devices"].items():
            lines += [
                f"### device {device} [{d['sources']['device']}], cloud [{d['sources']['cloud']}]",
                "",
                f"![latency, throughput and bytes per inference vs bandwidth]({model}_{device}_vs_bandwidth.png)",
                "",
            ]
            for s, v in d["sets"].items():
                lines += [
                    f"**{s}**",
                    "",
                    "| policy | throughput req/s | mean ms | p95 ms | bytes/inf | bytes/offload "
                    "| cloud ms/inf | accuracy |",
                    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                ]
                for name, m in v["summary"].items():
                    sent = "-" if math.isnan(m["offload_bytes"]) else f"{m['offload_bytes']:.0f}"
                    lines.append(
                        f"| {name} | {m['throughput_rps']:.1f} | {m['mean_latency_ms']:.1f} | "
                        f"{m['p95_latency_ms']:.1f} | {m['bytes']:.0f} | {sent} | {m['cloud_ms']:.3f} | "
                        f"{100 * m['accuracy']:.2f} % |"
                    )
                lines.append("")
        lines += [
            f"Chosen cut over time (ours, {DEVICES[-1]}): "
            + ", ".join(f"![{s}]({model}_{s}_cuts.png)" for s in entry["devices"][DEVICES[-1]]["sets"]),
            "",
        ]
    return "\n".join(lines)


def _live_markdown(live: dict) -> list[str]:
    lines = [
        "## Live run against the replay",
        "",
        f"{live['model']} over the real gRPC server on loopback, behind the link shaper playing {live['trace']} "
        f"({live['set']}: the round trip and the server's load as the live run measured them), on a device "
        "emulated from the host's profile (the cloud: this host). Frames: whether every live frame had the "
        "length the wire measurement gives for its image and configuration.",
        "",
        "| policy | requests | live mean ms | replay mean ms | live/replay | live bytes/inf | replay bytes/inf "
        "| frames exact | same choices |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in live["runs"]:
        lines.append(
            f"| {r['policy']} | {r['requests']} | {r['live_mean_latency_ms']:.1f} | "
            f"{r['replay_mean_latency_ms']:.1f} | {r['latency_ratio']:.2f} | {r['live_bytes']:.1f} | "
            f"{r['replay_bytes']:.1f} | {'yes' if r['frames_exact'] else 'no'} | "
            f"{'yes' if r['same_configs'] else 'no'} |"
        )
    return lines + [""]


def _plot_vs_bandwidth(per_set: dict, path: Path, title: str) -> None:
    fig, (lat, thr, sent) = plt.subplots(1, 3, figsize=(16, 4))
    runs = [r for v in per_set.values() for r in v["runs"]]
    for name in dict.fromkeys(r["policy"] for r in runs):
        mine = sorted((r for r in runs if r["policy"] == name), key=lambda r: r["mean_mbit_s"])
        x = [r["mean_mbit_s"] for r in mine]
        lat.plot(x, [1e3 * r["mean_latency_s"] for r in mine], "o-", label=name)
        thr.plot(x, [r["throughput_rps"] for r in mine], "o-", label=name)
        sent.plot(x, [r["bytes"] for r in mine], "o-", label=name)
    for ax, label in ((lat, "mean latency (ms)"), (thr, "throughput (req/s)"), (sent, "bytes per inference")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("trace mean uplink (Mbit/s)")
        ax.set_ylabel(label)
    sent.set_yscale("symlog", linthresh=1)  # device-only sends 0 bytes
    thr.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_cut_over_time(runs: list[PolicyRun], path: Path, model: str) -> None:
    ours = [r for r in runs if r.policy == OURS]
    fig, ax = plt.subplots(figsize=(8, 3))
    for r in ours:
        points = r.sequential.cut_over_time()
        ax.step([t for t, _ in points], [c for _, c in points], where="post", label=r.trace.name)
    ax.set_xlabel("trace time (s)")
    ax.set_ylabel("cut position")
    ax.set_title(f"{model}: the cut DynO chose")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
