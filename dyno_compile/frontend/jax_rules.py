"""Translation rules from JAX primitives to IR ops, one small function per primitive.

A rule takes the ``Emitter``, the jaxpr equation and the IR names of its inputs, and
returns the IR names of its outputs. Layout-carrying primitives (convolutions, pooling
windows) are mapped onto the IR's named layouts (NCHW/NHWC, OIHW/HWIO) so that Flax's
NHWC models and NCHW models both translate without inserted transposes.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod
from typing import Any

import jax.extend as jex
import numpy as np

from dyno_compile.errors import UnsupportedOpError
from dyno_compile.ir import Graph

Rule = Callable[["Emitter", jex.core.JaxprEqn, list[str]], list[str]]

#: Calls that JAX names (``jax.nn.*``) and that the IR has as one op.
NAMED_CALLS = {
    "relu": "relu",
    "relu6": "relu6",
    "silu": "silu",
    "swish": "silu",
    "hard_silu": "hardswish",
    "hard_swish": "hardswish",
    "hard_sigmoid": "hardsigmoid",
    "sigmoid": "sigmoid",
}

_WEIGHT_SUFFIXES = (".weight", ".kernel", "/kernel", ".w")


class Emitter:
    """Holds the jaxpr-variable to IR-name environment while one graph is built."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._env: dict[Any, str] = {}
        self._literals: dict[tuple, str] = {}
        #: ``jax.named_scope`` (or Flax module path) of the equation being translated.
        self.scope = ""

    def bind(self, var: Any, name: str) -> None:
        self._env[var] = name

    def read(self, var: Any) -> str:
        if isinstance(var, jex.core.Literal):
            dtype = var.aval.dtype  # type: ignore[attr-defined]  # a ShapedArray; typed AbstractValue
            value = np.asarray(var.val, dtype=dtype)
            key = (value.dtype.name, value.shape, value.tobytes())
            if key not in self._literals:
                self._literals[key] = self.graph.add_const("literal", value).name
            return self._literals[key]
        return self._env[var]

    def op(self, op: str, inputs: list[str], attrs: dict[str, Any] | None = None, *, weight: str | None = None) -> str:
        """Add ``op``; ``weight`` names the weight it was built from, for naming the node."""
        return self.graph.add(op, inputs, attrs, name=self._name_for(op, weight or (inputs[1:2] or [""])[0])).name

    def const_value(self, name: str) -> np.ndarray | None:
        """The value behind ``name`` if it is a weight or literal, else None."""
        return self.graph.params.get(name)

    def _name_for(self, op: str, weight: str) -> str:
        """Name weight-carrying ops after their weight (``layer1.0.conv1``), others by scope and op
        (``layer1.0.relu``), so tables and cut points read like the user's model."""
        if op in ("conv2d", "dense") and weight in self.graph.params:
            for suffix in _WEIGHT_SUFFIXES:
                if weight.endswith(suffix):
                    return weight[: -len(suffix)]
        return f"{self.scope}.{op}" if self.scope else op


def _is_literal(var: Any, value: float) -> bool:
    return isinstance(var, jex.core.Literal) and np.ndim(var.val) == 0 and float(var.val) == value


def describe(eqn: jex.core.JaxprEqn, *enclosing: jex.core.JaxprEqn) -> str:
    """Where an equation came from, for error messages: user source line and output type.

    Equations inlined from a nested call often carry no line; the innermost enclosing
    call that has one is used instead.
    """
    where = ""
    for candidate in (eqn, *reversed(enclosing)):
        try:  # JAX keeps source lines only in a private module; degrade to no location.
            from jax._src import source_info_util

            where = source_info_util.summarize(candidate.source_info)
        except Exception:  # noqa: BLE001
            where = ""
        if where:
            break
    return f"{where or 'unknown location'} -> {eqn.outvars[0].aval.str_short()}"


