"""What a build produces, as plain data: :class:`Compiled` (one graph, function
``main``) and :class:`CompiledModule` (several graphs, one Relax function each), with the
names, shapes and dtypes of each function's inputs, outputs and weights
(:class:`FunctionInfo`, :class:`TensorSpec`).

A module's :meth:`CompiledModule.describe` is JSON; with the exported library it is all
that :meth:`CompiledModule.from_description` needs to make a module that
:class:`dyno_compile.targets.runner.ModuleRunner` runs, on a machine with only the TVM
runtime. Nothing here imports TVM until it is needed, nor the IR.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.targets.errors import TargetError
from dyno_compile.targets.spec import TargetSpec, get_target

if TYPE_CHECKING:
    from dyno_compile.ir import TensorType

__all__ = ["MODULE_FORMAT", "Compiled", "CompiledModule", "FunctionInfo", "TensorSpec", "contiguous"]


def contiguous(value: Any, dtype: str | None = None) -> np.ndarray:
    """A C-contiguous array (``np.ascontiguousarray`` would turn a 0-d array into 1-d)."""
    arr = np.asarray(value, dtype=dtype)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a function's input, output or weight (JSON-able, no TVM/IR)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
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
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "weights": list(self.weights),
        }

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> FunctionInfo:
        return cls(
            name,
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            tuple(str(w) for w in d.get("weights", ())),
        )


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
            raise InputError(
                f"module {self.name!r} has no function {name!r}; it has {', '.join(self.functions)}"
            ) from None

    def describe(self) -> dict:
        """A JSON-able description: target, functions (inputs, outputs, weights), weights;
        from a build, how its functions were scheduled (``schedule``: summary, fallbacks).

        With the exported library it is everything a runner needs
        (:meth:`from_description`); an artifact manifest can hold it as is.
        """
        return {
            "format": MODULE_FORMAT,
            "name": self.name,
            "target": {
                "name": self.target.name,
                "tvm": _jsonable(self.target.target),
                "host": _jsonable(self.target.host) if self.target.host else None,
            },
            "bind_weights": self.bind_weights,
            "functions": {name: info.to_dict() for name, info in self.functions.items()},
            "weights": [w.to_dict() for w in self.weight_specs.values()],
            **({"schedule": self._schedule()} if self.schedule_report is not None else {}),
        }

    def _schedule(self) -> dict:
        """How the build scheduled its functions: counts per kind, and every function that
        fell back from the first choice with why (a reader of the manifest sees which
        kernels run slower than they could, and a failing rule is reported, not fatal)."""
        report = self.schedule_report
        return {"summary": report.summary(), "fallbacks": dict(report.fallbacks)}

    @classmethod
    def from_description(cls, description: Mapping[str, Any], library: Any) -> CompiledModule:
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
        return cls(
            name=str(description["name"]),
            target=spec,
            executable=library,
            functions={n: FunctionInfo.from_dict(n, d) for n, d in description["functions"].items()},
            bind_weights=bool(description["bind_weights"]),
            weight_specs={w.name: w for w in weights},
        )

    def save_params(self, path: str | os.PathLike) -> Path:
        """Write the weights (each once) as one TVM param file, for ``bind_weights=False``."""
        import tvm

        if self.bind_weights:
            raise TargetError(
                f"module {self.name!r} was compiled with its weights bound into the library; "
                "compile with bind_weights=False to ship them as a param file"
            )
        if set(self.weights) != set(self.weight_specs):
            raise TargetError(f"module {self.name!r} holds no weight values (loaded from a library?)")
        path = Path(path)
        tvm.runtime.save_param_dict_to_file(
            {n: tvm.runtime.tensor(contiguous(self.weights[n], s.dtype)) for n, s in self.weight_specs.items()},
            str(path),
        )
        return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class Compiled:
    """A graph compiled for one target (:func:`~dyno_compile.targets.compile.compile_graph`):
    the Relax executable, with one function ``main``, and how to call it."""

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

    def as_module(self) -> CompiledModule:
        """This build as a module of one function, ``main``: what a runner runs, what
        :meth:`CompiledModule.describe` describes, what :meth:`save_params` writes."""

        def specs(names: list[str], types: list[TensorType]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(n, tuple(t.shape), t.dtype) for n, t in zip(names, types))

        weights = {} if self.bind_weights else {w.name: w for w in specs(self.weight_names, self.weight_types)}
        main = FunctionInfo(
            "main",
            specs(self.input_names, self.input_types),
            specs(self.output_names, self.output_types),
            tuple(weights),
        )
        return CompiledModule(
            name=self.name,
            target=self.target,
            executable=self.executable,
            functions={"main": main},
            bind_weights=self.bind_weights,
            weight_specs=weights,
            timings=self.timings,
            schedule_report=self.schedule_report,
            weights=self.weights,
        )

    def save_params(self, path: str | os.PathLike) -> Path:
        """Write the weights as a TVM param file (for builds with ``bind_weights=False``)."""
        return self.as_module().save_params(path)
