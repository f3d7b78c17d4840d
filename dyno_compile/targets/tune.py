"""Optional MetaSchedule tuning: records saved in a directory (:mod:`.records`), reused by
later builds, shipped with an artifact.

The unit of tuning is the *fused* Relax module, after the ``"zero"`` pipeline (legalize,
fold constants, fuse): the module :func:`dyno_compile.targets.compile_graph` schedules
(:func:`dyno_compile.targets.compile.fused_module` builds the same one from a graph).
Each fused ``PrimFunc`` is one MetaSchedule task, keyed in the database by the structural
hash of the function (its *workload*); :mod:`dyno_compile.targets.records` reads, checks
and applies the records.

Usage::

    from dyno_compile.targets.compile import fused_module
    from dyno_compile.targets.records import apply_records
    from dyno_compile.targets.tune import tune

    mod = fused_module(graph, "host")
    tune(mod, "host", "records/resnet20", trials=500)          # writes the records
    ...
    mod = apply_records(mod, "host", "records/resnet20")       # at build time, same module
    mod, report = schedule_module(mod, target)                 # schedules what was not tuned

(``compile_graph(graph, "host", records="records/resnet20")`` does the last two steps.)

**Tuned or tuning-free, per function.** ``tune`` times the tuning-free schedule
(:mod:`dyno_compile.targets.schedule`) of every function before tuning (to skip functions
too small to matter) and, after tuning, times it again side by side with each function's
best record, with the builder and runner the candidates use; ``apply_records`` applies a
record only where it won that comparison, and leaves the other functions to the
tuning-free schedule. A small budget therefore does not make a build slower than the
tuning-free one (within measurement noise).

**Resumable.** ``trials`` is the total budget for the module's functions in the
directory, counting the records already there: a second ``tune`` with the same budget
runs no trial, a larger budget runs only the difference, and MetaSchedule's evolutionary
search seeds its population from the stored best records.

Two measured costs are avoided (``../shared/docs/tvm-0.27-notes.md``):

* MetaSchedule's tuning context imports ``tvm.s_tir.tensor_intrin`` (34 s on this 2-core
  machine, 60-80 s in the notes), mostly registering CUDA tensor-core intrinsics. ``tune``
  installs a lazy package instead that registers only the CPU intrinsics (x86, ARM,
  RISC-V, Hexagon: 3-5 s) and imports any other submodule (``.cuda``) when it is
  imported by name (``_light_tensor_intrinsics``; ``light_intrinsics=False`` opts out).
* The local builder imports the same package in every fresh worker process, and starts
  a fresh pool per batch; candidates here are built by :func:`_build_candidate`, the
  default build without that import (the workers import this module instead). A batch of
  four small builds on two workers took 6.5 s this way, 32-55 s with the default build.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyno_compile.targets.cut_kernels import is_cut_kernel
from dyno_compile.targets.records import (
    MODULE_EQUALITY,
    TuneError,
    best_per_workload,
    check_target,
    has_tables,
    module_workload_hash,
    open_database,
    read_meta,
    read_tables,
    record_us,
    target_dict,
    winners,
    write_meta,
)
from dyno_compile.targets.schedule_common import SCHEDULED_ATTR
from dyno_compile.targets.spec import TargetSpec, get_target, host_cpu_count

__all__ = ["TuneProgress", "TuneResult", "tune"]


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class TuneProgress:
    """Passed to ``tune``'s ``progress`` callback after each measured batch."""

    #: Fused function (task) just measured.
    task: str
    #: Trials measured in this run so far, and this run's budget (``trials`` minus the
    #: records already there).
    trials_done: int
    trials_budget: int
    #: Candidates in the batch just measured, and how many of them failed to build or run.
    batch: int
    batch_failed: int
    #: Best time per task measured in this run so far (microseconds; None: none yet).
    best_us: dict[str, float | None]
    #: Seconds since ``tune`` started.
    elapsed_s: float


