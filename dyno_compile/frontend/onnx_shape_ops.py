"""ONNX operators that move data or change shapes: Concat, Flatten, Reshape, Transpose, Pad."""

from __future__ import annotations

import math
from collections.abc import Sequence

from dyno_compile.errors import GraphError
from dyno_compile.frontend.onnx_context import Context, OnnxNode, optional_scalar

__all__ = ["concat", "flatten", "pad", "reshape", "resolve_reshape", "transpose"]


def concat(ctx: Context, node: OnnxNode) -> str:
    inputs = [ctx.value(t, node) for t in node.inputs if t]
    axis = int(node.attrs.get("axis", 1)) % len(ctx.shape(inputs[0]))
    return ctx.add("concat", inputs, {"axis": axis}, node)


def flatten(ctx: Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    axis = int(node.attrs.get("axis", 1))
    return ctx.add("flatten", [x], {"axis": axis % len(ctx.shape(x)) if axis < 0 else axis}, node)


def reshape(ctx: Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    target = node.attrs["shape"] if ctx.opset < 5 else ctx.const_input(node, 1, "target shape").tolist()
    shape = resolve_reshape(ctx.shape(x), [int(d) for d in target], bool(node.attrs.get("allowzero", 0)))
    return ctx.add("reshape", [x], {"shape": shape}, node)


def resolve_reshape(in_shape: Sequence[int], target: Sequence[int], allowzero: bool = False) -> tuple[int, ...]:
    """ONNX Reshape's target with 0 (copy that input dim) and -1 (infer) replaced by sizes."""
    out = [in_shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise GraphError(f"reshape target {list(target)} has more than one -1")
    total = math.prod(in_shape)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise GraphError(f"cannot reshape {tuple(in_shape)} to {list(target)}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise GraphError(f"cannot reshape {tuple(in_shape)} ({total} elements) to {list(target)}")
    return tuple(out)


def transpose(ctx: Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    perm = node.attrs.get("perm") or list(reversed(range(len(ctx.shape(x)))))
    return ctx.add("transpose", [x], {"perm": tuple(int(p) for p in perm)}, node)


def pad(ctx: Context, node: OnnxNode) -> str:
    """Constant-mode Pad; ``pads`` is [begin_0, begin_1, ..., end_0, end_1, ...] over ``axes``."""
    mode = node.attrs.get("mode", "constant")
    if mode != "constant":
        raise ctx.unsupported(node, f"only mode='constant' is supported, got {mode!r}")
    x = ctx.input(node)
    rank = len(ctx.shape(x))
    if ctx.opset < 11:
        pads, value = node.attrs["pads"], float(node.attrs.get("value", 0.0))
    else:
        pads = ctx.const_input(node, 1, "pads").tolist()
        value = optional_scalar(ctx, node, 2, "constant_value") or 0.0
    axes = ctx.const_input(node, 3, "axes").tolist() if node.has_input(3) else list(range(rank))
    per_axis = [(0, 0)] * rank
    for k, axis in enumerate(axes):
        per_axis[int(axis) % rank] = (int(pads[k]), int(pads[k + len(axes)]))
    return ctx.add("pad", [x], {"pads": tuple(per_axis), "value": value}, node)
