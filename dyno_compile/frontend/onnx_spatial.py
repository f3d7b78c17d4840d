"""ONNX operators of detection and segmentation backbones and older CNNs: Resize,
ConvTranspose, PRelu, LeakyRelu, InstanceNormalization and LRN, each one IR op
(:mod:`dyno_compile.ir.ops.spatial`).

What ONNX leaves to attributes and optional inputs becomes the IR op's explicit form here:
Resize's scales or sizes (over all axes, or over ``axes`` from opset 18) become the output
size and, when the model gave scales, the scales that place the samples; ConvTranspose's
``auto_pad`` and ``output_shape`` become explicit pads, as ONNX Runtime computes them.
Forms the IR does not implement are refused naming the attribute: Resize's ``cubic`` mode,
``tf_crop_and_resize``, ``antialias``, ``keep_aspect_ratio_policy`` other than
``stretch``, and a resize of the batch or channel axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dyno_compile.frontend.onnx_context import Context, OnnxNode, Pad2d, pair, spatial_input
from dyno_compile.ir.ops.spatial import RESIZE_COORDINATE_MODES, RESIZE_METHODS, RESIZE_NEAREST_MODES

__all__ = ["conv_transpose", "instance_norm", "leaky_relu", "lrn", "prelu", "resize"]


# ====================================================================== Resize
def resize(ctx: Context, node: OnnxNode) -> str:
    """Opsets 11-19: inputs ``X, roi, scales, sizes`` (``roi`` matters only to
    ``tf_crop_and_resize``, refused); one of ``scales`` and ``sizes`` is given."""
    if ctx.opset < 11:
        raise ctx.unsupported(node, "Resize before opset 11 (scales only, no coordinate modes) is not supported")
    x = spatial_input(ctx, node)
    attrs = _resize_attrs(ctx, node, ctx.dtype(x))
    shape = ctx.shape(x)
    scales = _resize_input(ctx, node, 2, "scales", len(shape))
    if scales is not None:
        _only_spatial(ctx, node, "scales", scales, [1.0, 1.0])
        hw = [float(np.float32(s)) for s in scales[2:]]
        # ONNX Runtime's output size: the float32 product, truncated
        size = tuple(int(np.float32(s) * np.float32(n)) for s, n in zip(hw, shape[2:]))
        attrs["scales"] = tuple(hw)
    else:
        sizes = _resize_input(ctx, node, 3, "sizes", len(shape))
        if sizes is None:
            raise ctx.unsupported(node, "neither scales nor sizes is given")
        if node.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise ctx.unsupported(
                node, f"keep_aspect_ratio_policy={node.attrs['keep_aspect_ratio_policy']!r} is not supported"
            )
        _only_spatial(ctx, node, "sizes", sizes, list(shape[:2]))
        size = tuple(int(s) for s in sizes[2:])
    if min(size) < 1:
        raise ValueError(f"output size {size} of input {shape} is empty")
    return ctx.add("resize2d", [x], {"size": size, **attrs}, node)


def _resize_attrs(ctx: Context, node: OnnxNode, dtype: str) -> dict:
    """The sampling attributes, each unsupported value refused by name."""
    mode = node.attrs.get("mode", "nearest")
    coordinate_mode = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest_mode = node.attrs.get("nearest_mode", "round_prefer_floor")
    checks = [
        ("mode", mode, RESIZE_METHODS),
        ("coordinate_transformation_mode", coordinate_mode, RESIZE_COORDINATE_MODES),
    ]
    if mode == "nearest":
        checks.append(("nearest_mode", nearest_mode, RESIZE_NEAREST_MODES))
    for name, value, allowed in checks:
        if value not in allowed:
            raise ctx.unsupported(node, f"{name}={value!r} is not supported; supported: {', '.join(allowed)}")
    for flag in ("antialias", "exclude_outside"):
        if node.attrs.get(flag, 0):
            raise ctx.unsupported(node, f"{flag}=1 is not supported")
    if mode == "linear" and not np.issubdtype(np.dtype(dtype), np.floating):
        raise ctx.unsupported(node, f"mode='linear' on {dtype} data is not supported (floats only)")
    attrs = {"method": mode, "coordinate_mode": coordinate_mode}
    if mode == "nearest":
        attrs["nearest_mode"] = nearest_mode
    return attrs


def _resize_input(ctx: Context, node: OnnxNode, i: int, what: str, rank: int) -> list | None:
    """Scales or sizes for every axis (those of ``axes`` from opset 18 spread out, the
    others unchanged), or None where the input is omitted or empty."""
    if not node.has_input(i):
        return None
    values = ctx.const_input(node, i, what).reshape(-1).tolist()
    if not values:
        return None
    axes = [int(a) % rank for a in node.attrs.get("axes", range(rank))]
    if len(axes) != len(values):
        raise ValueError(f"{what} has {len(values)} values for {len(axes)} axes")
    full = [1.0] * rank if what == "scales" else list(ctx.shape(ctx.input(node)))
    for axis, value in zip(axes, values):
        full[axis] = value
    return full


def _only_spatial(ctx: Context, node: OnnxNode, what: str, values: Sequence, unchanged: Sequence) -> None:
    if list(values[:2]) != list(unchanged):
        raise ctx.unsupported(
            node, f"its {what} {list(values)} resize the batch or channel axis; only height and width can be resized"
        )


# ====================================================================== ConvTranspose
def conv_transpose(ctx: Context, node: OnnxNode) -> str:
    x = spatial_input(ctx, node)
    w = ctx.input(node, 1)
    if len(ctx.shape(w)) != 4:
        raise ctx.unsupported(node, f"only 2-D kernels are supported, got weights of shape {ctx.shape(w)}")
    kernel = pair(node.attrs.get("kernel_shape") or ctx.shape(w)[2:], 1)
    strides = pair(node.attrs.get("strides"), 1)
    dilation = pair(node.attrs.get("dilations"), 1)
    output_padding = pair(node.attrs.get("output_padding"), 0)
    padding = _transpose_padding(node, ctx.shape(x)[2:], kernel, strides, dilation, output_padding)
    inputs = [x, w] + ([ctx.input(node, 2)] if node.has_input(2) else [])
    attrs = {
        "strides": strides,
        "padding": padding,
        "output_padding": output_padding,
        "dilation": dilation,
        "groups": int(node.attrs.get("group", 1)),
    }
    return ctx.add("conv2d_transpose", inputs, attrs, node)


def _transpose_padding(
    node: OnnxNode,
    in_hw: Sequence[int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
    output_padding: tuple[int, int],
) -> Pad2d:
    """``((top, bottom), (left, right))`` crops of the full transposed convolution, as ONNX
    Runtime computes them: from ``output_shape`` when given (up to a stride beyond the
    kernels' reach: a negative end pad, zeros), else for ``SAME_*`` an output of ``input * stride``, else ``pads``.
    An odd total puts the extra pixel at the end for ``SAME_UPPER``, at the start otherwise
    (also with ``output_shape`` and no ``auto_pad``: ONNX Runtime 1.32, measured)."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    out_shape = list(node.attrs.get("output_shape", ()))
    if out_shape:
        targets = out_shape[-2:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        targets = [n * s for n, s in zip(in_hw, strides)]
    else:
        pads = [int(p) for p in node.attrs.get("pads", (0, 0, 0, 0))] if auto_pad == "NOTSET" else [0, 0, 0, 0]
        return ((pads[0], pads[2]), (pads[1], pads[3]))
    out: list[tuple[int, int]] = []
    for n, k, s, d, extra, target in zip(in_hw, kernel, strides, dilation, output_padding, targets):
        reach = (n - 1) * s + extra + (k - 1) * d + 1
        total = reach - int(target)
        if total < 0:  # zeros at the end, as an output padding below the stride (ONNX Runtime's)
            if -total >= s:  # ONNX Runtime refuses it too
                raise ValueError(
                    f"output_shape {out_shape} is larger than the kernels reach ({reach} on a side) plus the stride"
                )
            out.append((0, total))
            continue
        small = total // 2
        out.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
    return (out[0], out[1])


# ====================================================================== activations
def leaky_relu(ctx: Context, node: OnnxNode) -> str:
    return ctx.add("leaky_relu", [ctx.input(node)], {"alpha": float(node.attrs.get("alpha", 0.01))}, node)


def prelu(ctx: Context, node: OnnxNode) -> str:
    """The slope broadcasts to X one way (ONNX's unidirectional broadcasting): the output
    keeps X's shape."""
    x, slope = ctx.input(node, 0), ctx.input(node, 1)
    if np.broadcast_shapes(ctx.shape(x), ctx.shape(slope)) != tuple(ctx.shape(x)):
        raise ValueError(f"slope of shape {ctx.shape(slope)} does not broadcast to the input's {ctx.shape(x)}")
    return ctx.add("prelu", [x, slope], None, node)


# ====================================================================== normalisation
def instance_norm(ctx: Context, node: OnnxNode) -> str:
    inputs = [ctx.input(node, i) for i in range(3)]
    return ctx.add("instance_norm", inputs, {"epsilon": float(node.attrs.get("epsilon", 1e-5)), "axis": 1}, node)


def lrn(ctx: Context, node: OnnxNode) -> str:
    """Across channels (axis 1); ONNX's window, also for an even ``size`` (ONNX Runtime
    refuses those)."""
    attrs = {
        "size": int(node.attrs["size"]),
        "alpha": float(node.attrs.get("alpha", 1e-4)),
        "beta": float(node.attrs.get("beta", 0.75)),
        "bias": float(node.attrs.get("bias", 1.0)),
    }
    return ctx.add("lrn", [ctx.input(node)], attrs, node)
