"""The evaluation report: Markdown tables and PNG plots, every figure from a measurement or
a labelled estimate.

``run_evaluation`` prepares each model (:mod:`.prepare`), replays every policy over the
chosen traces (:mod:`.compare`) for each device class of :data:`DEVICES` (the boards
estimated from published latencies, the host measured) against one cloud, checks ours
against the best baseline it contains on every (model, device, trace) cell, replays the
onloading policy at several latency SLOs, and writes ``report.md``, ``results.json`` and
the plots to a folder. The headline is per device class, beside DynO's published claims.
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
import numpy as np  # noqa: E402

from dyno_compile.errors import InputError  # noqa: E402
from dyno_compile.evaluate.compare import (  # noqa: E402
    CONTAINED_TOLERANCE,
    IMAGE_UPLOAD,
    OURS,
    RTT_S,
    SLO_FRACTIONS,
    SLO_TARGET,
    PolicyRun,
    compare,
    contained_check,
    onloading,
    summarise,
)
from dyno_compile.evaluate.live import live_comparison  # noqa: E402
from dyno_compile.evaluate.prepare import CLOUD, DEVICES, MODELS, PreparedModel, prepare_model  # noqa: E402
from dyno_compile.evaluate.traces import TRACE_SETS, mean_rate, trace_set  # noqa: E402
from dyno_compile.progress import Progress  # noqa: E402
from dyno_compile.targets import get_target  # noqa: E402

#: The device class whose cut-over-time plots the report shows: the low-tier board.
PLOTTED_DEVICE = DEVICES[0]
#: The live run's model, trace set and trace (index in the set): Verizon-LTE-short. The
#: set's first, ATT-LTE-driving, stalls 1-2 s at times; the live client's 1 s ping
#: time-out then marks the cloud down and runs on the device until a ping gets through,
#: which the replay does not model (measured: 1 such request of 32, 194 ms live against
#: 184 ms replayed).
LIVE = ("resnet20", "lte", 1)
#: Requests per replay: enough that a fast link's replay spans seconds of its trace (at
#: 300 requests/s, 200 requests were 0.7 s, where a stream's first few frames, sent before
#: anything is known of the uplink, weighed on the result as they do not in a stream).
REQUESTS = 1000
#: DynO's published results (Almeida et al., ACM TECS 2022), which the headline sets ours beside.
DYNO_CLAIMS = {
    "throughput_vs_device_only": "> 10x",
    "throughput_vs_other_offloading": "up to 7.9x",
    "bytes_vs_float32": "up to 60x less data",
}
#: This project's goals for the low-tier board (issue 19).
GOALS = {"throughput_vs_device_only": 15.0, "throughput_vs_neurosurgeon": 8.0}


def run_evaluation(
    out: Path,
    *,
    models: Sequence[str] = MODELS,
    devices: Sequence[str] = DEVICES,
    sets: Sequence[str] = tuple(TRACE_SETS),
    traces_per_set: int = 2,
    requests: int = REQUESTS,
    minutes: float = 1.0,
    cache: Path | None = None,
    live: tuple[str, str, int] | None = LIVE,
    progress: Progress = print,
) -> dict:
    """``live``: (model, trace set, trace index) of the live run checking the replay, or
    None for none."""
    unknown = [m for m in models if m not in MODELS] + [s for s in sets if s not in TRACE_SETS]
    for device in devices:
        try:
            get_target(device)
        except InputError:
            unknown.append(f"device {device}")
    if live is not None and (live[0] not in models or live[1] not in sets or not 0 <= live[2] < traces_per_set):
        unknown.append(f"live {':'.join(map(str, live))} (not among the models, sets and traces evaluated)")
    if unknown or not models or not sets or not devices:
        raise InputError(
            f"unknown or missing models, devices or trace sets {unknown}; models: {MODELS}, devices: {DEVICES}, "
            f"sets: {tuple(TRACE_SETS)}"
        )
    for name, value in (("requests", requests), ("traces_per_set", traces_per_set)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")  # before minutes of building
    out.mkdir(parents=True, exist_ok=True)
    cache = cache or out / "artifacts"
    start = time.perf_counter()
    traces = {s: trace_set(s, limit=traces_per_set) for s in sets}
    results: dict = {
        "models": {},
        "devices": {d: _device_info(d) for d in devices},
        "cloud": _device_info(CLOUD),
        "traces": {s: [_trace_info(t) for t in ts] for s, ts in traces.items()},
        "rtt_s": {s: RTT_S[s] for s in sets},
        "requests": requests,
        "slo_fractions": list(SLO_FRACTIONS),
    }
    for model in models:
        prepared = prepare_model(model, cache, minutes=minutes, devices=tuple(devices), progress=progress)
        entry: dict[str, Any] = {
            "metric": prepared.metric,
            "baseline_accuracy": prepared.baseline_accuracy,
            "accuracy_budget": prepared.accuracy_budget,
            "calibration": prepared.calibration,
            "configurations": len(prepared.measured),
            "devices": {},
        }
        for device in devices:
            progress(f"{model}: replaying {len(sets)} trace sets on device {device}, cloud {CLOUD}")
            per_set, contained, onload = {}, [], []
            for s, ts in traces.items():
                runs = compare(prepared, ts, device=device, cloud=CLOUD, requests=requests)
                per_set[s] = {"summary": summarise(runs), "runs": [_run_info(r) for r in runs]}
                contained += contained_check(runs, prepared.baseline_accuracy - prepared.accuracy_budget / 100)
                onload += onloading(prepared, runs, device=device, cloud=CLOUD)
                if device == PLOTTED_DEVICE:
                    _plot_cut_over_time(runs, out / f"{model}_{s}_cuts.png", model)
            entry["devices"][device] = {
                "sources": _sources(prepared, device),
                "device_only_ms": 1e3 * _device_only_s(prepared, device),
                "sets": per_set,
                "contained": contained,
                "onloading": onload,
            }
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


def _device_info(name: str) -> dict[str, Any]:
    spec = get_target(name)
    return {
        "description": spec.description,
        "threads": spec.threads,
        "peak_gflops": spec.peak_gflops,
        "mem_bandwidth_gbs": spec.mem_bandwidth_gbs,
        "source": spec.source,
    }


def _device_only_s(prepared: PreparedModel, device: str) -> float:
    return next(e.device_s for e in prepared.evaluations(device, CLOUD) if e.config.cut == prepared.device_only_cut)


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
        "set": r.trace.set,
        "mean_mbit_s": 8 * mean_rate(r.trace.trace) / 1e6,
        "throughput_rps": r.pipelined.throughput_rps,
        "mean_latency_s": r.sequential.mean_latency_s,
        "bytes": r.sequential.bytes_per_inference,
        "bytes_per_offload": r.sequential.bytes_per_offload,
        "cuts": r.sequential.cut_over_time(changes_only=True) if r.policy == OURS else [],
    }


def _sources(prepared: PreparedModel, device: str) -> dict:
    d, c = prepared.profile("device", device), prepared.profile("cloud", CLOUD)
    return {"device": d.label, "device_rests_on": d.calibration or "", "cloud": c.label}


def headline(results: dict) -> dict:
    """Per (model, device, trace) cell, ours against each baseline; per device class the
    best and the geometric mean of each ratio over its cells, the cells below the best
    contained baseline, and the onloading runs' SLO attainment."""
    rows = []
    for model, entry in results["models"].items():
        for device, d in entry["devices"].items():
            runs = [r for v in d["sets"].values() for r in v["runs"]]
            for trace in dict.fromkeys(r["trace"] for r in runs):
                m = {r["policy"]: r for r in runs if r["trace"] == trace}
                ours = m[OURS]
                rows.append(
                    {
                        "model": model,
                        "device": device,
                        "trace": trace,
                        "set": ours["set"],
                        "throughput_vs_device_only": ours["throughput_rps"] / m["device-only"]["throughput_rps"],
                        "throughput_vs_neurosurgeon": ours["throughput_rps"] / m["Neurosurgeon"]["throughput_rps"],
                        "throughput_vs_jalad": ours["throughput_rps"] / m["JALAD (8-bit + zstd)"]["throughput_rps"],
                        "latency_vs_device_only": m["device-only"]["mean_latency_s"] / ours["mean_latency_s"],
                        "latency_vs_neurosurgeon": m["Neurosurgeon"]["mean_latency_s"] / ours["mean_latency_s"],
                        "bytes_vs_float32_input": _ratio(
                            m["cloud-only (raw)"]["bytes_per_offload"], ours["bytes_per_offload"]
                        ),
                        "bytes_vs_image_upload": _ratio(
                            m.get(IMAGE_UPLOAD, {}).get("bytes_per_offload", math.nan), ours["bytes_per_offload"]
                        ),
                        "bytes_vs_neurosurgeon": _ratio(
                            m["Neurosurgeon"]["bytes_per_offload"], ours["bytes_per_offload"]
                        ),
                    }
                )
    ratios = [k for k in rows[0] if k not in ("model", "device", "trace", "set")]
    per_device = {}
    for device in dict.fromkeys(r["device"] for r in rows):
        mine = [r for r in rows if r["device"] == device]
        contained = [
            {"model": model, **c}
            for model, entry in results["models"].items()
            for c in entry["devices"][device]["contained"]
        ]
        onload = [
            {"model": model, **o}
            for model, entry in results["models"].items()
            for o in entry["devices"][device]["onloading"]
        ]
        per_device[device] = {
            "best": {k: _best(r[k] for r in mine) for k in ratios},
            "best_at": {k: _argbest(mine, k) for k in ratios},
            "geomean": {k: _geomean(r[k] for r in mine) for k in ratios},
            "cells": len(contained),
            "below_contained": [c for c in contained if not c["met"]],
            "worst_contained": min(min(c["latency_ratio"], c["throughput_ratio"]) for c in contained),
            "onloading_runs": len(onload),
            "onloading_feasible": sum(o["feasible"] for o in onload),
            "onloading_missed": [o for o in onload if o["feasible"] and o["met"] < SLO_TARGET],
        }
    return {"rows": rows, "devices": per_device}


