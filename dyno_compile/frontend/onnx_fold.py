"""Shape arithmetic evaluated at import time, so that the IR holds no shape computations.

Exporters compute reshape targets at run time: the TorchScript exporter writes
ShuffleNet's ``x.view(b, groups, c // groups, h, w)`` as Shape -> Gather -> Div ->
Unsqueeze -> Concat -> Reshape. The IR's shapes are static, so every such value is known
at import time. A node whose inputs are all known (initializers, Constants, earlier
folds) is evaluated here with NumPy and its outputs join the known values
(``Context.constants``); Shape and Size need only their input's static shape. A known
value becomes a ``const`` node only where a real computation reads it.

Ops that also exist on run-time tensors (Add, Reshape, Slice, ...) are folded only on
integer and boolean values and on small float ones (``FLOAT_FOLD_LIMIT`` elements:
scalars and shape-like vectors); float computations on weights stay IR nodes, for the
``fold_constants`` pass, which evaluates them with the IR's own (JAX) semantics.
Comparison, logic, ``Where``, ``Mod``, ``Range``, ``ConstantOfShape`` and the like exist
only here: on a value computed at run time they are unsupported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np

from dyno_compile.frontend import onnx_shape_ops as shape_ops
from dyno_compile.frontend.onnx_context import Context, OnnxNode, normalize_axis, np_dtype
from dyno_compile.frontend.onnx_layers import reduce_axes

__all__ = ["FLOAT_FOLD_LIMIT", "FOLDERS", "fold_only_hint", "try_fold"]

#: Most elements of a float input that an op with an IR form is folded on.
FLOAT_FOLD_LIMIT = 64

Args = list["np.ndarray | None"]
#: Evaluates a node on its known inputs (None for an absent optional one) with NumPy.
Folder = Callable[[Context, OnnxNode, Args], "np.ndarray | tuple[np.ndarray, ...]"]

#: Inputs whose value an op never reads, only their static shape or dtype: they need not be known.
_TYPE_ONLY_INPUTS: dict[str, frozenset[int]] = {
    "Shape": frozenset({0}),
    "Size": frozenset({0}),
    "CastLike": frozenset({1}),
}


def try_fold(ctx: Context, node: OnnxNode, *, has_ir_form: bool) -> bool:
    """Evaluate ``node`` if its inputs are known (and, for ops with an IR form, integer or
    small); then its outputs are known values and no IR node is added."""
    folder = FOLDERS.get(node.op_type)
    if folder is None:
        return False
    type_only = _TYPE_ONLY_INPUTS.get(node.op_type, frozenset())
    read = [t for i, t in enumerate(node.inputs) if t and i not in type_only]
    if not all(t in ctx.constants for t in read):
        return False
    if has_ir_form and not all(_foldable(ctx.constants[t]) for t in read):
        return False
    args: Args = [ctx.constants.get(t) if t else None for t in node.inputs]
    result = folder(ctx, node, args)
    values = result if isinstance(result, tuple) else (result,)
    for name, value in zip(node.outputs, values):
        if name:
            ctx.constants[name] = np.asarray(value)
    return True


def fold_only_hint(ctx: Context, node: OnnxNode) -> str:
    """Why a fold-only op on a run-time value cannot be translated, naming that value."""
    computed = next((t for t in node.inputs if t and t not in ctx.constants), "?")
    return (
        f"{node.op_type} is supported only on values known at import time (shape arithmetic "
        f"on static shapes), but its input {computed!r} is computed at run time"
    )


def _foldable(value: np.ndarray) -> bool:
    return value.dtype.kind in "biu" or value.size <= FLOAT_FOLD_LIMIT


# ====================================================================== shapes
def _shape(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    """Shape, with opset 15's ``start``/``end`` (clamped like Python slicing)."""
    shape = ctx.static_shape(node, 0)
    start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
    return np.asarray(shape[start : None if end is None else int(end)], np.int64)


