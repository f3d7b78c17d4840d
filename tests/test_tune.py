"""MetaSchedule tuning (dyno_compile.targets.tune) and its records (targets.records): tuning writes them, a second
run reuses them with no new trial, the tuned build equals the IR interpreter, functions
without records keep the tuning-free schedule, and missing, corrupt or foreign records
fail clearly. One tiny tuning run (one conv+relu, a few trials, random cost model) is
shared by the fast tests; a ResNet-20 tuning run is marked slow."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import rel_err
from dyno_compile.ir import Graph, Interpreter
from dyno_compile.targets import get_target
from dyno_compile.targets.compile import fused_module
from dyno_compile.targets.records import (
    DATABASE_FILES,
    META_FILE,
    RECORD_FILE,
    RECORD_FILES,
    WORKLOAD_FILE,
    TuneError,
    apply_records,
    match_records,
    records_fingerprint,
    tuned_functions,
)
from dyno_compile.targets.schedule import schedule_module
from dyno_compile.targets.tune import tune

TRIALS = 8
FAST = dict(trials_per_iter=TRIALS, cost_model="random", population=32)


def conv_relu_graph(channels: int = 8, size: int = 12, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph(f"conv_relu_{channels}_{size}")
    g.add_input("x", (1, 4, size, size))
    g.add_const("w", rng.normal(size=(channels, 4, 3, 3)).astype(np.float32))
    g.add_const("b", rng.normal(size=(channels,)).astype(np.float32))
    c = g.add("conv2d", ["x", "w", "b"], {"padding": ((1, 1), (1, 1))}, name="conv")
    r = g.add("relu", [c.name], name="relu")
    g.set_outputs([r.name])
    return g


def build_and_run(mod, x: np.ndarray):
    """Schedule what is left with the tuning-free schedule, build, run on the host."""
    import tvm
    from tvm import relax

    host = get_target("host")
    target = host.tvm_target()
    mod, report = schedule_module(mod, target, threads=host.threads)
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(mod, target, relax_pipeline="default_build")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), report


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One tuning run of a conv+relu: (graph, fused module, records dir, result, progress events)."""
    g = conv_relu_graph()
    mod = fused_module(g, "host")
    work = tmp_path_factory.mktemp("records") / "conv_relu"
    events = []
    result = tune(mod, "host", work, trials=TRIALS, min_task_share=0.0, progress=events.append, **FAST)
    return g, mod, work, result, events


def test_tuning_writes_records(tuned):
    g, mod, work, result, events = tuned
    for name in RECORD_FILES:
        assert (work / name).is_file(), name
    assert result.trials_before == 0 and result.trials_run == TRIALS and len(result.tasks) == 1
    lines = (work / RECORD_FILE).read_text().splitlines()
    assert len(lines) == TRIALS
    assert events and events[-1].trials_done == TRIALS and events[-1].trials_budget == TRIALS
    assert all(e.task == result.tasks[0] for e in events)
    task = result.tasks[0]
    assert result.best_us[task] is not None and result.baseline_us[task] is not None
    meta = json.loads((work / META_FILE).read_text())
    assert meta["target_name"] == "host" and meta["runs"][-1]["trials_run"] == TRIALS
    match = match_records(mod, work)
    assert match.complete and sorted(match.tuned + match.slower) == [task] and match.unused_workloads == 0
    fp = records_fingerprint(work)
    assert fp["records"] == TRIALS and len(fp["workloads"]) == 1 and len(fp["sha256"]) == 64
    assert fp["target"]["kind"] == "llvm"


def test_second_run_reuses_records(tuned):
    g, mod, work, result, _ = tuned
    before = records_fingerprint(work)
    again = tune(fused_module(g, "host"), "host", work, trials=TRIALS, **FAST)
    assert again.trials_before == TRIALS and again.trials_run == 0
    assert again.seconds < 10
    assert again.best_us == result.best_us
    assert records_fingerprint(work) == before  # nothing written


