"""Compile graphs for a ``TargetSpec``, export the result, run it.

``compile_graph`` builds one graph (function ``main``); ``compile_functions`` builds
several named graphs into ONE executable with one Relax function each (a model's
segments, the pack/unpack functions of its cuts), exported to one library per target and
run with :class:`ModuleRunner`, which needs only the TVM runtime: a library plus the
JSON-able ``CompiledModule.describe()`` is enough to load and call it.

The steps, each timed (``timings``, seconds):

``lower``      IR graph(s) -> Relax (:mod:`dyno_compile.targets.lower`);
``bind``       weights bound as constants (``bind_weights=True``);
``fuse``       Relax ``"zero"`` pipeline: legalize to TensorIR, fold constants, fuse;
``schedule``   cut kernels (quantize, pack, ...): their own schedules
               (:func:`lower.schedule_cut_kernels`); the rest, CPU: the tuning-free
               schedule of :mod:`dyno_compile.targets.schedule`; GPU: ``tvm.s_tir.dlight``
               default rules;
``build``      the ``"default_build"`` Relax pipeline, TIR lowering and code generation.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.targets.spec import TargetError, TargetSpec, get_target

if TYPE_CHECKING:  # compiling needs the IR (and JAX); loading and running a library does not
    from dyno_compile.ir import Graph, TensorType

__all__ = ["Compiled", "CompiledModule", "FunctionInfo", "HostRunner", "ModuleRunner", "TensorSpec",
           "compile_functions", "compile_graph", "export", "run"]


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


def fuse(mod, spec: TargetSpec, *, blocked_conv: bool = True):
    """Legalize to TensorIR, fold constants and fuse (Relax's ``"zero"`` pipeline).

    On CPU targets with ``blocked_conv``, convolutions with constant weights are legalized
    for the tuning-free CPU schedule first: large 3x3 stride-1 float32 ones as Winograd
    F(4x4 or 2x2, 3x3) (:mod:`dyno_compile.targets.winograd_conv`), the rest with
    output-channel-blocked weights (:mod:`dyno_compile.targets.blocked_conv`). The build
    and the tuner (:func:`dyno_compile.targets.tune.fused_module`) both fuse here, so
    tuning records match the functions a build schedules.
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


def _build(mod, spec: TargetSpec, timings: dict[str, float], *, schedule: bool = True,
           schedule_config: Any = None, records: str | os.PathLike | None = None):
    """Fuse, schedule and build a lowered (and bound) Relax module: ``(executable, report)``.

    Cut kernels (quantize, pack, ... :func:`lower.schedule_cut_kernels`) get their own
    schedules; the rest the CPU schedule or dlight. Adds ``fuse``, ``schedule`` and
    ``build`` to ``timings``.
    """
    import tvm

    from dyno_compile.targets.lower import schedule_cut_kernels

    tvm_target = spec.tvm_target()
    t = time.perf_counter()
    mod = fuse(mod, spec, blocked_conv=schedule)
    timings["fuse"] = time.perf_counter() - t

    t = time.perf_counter()
    report = None
    if spec.is_gpu:  # GPU kernels need thread bindings: dlight is not optional
        mod, _ = schedule_cut_kernels(mod, tvm_target)
        mod, report = _schedule_gpu(mod, tvm_target)
    elif schedule:
        mod, cut = schedule_cut_kernels(mod, tvm_target)
        if records is not None:  # tuned records first; _schedule_cpu skips the functions they scheduled
            from dyno_compile.targets.tune import apply_records
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

    return _bind(low.mod, low.name, low.weight_vars,
                 [tvm.runtime.tensor(_contiguous(graph.params[n])) for n in low.weight_names])


def compile_graph(graph: Graph, target: TargetSpec | str = "host", *, bind_weights: bool = True,
                  schedule: bool = True, schedule_config: Any = None,
                  records: str | os.PathLike | None = None) -> Compiled:
    """Compile ``graph`` for ``target``.

    ``bind_weights=True`` embeds the weights as constants (folded at compile time: weight
    transposes and casts cost nothing at run time, the library is self-contained);
    ``False`` keeps them as parameters of ``main`` after the inputs, to be passed at run
    time (``run(..., weights)``) or shipped as a param file (``Compiled.save_params``).
    ``schedule=False`` skips the CPU schedule (TVM's naive loops, for comparison; GPU
    targets always get dlight's default schedules, which they need to build at all);
    ``schedule_config`` (a ``schedule.ScheduleConfig``) overrides the CPU schedule's knobs.
    """
    from dyno_compile.targets.lower import lower

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
        name=graph.name, target=spec, executable=ex,
        input_names=low.input_names, input_types=[types[n] for n in low.input_names],
        weight_names=low.weight_names, weight_types=[types[n] for n in low.weight_names],
        output_names=low.output_names, output_types=[types[n] for n in low.output_names],
        bind_weights=bind_weights, timings=timings, schedule_report=report,
        weights={} if bind_weights else {n: graph.params[n] for n in low.weight_names})