def _finite(values) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _best(values) -> float:
    return max(_finite(values), default=math.nan)


def _geomean(values) -> float:
    v = _finite(values)
    return float(np.exp(np.mean(np.log(v)))) if v else math.nan


def _argbest(rows: list[dict], key: str) -> str:
    finite = [r for r in rows if math.isfinite(r[key])]
    if not finite:
        return ""
    r = max(finite, key=lambda r: r[key])
    return f"{r['model']}, {r['trace']}"


def _ratio(a: float, b: float) -> float:
    """``a / b``; NaN where either side sent nothing (no ratio to speak of)."""
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def _x(value: float, digits: int = 1) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}x"


def markdown(results: dict) -> str:
    devices = list(results["devices"])
    lines = [
        "# dyno-compile evaluation",
        "",
        f"Replays of {results['requests']} requests per policy and trace (sequential for latency, pipelined "
        "for throughput). Round trips assumed per set: "
        + ", ".join(f"{s} {1e3 * r:.0f} ms" for s, r in results["rtt_s"].items())
        + f". Took {results['seconds'] / 60:.1f} min on this host.",
        "",
        "Where the figures come from: bytes are measured on real frames of real inputs, accuracy simulated "
        "on the real labelled data (agreement with the float model for the two zoo models with random "
        "weights, which are timing models only). Device times are **estimates** for every board, anchored on "
        "published latencies (`docs/device-estimates.md`; each device's anchor rows are below), and measured "
        "on this host for the `host` reference. Cloud times are roofline **estimates** for an A100 from this "
        "host's measurement (no GPU was at hand). So every time, latency and throughput below for a board "
        "rests on estimates.",
        "",
        "## Devices",
        "",
        "| device | what | threads | FP32 peak GFLOP/s | memory GB/s | device time rests on |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    first = next(iter(results["models"].values()))
    for d in devices:
        info, src = results["devices"][d], first["devices"][d]["sources"]
        rests = src["device"] + (f"; {src['device_rests_on']}" if src["device_rests_on"] else "")
        lines.append(
            f"| {d} | {info['description']} | {info['threads']} | {info['peak_gflops']:.1f} | "
            f"{info['mem_bandwidth_gbs']:.1f} | {rests} |"
        )
    lines += [
        "",
        f"Cloud: {results['cloud']['description']} [{first['devices'][devices[0]]['sources']['cloud']}].",
        "",
        "Device-only latency per model (ms):",
        "",
        "| model | " + " | ".join(devices) + " |",
        "| --- |" + " ---: |" * len(devices),
    ]
    for model, entry in results["models"].items():
        lines.append(
            f"| {model} | " + " | ".join(f"{entry['devices'][d]['device_only_ms']:.1f}" for d in devices) + " |"
        )
    lines += ["", "## Traces", "", "| set | trace | direction | mean Mbit/s |", "| --- | --- | --- | ---: |"]
    for s, ts in results["traces"].items():
        lines += [f"| {s} | {t['name']} | {t['direction']} | {t['mean_mbit_s']:.2f} |" for t in ts]
    lines += _headline_markdown(results)
    if "live" in results:
        lines += _live_markdown(results["live"])
    for model, entry in results["models"].items():
        lines += _model_markdown(model, entry, list(results["rtt_s"]))
    return "\n".join(lines)


def _headline_markdown(results: dict) -> list[str]:
    h = results["headline"]["devices"]
    lines = [
        "",
        "## Headline per device class",
        "",
        "Best (and geometric mean) over the models and traces of each device class; DynO's published "
        "figures beside them. Ratios: ours' throughput over the baseline's (pipelined), the baseline's mean "
        "latency over ours' (sequential), bytes per offloaded inference of the baseline over ours'.",
        "",
        "| device | throughput vs device-only | vs Neurosurgeon | vs JALAD | latency vs device-only | "
        "bytes: float32 input / ours | bytes: Neurosurgeon / ours | bytes: image upload / ours |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for device, v in h.items():
        b, g = v["best"], v["geomean"]
        lines.append(
            f"| {device} | {_x(b['throughput_vs_device_only'])} ({_x(g['throughput_vs_device_only'], 2)}) | "
            f"{_x(b['throughput_vs_neurosurgeon'])} ({_x(g['throughput_vs_neurosurgeon'], 2)}) | "
            f"{_x(b['throughput_vs_jalad'])} ({_x(g['throughput_vs_jalad'], 2)}) | "
            f"{_x(b['latency_vs_device_only'])} ({_x(g['latency_vs_device_only'], 2)}) | "
            f"{_x(b['bytes_vs_float32_input'])} | {_x(b['bytes_vs_neurosurgeon'])} | "
            f"{_x(b['bytes_vs_image_upload'], 2)} |"
        )
    lines += [
        f"| DynO (paper) | {DYNO_CLAIMS['throughput_vs_device_only']} | "
        f"{DYNO_CLAIMS['throughput_vs_other_offloading']} (other offloading) | | | "
        f"{DYNO_CLAIMS['bytes_vs_float32']} | | |",
        "",
        "Where each best is reached: "
        + "; ".join(
            f"{d}: throughput vs device-only at {v['best_at']['throughput_vs_device_only']}, "
            f"vs Neurosurgeon at {v['best_at']['throughput_vs_neurosurgeon']}"
            for d, v in h.items()
        )
        + ".",
        "",
    ]
    low = next(iter(h))
    b = h[low]["best"]
    lines += [f"Goals on the {low} class:", ""]
    for key, goal in GOALS.items():
        ok = b[key] >= goal
        lines.append(f"- {key.replace('_', ' ')} >= {goal:g}x: {_x(b[key])}, {'met' if ok else '**missed**'}")
    lines += ["", "### Never below a baseline it contains", ""]
    lines.append(
        f"On every (model, device, trace) cell, ours' mean latency and throughput against the best of "
        f"device-only, cloud-only (raw and image-coded), Neurosurgeon and JALAD; a cell misses below "
        f"{1 - CONTAINED_TOLERANCE:.2f}. A baseline that served any request outside ours' accuracy budget is "
        "not contained (ours may not choose it) and is left out of that cell's comparison, as listed below."
    )
    lines += ["", "| device | cells | below | worst ratio |", "| --- | ---: | ---: | ---: |"]
    for device, v in h.items():
        lines.append(f"| {device} | {v['cells']} | {len(v['below_contained'])} | {v['worst_contained']:.3f} |")
    over = sorted(
        {
            (d, model, name)
            for model, entry in results["models"].items()
            for d in h
            for c in entry["devices"][d]["contained"]
            for name in c["over_budget"]
        }
    )
    if over:
        lines += [
            "",
            "Not contained (outside the accuracy budget) on some trace: "
            + "; ".join(f"{d}, {m}: {n}" for d, m, n in over)
            + ".",
        ]
    misses = [(d, c) for d, v in h.items() for c in v["below_contained"]]
    if misses:
        lines += ["", "Cells below:", ""]
        lines += [
            f"- {d}, {c['model']}, {c['trace']}: latency {c['latency_ratio']:.3f} (best {c['latency_best']}), "
            f"throughput {c['throughput_ratio']:.3f} (best {c['throughput_best']})"
            for d, c in misses
        ]
    lines += _onloading_markdown(results)
    return lines


def _onloading_markdown(results: dict) -> list[str]:
    h, sets = results["headline"]["devices"], list(results["rtt_s"])
    lines = [
        "",
        "### Onloading: the least cloud within a latency SLO",
        "",
        f"The onloading policy at SLOs of {', '.join(f'{f:g}' for f in results['slo_fractions'])} x the device's "
        "device-only latency, one request at a time. An SLO is feasible on a trace when our lowest-latency "
        f"policy met it on >= {100 * SLO_TARGET:.0f} % of requests; the others are counted, not judged. Per "
        "device class, SLO and trace set, over its feasible (model, trace) runs: how many, the mean share of "
        "requests within the SLO (the worst run's in brackets), and the cloud time per inference as a share "
        "of cloud-only's (the whole model in the cloud).",
        "",
        "| device | SLO x device-only | "
        + " | ".join(f"{s}: feasible | {s}: within SLO (worst) | {s}: cloud share" for s in sets)
        + " |",
        "| --- | ---: |" + " ---: | ---: | ---: |" * len(sets),
    ]
    for device in h:
        for fraction in results["slo_fractions"]:
            cells = []
            for s in sets:
                rows = [
                    o
                    for entry in results["models"].values()
                    for o in entry["devices"][device]["onloading"]
                    if o["set"] == s and o["slo_fraction"] == fraction
                ]
                ok = [o for o in rows if o["feasible"]]
                if not ok:
                    cells.append(f"0/{len(rows)} | - | -")
                    continue
                met = [o["met"] for o in ok]
                share = np.mean([o["cloud_share"] for o in ok])
                cells.append(
                    f"{len(ok)}/{len(rows)} | {100 * np.mean(met):.1f} % ({100 * min(met):.1f} %) | {share:.2f}"
                )
            lines.append(f"| {device} | {fraction:g} | " + " | ".join(cells) + " |")
    missed = [(d, o) for d, v in h.items() for o in v["onloading_missed"]]
    feasible = sum(v["onloading_feasible"] for v in h.values())
    lines += ["", f"Feasible runs below {100 * SLO_TARGET:.0f} % within SLO: {len(missed)} of {feasible}."]
    lines += [
        f"- {d}, {o['model']}, {o['trace']}, SLO {o['slo_ms']:.1f} ms: {100 * o['met']:.1f} % within "
        f"(lowest-latency: {100 * o['fastest_met']:.1f} %)"
        for d, o in missed
    ]
    return lines + [""]


def _model_markdown(model: str, entry: dict, sets: list[str]) -> list[str]:
    lines = [
        f"## {model}",
        "",
        f"Accuracy metric: {entry['metric']} (float model {100 * entry['baseline_accuracy']:.2f} %, budget "
        f"{entry['accuracy_budget']} points) on {entry['calibration']}; {entry['configurations']} "
        "configurations measured.",
        "",
    ]
    for device, d in entry["devices"].items():
        lines += [
            f"### {model} on {device} [{d['sources']['device']}], cloud [{d['sources']['cloud']}]",
            "",
            f"![latency, throughput and bytes per inference vs bandwidth]({model}_{device}_vs_bandwidth.png)",
            "",
            "| policy | "
            + " | ".join(f"{s} req/s | {s} mean ms" for s in sets)
            + " | bytes/offload | cloud ms/inf | accuracy |",
            "| --- |" + " ---: | ---: |" * len(sets) + " ---: | ---: | ---: |",
        ]
        summaries = {s: d["sets"][s]["summary"] for s in sets}
        for name in summaries[sets[0]]:
            per_set = [summaries[s][name] for s in sets]
            sent = _finite(m["offload_bytes"] for m in per_set)
            lines.append(
                f"| {name} | "
                + " | ".join(f"{m['throughput_rps']:.1f} | {m['mean_latency_ms']:.1f}" for m in per_set)
                + f" | {f'{np.mean(sent):.0f}' if sent else '-'} | {np.mean([m['cloud_ms'] for m in per_set]):.3f} | "
                f"{100 * np.mean([m['accuracy'] for m in per_set]):.2f} % |"
            )
        lines.append("")
    if PLOTTED_DEVICE in entry["devices"]:
        lines += [
            f"Chosen cut over time (ours, {PLOTTED_DEVICE}): "
            + ", ".join(f"![{s}]({model}_{s}_cuts.png)" for s in sets),
            "",
        ]
    return lines


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
