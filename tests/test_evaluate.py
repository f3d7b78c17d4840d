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

from dyno_compile.configs import Config, Evaluation
from dyno_compile.evaluate import prepare
from dyno_compile.evaluate.compare import CONTAINED, IMAGE_UPLOAD, OURS, SLO_FRACTIONS, SLO_TARGET
from dyno_compile.evaluate.live import live_comparison
from dyno_compile.evaluate.prepare import UPLOAD_QUALITIES, codec_scale, image_uploads, prepare_model
from dyno_compile.evaluate.report import LIVE, run_evaluation
from dyno_compile.evaluate.traces import trace_set
from dyno_compile.search.pareto import SearchSpace
from dyno_compile.targets import get_target

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
POLICIES = {"device-only", "cloud-only (raw)", IMAGE_UPLOAD, "Neurosurgeon", "JALAD (8-bit + zstd)", OURS}
#: The fixture's device classes: the host (measured) and the low-tier board (estimated).
DEVICES = ("host", "rpi4")


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("evaluation")
    results = run_evaluation(
        out,
        models=["resnet20"],
        devices=DEVICES,
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
    for device in DEVICES:
        d = entry["devices"][device]
        label = d["sources"]["device"]
        assert label.endswith("[measured:host]" if device == "host" else f":{device}]"), label
        assert device == "host" or "[estimated:" in label
        assert d["sources"]["cloud"].endswith("[estimated:roofline:cuda-sm80]")
        assert label in report
        summary = d["sets"]["lte"]["summary"]
        assert set(summary) == POLICIES
        for name, figures in summary.items():
            sent = figures["bytes"] > 0  # bytes per offloaded inference: NaN where nothing was sent
            assert all(math.isfinite(v) for k, v in figures.items() if sent or k != "offload_bytes"), (name, figures)
            assert f"| {name} | {figures['throughput_rps']:.1f} | {figures['mean_latency_ms']:.1f} |" in report
        assert f"{d['device_only_ms']:.1f}" in report
    for png in ("resnet20_host_vs_bandwidth.png", "resnet20_rpi4_vs_bandwidth.png", "resnet20_lte_cuts.png"):
        assert (out / png).read_bytes().startswith(PNG) and png in report
    stored = json.loads((out / "results.json").read_text())["headline"]
    nothing_sent = [
        (r["model"], r["device"], r["trace"])
        for r in results["headline"]["rows"]
        if math.isnan(r["bytes_vs_neurosurgeon"])
    ]
    assert (
        nothing_sent
        and stored["rows"]
        and all(  # strict JSON: an undefined ratio is null
            r["bytes_vs_neurosurgeon"] is None
            for r in stored["rows"]
            if (r["model"], r["device"], r["trace"]) in nothing_sent
        )
    )
    assert "## Headline per device class" in report and "DynO (paper)" in report


def test_the_figures_say_what_each_policy_is(evaluation):
    _, results = evaluation
    entry = results["models"]["resnet20"]
    d = entry["devices"]["rpi4"]
    m = d["sets"]["lte"]["summary"]
    raw_input = 3 * 32 * 32 * 4
    assert m["device-only"]["bytes"] == 0 and m["device-only"]["cloud_ms"] == 0
    assert raw_input < m["cloud-only (raw)"]["bytes"] < raw_input + 256  # the float32 input and a header
    assert m[IMAGE_UPLOAD]["bytes"] < raw_input / 8  # an image codec's upload of the 8-bit input
    floor = entry["baseline_accuracy"] - entry["accuracy_budget"] / 100 - 1e-9
    assert m[IMAGE_UPLOAD]["accuracy"] >= floor  # held to the budget, as ours is
    for name in ("device-only", "cloud-only (raw)"):  # the float model's, averaged over the requests
        assert m[name]["accuracy"] == pytest.approx(entry["baseline_accuracy"], rel=1e-12)
    # Ours chooses among every measured configuration within the accuracy budget...
    assert m[OURS]["accuracy"] >= floor
    assert m[OURS]["bytes"] < m["Neurosurgeon"]["bytes"] or m["Neurosurgeon"]["bytes"] == 0
    # ...and the contained check says how it fares against the best of the baselines it contains
    (cell,) = d["contained"]
    runs = {r["policy"]: r for r in d["sets"]["lte"]["runs"]}
    contained = [n for n in CONTAINED if n in runs and n not in cell["over_budget"]]
    best_latency = min(runs[n]["mean_latency_s"] for n in contained)
    best_rate = max(runs[n]["throughput_rps"] for n in contained)
    assert cell["latency_ratio"] == pytest.approx(best_latency / runs[OURS]["mean_latency_s"])
    assert cell["throughput_ratio"] == pytest.approx(runs[OURS]["throughput_rps"] / best_rate)
    assert cell["met"] == (min(cell["latency_ratio"], cell["throughput_ratio"]) >= 0.97)
    row = next(r for r in results["headline"]["rows"] if r["device"] == "rpi4")
    assert row["throughput_vs_device_only"] == pytest.approx(
        runs[OURS]["throughput_rps"] / runs["device-only"]["throughput_rps"]
    )
    h = results["headline"]["devices"]["rpi4"]
    assert h["cells"] == 1 and h["best"]["throughput_vs_device_only"] == row["throughput_vs_device_only"]


def test_the_onloading_runs_report_slo_and_cloud_share(evaluation):
    _, results = evaluation
    d = results["models"]["resnet20"]["devices"]["rpi4"]
    assert [o["slo_fraction"] for o in d["onloading"]] == list(SLO_FRACTIONS)
    for o in d["onloading"]:
        assert o["slo_ms"] == pytest.approx(o["slo_fraction"] * d["device_only_ms"])
        assert 0.0 <= o["met"] <= 1.0 and 0.0 <= o["fastest_met"] <= 1.0
        assert o["feasible"] == (o["fastest_met"] >= SLO_TARGET)
        assert o["cloud_share"] == pytest.approx(o["cloud_ms"] / o["cloud_only_ms"])
        assert o["cloud_share"] <= 1.0 + 1e-9 or o["offloaded"] > 0
    missed = results["headline"]["devices"]["rpi4"]["onloading_missed"]
    assert missed == [{"model": "resnet20", **o} for o in d["onloading"] if o["feasible"] and o["met"] < SLO_TARGET]


def test_a_second_run_reuses_the_cached_measurements(evaluation, tmp_path):
    out, _ = evaluation
    messages: list[str] = []
    prepared = prepare_model("resnet20", out / "artifacts", devices=DEVICES, progress=messages.append)
    assert messages == [f"resnet20: using the cached evaluation in {out / 'artifacts' / 'resnet20'}"]
    assert any(e.config.bits == "8" and e.config.codec == "zstd" for e in prepared.measured)  # JALAD's
    assert prepared.profile("device", "rpi4").source == "estimated:anchored:rpi4"
    assert "rows: rpi4 ncnn 4t" in prepared.profile("device", "rpi4").calibration  # what the estimate rests on
    cache = json.loads((out / "artifacts" / "resnet20" / "evaluate.json").read_text())
    assert cache["timed_for"] == sorted([*DEVICES, "cuda-sm80"])  # the baselines were chosen for these
    assert all(not p["source"].startswith("estimated:") for p in cache["profiles"])  # estimates are made afresh


def test_the_command_refuses_unknown_models_and_sets_before_writing(tmp_path):
    for flag, value in (
        ("--models", "resnet20,vgg99"),
        ("--sets", "wifi"),
        ("--devices", "rpi4,pdp11"),
        ("--requests", "0"),
    ):
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
    prepared = prepare_model("resnet20", out / "artifacts", devices=DEVICES)
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


def test_the_image_upload_baseline_climbs_qualities_until_one_is_within_budget(monkeypatch):
    """Per codec, the lowest quality within the budget and nothing above it; a codec never
    within it is measured at every quality; codecs the space lacks are not measured."""
    monkeypatch.setattr(prepare, "UPLOAD_CODECS", ("webp", "jpeg", "avif"))
    space = SearchSpace((0, 3, 7), ("float32", "8"), device_only_cut=7, image_codecs=("jpeg", "webp"), qualities=(50,))
    accuracy = {("jpeg", q): 0.90 - (90 - q) / 100 for q in UPLOAD_QUALITIES} | {
        ("webp", q): 0.80 for q in UPLOAD_QUALITIES
    }
    asked: list[Config] = []

    def measure(config: Config) -> Evaluation:
        asked.append(config)
        return Evaluation(config, 1e-3, 1e-3, 100.0 * config.level, accuracy[config.codec, config.level], 1.0)

    seen: dict[Config, Evaluation] = {}
    measured = image_uploads(space, seen, baseline=0.91, budget=2.0, measure=measure)
    jpeg = [c.level for c in measured if c.codec == "jpeg"]
    assert jpeg == [75, 90]  # q75 loses 16 points, q90 one: the climb stops there
    assert [c.level for c in measured if c.codec == "webp"] == list(UPLOAD_QUALITIES)  # never within
    assert asked == measured and set(seen) == set(measured)
    assert image_uploads(space, seen, baseline=0.91, budget=2.0, measure=measure) == []  # all cached now
    assert "avif" not in {c.codec for c in measured}  # the space has no avif


def test_codec_time_on_a_board_scales_by_one_cores_peak():
    host, rpi4 = get_target("host"), get_target("rpi4")
    assert codec_scale("host") == 1.0
    assert codec_scale("rpi4") == pytest.approx((host.peak_gflops / host.threads) / (rpi4.peak_gflops / rpi4.threads))
    assert codec_scale("rpi4") > codec_scale("rpi5") > 1.0  # an A72 core is slower than an A76