def test_resume_runs_only_the_remaining_trials(tuned, tmp_path):
    g, mod, work, _, _ = tuned
    copy = tmp_path / "records"
    shutil.copytree(work, copy)
    more = tune(mod, "host", copy, trials=TRIALS + 4, min_task_share=0.0, **{**FAST, "trials_per_iter": 4})
    assert more.trials_before == TRIALS and more.trials_run == 4
    assert len((copy / RECORD_FILE).read_text().splitlines()) == TRIALS + 4
    assert len(json.loads((copy / META_FILE).read_text())["runs"]) == 2


def test_tuned_build_equals_interpreter(tuned):
    g, mod, work, result, _ = tuned
    applied = apply_records(mod, "host", work, only_faster=False)  # the record, even if it lost
    assert tuned_functions(applied) == result.tasks
    x = np.random.default_rng(1).standard_normal((1, 4, 12, 12)).astype(np.float32)
    got, report = build_and_run(applied, x)
    assert report.functions == {result.tasks[0]: "default (already scheduled)"}
    assert rel_err(got, np.asarray(Interpreter(g)(x))) <= 1e-5


def test_apply_keeps_tuning_free_schedule_where_records_lost(tuned):
    g, mod, work, result, _ = tuned
    applied = apply_records(mod, "host", work)
    assert tuned_functions(applied) == match_records(mod, work).tuned == result.improved
    x = np.random.default_rng(2).standard_normal((1, 4, 12, 12)).astype(np.float32)
    got, _ = build_and_run(applied, x)
    assert rel_err(got, np.asarray(Interpreter(g)(x))) <= 1e-5


def test_module_without_records_falls_back_to_tuning_free(tuned):
    _, _, work, _, _ = tuned
    other = conv_relu_graph(channels=16, size=10, seed=3)  # other shapes: other workloads
    mod = fused_module(other, "host")
    match = match_records(mod, work)
    assert match.tuned == [] and match.slower == [] and len(match.untuned) == 1 and match.unused_workloads == 1
    applied = apply_records(mod, "host", work)
    assert tuned_functions(applied) == []
    x = np.random.default_rng(4).standard_normal((1, 4, 10, 10)).astype(np.float32)
    got, report = build_and_run(applied, x)
    assert set(report.functions.values()) == {"tiled"}
    assert rel_err(got, np.asarray(Interpreter(other)(x))) <= 1e-5


def test_records_ship_with_an_artifact(tuned, tmp_path):
    """The record files alone, copied elsewhere, apply the same way and fingerprint the same."""
    g, mod, work, _, _ = tuned
    shipped = tmp_path / "artifact" / "records"
    shipped.mkdir(parents=True)
    for name in RECORD_FILES:
        shutil.copy(work / name, shipped / name)
    assert records_fingerprint(shipped) == records_fingerprint(work)
    a = apply_records(mod, "host", shipped, only_faster=False)
    b = apply_records(mod, "host", work, only_faster=False)
    assert tuned_functions(a) == tuned_functions(b)
    import tvm

    tvm.ir.assert_structural_equal(a, b)


# --------------------------------------------------------------------------- errors
def test_missing_records_are_an_error(tuned, tmp_path):
    _, mod, work, _, _ = tuned
    with pytest.raises(TuneError, match="not a directory.*run tune first"):
        apply_records(mod, "host", tmp_path / "nowhere")
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(work / WORKLOAD_FILE, half / WORKLOAD_FILE)
    with pytest.raises(TuneError, match=f"{RECORD_FILE} missing"):
        apply_records(mod, "host", half)
    with pytest.raises(TuneError, match="incomplete"):
        tune(mod, "host", half, trials=1, **FAST)


