"""Compile a graph for a ``TargetSpec``, export the result, run host builds.

The steps, each timed (``Compiled.timings``, seconds):

``lower``      IR graph -> Relax (:mod:`dyno_compile.targets.lower`);
``bind``       weights bound as constants (``bind_weights=True``);
``fuse``       Relax ``"zero"`` pipeline: legalize to TensorIR, fold constants, fuse;
``schedule``   CPU: the tuning-free schedule of :mod:`dyno_compile.targets.schedule`;
               GPU: ``tvm.s_tir.dlight`` default rules;
``build``      the ``"default_build"`` Relax pipeline, TIR lowering and code generation.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.ir import Graph, TensorType
from dyno_compile.targets.lower import lower
from dyno_compile.targets.spec import TargetError, TargetSpec, get_target

__all__ = ["Compiled", "HostRunner", "compile_graph", "export", "run"]


@dataclass
class Compiled:
    """A graph compiled for one target: the Relax executable and how to call it."""

    name: str
    target: TargetSpec
    executable: Any  # tvm.runtime.Executable
    input_names: list[str]
    input_types: list[TensorType]
    weight_names: list[str]
    weight_types: list[TensorType]
    output_names: list[str]
    output_types: list[TensorType]
    bind_weights: bool
    #: Seconds per compile step (lower, bind, fuse, schedule, build) and ``total``.
    timings: dict[str, float] = field(default_factory=dict)
    #: What the schedule step did per fused function (CPU: ``schedule.ScheduleReport``).
    schedule_report: Any = None
    #: The graph's weights, kept for ``run``/``save_params`` when they are not bound.
    weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def num_input(self) -> int:
        return len(self.input_names)

    def save_params(self, path: str | os.PathLike) -> Path:
        """Write the weights as a TVM param file (for builds with ``bind_weights=False``)."""
        import tvm

        if self.bind_weights:
            raise TargetError(f"model {self.name!r} was compiled with its weights bound into the library; "
                              "compile with bind_weights=False to ship them as a param file")
        path = Path(path)
        tvm.runtime.save_param_dict_to_file(
            {n: tvm.runtime.tensor(_contiguous(self.weights[n])) for n in self.weight_names}, str(path))
        return path


def _contiguous(value: Any, dtype: str | None = None) -> np.ndarray:
    """A C-contiguous array (``np.ascontiguousarray`` would turn a 0-d array into 1-d)."""
    arr = np.asarray(value, dtype=dtype)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _schedule_cpu(mod, tvm_target, spec: TargetSpec, cfg=None):
    from dyno_compile.targets.schedule import schedule_module

    return schedule_module(mod, tvm_target, threads=spec.threads, cfg=cfg)


def _schedule_gpu(mod, tvm_target):
    from tvm.s_tir import dlight as dl

    with tvm_target:
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                      dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    return mod, None


def compile_graph(graph: Graph, target: TargetSpec | str = "host", *, bind_weights: bool = True,
                  schedule: bool = True, schedule_config: Any = None) -> Compiled:
    """Compile ``graph`` for ``target``.

    ``bind_weights=True`` embeds the weights as constants (folded at compile time: weight
    transposes and casts cost nothing at run time, the library is self-contained);
    ``False`` keeps them as parameters of ``main`` after the inputs, to be passed at run
    time (``run(..., weights)``) or shipped as a param file (``Compiled.save_params``).
    ``schedule=False`` skips the CPU schedule (TVM's naive loops, for comparison; GPU
    targets always get dlight's default schedules, which they need to build at all);
    ``schedule_config`` (a ``schedule.ScheduleConfig``) overrides the CPU schedule's knobs.
    """
    import tvm
    from tvm import relax

    spec = get_target(target)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    low = lower(graph)
    mod = low.mod
    timings["lower"] = time.perf_counter() - t

    t = time.perf_counter()
    if bind_weights and low.weight_vars:
        binding = {v: tvm.runtime.tensor(_contiguous(graph.params[n]))
                   for v, n in zip(low.weight_vars, low.weight_names)}
        mod = relax.transform.BindParams("main", binding)(mod)
    timings["bind"] = time.perf_counter() - t

    tvm_target = spec.tvm_target()
    t = time.perf_counter()
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        mod = relax.get_pipeline("zero")(mod)
    timings["fuse"] = time.perf_counter() - t

    t = time.perf_counter()
    report = None
    if spec.is_gpu:  # GPU kernels need thread bindings: dlight is not optional
        mod, report = _schedule_gpu(mod, tvm_target)
    elif schedule:
        mod, report = _schedule_cpu(mod, tvm_target, spec, schedule_config)
    timings["schedule"] = time.perf_counter() - t

    t = time.perf_counter()
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(mod, tvm_target, relax_pipeline="default_build")
    timings["build"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    types = {n.name: n.type for n in graph.nodes}
    return Compiled(
        name=graph.name, target=spec, executable=ex,
        input_names=low.input_names, input_types=[types[n] for n in low.input_names],
        weight_names=low.weight_names, weight_types=[types[n] for n in low.weight_names],
        output_names=low.output_names, output_types=[types[n] for n in low.output_names],
        bind_weights=bind_weights, timings=timings, schedule_report=report,
        weights={} if bind_weights else {n: graph.params[n] for n in low.weight_names})


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


def export(compiled: Compiled, path: str | os.PathLike) -> Path:
    """Write the compiled model as a shared object (``.so``) or, for ``.tar``, object files.

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


# --------------------------------------------------------------------------- run
def _as_list(values: Any, names: list[str], what: str, model: str) -> list:
    if values is None:
        values = []
    if isinstance(values, Mapping):
        missing = [n for n in names if n not in values]
        if missing:
            raise InputError(f"model {model!r}: missing {what}: {', '.join(missing)}")
        return [values[n] for n in names]
    if isinstance(values, np.ndarray):
        values = [values]
    values = list(values)
    if len(values) != len(names):
        raise InputError(f"model {model!r} takes {len(names)} {what}, got {len(values)}")
    return values


class HostRunner:
    """Runs a host build (or a ``.so`` exported from one) with the Relax VM on ``tvm.cpu()``."""

    def __init__(self, compiled: Compiled, library: str | os.PathLike | None = None) -> None:
        import tvm
        from tvm import relax

        if not compiled.target.is_host:
            raise TargetError(f"model {compiled.name!r} was compiled for {compiled.target.name!r}, which "
                              "does not run on this machine; export it and run it on the device")
        self.compiled = compiled
        self.device = tvm.cpu()
        module = tvm.runtime.load_module(str(library)) if library is not None else compiled.executable
        self.vm = relax.VirtualMachine(module, self.device)
        self._weights: list = []
        if not compiled.bind_weights and compiled.weights:
            self.set_weights(compiled.weights)

    def set_weights(self, weights: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> None:
        c = self.compiled
        arrays = _as_list(weights, c.weight_names, "weights", c.name)
        self._weights = [self._tensor(a, t, n, "weight") for a, t, n in zip(arrays, c.weight_types, c.weight_names)]

    def _tensor(self, value: Any, typ: TensorType, name: str, what: str):
        import tvm

        if isinstance(value, tvm.runtime.Tensor):
            return value
        arr = np.asarray(value)
        if arr.shape != typ.shape:
            raise InputError(f"model {self.compiled.name!r}: {what} {name!r} expects shape {typ.shape}, "
                             f"got {arr.shape}")
        return tvm.runtime.tensor(_contiguous(arr, typ.dtype), self.device)

    def args(self, inputs: Any, weights: Any = None) -> list:
        c = self.compiled
        arrays = _as_list(inputs, c.input_names, "input(s)", c.name)
        args = [self._tensor(a, t, n, "input") for a, t, n in zip(arrays, c.input_types, c.input_names)]
        if not c.bind_weights:
            if weights is not None:
                self.set_weights(weights)
            if not self._weights:
                raise InputError(f"model {c.name!r} was compiled with bind_weights=False: pass its weights")
            args += self._weights
        return args

    def __call__(self, inputs: Any, weights: Any = None) -> list[np.ndarray]:
        out = self.vm["main"](*self.args(inputs, weights))
        outs = list(out) if len(self.compiled.output_names) > 1 else [out]
        return [o.numpy() for o in outs]

    def time(self, inputs: Any, weights: Any = None, *, number: int = 1, repeat: int = 5,
             min_repeat_ms: int = 200) -> np.ndarray:
        """Seconds per run, one value per repeat (``time_evaluator``, after a warm-up call)."""
        args = self.args(inputs, weights)
        self.vm["main"](*args)
        self.vm.set_input("main", *args)
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=repeat,
                                       min_repeat_ms=min_repeat_ms)
        return np.asarray(timer("main").results)


def run(compiled: Compiled, inputs: Any, weights: Any = None) -> list[np.ndarray]:
    """Run a host build on ``inputs`` (list in graph-input order, dict by name, or one array).

    ``weights`` (dict by name or list in ``compiled.weight_names`` order) is needed only
    for builds with ``bind_weights=False`` (defaults to the graph's own weights). Returns
    the outputs as NumPy arrays, one per graph output.
    """
    return HostRunner(compiled)(inputs, weights)

