"""ONNX layers: convolution, pooling, dense layers, normalisation, softmax and reductions.

ONNX conventions the IR states differently are lowered here to the IR's explicit form:
``auto_pad`` and ``ceil_mode`` become explicit padding, Gemm's ``transA``/``transB``/
``alpha``/``beta`` become a dense layer plus what it cannot express, opset-12 Softmax a
reshape around a row softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dyno_compile.frontend.onnx_context import (
    Context,
    OnnxNode,
    Pad2d,
    axes_arg,
    normalize_axis,
    pair,
    spatial_input,
    window_padding,
)

__all__ = [
    "average_pool",
    "batch_norm",
    "conv",
    "gemm",
    "global_pool",
    "layer_norm",
    "matmul",
    "max_pool",
    "reduce",
    "reduce_axes",
    "softmax",
]


# ====================================================================== convolution and pooling
def _ceil_extra(size: int, pad: tuple[int, int], kernel: int, stride: int, dilation: int) -> int:
    """Padding to add at the end so that floor-mode pooling gives ONNX's ``ceil_mode`` output size.

    ONNX (like PyTorch) drops a last window that would start in the end padding.
    """
    span = (kernel - 1) * dilation + 1
    padded = size + pad[0] + pad[1]
    out = -(-(padded - span) // stride) + 1
    if (out - 1) * stride >= size + pad[0]:
        out -= 1
    return max((out - 1) * stride + span - padded, 0)


@dataclass(frozen=True)
class _Window:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: Pad2d
    #: Extra bottom/right padding that emulates ``ceil_mode`` (zero when it is off).
    ceil_pad: tuple[int, int]


def _pool_window(ctx: Context, node: OnnxNode, x: str) -> _Window:
    kernel = pair(node.attrs.get("kernel_shape"), 1)
    strides = pair(node.attrs.get("strides"), 1)
    dilation = pair(node.attrs.get("dilations"), 1)
    in_hw = ctx.shape(x)[2:]
    padding = window_padding(node, in_hw, kernel, strides, dilation)
    ceil_pad = (0, 0)
    if node.attrs.get("ceil_mode", 0) and node.attrs.get("auto_pad", "NOTSET") == "NOTSET":
        ceil_h, ceil_w = (_ceil_extra(*args) for args in zip(in_hw, padding, kernel, strides, dilation))
        ceil_pad = (ceil_h, ceil_w)
    return _Window(kernel, strides, dilation, padding, ceil_pad)


def _with_ceil(padding: Pad2d, ceil_pad: tuple[int, int]) -> Pad2d:
    (t, b), (l, r) = padding
    return ((t, b + ceil_pad[0]), (l, r + ceil_pad[1]))


def conv(ctx: Context, node: OnnxNode) -> str:
    x = spatial_input(ctx, node)
    w = ctx.input(node, 1)
    kernel = pair(node.attrs.get("kernel_shape") or ctx.shape(w)[2:], 1)
    strides = pair(node.attrs.get("strides"), 1)
    dilation = pair(node.attrs.get("dilations"), 1)
    padding = window_padding(node, ctx.shape(x)[2:], kernel, strides, dilation)
    inputs = [x, w] + ([ctx.input(node, 2)] if node.has_input(2) else [])
    attrs = {"strides": strides, "padding": padding, "dilation": dilation, "groups": int(node.attrs.get("group", 1))}
    return ctx.add("conv2d", inputs, attrs, node)


def max_pool(ctx: Context, node: OnnxNode) -> str:
    x = spatial_input(ctx, node)
    win = _pool_window(ctx, node, x)
    attrs = {
        "kernel": win.kernel,
        "strides": win.strides,
        "dilation": win.dilation,
        "padding": _with_ceil(win.padding, win.ceil_pad),
    }
    return ctx.add("max_pool2d", [x], attrs, node)


def average_pool(ctx: Context, node: OnnxNode) -> str:
    """With ``count_include_pad`` the explicit pads count in the divisor but ceil-mode overhang does not.

    The IR's ``count_include_pad`` counts all padding, so when both apply the explicit pads
    become a real ``pad`` node of zeros and the pool counts only what it reads.
    """
    x = spatial_input(ctx, node)
    win = _pool_window(ctx, node, x)
    attrs = {"kernel": win.kernel, "strides": win.strides, "dilation": win.dilation}
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    has_pad = any(p for side in win.padding for p in side)
    if include_pad and has_pad and any(win.ceil_pad):
        x = ctx.add("pad", [x], {"pads": ((0, 0), (0, 0)) + win.padding}, node, "padded")
        return ctx.add(
            "avg_pool2d",
            [x],
            {**attrs, "padding": _with_ceil(((0, 0), (0, 0)), win.ceil_pad), "count_include_pad": False},
            node,
        )
    return ctx.add(
        "avg_pool2d",
        [x],
        {**attrs, "padding": _with_ceil(win.padding, win.ceil_pad), "count_include_pad": include_pad and has_pad},
        node,
    )


def global_pool(ir_reduce: str, ctx: Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    rank = len(ctx.shape(x))
    if ir_reduce == "reduce_mean" and rank == 4:
        return ctx.add("global_avg_pool2d", [x], {"keepdims": True}, node)
    return ctx.add(ir_reduce, [x], {"axes": tuple(range(2, rank)), "keepdims": True}, node)


# ====================================================================== dense layers and normalisation
def batch_norm(ctx: Context, node: OnnxNode) -> str:
    if node.attrs.get("training_mode", 0):
        raise ctx.unsupported(node, "BatchNormalization in training mode is not supported")
    inputs = [ctx.input(node, i) for i in range(5)]
    return ctx.add("batch_norm", inputs, {"epsilon": float(node.attrs.get("epsilon", 1e-5)), "axis": 1}, node)


def gemm(ctx: Context, node: OnnxNode) -> str:
    """``alpha * A' @ B' + beta * C``; the IR's dense wants the weight as [out, in], i.e. B' transposed."""
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    a = ctx.input(node, 0)
    if node.attrs.get("transA", 0):
        a = ctx.add("transpose", [a], {"perm": (1, 0)}, node, "a_t")
    w = ctx.input(node, 1)
    if not node.attrs.get("transB", 0):
        w = ctx.add("transpose", [w], {"perm": (1, 0)}, node, "w_t")
    c = ctx.input(node, 2) if node.has_input(2) else None
    fuse_bias = c is not None and alpha == 1.0 and beta == 1.0 and ctx.shape(c) == ctx.shape(w)[:1]
    need_scale = alpha != 1.0
    add_c = None if fuse_bias else c  # C when it is added after the matmul rather than fused into dense
    y = ctx.add(
        "dense",
        [a, w] + ([c] if fuse_bias and c is not None else []),
        None,
        node,
        "matmul" if (need_scale or add_c is not None) else "",
    )
    if need_scale:
        y = ctx.add(
            "mul",
            [y, ctx.scalar(alpha, ctx.dtype(y), node, "alpha")],
            None,
            node,
            "scaled" if add_c is not None else "",
        )
    if add_c is not None:
        if beta != 1.0:
            add_c = ctx.add("mul", [add_c, ctx.scalar(beta, ctx.dtype(add_c), node, "beta")], None, node, "bias")
        y = ctx.add("add", [y, add_c], None, node)
    return y


def matmul(ctx: Context, node: OnnxNode) -> str:
    """``A @ W`` with W a constant matrix [in, out] is a dense layer on W transposed."""
    if node.inputs[1] not in ctx.constants or ctx.constants[node.inputs[1]].ndim != 2:
        raise ctx.unsupported(node, "MatMul is supported only with a constant 2-D right operand (a weight)")
    w = ctx.add("transpose", [ctx.input(node, 1)], {"perm": (1, 0)}, node, "w_t")
    return ctx.add("dense", [ctx.input(node, 0), w], None, node)


def layer_norm(ctx: Context, node: OnnxNode) -> str:
    """LayerNormalization (opset 17) as one IR ``layer_norm`` over the axes from ``axis`` on,
    not its decomposition, so that no cut falls inside it; its training outputs (Mean,
    InvStdDev) are not computed."""
    x = ctx.input(node)
    axis = normalize_axis(int(node.attrs.get("axis", -1)), len(ctx.shape(x)))
    inputs = [x, ctx.input(node, 1)] + ([ctx.input(node, 2)] if node.has_input(2) else [])
    return ctx.add("layer_norm", inputs, {"axis": axis, "epsilon": float(node.attrs.get("epsilon", 1e-5))}, node)


def softmax(ctx: Context, node: OnnxNode) -> str:
    """Before opset 13 Softmax flattens to 2-D at ``axis`` and normalises each row.

    That equals a softmax over ``axis`` alone when every later dimension is 1 (SqueezeNet's
    [1, 1000, 1, 1]); otherwise it is reshape -> softmax -> reshape.
    """
    x = ctx.input(node)
    shape = ctx.shape(x)
    axis = int(node.attrs.get("axis", 1 if ctx.opset < 13 else -1)) % len(shape)
    if ctx.opset >= 13 or all(d == 1 for d in shape[axis + 1 :]):
        return ctx.add("softmax", [x], {"axis": axis}, node)
    rows = ctx.add("reshape", [x], {"shape": (math.prod(shape[:axis]), math.prod(shape[axis:]))}, node, "rows")
    normed = ctx.add("softmax", [rows], {"axis": 1}, node, "rows_softmax")
    return ctx.add("reshape", [normed], {"shape": shape}, node)


# ====================================================================== reductions
def reduce(ir_op: str, ctx: Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    axes = reduce_axes(ctx, node, len(ctx.shape(x)))
    if axes is None:
        return x
    return ctx.add(ir_op, [x], {"axes": axes, "keepdims": bool(node.attrs.get("keepdims", 1))}, node)


def reduce_axes(ctx: Context, node: OnnxNode, rank: int) -> tuple[int, ...] | None:
    """The sorted axes a ReduceX node reduces (an attribute in old opsets, an optional input
    from opset 18): all of them when none are listed, None for ``noop_with_empty_axes``."""
    axes = axes_arg(ctx, node, 1, rank)
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return None
        axes = tuple(range(rank))
    return tuple(sorted(axes))