@pytest.mark.parametrize("damage", ["truncated", "not_a_record", "bad_workload_index", "bad_meta"])
def test_corrupt_records_are_an_error(tuned, tmp_path, damage):
    _, mod, work, _, _ = tuned
    bad = tmp_path / "bad"
    shutil.copytree(work, bad)
    rec = bad / RECORD_FILE
    if damage == "truncated":
        text = rec.read_text()
        # cut inside a line: half the length may fall on a line break, leaving whole records
        rec.write_text(text[: text.index("\n", len(text) // 2) - 1])
        pattern = "corrupt"
    elif damage == "not_a_record":
        rec.write_text('{"hello": 1}\n')
        pattern = "line 1 is not a tuning record"
    elif damage == "bad_workload_index":
        rows = [json.loads(line) for line in rec.read_text().splitlines()]
        rows[0][0] = 7
        rec.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        pattern = "names workload 7"
    else:
        (bad / META_FILE).write_text("{not json")
        pattern = f"{META_FILE} is corrupt"
    with pytest.raises(TuneError, match=pattern):
        apply_records(mod, "host", bad)
    if damage != "bad_meta":
        with pytest.raises(TuneError, match=pattern):
            records_fingerprint(bad)


def test_records_for_another_target_are_an_error(tuned, tmp_path):
    _, mod, work, _, _ = tuned
    with pytest.raises(TuneError, match=r"another target.*'arm64'"):
        apply_records(mod, "arm64", work)
    # records measured on another CPU: every record names its target
    other = tmp_path / "other_cpu"
    shutil.copytree(work, other)
    (other / META_FILE).unlink()
    rows = [json.loads(line) for line in (other / RECORD_FILE).read_text().splitlines()]
    for r in rows:
        r[1][2] = {**r[1][2], "mcpu": "cortex-a76"} if isinstance(r[1][2], dict) else r[1][2]
    (other / RECORD_FILE).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(TuneError, match="mcpu"):
        apply_records(mod, "host", other)
    with pytest.raises(TuneError, match="mcpu"):
        tune(mod, "host", other, trials=TRIALS + 1, **FAST)


def test_tune_refuses_targets_it_cannot_measure(tmp_path):
    mod = fused_module(conv_relu_graph(), "arm64")
    with pytest.raises(TuneError, match="does not run target 'arm64'"):
        tune(mod, "arm64", tmp_path / "r", trials=4)
    with pytest.raises(TuneError, match="trials must be >= 0"):
        tune(fused_module(conv_relu_graph(), "host"), "host", tmp_path / "r", trials=-1)


def test_xgb_cost_model_without_xgboost_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xgboost" else real(name, *a))
    with pytest.raises(TuneError, match=r"needs the xgboost package.*\[tune\]"):
        tune(fused_module(conv_relu_graph(), "host"), "host", tmp_path / "r", trials=4, cost_model="xgb")


def test_database_files_are_metaschedules():
    assert DATABASE_FILES == ("database_workload.json", "database_tuning_record.json")


# --------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_resnet20_tuned_equals_interpreter(tmp_path):
    """A real model with the xgb cost model: records apply, the build matches the interpreter."""
    pytest.importorskip("xgboost", reason="the xgb cost model needs the tune extra: pip install -e '.[test,tune]'")
    from dyno_compile import zoo
    from dyno_compile.frontend.jax_import import from_jax
    from dyno_compile.passes import run_passes

    m = zoo.get_model("resnet20")
    g = run_passes(from_jax(m.fn, m.params, m.random_input()))
    mod = fused_module(g, "host")
    result = tune(mod, "host", tmp_path / "r20", trials=64, trials_per_iter=16, population=128)
    assert result.trials_run == 64
    applied = apply_records(mod, "host", tmp_path / "r20", only_faster=False)
    assert len(tuned_functions(applied)) >= 4
    x = m.random_input(1)
    got, _ = build_and_run(applied, x)
    assert rel_err(got, np.asarray(Interpreter(g)(x))) <= 1e-4
