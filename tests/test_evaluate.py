"""The evaluation end to end on resnet20 (real CIFAR-10 weights and images) and one real LTE
uplink: the report and what it must hold, the cache, the command's errors, and the live
run over the real server and link shaper agreeing with the replay."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dyno_compile.evaluate.compare import OURS
from dyno_compile.evaluate.live import live_comparison
from dyno_compile.evaluate.prepare import prepare_model
from dyno_compile.evaluate.report import LIVE, run_evaluation
from dyno_compile.evaluate.traces import trace_set

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
POLICIES = {"device-only", "cloud-only (raw)", "cloud-only (JPEG)", "Neurosurgeon", "JALAD (8-bit + zstd)", OURS}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("evaluation")
    results = run_evaluation(
        out,
        models=["resnet20"],
        sets=["lte"],
        traces_per_set=1,
        requests=60,
        minutes=0.2,
        live=None,
        progress=lambda msg: None,
    )
    return out, results


def test_the_report_holds_every_policy_with_labelled_figures(evaluation):
    out, results = evaluation
    report = (out / "report.md").read_text()
    entry = results["models"]["resnet20"]
    for device, source in (("host", "measured:host"), ("arm64", "estimated:roofline:arm64")):
        d = entry["devices"][device]
        assert d["sources"]["device"].endswith(f"[{source}]")
        assert d["sources"]["cloud"].endswith("[estimated:roofline:cuda-sm80]")
        assert source in report
        summary = d["sets"]["lte"]["summary"]
        assert set(summary) == POLICIES
        for name, figures in summary.items():
            sent = figures["bytes"] > 0  # bytes per offloaded inference: NaN where nothing was sent
            assert all(math.isfinite(v) for k, v in figures.items() if sent or k != "offload_bytes"), (name, figures)
            assert f"| {name} | {figures['throughput_rps']:.1f} |" in report
    for png in ("resnet20_host_vs_bandwidth.png", "resnet20_arm64_vs_bandwidth.png", "resnet20_lte_cuts.png"):
        assert (out / png).read_bytes().startswith(PNG) and png in report
    stored = json.loads((out / "results.json").read_text())["headline"]
    nothing_sent = [
        (r["model"], r["device"], r["set"])
        for r in results["headline"]["rows"]
        if math.isnan(r["bytes_vs_neurosurgeon"])
    ]
    assert (
        nothing_sent
        and stored["rows"]
        and all(  # strict JSON: an undefined ratio is null
            r["bytes_vs_neurosurgeon"] is None
            for r in stored["rows"]
            if (r["model"], r["device"], r["set"]) in nothing_sent
        )
    )


def test_the_figures_say_what_each_policy_is(evaluation):
    _, results = evaluation
    entry = results["models"]["resnet20"]
    m = entry["devices"]["arm64"]["sets"]["lte"]["summary"]
    raw_input = 3 * 32 * 32 * 4
    assert m["device-only"]["bytes"] == 0 and m["device-only"]["cloud_ms"] == 0
    assert raw_input < m["cloud-only (raw)"]["bytes"] < raw_input + 256  # the float32 input and a header
    assert m["cloud-only (JPEG)"]["bytes"] == pytest.approx(entry["jpeg"]["bytes"], rel=1e-12)
    assert entry["jpeg"]["bytes"] < raw_input / 4
    for name in ("device-only", "cloud-only (raw)"):  # the float model's, averaged over the requests
        assert m[name]["accuracy"] == pytest.approx(entry["baseline_accuracy"], rel=1e-12)
    # Ours chooses among every measured configuration within the accuracy budget...
    assert m[OURS]["accuracy"] >= entry["baseline_accuracy"] - entry["accuracy_budget"] / 100 - 1e-9
    # ...so it is never much slower than a baseline that stays within the budget too.
    for name in ("device-only", "cloud-only (raw)", "Neurosurgeon"):
        assert m[OURS]["mean_latency_ms"] <= 1.05 * m[name]["mean_latency_ms"], name
        assert m[OURS]["throughput_rps"] >= m[name]["throughput_rps"] / 1.05, name
    assert m[OURS]["bytes"] < m["Neurosurgeon"]["bytes"] or m["Neurosurgeon"]["bytes"] == 0
    row = next(r for r in results["headline"]["rows"] if r["device"] == "arm64")
    assert row["throughput_vs_device_only"] == pytest.approx(
        m[OURS]["throughput_rps"] / m["device-only"]["throughput_rps"]
    )


def test_a_second_run_reuses_the_cached_measurements(evaluation, tmp_path):
    out, _ = evaluation
    messages: list[str] = []
    prepared = prepare_model("resnet20", out / "artifacts", progress=messages.append)
    assert messages == [f"resnet20: using the cached evaluation in {out / 'artifacts' / 'resnet20'}"]
    assert any(e.config.bits == "8" and e.config.codec == "zstd" for e in prepared.measured)  # JALAD's
    assert prepared.profile("device", "arm64").estimated


def test_the_command_refuses_unknown_models_and_sets_before_writing(tmp_path):
    for flag, value in (("--models", "resnet20,vgg99"), ("--sets", "wifi")):
        r = subprocess.run(
            [sys.executable, "-m", "dyno_compile", "evaluate", "--out", str(tmp_path / "r"), flag, value],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and value.split(",")[-1] in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "r").exists()


def test_the_live_system_agrees_with_the_replay(evaluation):
    """Bytes exactly (every frame, and per inference where both chose alike and frames have
    one length per configuration), latency within noise, on the report's live trace
    (Verizon-LTE-short) with the LTE round trip."""
    out, results = evaluation
    prepared = prepare_model("resnet20", out / "artifacts")
    trace = trace_set("lte", limit=LIVE[2] + 1)[LIVE[2]]
    runs = live_comparison(
        prepared,
        trace,
        rtt_s=results["rtt_s"]["lte"],
        requests=32,
        policy_names=("cloud-only (raw)", "JALAD (8-bit + zstd)", OURS),
    )
    for run in runs:
        s = run.summary()
        assert run.frames_exact, s
        assert run.fallbacks == 0, s
        if run.same_configs:
            # a codec-free frame has one length per configuration; a compressed one varies by
            # image, and the replay charges the configuration's mean over the calibration set
            fixed = all(r.config.codec == "none" for r in run.live)
            assert s["live_bytes"] == pytest.approx(s["replay_bytes"], rel=1e-12 if fixed else 1e-2), s
        assert 0.8 <= s["latency_ratio"] <= 1.25, s
    assert runs[0].same_configs  # cloud-only has one configuration
