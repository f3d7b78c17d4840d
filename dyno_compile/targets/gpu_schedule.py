"""The GPU schedule: TVM's dlight default rules, one fused function at a time, with a
fallback for the functions they cannot schedule.

``dlight.ApplyDefaultSchedule`` runs its rule list over the whole module and lets the
first exception escape, so one function that a rule mis-handles fails the whole build.
Seen: the ``Matmul`` rule asserts ("consumers of the cache-write stage that are not
properly inlined") on a squeeze-excite block at batch > 1, whose 1x1 convolution over
pooled channels is a small GEMM fused with the broadcast multiply into the feature map.
Here each function tries the rules in dlight's order, a rule that raises is skipped (the
next, simpler one is tried), and every result is checked to bind all its work to GPU
threads before it is kept, since an unbound loop is what makes a CUDA build fail later
(``VerifyMemory``). ``Fallback`` (inline, then one thread per output element, reductions
serial per thread) schedules any function made of ordinary blocks, so it ends the chain.

What each function got goes into a :class:`~dyno_compile.targets.schedule.ScheduleReport`
(``dlight.<Rule>``, or ``dlight.<Rule> (after: <failed rule>: <error>)`` for a fallback),
which a module's description records.
"""

from __future__ import annotations

from typing import Any

from dyno_compile.targets.errors import TargetError
from dyno_compile.targets.schedule import ScheduleReport
from dyno_compile.targets.schedule_common import SCHEDULED_ATTR, is_scheduled

__all__ = ["schedule_gpu"]

_THREAD_TAGS = ("blockIdx.", "threadIdx.", "vthread")


def _rules() -> list[Any]:
    """dlight's GPU default rules, most specialised first (``Fallback`` schedules anything)."""
    from tvm.s_tir import dlight as dl

    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def unbound_stores(func) -> int:
    """How many buffer stores of the PrimFunc ``func`` lie outside every GPU thread binding:
    0 for a function a CUDA build accepts, more where a schedule left serial loops (or
    whole blocks) on the host side."""
    import tvm_ffi
    from tvm import tirx

    count = 0

    def on_loop(node):
        bound = node.thread_binding is not None and str(node.thread_binding.thread_tag).startswith(_THREAD_TAGS)
        return tvm_ffi.WalkResult.SKIP if bound else tvm_ffi.WalkResult.ADVANCE

    def on_attr(node):
        bound = str(node.attr_key) in ("thread_extent", "virtual_thread")
        return tvm_ffi.WalkResult.SKIP if bound else tvm_ffi.WalkResult.ADVANCE

    def on_store(_node):
        nonlocal count
        count += 1

    tvm_ffi.structural_walk(
        func.body, [(tirx.For, on_loop), (tirx.AttrStmt, on_attr), (tirx.BufferStore, on_store)], order="pre"
    )
    return count


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"


def _schedule_one(func, target, rules: list[Any]) -> tuple[Any, str]:
    """``(scheduled func, how)`` from the first rule that applies, raises nothing and binds
    everything; TargetError when none does."""
    errors: list[str] = []
    for rule in rules:
        name = type(rule).__name__
        try:
            sch = rule.apply(func, target, False)
            if sch is None:
                continue
            new = (sch[0] if isinstance(sch, list) else sch).mod["main"]
            left = unbound_stores(new)
            if left:
                raise TargetError(f"{left} store(s) not bound to GPU threads")
        except Exception as exc:  # noqa: BLE001 - any failure of a rule means: try the next, simpler one
            errors.append(f"{name}: {_first_line(exc)}")
            continue
        return new, f"dlight.{name}" + (f" (after: {errors[0]})" if errors else "")
    raise TargetError("no GPU schedule applies: " + ("; ".join(errors) or "every rule declined"))


def schedule_gpu(mod, target) -> tuple[Any, ScheduleReport]:
    """Schedule every unscheduled PrimFunc of ``mod`` for the GPU ``target`` with dlight's
    rules, per function (module docstring). Returns ``(mod, report)``; TargetError names
    the function no rule schedules (a CUDA build of it would fail anyway)."""
    from tvm import tirx

    rules = _rules()
    report = ScheduleReport()
    updates = {}
    with target:
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
                continue
            try:
                new, how = _schedule_one(func, target, rules)
            except TargetError as exc:
                raise TargetError(f"function {gv.name_hint} for {target.kind.name}: {exc}") from None
            updates[gv] = new.with_attr(SCHEDULED_ATTR, True)
            report.functions[gv.name_hint] = how
    for gv, func in updates.items():
        mod[gv] = func
    return mod, report