# --------------------------------------------------------------------------- multi-function modules
@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a function's input, output or weight (JSON-able, no TVM/IR)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(str(d["name"]), tuple(int(s) for s in d["shape"]), str(d["dtype"]))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class FunctionInfo:
    """One Relax function of a module: ``name(*inputs, *weights) -> outputs``.

    ``weights`` names the module weights the function takes after its inputs, in order
    (empty when weights are bound into the library); ``num_input`` is ``len(inputs)``.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    weights: tuple[str, ...] = ()

    @property
    def num_input(self) -> int:
        return len(self.inputs)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "weights": list(self.weights)}

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> "FunctionInfo":
        return cls(name, tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in d["outputs"]), tuple(str(w) for w in d.get("weights", ())))


#: ``CompiledModule.describe()["format"]``; bumped when the description changes incompatibly.
MODULE_FORMAT = "dyno-module/1"


@dataclass
class CompiledModule:
    """Several graphs compiled into ONE Relax executable for one target, a function each.

    ``executable`` is the ``tvm.runtime.Executable`` from :func:`compile_functions`, or a
    library loaded with ``tvm.runtime.load_module`` (:meth:`from_description`). With
    ``bind_weights=False`` the weights form a single dict keyed by weight name
    (``weight_specs``; each stored once however many functions read it), and each function
    records the names it takes, in order (``FunctionInfo.weights``).
    """

    name: str
    target: TargetSpec
    executable: Any
    functions: dict[str, FunctionInfo]
    bind_weights: bool
    #: Every weight a function takes at run time (empty when weights are bound).
    weight_specs: dict[str, TensorSpec] = field(default_factory=dict)
    #: Seconds per compile step (lower, bind, fuse, schedule, build, total; export).
    timings: dict[str, float] = field(default_factory=dict)
    schedule_report: Any = None
    #: The weights' values, kept for ``ModuleRunner``/``save_params`` when not bound.
    weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def function(self, name: str) -> FunctionInfo:
        try:
            return self.functions[name]
        except KeyError:
            raise InputError(f"module {self.name!r} has no function {name!r}; it has "
                             f"{', '.join(self.functions)}") from None

    def describe(self) -> dict:
        """A JSON-able description: target, functions (inputs, outputs, weights), weights.

        With the exported library it is everything a runner needs
        (:meth:`from_description`); an artifact manifest can hold it as is.
        """
        return {
            "format": MODULE_FORMAT,
            "name": self.name,
            "target": {"name": self.target.name, "tvm": _jsonable(self.target.target),
                       "host": _jsonable(self.target.host) if self.target.host else None},
            "bind_weights": self.bind_weights,
            "functions": {name: info.to_dict() for name, info in self.functions.items()},
            "weights": [w.to_dict() for w in self.weight_specs.values()],
        }

    @classmethod
    def from_description(cls, description: Mapping[str, Any], library: Any) -> "CompiledModule":
        """A module from :meth:`describe`'s dict and its library (a path, or what
        ``tvm.runtime.load_module`` returned). Needs only the TVM runtime."""
        fmt = description.get("format")
        if fmt != MODULE_FORMAT:
            raise InputError(f"module description has format {fmt!r}, this version reads {MODULE_FORMAT!r}")
        if isinstance(library, (str, os.PathLike)):
            import tvm

            library = tvm.runtime.load_module(str(library))
        tgt = description["target"]
        try:
            spec = get_target(tgt["name"])
        except TargetError:  # a target this registry does not know: keep what the description says
            spec = TargetSpec(name=tgt["name"], target=tgt["tvm"], host=tgt.get("host"))
        weights = [TensorSpec.from_dict(w) for w in description.get("weights", ())]
        return cls(name=str(description["name"]), target=spec, executable=library,
                   functions={n: FunctionInfo.from_dict(n, d) for n, d in description["functions"].items()},
                   bind_weights=bool(description["bind_weights"]), weight_specs={w.name: w for w in weights})

    def save_params(self, path: str | os.PathLike) -> Path:
        """Write the weights (each once) as one TVM param file, for ``bind_weights=False``."""
        import tvm

        if self.bind_weights:
            raise TargetError(f"module {self.name!r} was compiled with its weights bound into the library; "
                              "compile with bind_weights=False to ship them as a param file")
        if set(self.weights) != set(self.weight_specs):
            raise TargetError(f"module {self.name!r} holds no weight values (loaded from a library?)")
        path = Path(path)
        tvm.runtime.save_param_dict_to_file(
            {n: tvm.runtime.tensor(_contiguous(self.weights[n], s.dtype)) for n, s in self.weight_specs.items()},
            str(path))
        return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def compile_functions(graphs: Mapping[str, Graph], target: TargetSpec | str = "host", *,
                      bind_weights: bool = True, schedule: bool = True, schedule_config: Any = None,
                      name: str = "module", records: str | os.PathLike | None = None) -> CompiledModule:
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

    from dyno_compile.targets.lower import lower_functions

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
                node = graph.node(wname)
                specs[wname] = TensorSpec(wname, tuple(node.shape), node.dtype)
            elif value is not values[wname] and not (
                    np.shape(value) == np.shape(values[wname]) and np.array_equal(value, values[wname])):
                raise InputError(f"weight {wname!r} of function {fname!r} differs from the weight of that name "
                                 "in another function; weights shared by name must be equal")
    if bind_weights:
        tensors = {n: tvm.runtime.tensor(_contiguous(v, specs[n].dtype)) for n, v in values.items()}
        for fname, low in lowered.items():
            mod = _bind(mod, fname, low.weight_vars, [tensors[n] for n in low.weight_names])
    timings["bind"] = time.perf_counter() - t

    ex, report = _build(mod, spec, timings, schedule=schedule, schedule_config=schedule_config, records=records)
    timings["total"] = time.perf_counter() - t_all

    functions = {}
    for fname, low in lowered.items():
        graph = graphs[fname]

        def spec_of(n: str) -> TensorSpec:
            node = graph.node(n)
            return TensorSpec(n, tuple(node.shape), node.dtype)

        functions[fname] = FunctionInfo(fname, tuple(spec_of(n) for n in low.input_names),
                                        tuple(spec_of(n) for n in low.output_names),
                                        () if bind_weights else tuple(low.weight_names))
    return CompiledModule(name=name, target=spec, executable=ex, functions=functions, bind_weights=bind_weights,
                          weight_specs={} if bind_weights else specs, timings=timings, schedule_report=report,
                          weights={} if bind_weights else values)


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


def _device_for(spec: TargetSpec):
    import tvm

    if spec.kind == "cuda":
        return tvm.cuda(0)
    if spec.kind == "llvm":
        return tvm.cpu(0)
    raise TargetError(f"no runtime device for target kind {spec.kind!r}")


class ModuleRunner:
    """Runs the functions of a :class:`CompiledModule` with the Relax VM.

    ``module`` is a ``CompiledModule`` (from :func:`compile_functions`, host builds only, or
    :meth:`CompiledModule.from_description` with a loaded library, which runs wherever it
    was loaded); ``weights`` (name -> array or ``tvm.runtime.Tensor``, e.g. a loaded param
    file) is needed for modules compiled with ``bind_weights=False`` and defaults to the
    values the module was compiled with. Each weight is copied to the device once and
    passed, by name, to every function that takes it. Uses only the TVM runtime.
    """

    def __init__(self, module: CompiledModule, weights: Mapping[str, Any] | None = None, *,
                 device: Any = None) -> None:
        import tvm
        from tvm import relax

        if not isinstance(module, CompiledModule):
            raise InputError(f"ModuleRunner takes a CompiledModule (use CompiledModule.from_description(desc, lib) "
                             f"for a loaded library), got {type(module).__name__}")
        loaded = not isinstance(module.executable, tvm.runtime.Executable)  # a library loaded from a file
        if not loaded and device is None and not module.target.is_host and not gpu_available(module.target):
            raise TargetError(f"module {module.name!r} was compiled for {module.target.name!r}, which does not run "
                              "on this machine; export it and run it on the device")
        self.module = module
        self.device = device if device is not None else _device_for(module.target)
        self.vm = relax.VirtualMachine(module.executable, self.device)
        self._weights: dict[str, Any] = {}
        if not module.bind_weights:
            if weights is not None:
                self.set_weights(weights)
            elif module.weights:
                self.set_weights(module.weights)

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy the weights the module takes to the device (names it does not take are ignored)."""
        m = self.module
        missing = [n for n in m.weight_specs if n not in weights]
        if missing:
            raise InputError(f"module {m.name!r}: missing weights: {', '.join(missing[:10])}"
                             + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
        self._weights = {n: self._tensor(weights[n], s, "weight", m.name) for n, s in m.weight_specs.items()}

    def _tensor(self, value: Any, spec: TensorSpec, what: str, where: str):
        import tvm

        if isinstance(value, tvm.runtime.Tensor):
            if tuple(value.shape) != spec.shape or str(value.dtype) != spec.dtype:
                raise InputError(f"{where}: {what} {spec.name!r} expects {spec.dtype}{list(spec.shape)}, got "
                                 f"{value.dtype}{list(value.shape)}")
            return value if value.device == self.device else value.copyto(self.device)
        arr = np.asarray(value)
        if arr.shape != spec.shape:
            raise InputError(f"{where}: {what} {spec.name!r} expects shape {spec.shape}, got {arr.shape}")
        return tvm.runtime.tensor(_contiguous(arr, spec.dtype), self.device)

    def args(self, function: str, inputs: Any) -> list:
        """The VM arguments of ``function``: its inputs on the device, then its weights."""
        info = self.module.function(function)
        arrays = _as_list(inputs, info.input_names, "input(s)", f"{self.module.name}.{function}")
        args = [self._tensor(a, s, "input", f"function {function!r}") for a, s in zip(arrays, info.inputs)]
        if info.weights:
            if not self._weights:
                raise InputError(f"module {self.module.name!r} was compiled with bind_weights=False: "
                                 "pass its weights to ModuleRunner")
            args += [self._weights[w] for w in info.weights]
        return args

    def invoke(self, function: str, inputs: Any) -> list:
        """Run ``function``; its outputs as ``tvm.runtime.Tensor`` on the device (no copy back)."""
        info = self.module.function(function)
        out = self.vm[function](*self.args(function, inputs))
        return list(out) if len(info.outputs) > 1 else [out]

    def run(self, function: str, inputs: Any) -> list[np.ndarray]:
        """Run ``function`` on ``inputs`` (list in input order, dict by name, or one array);
        its outputs as NumPy arrays, in order."""
        return [o.numpy() for o in self.invoke(function, inputs)]

    def time(self, function: str, inputs: Any, *, number: int = 1, repeat: int = 5,
             min_repeat_ms: int = 200) -> float:
        """Median seconds per call of ``function`` (``time_evaluator`` after a warm-up call)."""
        args = self.args(function, inputs)
        self.vm[function](*args)
        self.vm.set_input(function, *args)
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=repeat,
                                       min_repeat_ms=min_repeat_ms)
        return float(np.median(timer(function).results))


def gpu_available(spec: TargetSpec) -> bool:
    """Whether a GPU target can run on this machine (a CUDA driver and device are present)."""
    if not spec.is_gpu:
        return False
    try:
        return bool(_device_for(spec).exist)
    except Exception:  # noqa: BLE001 - no driver
        return False