@dataclass
class TuneResult:
    """What :func:`tune` did."""

    work_dir: Path
    #: Tasks (fused function names), in extraction order.
    tasks: list[str]
    #: Records of these tasks before the run, trials run now, and the total budget.
    trials_before: int
    trials_run: int
    trials: int
    seconds: float
    #: Best record per task after the run, microseconds (None: no successful record).
    best_us: dict[str, float | None] = field(default_factory=dict)
    #: The tuning-free schedule's time per task, microseconds, timed before tuning (None: not measured).
    baseline_us: dict[str, float | None] = field(default_factory=dict)
    #: Tuning-free schedule and best record timed side by side after tuning, microseconds,
    #: per task tuned (this run or before): what decides which records apply.
    paired_us: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    #: Tasks this run did not tune (too small a share of the time, or at their cap).
    skipped: list[str] = field(default_factory=list)
    #: Tasks whose best record beats the tuning-free schedule (``apply_records`` applies those).
    improved: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.tasks)} tasks, {len(self.improved)} faster than the tuning-free schedule; "
            f"{self.trials_before} records reused, {self.trials_run} trials run in {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------- tune
def _build_candidate(mod, target, _params):
    """MetaSchedule's default candidate build without ``import tvm.s_tir.tensor_intrin``.

    Runs in the local builder's worker processes, which unpickle it by reference (they
    import this module, about 2 s, instead of the 35-80 s intrinsic registry).
    Tensorized candidates already carry their intrinsic's body: the build needs no registry.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


_CPU_INTRINSICS = ("x86", "arm_cpu", "riscv_cpu", "hexagon")


def _light_tensor_intrinsics() -> None:
    """Make ``import tvm.s_tir.tensor_intrin`` register only the CPU intrinsics.

    Installs the package as a lazy module whose submodules still import by name (dlight's
    GPU matmul imports ``tvm.s_tir.tensor_intrin.cuda``), so MetaSchedule's tuning
    context, which imports the package for its side effect, costs 3-5 s instead of
    35-80 s. Does nothing when the package is already imported.
    """
    import importlib
    import importlib.util
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return
    pkg = types.ModuleType(name, "Tensor intrinsics: CPU ones registered (dyno_compile.targets.tune)")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__package__ = name
    pkg.__spec__ = spec
    sys.modules[name] = pkg
    try:
        for sub in _CPU_INTRINSICS:
            setattr(pkg, sub, importlib.import_module(f"{name}.{sub}"))
    except Exception:  # noqa: BLE001 - fall back to the real (slow) package
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


class _MetaScheduleLogging:
    """MetaSchedule's loggers for one run: file logs in ``work_dir/logs``, console only
    for warnings unless ``verbose``; the logger's previous handlers are restored after.

    MetaSchedule's logger set-up reuses the handlers already on its logger and fails on
    one without a name (pytest's capture adds such): it gets a clean logger here."""

    NAME = "tvm.s_tir.meta_schedule"

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def __enter__(self) -> None:
        lg = logging.getLogger(self.NAME)
        self.saved = (lg.handlers[:], lg.level, lg.propagate)
        lg.handlers = []
        lg.setLevel(logging.INFO if self.verbose else logging.WARNING)  # sets the console handler's level

    def __exit__(self, *_: Any) -> None:
        lg = logging.getLogger(self.NAME)
        for h in lg.handlers:
            if h not in self.saved[0]:
                h.close()
        lg.handlers, level, lg.propagate = self.saved[0], self.saved[1], self.saved[2]
        lg.setLevel(level)


class _Measured:
    """A measure callback: counts trials, tracks the best time per task, reports progress."""

    def __init__(
        self, names: list[str], budget: int, t0: float, progress: Callable[[TuneProgress], None] | None
    ) -> None:
        self.names, self.budget, self.t0, self.progress = names, budget, t0, progress
        self.count = 0
        self.best: dict[str, float | None] = {n: None for n in names}

    def callback(self):
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        outer = self

        @derived_object
        class _Callback(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                outer.record(task_id, len(measure_candidates), builder_results, runner_results)

        return _Callback()

    def record(self, task_id: int, batch: int, builder_results, runner_results) -> None:
        name = self.names[task_id]
        failed = 0
        for b, r in zip(builder_results, runner_results):
            us = record_us(r.run_secs) if b.error_msg is None and r.error_msg is None else None
            if us is None:
                failed += 1
            else:
                best = self.best[name]
                self.best[name] = us if best is None else min(best, us)
        self.count += batch
        if self.progress is not None:
            self.progress(
                TuneProgress(
                    task=name,
                    trials_done=self.count,
                    trials_budget=self.budget,
                    batch=batch,
                    batch_failed=failed,
                    best_us=dict(self.best),
                    elapsed_s=time.perf_counter() - self.t0,
                )
            )


def _measure(mods: dict[Any, Any], builder, runner, target, passes: int = 2) -> dict[Any, float | None]:
    """Time one-function scheduled modules as MetaSchedule times candidates (same builder
    and runner): ``passes`` rounds over all of them, the fastest round kept (the first
    round in a fresh runner worker measured up to 5x slow here)."""
    from tvm.s_tir import meta_schedule as ms

    keys = list(mods)
    built = builder.build([ms.builder.BuilderInput(mods[k], target) for k in keys])
    out: dict[Any, float | None] = {k: None for k in keys}
    ok = [(k, b) for k, b in zip(keys, built) if b.error_msg is None]
    try:
        inputs = [
            ms.runner.RunnerInput(b.artifact_path, "cpu", ms.arg_info.ArgInfo.from_prim_func(mods[k]["main"]))
            for k, b in ok
        ]
        for _ in range(passes):
            for (k, _b), future in zip(ok, runner.run(inputs)):
                r = future.result()
                us = record_us(r.run_secs) if r.error_msg is None else None
                if us is not None:
                    best = out[k]
                    out[k] = us if best is None else min(best, us)
    finally:
        for b in built:
            if b.artifact_path:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
    return out


def _tuning_free(wmod, spec: TargetSpec):
    """The tuning-free schedule of a one-function workload module (a scheduled copy)."""
    from dyno_compile.targets.schedule import schedule_module

    return schedule_module(wmod.clone(), spec.tvm_target(), threads=spec.threads)[0]  # it updates its argument


def _best_record_mod(database, wmod, target):
    """The workload module with its best record's schedule applied, or None."""
    sch = database.query_schedule(wmod, target, "main")
    return None if sch is None else sch.mod


def _paired(database, wmods: dict[str, Any], spec: TargetSpec, builder, runner) -> dict[str, dict]:
    """Tuning-free schedule and best record of each workload (hash -> module), timed side
    by side; also notes which record was the database's best (its stored time)."""
    target = spec.tvm_target()
    mods: dict[tuple[str, str], Any] = {}
    db_best: dict[str, float | None] = {}
    for h, wmod in wmods.items():
        rec = _best_record_mod(database, wmod, target)
        if rec is None:
            continue
        top = database.get_top_k(database.commit_workload(wmod), 1)
        db_best[h] = record_us(top[0].run_secs) if top else None
        mods[(h, "record")] = rec
        mods[(h, "tuning_free")] = _tuning_free(wmod, spec)
    times = _measure(mods, builder, runner, target) if mods else {}
    return {
        h: {"tuning_free_us": times.get((h, "tuning_free")), "record_us": times.get((h, "record")), "db_best_us": us}
        for h, us in db_best.items()
    }


def _select_tasks(
    tasks, names: list[str], hashes: dict[str, str], baseline: dict[str, float], at_cap: set[str], min_share: float
) -> list[int]:
    """Tasks worth tuning: not at their cap, and taking at least ``min_share`` of the
    module's tuning-free time (time x calls); tasks whose time is unknown are kept."""
    cost = {n: baseline.get(hashes[n]) for n in names}
    known = [cost[n] * t.weight for n, t in zip(names, tasks) if cost[n] is not None]
    total = sum(known)
    keep = []
    for i, (n, t) in enumerate(zip(names, tasks)):
        if n in at_cap:
            continue
        if cost[n] is not None and total > 0 and cost[n] * t.weight < min_share * total:
            continue
        keep.append(i)
    return keep


def tune(
    mod,
    target: TargetSpec | str,
    work_dir: str | os.PathLike,
    *,
    trials: int,
    trials_per_task: int | None = None,
    trials_per_iter: int = 32,
    min_task_share: float = 0.01,
    cost_model: str = "xgb",
    population: int = 512,
    seed: int | None = 0,
    builder_timeout_s: float = 120.0,
    runner_timeout_s: float = 60.0,
    workers: int | None = None,
    progress: Callable[[TuneProgress], None] | None = None,
    verbose: bool = False,
    light_intrinsics: bool = True,
) -> TuneResult:
    """Tune the fused functions of ``mod`` with MetaSchedule; records go to ``work_dir``.

    ``mod`` is the fused module (after the ``"zero"`` pipeline; see :func:`fused_module`);
    functions already scheduled and cut kernels (quantize, pack, ...: they have their own
    schedules) are not tuned. ``trials`` is the total number of measured candidates for its functions *including*
    the records already in ``work_dir``: only the difference runs (nothing when the
    directory already holds that many). ``trials_per_task`` caps each function's total
    the same way (tasks at the cap are skipped; MetaSchedule caps the others per run).
    ``trials_per_iter`` candidates are built and measured per batch; MetaSchedule's task
    scheduler first gives every task one batch, so a budget under ``tasks x
    trials_per_iter`` leaves the last tasks untuned (they keep the tuning-free schedule).
    Before tuning, the tuning-free schedule of every function is timed; functions under
    ``min_task_share`` of the module's tuning-free time (time x calls) are not tuned
    (pads, pooling, the classifier: not worth a batch of trials each).

    ``cost_model`` is ``"xgb"`` (needs the ``xgboost`` package), ``"random"`` or ``"mlp"``;
    ``population`` is the evolutionary search's population (MetaSchedule's default 512;
    smaller searches faster between batches: small budgets, tests). ``workers`` build
    processes (default: the cores this process may use); candidates are timed one at a
    time with ``TVM_NUM_THREADS`` threads, on this machine: ``target`` must be the host.
    ``progress`` is called with a :class:`TuneProgress` after each measured batch.
    ``verbose`` keeps MetaSchedule's console log (its log files go to ``work_dir/logs``).
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks, extracted_tasks_to_tune_contexts

    spec = get_target(target)
    if not spec.is_host:
        raise TuneError(
            f"tune measures candidates on this machine, which does not run target {spec.name!r}; "
            "tune on the device itself (records made there apply here with apply_records)"
        )
    if trials < 0:
        raise TuneError(f"trials must be >= 0, got {trials}")
    # Arguments first, then the optional dependency: a wrong call says what is wrong with it
    # whichever extras are installed.
    if cost_model == "xgb" and importlib.util.find_spec("xgboost") is None:
        raise TuneError(
            "the xgb cost model needs the xgboost package, which the 'tune' extra installs: "
            "pip install -e '.[tune]' (or pass cost_model='random')"
        )
    work_dir = Path(work_dir)
    t0 = time.perf_counter()
    tvm_target = spec.tvm_target()
    meta = read_meta(work_dir) if work_dir.is_dir() else {}
    counts: dict[str, int] = {}
    best: dict[str, float] = {}
    if work_dir.is_dir() and has_tables(work_dir):
        workloads, records = read_tables(work_dir)
        check_target(work_dir, spec, records, meta)
        for r in records:
            counts[workloads[r[0]][0]] = counts.get(workloads[r[0]][0], 0) + 1
        best = best_per_workload(workloads, records)

    tasks = [
        t
        for t in extract_tasks(mod, tvm_target, module_equality=MODULE_EQUALITY)
        if not t.mod.attrs.get(SCHEDULED_ATTR, False) and not is_cut_kernel(t.dispatched[0]["main"])
    ]
    names = [t.task_name for t in tasks]
    hashes = {n: module_workload_hash(t.dispatched[0]) for n, t in zip(names, tasks)}
    before = sum(counts.get(hashes[n], 0) for n in names)
    budget = trials - before
    at_cap = {n for n in names if trials_per_task is not None and counts.get(hashes[n], 0) >= trials_per_task}
    result = TuneResult(work_dir=work_dir, tasks=names, trials_before=before, trials_run=0, trials=trials, seconds=0.0)
    baseline = dict(meta.get("baseline_us", {}))
    if budget > 0 and len(at_cap) < len(names):
        if light_intrinsics:
            _light_tensor_intrinsics()
        database = open_database(work_dir, create=True)
        workers = workers or host_cpu_count()
        logs = _MetaScheduleLogging(verbose)
        selected: list[int] = []
        measured = None
        paired = dict(meta.get("paired", {}))
        try:
            logs.__enter__()
            builder = ms.builder.LocalBuilder(
                f_build=_build_candidate, timeout_sec=builder_timeout_s, max_workers=workers
            )
            runner = ms.runner.LocalRunner(timeout_sec=runner_timeout_s)
            todo = {n: _tuning_free(t.dispatched[0], spec) for n, t in zip(names, tasks) if hashes[n] not in baseline}
            if todo:
                for n, us in _measure(todo, builder, runner, tvm_target).items():
                    if us is not None:
                        baseline[hashes[n]] = us
            selected = _select_tasks(tasks, names, hashes, baseline, at_cap, min_task_share)
            per_task = None
            if trials_per_task is not None and selected:
                per_task = max(trials_per_task - counts.get(hashes[names[i]], 0) for i in selected)
            if selected:
                measured = _Measured([names[i] for i in selected], budget, t0, progress)
                strategy = ms.search_strategy.EvolutionarySearch(
                    population_size=population, init_min_unmeasured=min(50, population)
                )
                contexts, weights = extracted_tasks_to_tune_contexts(
                    [tasks[i] for i in selected], str(work_dir), strategy=strategy, num_threads=workers, seed=seed
                )
                callbacks = [*ms.measure_callback.MeasureCallback.create("default"), measured.callback()]
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=str(work_dir),
                    max_trials_global=budget,
                    max_trials_per_task=per_task,
                    num_trials_per_iter=trials_per_iter,
                    builder=builder,
                    runner=runner,
                    database=database,
                    cost_model=cost_model,
                    measure_callbacks=callbacks,
                    module_equality=MODULE_EQUALITY,
                )
                paired.update(
                    _paired(
                        database, {hashes[names[i]]: tasks[i].dispatched[0] for i in selected}, spec, builder, runner
                    )
                )
        except TuneError:
            raise
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            raise TuneError(
                f"tuning {len(selected) or len(names)} functions for {spec.name!r} in {work_dir} "
                f"failed: {type(exc).__name__}: {lines[-1] if lines else ''}"
            ) from exc
        finally:
            logs.__exit__()
        result.trials_run = measured.count if measured is not None else 0
        result.skipped = [n for i, n in enumerate(names) if i not in selected]
        best = best_per_workload(*read_tables(work_dir)) if has_tables(work_dir) else {}
        meta.update(
            {
                "target_name": spec.name,
                "target": target_dict(tvm_target),
                "tvm_version": tvm.__version__,
                "module_equality": MODULE_EQUALITY,
                "baseline_us": baseline,
                "paired": paired,
            }
        )
        meta.setdefault("runs", []).append(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "tasks": len(tasks),
                "tasks_tuned": len(selected),
                "trials_budget": trials,
                "trials_before": before,
                "trials_run": result.trials_run,
                "seconds": round(time.perf_counter() - t0, 1),
                "cost_model": cost_model,
                "population": population,
            }
        )
        write_meta(work_dir, meta)
    result.best_us = {n: best.get(hashes[n]) for n in names}
    result.baseline_us = {n: baseline.get(hashes[n]) for n in names}
    wins = winners(best, meta)
    result.improved = [n for n in names if wins.get(hashes[n], False)]
    for n in names:
        p = meta.get("paired", {}).get(hashes[n])
        if p:
            result.paired_us[n] = (p.get("tuning_free_us"), p.get("record_us"))
    result.seconds = time.perf_counter() - t0
    return result
