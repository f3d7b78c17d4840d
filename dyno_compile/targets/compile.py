"""Compile graphs for a ``TargetSpec`` and export the result.

``compile_graph`` builds one graph (function ``main``, a :class:`Compiled`);
``compile_functions`` builds several named graphs into ONE executable with one Relax
function each (a model's segments, the pack/unpack functions of its cuts, a
:class:`CompiledModule`), exported to one library per target and run with
:class:`~dyno_compile.targets.runner.ModuleRunner`, which needs only the TVM runtime: a
library plus the JSON-able ``CompiledModule.describe()`` is enough to load and call it.

The steps, each timed (``timings``, seconds):

``lower``      IR graph(s) -> Relax (:mod:`dyno_compile.targets.lower`);
``bind``       weights bound as constants (``bind_weights=True``);
``fuse``       Relax ``"zero"`` pipeline: legalize to TensorIR, fold constants, fuse;
``schedule``   cut kernels (quantize, pack, ...): their own schedules
               (:func:`cut_kernels.schedule_cut_kernels`); tuning records where given
               (:func:`records.apply_records`); the rest, CPU: the tuning-free
               schedule of :mod:`dyno_compile.targets.schedule`; GPU: ``tvm.s_tir.dlight``
               default rules per function, falling back to a simpler rule where one
               fails (:mod:`dyno_compile.targets.gpu_schedule`);
``build``      the ``"default_build"`` Relax pipeline, TIR lowering and code generation.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.targets.cut_kernels import schedule_cut_kernels
from dyno_compile.targets.errors import TargetError
from dyno_compile.targets.gpu_schedule import schedule_gpu
from dyno_compile.targets.lower import lower, lower_functions
from dyno_compile.targets.module import Compiled, CompiledModule, FunctionInfo, TensorSpec, contiguous
from dyno_compile.targets.records import apply_records
from dyno_compile.targets.spec import TargetSpec, get_target

if TYPE_CHECKING:  # compiling needs the IR (and JAX)
    from dyno_compile.ir import Graph

__all__ = ["bound_module", "compile_functions", "compile_graph", "export", "fuse", "fused_module"]


def _schedule_cpu(mod, tvm_target, spec: TargetSpec, cfg=None):
    from dyno_compile.targets.schedule import schedule_module

    return schedule_module(mod, tvm_target, threads=spec.threads, cfg=cfg)


def fuse(mod, spec: TargetSpec, *, blocked_conv: bool = True):
    """Legalize to TensorIR, fold constants and fuse (Relax's ``"zero"`` pipeline).

    On CPU targets with ``blocked_conv``, convolutions with constant weights are legalized
    for the tuning-free CPU schedule first: large 3x3 stride-1 float32 ones as Winograd
    F(4x4 or 2x2, 3x3) (:mod:`dyno_compile.targets.winograd_conv`), the rest with
    output-channel-blocked weights (:mod:`dyno_compile.targets.blocked_conv`). The build
    and the tuner (:func:`fused_module`) both fuse here, so tuning records match the
    functions a build schedules.
    """
    import tvm
    from tvm import relax

    with spec.tvm_target() as tvm_target, tvm.transform.PassContext(opt_level=3):
        if blocked_conv and not spec.is_gpu:
            from dyno_compile.targets.blocked_conv import legalize_blocked_conv
            from dyno_compile.targets.schedule import vector_bits
            from dyno_compile.targets.winograd_conv import legalize_winograd_conv

            bits = vector_bits(tvm_target)
            legalize = {"relax.nn.conv2d": legalize_winograd_conv(bits, legalize_blocked_conv(bits))}
            mod = relax.transform.LegalizeOps(legalize)(mod)
        return relax.get_pipeline("zero")(mod)


def _build(
    mod,
    spec: TargetSpec,
    timings: dict[str, float],
    *,
    schedule: bool = True,
    schedule_config: Any = None,
    records: str | os.PathLike | None = None,
):
    """Fuse, schedule and build a lowered (and bound) Relax module: ``(executable, report)``.

    Cut kernels (quantize, pack, ... :func:`cut_kernels.schedule_cut_kernels`) get their own
    schedules; the rest the CPU schedule or the GPU one (dlight). Adds ``fuse``, ``schedule`` and
    ``build`` to ``timings``.
    """
    import tvm

    tvm_target = spec.tvm_target()
    t = time.perf_counter()
    mod = fuse(mod, spec, blocked_conv=schedule)
    timings["fuse"] = time.perf_counter() - t

    t = time.perf_counter()
    report = None
    if spec.is_gpu:  # GPU kernels need thread bindings: dlight is not optional
        mod, cut = schedule_cut_kernels(mod, tvm_target)
        mod, report = schedule_gpu(mod, tvm_target)
        report.functions.update(cut)
    elif schedule:
        mod, cut = schedule_cut_kernels(mod, tvm_target)
        if records is not None:  # tuned records first; _schedule_cpu skips the functions they scheduled
            mod = apply_records(mod, spec, records)
        mod, report = _schedule_cpu(mod, tvm_target, spec, schedule_config)
        report.functions.update(cut)
    timings["schedule"] = time.perf_counter() - t

    t = time.perf_counter()
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(mod, tvm_target, relax_pipeline="default_build")
    timings["build"] = time.perf_counter() - t
    return ex, report


def _bind(mod, func_name: str, weight_vars: Sequence[Any], tensors: Sequence[Any]):
    from tvm import relax

    if not weight_vars:
        return mod
    return relax.transform.BindParams(func_name, dict(zip(weight_vars, tensors)))(mod)


def bound_module(graph: Graph, low: Any):
    """The lowered module of ``graph`` (``low``, from ``lower.lower``) with its weights bound as constants."""
    import tvm

    return _bind(
        low.mod, low.name, low.weight_vars, [tvm.runtime.tensor(contiguous(graph.params[n])) for n in low.weight_names]
    )


def fused_module(graph: Graph, target: TargetSpec | str = "host", *, bind_weights: bool = True):
    """The fused Relax module that :func:`compile_graph` schedules: lower, bind, ``"zero"``.

    The tuner (:func:`dyno_compile.targets.tune.tune`) tunes this module, so its records
    match the functions of the build (:func:`dyno_compile.targets.records.match_records`
    says whether they still do).
    """
    low = lower(graph)
    return fuse(bound_module(graph, low) if bind_weights else low.mod, get_target(target))


def compile_graph(
    graph: Graph,
    target: TargetSpec | str = "host",
    *,
    bind_weights: bool = True,
    schedule: bool = True,
    schedule_config: Any = None,
    records: str | os.PathLike | None = None,
) -> Compiled:
    """Compile ``graph`` for ``target``.

    ``bind_weights=True`` embeds the weights as constants (folded at compile time: weight
    transposes and casts cost nothing at run time, the library is self-contained);
    ``False`` keeps them as parameters of ``main`` after the inputs, to be passed at run
    time (``run(..., weights)``) or shipped as a param file (``Compiled.save_params``).
    ``schedule=False`` skips the CPU schedule (TVM's naive loops, for comparison; GPU
    targets always get dlight's default schedules, which they need to build at all);
    ``schedule_config`` (a ``schedule.ScheduleConfig``) overrides the CPU schedule's knobs.
    """
    spec = get_target(target)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    low = lower(graph)
    timings["lower"] = time.perf_counter() - t

    t = time.perf_counter()
    mod = bound_module(graph, low) if bind_weights else low.mod
    timings["bind"] = time.perf_counter() - t

    ex, report = _build(mod, spec, timings, schedule=schedule, schedule_config=schedule_config, records=records)
    timings["total"] = time.perf_counter() - t_all

    types = {n.name: n.type for n in graph.nodes}
    return Compiled(
        name=graph.name,
        target=spec,
        executable=ex,
        input_names=low.input_names,
        input_types=[types[n] for n in low.input_names],
        weight_names=low.weight_names,
        weight_types=[types[n] for n in low.weight_names],
        output_names=low.output_names,
        output_types=[types[n] for n in low.output_names],
        bind_weights=bind_weights,
        timings=timings,
        schedule_report=report,
        weights={} if bind_weights else {n: graph.params[n] for n in low.weight_names},
    )


def _tensor_spec(graph: Graph, name: str) -> TensorSpec:
    node = graph.node(name)
    return TensorSpec(name, tuple(node.shape), node.dtype)


def compile_functions(
    graphs: Mapping[str, Graph],
    target: TargetSpec | str = "host",
    *,
    bind_weights: bool = True,
    schedule: bool = True,
    schedule_config: Any = None,
    name: str = "module",
    records: str | os.PathLike | None = None,
) -> CompiledModule:
    """Compile several graphs into ONE module with one Relax function per name.

    For example the segments of a model (``segment_0`` ...), and the pack/unpack functions
    of its cuts (``pack_<shape>_<bits>`` ...): one executable, exported to one library per
    target with :func:`export`, run with :class:`ModuleRunner`. Each function is
    ``name(*inputs, *weights)`` with its own ``num_input``. ``bind_weights``, ``schedule``
    and ``schedule_config`` as for :func:`compile_graph`; with ``bind_weights=False`` a
    weight read by several functions (the same name) is stored once, and must have the
    same value everywhere. Kernels that come out identical are compiled once.
    """
    import tvm

    spec = get_target(target)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    lowered = lower_functions(graphs)
    mod = next(iter(lowered.values())).mod
    timings["lower"] = time.perf_counter() - t

    t = time.perf_counter()
    values: dict[str, np.ndarray] = {}
    specs: dict[str, TensorSpec] = {}
    for fname, low in lowered.items():
        graph = graphs[fname]
        for wname in low.weight_names:
            value = graph.params[wname]
            if wname not in values:
                values[wname] = value
                specs[wname] = _tensor_spec(graph, wname)
            elif value is not values[wname] and not (
                np.shape(value) == np.shape(values[wname]) and np.array_equal(value, values[wname])
            ):
                raise InputError(
                    f"weight {wname!r} of function {fname!r} differs from the weight of that name "
                    "in another function; weights shared by name must be equal"
                )
    if bind_weights:
        tensors = {n: tvm.runtime.tensor(contiguous(v, specs[n].dtype)) for n, v in values.items()}
        for fname, low in lowered.items():
            mod = _bind(mod, fname, low.weight_vars, [tensors[n] for n in low.weight_names])
    timings["bind"] = time.perf_counter() - t

    ex, report = _build(mod, spec, timings, schedule=schedule, schedule_config=schedule_config, records=records)
    timings["total"] = time.perf_counter() - t_all

    functions = {}
    for fname, low in lowered.items():
        graph = graphs[fname]
        functions[fname] = FunctionInfo(
            fname,
            tuple(_tensor_spec(graph, n) for n in low.input_names),
            tuple(_tensor_spec(graph, n) for n in low.output_names),
            () if bind_weights else tuple(low.weight_names),
        )
    return CompiledModule(
        name=name,
        target=spec,
        executable=ex,
        functions=functions,
        bind_weights=bind_weights,
        weight_specs={} if bind_weights else specs,
        timings=timings,
        schedule_report=report,
        weights={} if bind_weights else values,
    )


# --------------------------------------------------------------------------- export
def _linker(argv: Sequence[str]):
    """An ``fcompile`` for ``export_library`` that links a shared object with ``argv``."""

    def link(output: str, objects: Sequence[str], options: Sequence[str] | None = None, **_: Any) -> None:
        cmd = [*argv, "-shared", "-fPIC", "-o", output, *(options or ()), *objects]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise TargetError(f"linking {output} failed ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}")

    link.output_format = "so"  # type: ignore[attr-defined]
    return link


def export(compiled: Compiled | CompiledModule, path: str | os.PathLike) -> Path:
    """Write the compiled model or module (every function in one library) as a shared
    object (``.so``) or, for ``.tar``, object files.

    ``.so`` files are linked with the target's linker: the system ``cc`` on x86 (host and
    CUDA builds, which carry the CUDA kernels as source for the GPU machine to compile),
    the ziglang cross linker for ``arm64`` (its first run on a machine takes about 35 s
    while zig fills its cache in ``~/.cache/zig``; later links take well under a second).
    Load with ``tvm.runtime.load_module`` and run with ``relax.VirtualMachine`` on the
    target device. Adds ``export`` to ``compiled.timings``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if compiled.target.linker and path.suffix != ".tar":
        kwargs["fcompile"] = _linker(compiled.target.linker)
    t = time.perf_counter()
    compiled.executable.export_library(str(path), **kwargs)
    compiled.timings["export"] = time.perf_counter() - t
    return path