def _size(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    return np.asarray(math.prod(ctx.static_shape(node, 0)), np.int64)


def _constant_of_shape(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    value = np.asarray(node.attrs.get("value", np.zeros(1, np.float32)))
    return np.full([int(d) for d in _arg(args, 0).reshape(-1)], value.reshape(-1)[0], dtype=value.dtype)


def _range(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    """ONNX's count, ``max(ceil((limit - start) / delta), 0)``, then ``start + k * delta``."""
    start, limit, delta = (_arg(args, i).reshape(()).item() for i in range(3))
    if delta == 0:
        raise ValueError("Range with delta 0")
    count = max(math.ceil((limit - start) / delta), 0)
    return (start + np.arange(count) * delta).astype(_arg(args, 0).dtype)


def _arg(args: Args, i: int) -> np.ndarray:
    value = args[i] if i < len(args) else None
    if value is None:
        raise ValueError(f"input {i} is required")
    return value


# ====================================================================== indexing and layout
def _reshape(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    x = _arg(args, 0)
    return x.reshape(shape_ops.reshape_target(ctx, node, x.shape))


def _squeeze(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    x = _arg(args, 0)
    return x.reshape(shape_ops.squeezed_shape(ctx, node, x.shape))


def _unsqueeze(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    x = _arg(args, 0)
    return x.reshape(shape_ops.unsqueezed_shape(ctx, node, x.shape))


def _slice(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    x = _arg(args, 0)
    return x[shape_ops.slices(ctx, node, x.shape)]


def _gather(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    x = _arg(args, 0)
    axis, idx = shape_ops.gather_indices(ctx, node, x.shape)
    return np.take(x, idx, axis=axis)


def _split(ctx: Context, node: OnnxNode, args: Args) -> tuple[np.ndarray, ...]:
    x = _arg(args, 0)
    axis, sizes = shape_ops.split_sizes(ctx, node, x.shape)
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _concat(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    parts = [a for a in args if a is not None]
    return np.concatenate(parts, axis=normalize_axis(int(node.attrs["axis"]), parts[0].ndim))


def _expand(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    x = _arg(args, 0)
    return np.broadcast_to(x, shape_ops.expanded_shape(ctx, node, x.shape)).copy()


def _transpose(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    perm = node.attrs.get("perm")
    return np.transpose(_arg(args, 0), None if perm is None else [int(p) for p in perm])


def _cast(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    return _arg(args, 0).astype(np_dtype(node.attrs["to"], f"Cast node {node.name!r}", ctx.source))


def _cast_like(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    return _arg(args, 0).astype(ctx.static_dtype(node, 1))


def _reduce(fn: Callable[..., np.ndarray], ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    x = _arg(args, 0)
    axes = reduce_axes(ctx, node, x.ndim)
    if axes is None:
        return x
    return fn(x, axis=axes, keepdims=bool(node.attrs.get("keepdims", 1))).astype(x.dtype)


# ====================================================================== arithmetic and logic
def _elementwise(fn: Callable[..., np.ndarray], ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    """``fn`` over the inputs; arithmetic keeps the first input's dtype, as ONNX types say."""
    out = np.asarray(fn(*[a for a in args if a is not None]))
    return out if out.dtype == np.bool_ else out.astype(_arg(args, 0).dtype)


def _where(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    x = _arg(args, 1)
    return np.where(_arg(args, 0), x, _arg(args, 2)).astype(x.dtype)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer Div truncates toward zero (as ONNX Runtime computes it); float Div is true division."""
    if a.dtype.kind not in "iu":
        return np.divide(a, b)
    if np.any(b == 0):
        raise ValueError("integer division by zero")
    quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -quotient, quotient)


def _mod(ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    """``fmod=1``: C's fmod (sign of the dividend); else the sign of the divisor (as NumPy)."""
    a, b = _arg(args, 0), _arg(args, 1)
    if a.dtype.kind in "iu" and np.any(b == 0):
        raise ValueError("integer modulo by zero")
    return (np.fmod if node.attrs.get("fmod", 0) else np.mod)(a, b).astype(a.dtype)


def _variadic(fn: Callable[..., np.ndarray], ctx: Context, node: OnnxNode, args: Args) -> np.ndarray:
    parts = [a for a in args if a is not None]
    return fn.reduce(np.broadcast_arrays(*parts)).astype(parts[0].dtype)  # type: ignore[attr-defined]


_UNARY: dict[str, Callable[..., np.ndarray]] = {
    "Identity": lambda x: x,
    "Neg": np.negative,
    "Abs": np.abs,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Sqrt": np.sqrt,
    "Not": np.logical_not,
}
_BINARY: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _div,
    "Pow": np.power,
    "Equal": np.equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
}

#: ONNX op -> its evaluation on known values.
FOLDERS: dict[str, Folder] = {
    **{op: partial(_elementwise, fn) for op, fn in {**_UNARY, **_BINARY}.items()},
    "Where": _where,
    "Mod": _mod,
    "Max": partial(_variadic, np.maximum),
    "Min": partial(_variadic, np.minimum),
    "Cast": _cast,
    "CastLike": _cast_like,
    "Shape": _shape,
    "Size": _size,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Gather": _gather,
    "Split": _split,
    "Concat": _concat,
    "Expand": _expand,
    "Transpose": _transpose,
    "ReduceProd": partial(_reduce, np.prod),
    "ReduceSum": partial(_reduce, np.sum),
    "ReduceMax": partial(_reduce, np.max),
    "ReduceMin": partial(_reduce, np.min),
}