def _unsupported(eqn: jex.core.JaxprEqn, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(eqn.primitive.name, describe(eqn), source="JAX model", hint=why)


# ------------------------------------------------------------------ elementwise
def _same(op: str) -> Rule:
    return lambda emit, eqn, ins: [emit.op(op, ins)]


def _max(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    for pos in (0, 1):
        if _is_literal(eqn.invars[pos], 0.0):
            return [emit.op("relu", [ins[1 - pos]])]
    return [emit.op("maximum", ins)]


def _integer_pow(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    y = eqn.params["y"]
    if y == 2:
        return [emit.op("mul", [ins[0], ins[0]])]
    dtype = eqn.outvars[0].aval.dtype  # type: ignore[attr-defined]  # a ShapedArray; typed AbstractValue
    exponent = emit.graph.add_const("literal", np.asarray(y, dtype=dtype)).name
    return [emit.op("pow", [ins[0], exponent])]


def _erfc(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    """``1 - erf(x)``: the IR has no erfc; exact ``jax.nn.gelu`` is written with it."""
    dtype = eqn.outvars[0].aval.dtype  # type: ignore[attr-defined]  # a ShapedArray; typed AbstractValue
    one = emit.graph.add_const("literal", np.asarray(1, dtype=dtype)).name
    return [emit.op("sub", [one, emit.op("erf", ins)])]


def _convert(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    dtype = np.dtype(eqn.params["new_dtype"]).name
    if emit.graph.node(ins[0]).dtype == dtype:
        return ins
    value = emit.const_value(ins[0])
    if value is not None and value.size == 1:  # a converted literal is just a literal
        return [emit.graph.add_const("literal", value.astype(dtype)).name]
    return [emit.op("cast", ins, {"dtype": dtype})]


def _identity(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    return ins[:1]


def _clamp(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    lo, x, hi = eqn.invars
    if not (isinstance(lo, jex.core.Literal) and isinstance(hi, jex.core.Literal)):
        raise _unsupported(eqn, "clamp bounds must be constants")
    if float(lo.val) == 0.0 and float(hi.val) == 6.0:
        return [emit.op("relu6", [ins[1]])]
    return [emit.op("clip", [ins[1]], {"min": float(lo.val), "max": float(hi.val)})]


# ------------------------------------------------------------------ shapes
def _reshape(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    shape = tuple(eqn.outvars[0].aval.shape)  # type: ignore[attr-defined]  # a ShapedArray; typed AbstractValue
    if emit.graph.node(ins[0]).shape == shape:
        return ins
    return [emit.op("reshape", ins, {"shape": shape})]


def _broadcast_in_dim(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    target = tuple(eqn.params["shape"])
    src = emit.graph.node(ins[0]).shape
    expanded = [1] * len(target)
    for src_axis, dst_axis in enumerate(eqn.params["broadcast_dimensions"]):
        expanded[dst_axis] = src[src_axis]
    out = ins[0] if tuple(expanded) == src else emit.op("reshape", ins, {"shape": tuple(expanded)})
    if tuple(expanded) != target:
        out = emit.op("broadcast_to", [out], {"shape": target})
    return [out]


def _transpose(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    return [emit.op("transpose", ins, {"perm": tuple(eqn.params["permutation"])})]


def _concatenate(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    return [emit.op("concat", ins, {"axis": eqn.params["dimension"]})]


def _slice(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    p = eqn.params
    shape = emit.graph.node(ins[0]).shape
    limits = tuple(None if lim == dim else lim for lim, dim in zip(p["limit_indices"], shape))
    return [emit.op("slice", ins, {"starts": p["start_indices"], "limits": limits, "strides": p["strides"]})]


def _pad(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config):
        raise _unsupported(eqn, "interior (dilating) padding is not supported")
    value = emit.const_value(ins[1])
    if value is None:
        raise _unsupported(eqn, "the padding value must be a constant")
    return [emit.op("pad", ins[:1], {"pads": tuple((lo, hi) for lo, hi, _ in config), "value": float(value)})]


def _reduce(op: str) -> Rule:
    return lambda emit, eqn, ins: [emit.op(op, ins, {"axes": tuple(eqn.params["axes"]), "keepdims": False})]


# ------------------------------------------------------------------ nn
_LHS_LAYOUTS = {(0, 1, 2, 3): "NCHW", (0, 3, 1, 2): "NHWC"}
_RHS_LAYOUTS = {(0, 1, 2, 3): "OIHW", (3, 2, 0, 1): "HWIO"}


def _conv(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    p = eqn.params
    dn = p["dimension_numbers"]
    data = _LHS_LAYOUTS.get(tuple(dn.lhs_spec))
    kernel = _RHS_LAYOUTS.get(tuple(dn.rhs_spec))
    if data is None or kernel is None or tuple(dn.out_spec) != tuple(dn.lhs_spec):
        raise _unsupported(eqn, f"2-D convolution layouts NCHW/NHWC with OIHW/HWIO only, got {dn}")
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise _unsupported(eqn, "transposed (input-dilated) and batch-grouped convolutions are not supported")
    attrs = {
        "strides": p["window_strides"],
        "padding": tuple(tuple(x) for x in p["padding"]),
        "dilation": p["rhs_dilation"],
        "groups": p["feature_group_count"],
        "data_layout": data,
        "kernel_layout": kernel,
    }
    return [emit.op("conv2d", ins, attrs)]


def _dot_general(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    x, w = (emit.graph.node(n) for n in ins)
    if lb or rb or len(w.shape) != 2 or tuple(lc) != (len(x.shape) - 1,) or len(rc) != 1:
        raise _unsupported(eqn, "only x[..., K] contracted with a 2-D weight is supported (dense layers)")
    weight = ins[1] if tuple(rc) == (1,) else emit.op("transpose", [ins[1]], {"perm": (1, 0)})
    return [emit.op("dense", [ins[0], weight], weight=ins[1])]


def _pool_layout(eqn: jex.core.JaxprEqn) -> tuple[str, tuple[int, int], tuple[int, int]]:
    p = eqn.params
    window, strides = tuple(p["window_dimensions"]), tuple(p["window_strides"])
    if len(window) != 4 or any(d != 1 for d in p["base_dilation"]):
        raise _unsupported(eqn, "pooling windows over 4-D tensors only")
    for layout, (h, w), others in (("NCHW", (2, 3), (0, 1)), ("NHWC", (1, 2), (0, 3))):
        if all(window[a] == 1 and strides[a] == 1 and tuple(p["padding"][a]) == (0, 0) for a in others):
            return layout, (h, w), (window[h], window[w])
    raise _unsupported(eqn, f"pooling window {window} does not pool over the spatial axes of NCHW or NHWC")


def _pool_attrs(eqn: jex.core.JaxprEqn) -> dict[str, Any]:
    layout, (h, w), kernel = _pool_layout(eqn)
    p = eqn.params
    return {
        "kernel": kernel,
        "strides": (p["window_strides"][h], p["window_strides"][w]),
        "padding": (tuple(p["padding"][h]), tuple(p["padding"][w])),
        "dilation": (p["window_dilation"][h], p["window_dilation"][w]),
        "layout": layout,
    }


def _max_pool(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    return [emit.op("max_pool2d", ins, _pool_attrs(eqn))]


def _sum_pool(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str]) -> list[str]:
    """A windowed sum is an average over the full window (padding counted) times its size."""
    attrs = _pool_attrs(eqn)
    avg = emit.op("avg_pool2d", ins, {**attrs, "count_include_pad": True})
    dtype = eqn.outvars[0].aval.dtype  # type: ignore[attr-defined]  # a ShapedArray; typed AbstractValue
    size = np.asarray(prod(attrs["kernel"]), dtype=dtype)
    return [emit.op("mul", [avg, emit.graph.add_const("literal", size).name])]


RULES: dict[str, Rule] = {
    **{
        p: _same(op)
        for p, op in {
            "add": "add",
            "sub": "sub",
            "mul": "mul",
            "div": "div",
            "min": "minimum",
            "pow": "pow",
            "neg": "neg",
            "exp": "exp",
            "log": "log",
            "sqrt": "sqrt",
            "rsqrt": "rsqrt",
            "tanh": "tanh",
            "erf": "erf",
            "logistic": "sigmoid",
            "abs": "abs",
        }.items()
    },
    "add_any": _same("add"),
    "max": _max,
    "integer_pow": _integer_pow,
    "erfc": _erfc,
    "convert_element_type": _convert,
    "stop_gradient": _identity,
    "copy": _identity,
    "copy_p": _identity,
    "optimization_barrier": _identity,
    "clamp": _clamp,
    "reshape": _reshape,
    "squeeze": _reshape,
    "expand_dims": _reshape,
    "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose,
    "concatenate": _concatenate,
    "slice": _slice,
    "pad": _pad,
    "reduce_sum": _reduce("reduce_sum"),
    "reduce_max": _reduce("reduce_max"),
    "reduce_min": _reduce("reduce_min"),
    "conv_general_dilated": _conv,
    "dot_general": _dot_general,
    "reduce_window_max": _max_pool,
    "reduce_window_sum": _sum_pool,
}
