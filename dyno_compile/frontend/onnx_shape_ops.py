"""ONNX operators that move data or change shapes, on tensors computed at run time.

Concat, Flatten, Reshape, Transpose, Pad, Expand, and the indexing ops of exported shape
code: Squeeze/Unsqueeze (reshapes), Slice (the IR's slice), Gather of constant indices
along one axis (a slice, plus a reshape for a scalar index) and Split (one slice per
output). The same ops on values known at import time are evaluated by ``onnx_fold``,
which reads each op's arguments through the helpers here (``reshape_target``,
``squeezed_shape``, ``unsqueezed_shape``, ``slices``, ``gather_indices``,
``split_sizes``), so that both paths follow one reading of the ONNX rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dyno_compile.errors import GraphError
from dyno_compile.frontend.onnx_context import Context, OnnxNode, axes_arg, normalize_axis, optional_scalar

__all__ = [
    "concat",
    "expand",
    "expanded_shape",
    "flatten",
    "gather",
    "gather_indices",
    "pad",
    "reshape",
    "reshape_target",
    "resolve_reshape",
    "slice_",
    "slices",
    "split",
    "split_sizes",
    "squeeze",
    "squeezed_shape",
    "transpose",
    "unsqueeze",
    "unsqueezed_shape",
]


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
    return ctx.add("reshape", [x], {"shape": reshape_target(ctx, node, ctx.shape(x))}, node)


def reshape_target(ctx: Context, node: OnnxNode, in_shape: Sequence[int]) -> tuple[int, ...]:
    """The output shape of a Reshape (target an attribute before opset 5, an input since)."""
    target = node.attrs["shape"] if ctx.opset < 5 else ctx.const_input(node, 1, "target shape").tolist()
    return resolve_reshape(in_shape, [int(d) for d in target], bool(node.attrs.get("allowzero", 0)))


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


# ====================================================================== broadcasting and indexing
def expand(ctx: Context, node: OnnxNode) -> str:
    """Expand broadcasts both ways (a target dim of 1 keeps the input's); no node if nothing grows."""
    x = ctx.input(node)
    shape = expanded_shape(ctx, node, ctx.shape(x))
    return x if shape == ctx.shape(x) else ctx.add("broadcast_to", [x], {"shape": shape}, node)


def expanded_shape(ctx: Context, node: OnnxNode, in_shape: Sequence[int]) -> tuple[int, ...]:
    target = [int(d) for d in ctx.const_input(node, 1, "shape").reshape(-1)]
    return tuple(int(d) for d in np.broadcast_shapes(tuple(in_shape), tuple(target)))


def squeeze(ctx: Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    return ctx.add("reshape", [x], {"shape": squeezed_shape(ctx, node, ctx.shape(x))}, node)


def squeezed_shape(ctx: Context, node: OnnxNode, in_shape: Sequence[int]) -> tuple[int, ...]:
    """Squeeze's output: the listed axes (which must be 1) or, with none listed, every 1 dropped."""
    axes = axes_arg(ctx, node, 1, len(in_shape))
    if axes is None:
        return tuple(d for d in in_shape if d != 1)
    wide = [a for a in axes if in_shape[a] != 1]
    if wide:
        raise ValueError(f"cannot squeeze axes {wide} of shape {tuple(in_shape)}: they are not 1")
    return tuple(d for i, d in enumerate(in_shape) if i not in axes)


def unsqueeze(ctx: Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    return ctx.add("reshape", [x], {"shape": unsqueezed_shape(ctx, node, ctx.shape(x))}, node)


def unsqueezed_shape(ctx: Context, node: OnnxNode, in_shape: Sequence[int]) -> tuple[int, ...]:
    """Unsqueeze's output: a 1 inserted at each listed axis, axes counted in the output's rank."""
    listed = [int(a) for a in ctx.const_input(node, 1, "axes").reshape(-1)] if node.has_input(1) else None
    raw = listed if listed is not None else node.attrs["axes"]
    rank = len(in_shape) + len(raw)
    axes = {normalize_axis(int(a), rank) for a in raw}
    if len(axes) != len(raw):
        raise ValueError(f"Unsqueeze axes {list(raw)} repeat an axis")
    rest = iter(in_shape)
    return tuple(1 if i in axes else next(rest) for i in range(rank))


def slice_(ctx: Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    return ctx.add("slice", [x], _slice_attrs(slices(ctx, node, ctx.shape(x))), node)


def slices(ctx: Context, node: OnnxNode, in_shape: Sequence[int]) -> tuple[slice, ...]:
    """One Python slice per axis equal to ONNX Slice (attributes before opset 10, inputs since).

    ONNX clamps starts and ends into the axis; a slice that runs to the end of an axis (or,
    stepping backwards, to its beginning) gets the stop ``None``, so it stays valid if
    that axis is resized later (the batch).
    """
    if ctx.opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes"), None
    else:
        starts = ctx.const_input(node, 1, "starts").reshape(-1).tolist()
        ends = ctx.const_input(node, 2, "ends").reshape(-1).tolist()
        axes = ctx.const_input(node, 3, "axes").reshape(-1).tolist() if node.has_input(3) else None
        steps = ctx.const_input(node, 4, "steps").reshape(-1).tolist() if node.has_input(4) else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ValueError(f"Slice has {len(starts)} starts, {len(ends)} ends, {len(axes)} axes and {len(steps)} steps")
    out = [slice(None)] * len(in_shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        ax = normalize_axis(int(axis), len(in_shape))
        out[ax] = _onnx_slice(in_shape[ax], int(start), int(end), int(step))
    return tuple(out)


def _onnx_slice(dim: int, start: int, end: int, step: int) -> slice:
    if step == 0:
        raise ValueError("Slice step 0")
    start, end = (v + dim if v < 0 else v for v in (start, end))
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return slice(start, None if end >= dim else end, step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


def _slice_attrs(per_axis: Sequence[slice]) -> dict[str, tuple | None]:
    """The IR slice's attributes from one Python slice per axis."""
    steps = tuple(s.step or 1 for s in per_axis)
    return {
        "starts": tuple(s.start or 0 for s in per_axis),
        "limits": tuple(s.stop for s in per_axis),
        "strides": None if all(st == 1 for st in steps) else steps,
    }


def gather(ctx: Context, node: OnnxNode) -> str:
    """Gather along one axis with constant indices that step evenly: a slice (and, for a
    scalar index, a reshape dropping the axis). Other index patterns have no IR op."""
    x = ctx.input(node)
    shape = ctx.shape(x)
    axis, idx = gather_indices(ctx, node, shape)
    flat = idx.reshape(-1).tolist()
    step = flat[1] - flat[0] if len(flat) > 1 else 1
    if idx.ndim > 1 or not flat or step == 0 or any(b - a != step for a, b in zip(flat, flat[1:])):
        raise ctx.unsupported(
            node, f"only a scalar index or indices that step evenly (a slice) are supported, got {idx.tolist()}"
        )
    stop = flat[-1] + step
    per_axis = [slice(None)] * len(shape)
    per_axis[axis] = slice(flat[0], None if stop < 0 or stop >= shape[axis] else stop, step)
    if idx.ndim == 1:
        return ctx.add("slice", [x], _slice_attrs(per_axis), node)
    picked = ctx.add("slice", [x], _slice_attrs(per_axis), node, "slice")
    return ctx.add("reshape", [picked], {"shape": shape[:axis] + shape[axis + 1 :]}, node)


def gather_indices(ctx: Context, node: OnnxNode, in_shape: Sequence[int]) -> tuple[int, np.ndarray]:
    """Gather's axis and its indices, made non-negative; an index outside the axis is an error."""
    axis = normalize_axis(int(node.attrs.get("axis", 0)), len(in_shape))
    idx = ctx.const_input(node, 1, "indices").astype(np.int64)
    dim = in_shape[axis]
    if np.any((idx < -dim) | (idx >= dim)):
        raise ValueError(f"Gather indices {idx.tolist()} are out of range for axis {axis} of size {dim}")
    return axis, np.where(idx < 0, idx + dim, idx)


def split(ctx: Context, node: OnnxNode) -> tuple[str, ...]:
    """One IR slice per output, each named after its ONNX output."""
    x = ctx.input(node)
    shape = ctx.shape(x)
    axis, sizes = split_sizes(ctx, node, shape)
    outs, start = [], 0
    for k, size in enumerate(sizes):
        per_axis = [slice(None)] * len(shape)
        per_axis[axis] = slice(start, None if start + size == shape[axis] else start + size, 1)
        outs.append(ctx.add("slice", [x], _slice_attrs(per_axis), node, output=k))
        start += size
    return tuple(outs)


def split_sizes(ctx: Context, node: OnnxNode, in_shape: Sequence[int]) -> tuple[int, list[int]]:
    """Split's axis and part sizes: ``split`` as an input (opset 13+) or attribute (before),
    else equal parts, one per output (``num_outputs`` from opset 18, where the last part
    may be smaller; before 18 the parts must be equal)."""
    axis = normalize_axis(int(node.attrs.get("axis", 0)), len(in_shape))
    dim, count = in_shape[axis], len(node.outputs)
    if node.has_input(1):
        sizes = [int(v) for v in ctx.const_input(node, 1, "split").reshape(-1)]
    elif "split" in node.attrs:
        sizes = [int(v) for v in node.attrs["split"]]
    else:
        parts = int(node.attrs.get("num_outputs", count))
        chunk = -(-dim // parts)
        if parts != count or (ctx.opset < 18 and dim % parts):
            raise ValueError(f"cannot split an axis of {dim} into {count} equal parts")
        sizes = [chunk] * (parts - 1) + [dim - chunk * (parts - 1)]
    if len(sizes) != count or sum(sizes) != dim or min(sizes) < 0:
        raise ValueError(f"split sizes {sizes} do not cut an axis of {dim} into {count} outputs")
    return axis, sizes
