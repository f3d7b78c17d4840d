"""The op registry: the closed set of operators the IR knows, each with its JAX meaning.

An ``OpDef`` carries the op's JAX implementation (the single source of its semantics:
the interpreter runs it, shape inference traces it abstractly), its attribute schema
with defaults, and its arity. Later layers (split, quantize/pack) register their ops
here too, so that one interpreter runs every graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jax

from dyno_compile.errors import GraphError
from dyno_compile.ir.node import freeze_attr
from dyno_compile.ir.types import TensorType


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: Marks an attribute that has no default.
REQUIRED: Any = _Required()


@dataclass(frozen=True, eq=False)
class OpDef:
    name: str
    impl: Callable[..., jax.Array]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    min_inputs: int = 1
    #: ``None`` for variadic ops such as concat.
    max_inputs: int | None = 1
    #: "elementwise", "nn", "tensor", "reduce" or "io": lets passes reason about families.
    kind: str = "tensor"

    def check_arity(self, n: int, node: str) -> None:
        hi = self.max_inputs
        if n < self.min_inputs or (hi is not None and n > hi):
            want = (
                f"{self.min_inputs}"
                if hi == self.min_inputs
                else (f"{self.min_inputs}..{hi if hi is not None else 'N'}")
            )
            raise GraphError(f"node {node!r} ({self.name}): takes {want} inputs, got {n}")

    def complete_attrs(self, attrs: Mapping[str, Any], node: str) -> dict[str, Any]:
        """Fill defaults and refuse unknown or missing attributes, naming the node."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise GraphError(
                f"node {node!r} ({self.name}): unknown attribute(s) {sorted(unknown)}; allowed: {sorted(self.attrs)}"
            )
        out = {}
        for key, default in self.attrs.items():
            if key in attrs:
                out[key] = freeze_attr(attrs[key])
            elif default is REQUIRED:
                raise GraphError(f"node {node!r} ({self.name}): missing attribute {key!r}")
            else:
                out[key] = freeze_attr(default)
        return out


_REGISTRY: dict[str, OpDef] = {}


def register_op(
    name: str, *, attrs: Mapping[str, Any] | None = None, inputs: int | tuple[int, int | None] = 1, kind: str = "tensor"
) -> Callable[[Callable[..., jax.Array]], Callable[..., jax.Array]]:
    """Decorator adding ``impl(*inputs, **attrs)`` to the registry under ``name``."""
    lo, hi = (inputs, inputs) if isinstance(inputs, int) else inputs

    def deco(impl: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        if name in _REGISTRY:
            raise ValueError(f"op {name!r} registered twice")
        _REGISTRY[name] = OpDef(name, impl, dict(attrs or {}), lo, hi, kind)
        return impl

    return deco


def get_op(name: str, node: str = "?") -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GraphError(f"node {node!r}: unknown op {name!r}; known ops: {', '.join(sorted(_REGISTRY))}") from None


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)


def infer_type(op: str, input_types: tuple[TensorType, ...], attrs: Mapping[str, Any], node: str = "?") -> TensorType:
    """Output type of ``op`` on inputs of these types, by tracing its JAX impl abstractly."""
    opdef = get_op(op, node)
    try:
        return _infer_cached(opdef, tuple(input_types), tuple(sorted(attrs.items())))
    except Exception as exc:  # the op's own check failed: say which node and why
        ins = ", ".join(str(t) for t in input_types)
        raise GraphError(f"node {node!r} ({op}): inputs ({ins}) do not fit: {exc}") from exc


@lru_cache(maxsize=8192)
def _infer_cached(opdef: OpDef, input_types: tuple[TensorType, ...], attrs: tuple[tuple[str, Any], ...]) -> TensorType:
    structs = [jax.ShapeDtypeStruct(t.shape, t.dtype) for t in input_types]
    out = jax.eval_shape(lambda *xs: opdef.impl(*xs, **dict(attrs)), *structs)
    return TensorType(out.shape, out.dtype)
