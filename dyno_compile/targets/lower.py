"""Lower IR ``Graph``s to a TVM Relax ``IRModule``.

One Relax function ``main(*inputs, *weights)`` with the attribute ``num_input`` set to the
number of graph inputs, so that the weights (the graph's ``const`` nodes, in program
order) can either be bound into the module or passed at run time from a param file. It
returns the graph output, or a tuple of them. ``lower_functions`` puts several graphs into
one module, one such function per name (the segments of a model and the pack/unpack
functions of its cuts), sharing identical kernels.

Each IR op has one small converter (registered in ``CONVERTERS``). The JAX impls in
:mod:`dyno_compile.ir.ops` define the semantics and the converters follow them exactly,
where Relax's defaults differ: max pooling pads with and reduces from ``-inf`` (Relax's
starts at the lowest finite value), average pooling divides as ``count_include_pad``
says (over dilation holes too, as JAX counts), float16 convolutions, matmuls, pooling,
sums and means accumulate in float32, integer ``div`` is true division, integer ``pow``
is JAX's binary exponentiation, ``cast`` to bool is ``!= 0``, negative pads crop, and
negative slice strides work.

The cut ops (``quant_range``, ``quantize``, ``dequantize``, ``bitpack``, ``bitunpack``;
``send`` is the identity) are TE kernels of their own, opaque to fusion and scheduled by
:func:`schedule_cut_kernels`; see the "cut ops" section below.

``lower(graph)`` also returns the parameter order; ``to_relax(graph)`` just the module.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from dyno_compile.errors import DynoError
from dyno_compile.targets.schedule_common import child_blocks, fuse_loops

if TYPE_CHECKING:  # the IR (and JAX behind it) is needed to lower, not to import this module
    from dyno_compile.ir import Graph, Node

__all__ = ["CONVERTERS", "CUT_KERNEL_ATTR", "LoweringError", "Lowered", "code_dtype", "lower", "lower_functions",
           "schedule_cut_kernels", "supported_ops", "to_relax"]


class LoweringError(DynoError):
    """A graph cannot be lowered to Relax (an op without converter, or a converter failed)."""


_HALF = ("float16", "bfloat16")


def _is_float(dtype: str) -> bool:
    return dtype.startswith("float") or dtype == "bfloat16"


def _is_int(dtype: str) -> bool:
    return dtype.startswith("int") or dtype.startswith("uint")


# --------------------------------------------------------------------------- context
@dataclass
class _Ctx:
    """What a converter needs: the block builder, the node, its input types."""

    bb: Any
    node: Node
    in_types: tuple

    @property
    def attrs(self) -> dict[str, Any]:
        return self.node.attrs

    @property
    def out(self):
        return self.node.type

    def emit(self, expr, name: str = ""):
        return self.bb.emit(expr, name_hint=name or _relax_name(self.node.name))

    def const(self, value: Any, dtype: str):
        from tvm import relax

        return relax.const(np.asarray(value, dtype=dtype), dtype)

    def cast(self, x, dtype: str, have: str | None = None):
        from tvm import relax

        have = have if have is not None else _dtype_of(x)
        if have == dtype:
            return x
        if dtype == "bool":  # astype(bool) is x != 0 (LLVM's fptoui i1 would truncate 0.5 to 0)
            return self.emit(relax.op.not_equal(x, self.const(0, have)))
        return self.emit(relax.op.astype(x, dtype))


Converter = Callable[[_Ctx, list], Any]

#: op name -> converter(ctx, inputs) returning a Relax expression (emitted or not).
CONVERTERS: dict[str, Converter] = {}


def converter(*ops: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for op in ops:
            CONVERTERS[op] = fn
        return fn
    return deco


def supported_ops() -> list[str]:
    return sorted(CONVERTERS)


def _dtype_of(expr) -> str:
    return str(expr.ty.dtype)


def _shape_of(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def _relax_name(name: str) -> str:
    """A readable identifier for a Relax var (IR names have dots and dashes)."""
    s = re.sub(r"\W", "_", name)
    return s if s and not s[0].isdigit() else f"v_{s}"


# --------------------------------------------------------------------------- elementwise
def _unary(fn_name: str):
    def conv(ctx: _Ctx, xs: list):
        from tvm import relax

        x = ctx.cast(xs[0], ctx.out.dtype)
        return getattr(relax.op, fn_name)(x)
    return conv


for _op, _fn in {"sigmoid": "sigmoid", "tanh": "tanh", "exp": "exp", "log": "log", "sqrt": "sqrt",
                 "rsqrt": "rsqrt", "neg": "negative", "abs": "abs"}.items():
    CONVERTERS[_op] = _unary(_fn)


@converter("relu")
def _relu(ctx, xs):
    from tvm import relax

    return relax.op.nn.relu(xs[0])


@converter("relu6")
def _relu6(ctx, xs):
    return _clamp(ctx, xs[0], 0.0, 6.0)


def _clamp(ctx: _Ctx, x, lo, hi):
    """``jnp.clip``: ``minimum(maximum(x, lo), hi)``, either bound optional."""
    from tvm import relax

    dtype = _dtype_of(x)
    if lo is not None:
        x = ctx.emit(relax.op.maximum(x, ctx.const(lo, dtype)))
    if hi is not None:
        x = relax.op.minimum(x, ctx.const(hi, dtype))
    return x


@converter("clip")
def _clip(ctx, xs):
    x = ctx.cast(xs[0], ctx.out.dtype)
    return _clamp(ctx, x, ctx.attrs["min"], ctx.attrs["max"])


@converter("hardsigmoid", "hardswish")
def _hard(ctx, xs):
    """``relu6(x + 3) / 6`` and ``x * relu6(x + 3) / 6``, as jax.nn writes them."""
    from tvm import relax

    x = xs[0]
    dtype = _dtype_of(x)
    r = ctx.emit(_clamp(ctx, ctx.emit(relax.op.add(x, ctx.const(3.0, dtype))), 0.0, 6.0))
    if ctx.node.op == "hardswish":  # x * relu6(x + 3) / 6, in that order
        r = ctx.emit(relax.op.multiply(x, r))
    return relax.op.divide(r, ctx.const(6.0, dtype))


@converter("silu")
def _silu(ctx, xs):
    from tvm import relax

    return relax.op.multiply(xs[0], ctx.emit(relax.op.sigmoid(xs[0])))


@converter("identity")
def _identity(ctx, xs):
    return xs[0]


_BINARY = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "maximum": "maximum",
           "minimum": "minimum"}


def _binary(fn_name: str):
    def conv(ctx: _Ctx, xs: list):
        from tvm import relax

        dtype = ctx.out.dtype  # NumPy/JAX promotion already decided the result type
        a, b = (ctx.cast(x, dtype) for x in xs)
        return getattr(relax.op, fn_name)(a, b)
    return conv


for _op, _fn in _BINARY.items():
    CONVERTERS[_op] = _binary(_fn)


@converter("pow")
def _pow(ctx, xs):
    """Float ``power``; for integers, JAX's binary exponentiation over the exponent's low 6 bits."""
    from tvm import relax

    dtype = ctx.out.dtype
    a, b = (ctx.cast(x, dtype) for x in xs)
    if _is_float(dtype):
        return relax.op.power(a, b)
    shape = list(ctx.out.shape)
    a, b = (ctx.emit(relax.op.broadcast_to(v, shape)) if _shape_of(v) != tuple(shape) else v for v in (a, b))
    return ctx.bb.emit_te(_te_int_pow, a, b, primfunc_name_hint="int_pow", name_hint=_relax_name(ctx.node.name))


def _te_int_pow(x1, x2):
    from tvm import te, tirx

    def compute(*i):
        base, e = x1[i], x2[i]
        zero, one = tirx.const(0, x1.dtype), tirx.const(1, x1.dtype)
        acc = tirx.Select(tirx.all(base == zero, e != zero), zero, one)
        e = e & tirx.const(63, x1.dtype)  # the bits lax.shift_right_logical visits in 6 steps
        for k in range(6):
            bit = (e >> tirx.const(k, x1.dtype)) & one
            acc = tirx.Select(bit != zero, acc * base, acc)
            base = base * base
        return acc

    return te.compute(x1.shape, compute, name="int_pow")


@converter("cast")
def _cast(ctx, xs):
    return ctx.cast(xs[0], ctx.attrs["dtype"])


# --------------------------------------------------------------------------- nn
def _acc_dtype(dtype: str) -> str:
    return "float32" if dtype in _HALF else dtype


def _channel_shape(ndim: int, axis: int, channels: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = channels
    return shape


@converter("conv2d")
def _conv2d(ctx, xs):
    from tvm import relax

    a = ctx.attrs
    (t, b), (l, r) = a["padding"]
    x, w = xs[0], xs[1]
    dtype = _dtype_of(x)
    acc = _acc_dtype(dtype)
    w = ctx.cast(w, dtype)
    y = ctx.emit(relax.op.nn.conv2d(
        x, w, strides=tuple(a["strides"]), padding=(t, l, b, r), dilation=tuple(a["dilation"]),
        groups=int(a["groups"]), data_layout=a["data_layout"], kernel_layout=a["kernel_layout"],
        out_dtype=acc))
    if len(xs) == 3:
        axis = a["data_layout"].index("C")
        bias = ctx.cast(xs[2], acc)
        bias = ctx.emit(relax.op.reshape(bias, _channel_shape(4, axis, _shape_of(xs[2])[0])))
        y = ctx.emit(relax.op.add(y, bias))
    return ctx.cast(y, dtype) if acc != dtype else y


@converter("dense")
def _dense(ctx, xs):
    from tvm import relax

    x, w = xs[0], xs[1]
    dtype = _dtype_of(x)
    acc = _acc_dtype(dtype)
    w = ctx.cast(w, dtype)
    wt = ctx.emit(relax.op.permute_dims(w, [1, 0]))
    y = ctx.emit(relax.op.matmul(x, wt, out_dtype=acc))
    if len(xs) == 3:
        y = ctx.emit(relax.op.add(y, ctx.cast(xs[2], acc)))
    return ctx.cast(y, dtype) if acc != dtype else y


@converter("batch_norm")
def _batch_norm(ctx, xs):
    """Inference batch norm, as the JAX impl: ``(x - mean) * (gamma * rsqrt(var + eps)) + beta``."""
    from tvm import relax

    import jax.numpy as jnp

    x, gamma, beta, mean, var = xs
    ndim = len(_shape_of(x))
    axis = ctx.attrs["axis"] % ndim
    pdt = str(jnp.result_type(*(_dtype_of(p) for p in (gamma, var))))
    var_eps = ctx.emit(relax.op.add(ctx.cast(var, pdt), ctx.const(ctx.attrs["epsilon"], pdt)))
    scale = ctx.emit(relax.op.multiply(ctx.cast(gamma, pdt), ctx.emit(relax.op.rsqrt(var_eps))))
    shape = _channel_shape(ndim, axis, _shape_of(x)[axis])
    cdt = str(jnp.result_type(*(_dtype_of(v) for v in xs)))
    reshape = lambda v: ctx.emit(relax.op.reshape(ctx.cast(v, cdt), shape))  # noqa: E731
    y = ctx.emit(relax.op.subtract(ctx.cast(x, cdt), reshape(mean)))
    y = ctx.emit(relax.op.multiply(y, reshape(scale)))
    y = relax.op.add(y, reshape(beta))
    return ctx.cast(ctx.emit(y), ctx.out.dtype) if cdt != ctx.out.dtype else y


def _pad_hw(layout: str, padding) -> list[list[int]]:
    """Per-axis (before, after) pads of a 4-D tensor in ``layout`` from ((t, b), (l, r))."""
    pads = [[0, 0] for _ in range(4)]
    pads[layout.index("H")] = list(padding[0])
    pads[layout.index("W")] = list(padding[1])
    return pads


def _lowest(dtype: str) -> float:
    return -math.inf if _is_float(dtype) else (np.iinfo(dtype).min if _is_int(dtype) else 0)


@converter("max_pool2d")
def _max_pool2d(ctx, xs):
    """A max reduction whose identity is -inf, reading -inf outside the input, as ``lax.reduce_window``.

    Relax's own max pooling starts from the lowest finite value, so a window of only
    padding or only ``-inf`` would give -3.4e38 instead of JAX's ``-inf``.

    Padding is a bounds check inside the window, not a padded copy: the copy cost as much
    as the pooling (ResNet-18's stem: a 3.3 MB pad, then the pool read it again).
    """
    a = ctx.attrs
    x = xs[0]
    padding = tuple(tuple(int(p) for p in pair) for pair in a["padding"])
    if any(p < 0 for pair in padding for p in pair):  # crops: lax.pad's negative padding
        x = _pad(ctx, x, _pad_hw(a["layout"], padding), _lowest(_dtype_of(x)))
        padding = ((0, 0), (0, 0))
    return ctx.bb.emit_te(_te_max_pool, x, tuple(a["kernel"]), tuple(a["strides"]), tuple(a["dilation"]),
                          a["layout"], padding, primfunc_name_hint="max_pool2d", name_hint=_relax_name(ctx.node.name))


def _te_max_pool(data, kernel, strides, dilation, layout, padding):
    from tvm import te, tirx

    h, w = layout.index("H"), layout.index("W")
    shape = [int(d) for d in data.shape]
    out = list(shape)
    for axis, k, s, d, (lo, hi) in ((h, kernel[0], strides[0], dilation[0], padding[0]),
                                    (w, kernel[1], strides[1], dilation[1], padding[1])):
        out[axis] = (shape[axis] + lo + hi - d * (k - 1) - 1) // s + 1
    rh = te.reduce_axis((0, kernel[0]), name="rh")
    rw = te.reduce_axis((0, kernel[1]), name="rw")
    dtype = str(data.dtype)
    lowest = (lambda t: tirx.const(-math.inf, t)) if _is_float(dtype) else (lambda t: tirx.min_value(t))
    reducer = te.comm_reducer(lambda p, q: tirx.max(p, q), lowest, name="max_from_lowest")

    def compute(*idx):
        src = list(idx)
        src[h] = idx[h] * strides[0] + rh * dilation[0] - padding[0][0]
        src[w] = idx[w] * strides[1] + rw * dilation[1] - padding[1][0]
        value = data[tuple(src)]
        if any(padding[0]) or any(padding[1]):
            inside = tirx.all(src[h] >= 0, src[h] < shape[h], src[w] >= 0, src[w] < shape[w])
            value = tirx.if_then_else(inside, value, lowest(dtype))
        return reducer(value, axis=[rh, rw])

    return te.compute(out, compute, name="max_pool2d")


@converter("avg_pool2d")
def _avg_pool2d(ctx, xs):
    """Sum pooling over zero-padded input divided by the window size (``count_include_pad``,
    also over dilation holes as JAX counts) or by the number of real elements in the window."""
    from tvm import relax

    a = ctx.attrs
    x = xs[0]
    dtype = _dtype_of(x)
    acc = _acc_dtype(dtype)
    x = ctx.cast(x, acc)
    kernel, strides, dilation = tuple(a["kernel"]), tuple(a["strides"]), tuple(a["dilation"])
    padded = any(p for pair in a["padding"] for p in pair)
    if padded:
        x = _pad(ctx, x, _pad_hw(a["layout"], a["padding"]), 0.0)
    pool = dict(pool_size=kernel, strides=strides, padding=(0, 0, 0, 0), dilation=dilation, layout=a["layout"])
    y = ctx.emit(relax.op.nn.avg_pool2d(x, count_include_pad=True, **pool))
    if padded and not a["count_include_pad"]:
        # divide by how many real (unpadded) elements each window saw: a constant map
        shape = [1, 1, 1, 1]
        h, w = a["layout"].index("H"), a["layout"].index("W")
        in_shape = ctx.in_types[0].shape
        shape[h], shape[w] = in_shape[h], in_shape[w]
        ones = np.pad(np.ones(shape, np.float64), _pad_hw(a["layout"], a["padding"]))
        counts = _window_sums(ones, h, w, kernel, strides, dilation)
        factor = (kernel[0] * kernel[1]) / counts
        y = ctx.emit(relax.op.multiply(y, ctx.const(factor, acc)))
    return ctx.cast(y, dtype) if acc != dtype else y


def _window_sums(x: np.ndarray, h: int, w: int, kernel, strides, dilation) -> np.ndarray:
    """Sum over 2-D windows of a tiny NumPy array (for the avg-pool count map)."""
    out_h = (x.shape[h] - dilation[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    out_w = (x.shape[w] - dilation[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    oshape = list(x.shape)
    oshape[h], oshape[w] = out_h, out_w
    out = np.zeros(oshape)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            idx = [slice(None)] * x.ndim
            idx[h] = slice(i * dilation[0], i * dilation[0] + strides[0] * (out_h - 1) + 1, strides[0])
            idx[w] = slice(j * dilation[1], j * dilation[1] + strides[1] * (out_w - 1) + 1, strides[1])
            out += x[tuple(idx)]
    return out


@converter("global_avg_pool2d")
def _global_avg_pool2d(ctx, xs):
    from tvm import relax

    layout = ctx.attrs["layout"]
    x = xs[0]
    dtype = _dtype_of(x)
    acc = _acc_dtype(dtype)
    y = ctx.emit(relax.op.mean(ctx.cast(x, acc), axis=[layout.index("H"), layout.index("W")],
                               keepdims=bool(ctx.attrs["keepdims"])))
    return ctx.cast(y, dtype) if acc != dtype else y


@converter("softmax")
def _softmax(ctx, xs):
    from tvm import relax

    return relax.op.nn.softmax(xs[0], axis=int(ctx.attrs["axis"]))


# --------------------------------------------------------------------------- tensor
@converter("concat")
def _concat(ctx, xs):
    from tvm import relax

    dtype = ctx.out.dtype
    return relax.op.concat([ctx.cast(x, dtype) for x in xs], axis=int(ctx.attrs["axis"]))


def _pad(ctx: _Ctx, x, pads: Sequence[Sequence[int]], value: float):
    """Constant pad; negative entries crop (as ``lax.pad``)."""
    from tvm import relax

    shape = _shape_of(x)
    grow = [max(int(lo), 0) for lo, _ in pads], [max(int(hi), 0) for _, hi in pads]
    if any(grow[0]) or any(grow[1]):
        flat = [v for lo, hi in zip(*grow) for v in (lo, hi)]
        x = ctx.emit(relax.op.nn.pad(x, flat, pad_mode="constant", pad_value=float(value)))
        shape = _shape_of(x)
    crop = [(max(-int(lo), 0), max(-int(hi), 0)) for lo, hi in pads]
    if any(lo or hi for lo, hi in crop):
        axes = [i for i, (lo, hi) in enumerate(crop) if lo or hi]
        begin = [crop[i][0] for i in axes]
        end = [shape[i] - crop[i][1] for i in axes]
        x = ctx.emit(relax.op.strided_slice(x, axes, begin, end))
    return x


@converter("pad")
def _pad_op(ctx, xs):
    return _pad(ctx, xs[0], ctx.attrs["pads"], ctx.attrs["value"])


@converter("flatten", "reshape")
def _reshape(ctx, xs):
    from tvm import relax

    return relax.op.reshape(xs[0], list(ctx.out.shape))


@converter("transpose")
def _transpose(ctx, xs):
    from tvm import relax

    return relax.op.permute_dims(xs[0], [int(p) for p in ctx.attrs["perm"]])


@converter("broadcast_to")
def _broadcast_to(ctx, xs):
    from tvm import relax

    return relax.op.broadcast_to(xs[0], list(ctx.out.shape))


@converter("slice")
def _slice(ctx, xs):
    """Python slicing per axis; negative strides become a ``take`` of explicit indices."""
    from tvm import relax

    a = ctx.attrs
    x = xs[0]
    shape = _shape_of(x)
    steps = a["strides"] or (1,) * len(shape)
    axes, begin, end, strides = [], [], [], []
    takes = []
    for axis, (s, l, st, dim) in enumerate(zip(a["starts"], a["limits"], steps, shape)):
        start, stop, step = slice(s, l, st).indices(dim)
        if step < 0:
            takes.append((axis, list(range(start, stop, step))))
            continue
        if (start, stop, step) == (0, dim, 1):
            continue
        stop = max(stop, start)
        axes.append(axis)
        begin.append(start)
        end.append(stop)
        strides.append(step)
    if axes:
        x = ctx.emit(relax.op.strided_slice(x, axes, begin, end, strides, assume_inbound=True))
    for axis, idx in takes:
        x = ctx.emit(relax.op.take(x, ctx.const(np.asarray(idx, np.int64), "int64"), axis=axis))
    return x


def _reduce(fn_name: str):
    def conv(ctx: _Ctx, xs: list):
        from tvm import relax

        x = xs[0]
        out = ctx.out.dtype
        have = _dtype_of(x)
        # sums and means of half floats accumulate in float32; integer sums and means
        # compute in their (wider or float) result type, as jnp does.
        acc = _acc_dtype(out) if fn_name in ("sum", "mean") else out
        x = ctx.cast(x, acc, have)
        axes = [int(ax) % len(_shape_of(x)) for ax in ctx.attrs["axes"]]
        y = getattr(relax.op, fn_name)(x, axis=axes, keepdims=bool(ctx.attrs["keepdims"]))
        return ctx.cast(ctx.emit(y), out) if acc != out else y
    return conv


for _op, _fn in {"reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min", "reduce_mean": "mean"}.items():
    CONVERTERS[_op] = _reduce(_fn)


# --------------------------------------------------------------------------- cut ops
# DynO's quantize / pack at a cut. The semantics are the JAX impls of
# :mod:`dyno_compile.ir.ops.quant` (and, bit for bit, :mod:`dyno_compile.packing`):
#
#     lo, hi = min(x), max(x)                                  # per tensor or per channel
#     scale  = (hi - lo) * float32(1 / (2**bits - 1));  1.0 where below 2**-126
#     q      = clip(round_half_even((x - lo) * (1 / scale)), 0, 2**bits - 1)
#     x'     = float32(q) * scale + lo
#
# and a dense little-endian, LSB-first bit stream of ceil(N * bits / 8) bytes. Each op is
# one TE kernel ("cut kernel") marked opaque, so fusion leaves it alone, and scheduled by
# :func:`schedule_cut_kernels` (CPU: parallel and vectorised; GPU: thread bindings) instead
# of the generic schedule: a min/max reduction and bit gathers are not patterns that the
# generic schedule recognises. Kernels work on a 3-D view ``[outer, C, inner]`` of the
# tensor (``[1, 1, N]`` per tensor) made by a free Relax reshape, so that the channel of
# an element is one loop index and the innermost loop is contiguous.

#: PrimFunc attribute naming a cut kernel's kind; :func:`schedule_cut_kernels` looks for it.
CUT_KERNEL_ATTR = "dyno.cut_kernel"
_OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps leaves the call alone
#: The smallest normal float32: a smaller scale means "no usable range" and becomes 1.
_MIN_SCALE = 2.0 ** -126
#: Vector widths (elements) tried for the innermost loop of the kernels, widest first: the
#: widest divisor of the innermost extent is used (LLVM splits wide vectors into registers).
_VECTOR_WIDTHS = (32, 16, 8, 4, 2)


def _levels(bits: int) -> int:
    return (1 << bits) - 1


def code_dtype(bits: int) -> str:
    """The dtype of ``bits``-bit codes: uint8 up to 8 bits, uint16 above (as the JAX op)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise LoweringError(f"bits must be an int in 1..16, got {bits!r}")
    return "uint8" if bits <= 8 else "uint16"


def _q_view(shape: Sequence[int], granularity: str, axis: int) -> tuple[int, int, int]:
    """``(outer, C, inner)`` of the 3-D view for per-tensor or per-channel ``axis``."""
    n = math.prod(shape)
    if granularity == "tensor":
        return 1, 1, n
    if granularity != "channel":
        raise LoweringError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    if not shape:
        raise LoweringError("per-channel quantisation needs a tensor of rank >= 1")
    a = int(axis) % len(shape)
    return math.prod(shape[:a]), int(shape[a]), math.prod(shape[a + 1:])


def _vector_width(extent: int) -> int:
    return next((v for v in _VECTOR_WIDTHS if extent % v == 0), 1)


def _emit_cut_kernel(ctx: _Ctx, kind: str, te_fn: Callable, args: list, *, attrs: dict | None = None,
                     **params):
    """Build ``te_fn`` over placeholders for ``args`` into an opaque PrimFunc tagged ``kind``
    (plus ``attrs``), add it to the module and emit its ``call_tir``."""
    from tvm import relax, te

    holders = [te.placeholder(_shape_of(a), _dtype_of(a), name=f"in{i}") for i, a in enumerate(args)]
    outs = te_fn(*holders, **params)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    func = te.create_prim_func(holders + outs).without_attr("global_symbol")
    func = func.with_attr("op_pattern", _OPAQUE).with_attr(CUT_KERNEL_ATTR, kind)
    for key, value in (attrs or {}).items():
        func = func.with_attr(key, value)
    gv = ctx.bb.add_func(func, kind)
    out_ty = [relax.TensorType([int(d) for d in o.shape], str(o.dtype)) for o in outs]
    return ctx.emit(relax.call_tir(gv, args, out_ty[0] if len(out_ty) == 1 else out_ty))


def _view(ctx: _Ctx, x, shape: Sequence[int]):
    """``x`` reshaped (a view at run time: the build turns lone reshapes into views)."""
    from tvm import relax

    shape = [int(d) for d in shape]
    return x if list(_shape_of(x)) == shape else ctx.emit(relax.op.reshape(x, shape))


def _f32(value):
    from tvm import tirx

    return value if str(value.dtype) == "float32" else tirx.Cast("float32", value)


def _minmax_reducer():
    from tvm import te, tirx

    return te.comm_reducer(lambda a, b: (tirx.min(a[0], b[0]), tirx.max(a[1], b[1])),
                           lambda t0, t1: (tirx.const(math.inf, t0), tirx.const(-math.inf, t1)),
                           name="minmax")


def _range_split(outer: int, channels: int, inner: int) -> tuple[int, int, int, int]:
    """How ``quant_range`` splits the reduction: ``(L, M, P, R)``.

    The innermost ``L`` elements (a divisor of ``inner``) are vector lanes; the ``M = inner
    / L`` groups are cut into ``P`` chunks of ``R`` groups, so that ``channels * P`` partial
    min/max reductions run in parallel, each over at least about 2048 elements.
    """
    lanes = _vector_width(inner)
    groups = inner // lanes
    per_chunk = max(1, 2048 // max(1, lanes * outer))
    chunks = max(1, min(-(-64 // channels), groups // per_chunk))
    rows = -(-groups // chunks)
    return lanes, groups, -(-groups // rows), rows


def _te_quant_range(x, *, bits: int, per_channel: bool):
    """``[2]`` (or ``[2, C]``): row 0 ``lo``, row 1 ``scale``, from the 3-D view ``x``.

    Min and max in one pass (a tuple reduction): per (channel, chunk, lane) partials, then
    per channel over chunks and lanes; min/max are exact, so any order gives JAX's result.
    """
    from tvm import te, tirx

    outer, channels, inner = (int(d) for d in x.shape)
    lanes, groups, chunks, rows = _range_split(outer, channels, inner)
    minmax = _minmax_reducer()
    ro = te.reduce_axis((0, outer), "ro")
    rr = te.reduce_axis((0, rows), "rr")

    def partial(c, p, lane):
        g = p * rows + rr
        if chunks * rows > groups:  # the last chunk is short: reread the last group (min/max unchanged)
            g = tirx.min(g, groups - 1)
        v = _f32(x[ro, c, g * lanes + lane])
        return minmax((v, v), axis=[ro, rr])

    pmin, pmax = te.compute((channels, chunks, lanes), partial, name="range_partial")
    rp = te.reduce_axis((0, chunks), "rp")
    rl = te.reduce_axis((0, lanes), "rl")
    lo, hi = te.compute((channels,), lambda c: minmax((pmin[c, rp, rl], pmax[c, rp, rl]), axis=[rp, rl]),
                        name="range_final")
    inv_levels = tirx.const(float(np.float32(1 / _levels(bits))), "float32")

    def row(i, c):
        scale = (hi[c] - lo[c]) * inv_levels
        scale = tirx.Select(scale < tirx.const(_MIN_SCALE, "float32"), tirx.const(1.0, "float32"), scale)
        return tirx.Select(i == 0, lo[c], scale)

    if per_channel:
        return te.compute((2, channels), row, name="range")
    return te.compute((2,), lambda i: row(i, 0), name="range")


def _range_at(rng, per_channel: bool, c):
    """(lo, scale) for channel ``c`` from a ``[2]`` or ``[2, C]`` range tensor."""
    return (rng[0, c], rng[1, c]) if per_channel else (rng[0], rng[1])


def _te_quantize(x, rng, *, bits: int, per_channel: bool):
    """Codes of the 3-D view ``x``: ``clip(round_half_even((x - lo) * (1 / scale)), 0, 2**bits - 1)``."""
    from tvm import te, tirx

    one, zero = tirx.const(1.0, "float32"), tirx.const(0.0, "float32")
    top = tirx.const(float(_levels(bits)), "float32")
    dtype = code_dtype(bits)

    def code(o, c, i):
        lo, scale = _range_at(rng, per_channel, c)
        # nearbyint: round half to even on every target (CUDA's roundf rounds half away from 0)
        q = tirx.nearbyint((_f32(x[o, c, i]) - lo) * (one / scale))
        return tirx.Cast(dtype, tirx.min(tirx.max(q, zero), top))

    return te.compute(x.shape, code, name="quantize")


def _te_dequantize(codes, rng, *, per_channel: bool):
    """``float32(q) * scale + lo`` over the 3-D view ``codes``."""
    from tvm import te, tirx

    def value(o, c, i):
        lo, scale = _range_at(rng, per_channel, c)
        return tirx.Cast("float32", codes[o, c, i]) * scale + lo

    return te.compute(codes.shape, value, name="dequantize")


def _u32(value):
    from tvm import tirx

    return value if str(value.dtype) == "uint32" else tirx.Cast("uint32", value)


def pack_period(bits: int) -> tuple[int, int]:
    """``(bytes, codes)``: the bit stream repeats every ``8 / gcd(b, 8)`` codes, which fill
    ``b / gcd(b, 8)`` bytes (1 byte per 2 codes at 4 bits, 3 bytes per 8 codes at 3 bits)."""
    g = math.gcd(bits, 8)
    return bits // g, 8 // g


def _pieces_of_byte(bits: int, j: int) -> list[tuple[int, int]]:
    """``(m, shift)`` for each code ``m`` of a period that has bits in its byte ``j``:
    the byte is ``OR((code_m << shift) if shift >= 0 else (code_m >> -shift)) & 0xFF``."""
    return [(m, m * bits - 8 * j) for m in range(pack_period(bits)[1])
            if m * bits < 8 * (j + 1) and (m + 1) * bits > 8 * j]


def _bytes_of_code(bits: int, m: int) -> list[tuple[int, int]]:
    """``(j, shift)`` for each byte ``j`` of a period holding bits of its code ``m``: the
    code is ``OR((byte_j << shift) if shift >= 0 else (byte_j >> -shift)) & mask``."""
    return [(j, 8 * j - m * bits) for j in range(pack_period(bits)[0])
            if 8 * j < (m + 1) * bits and 8 * (j + 1) > m * bits]


def _shifted(value, shift: int):
    from tvm import tirx

    if shift > 0:
        return value << tirx.const(shift, "uint32")
    if shift < 0:
        return value >> tirx.const(-shift, "uint32")
    return value


def _by_position(position, parts: list):
    """``parts[position]`` for a loop-dependent ``position``: a Select chain that folds to one
    part once the schedule unrolls the period (``position`` a constant)."""
    from tvm import tirx

    expr = parts[-1]
    for p in range(len(parts) - 2, -1, -1):
        expr = tirx.Select(position == p, parts[p], expr)
    return expr


def _te_bitpack(codes, *, bits: int):
    """``ceil(N * bits / 8)`` bytes from ``N`` codes. Code ``i`` occupies stream bits
    ``[i*b, (i+1)*b)``; byte ``k`` (byte ``j`` of period ``G``) ORs together the pieces of
    the codes its 8 bits come from, all at constant shifts within a period. Only the low
    ``b`` bits of a code count (as in the JAX op, which extracts bits 0..b-1)."""
    from tvm import te, tirx

    count = int(codes.shape[0])
    nbytes = (count * bits + 7) // 8
    period_bytes, period_codes = pack_period(bits)
    full = count % period_codes == 0  # else the last period has fewer codes
    mask = tirx.const(_levels(bits), "uint32")

    def code(i):
        if full:
            return _u32(codes[i]) & mask
        value = _u32(codes[tirx.min(i, count - 1)]) & mask
        return tirx.Select(i < count, value, tirx.const(0, "uint32"))

    def byte(k):
        g, j = k // period_bytes, k % period_bytes
        parts = []
        for jj in range(period_bytes):
            acc = None
            for m, shift in _pieces_of_byte(bits, jj):
                piece = _shifted(code(g * period_codes + m), shift)
                acc = piece if acc is None else acc | piece
            parts.append(acc)
        return tirx.Cast("uint8", _by_position(j, parts) & tirx.const(0xFF, "uint32"))

    return te.compute((nbytes,), byte, name="bitpack")


def _te_bitunpack(packed, *, bits: int, count: int):
    """``count`` codes from the stream: code ``i`` (code ``m`` of period ``G``) ORs together
    the (at most 3) bytes holding its bits, at constant shifts within a period. Every byte a
    code reads lies inside the stream, so no bounds checks are needed."""
    from tvm import te, tirx

    period_bytes, period_codes = pack_period(bits)
    dtype = code_dtype(bits)
    mask = tirx.const(_levels(bits), "uint32")

    def code(i):
        g, m = i // period_codes, i % period_codes
        parts = []
        for mm in range(period_codes):
            acc = None
            for j, shift in _bytes_of_code(bits, mm):
                piece = _shifted(_u32(packed[g * period_bytes + j]), shift)
                acc = piece if acc is None else acc | piece
            parts.append(acc)
        return tirx.Cast(dtype, _by_position(m, parts) & mask)

    return te.compute((count,), code, name="bitunpack")


def _q_attrs(ctx: _Ctx) -> tuple[int, bool, tuple[int, int, int]]:
    a = ctx.attrs
    granularity = a.get("granularity", "tensor")
    return (a.get("bits"), granularity == "channel",
            _q_view(ctx.in_types[0].shape, granularity, a.get("axis", 1)))


@converter("quant_range")
def _quant_range(ctx, xs):
    bits, per_channel, view = _q_attrs(ctx)
    code_dtype(bits)
    return _emit_cut_kernel(ctx, "quant_range", _te_quant_range, [_view(ctx, xs[0], view)],
                            bits=int(bits), per_channel=per_channel)


@converter("quantize")
def _quantize(ctx, xs):
    bits, per_channel, view = _q_attrs(ctx)
    code_dtype(bits)
    rng = ctx.cast(xs[1], "float32")
    codes = _emit_cut_kernel(ctx, "quantize", _te_quantize, [_view(ctx, xs[0], view), rng],
                             bits=int(bits), per_channel=per_channel)
    return _view(ctx, codes, ctx.out.shape)


@converter("dequantize")
def _dequantize(ctx, xs):
    a = ctx.attrs
    granularity = a.get("granularity", "tensor")
    view = _q_view(ctx.in_types[0].shape, granularity, a.get("axis", 1))
    rng = ctx.cast(xs[1], "float32")
    values = _emit_cut_kernel(ctx, "dequantize", _te_dequantize, [_view(ctx, xs[0], view), rng],
                              per_channel=granularity == "channel")
    return _view(ctx, values, ctx.out.shape)


@converter("bitpack")
def _bitpack(ctx, xs):
    bits = ctx.attrs["bits"]
    code_dtype(bits)
    codes = xs[0]
    count = math.prod(_shape_of(codes))
    if not _is_int(_dtype_of(codes)):
        raise LoweringError(f"bitpack takes integer codes, got {_dtype_of(codes)}")
    if count == 0:
        return ctx.const(np.zeros(0, np.uint8), "uint8")
    if bits == 8 and _dtype_of(codes) == "uint8":  # the codes are the stream: a free view
        return _view(ctx, codes, [count])
    group = pack_period(bits)[0]  # bytes whose layout repeats
    return _emit_cut_kernel(ctx, "bitpack", _te_bitpack, [_view(ctx, codes, [count])], bits=int(bits),
                            attrs={"dyno.group": group})


@converter("bitunpack")
def _bitunpack(ctx, xs):
    bits, shape = ctx.attrs["bits"], tuple(ctx.attrs["shape"])
    dtype = code_dtype(bits)
    count = math.prod(shape)
    if count == 0:
        return ctx.const(np.zeros(shape, dtype), dtype)
    if bits == 8:  # the stream is the codes: a free view
        return _view(ctx, xs[0], shape)
    group = pack_period(bits)[1]  # codes whose layout repeats
    codes = _emit_cut_kernel(ctx, "bitunpack", _te_bitunpack, [xs[0]], bits=int(bits), count=count,
                             attrs={"dyno.group": group})
    return _view(ctx, codes, shape)


@converter("send")
def _send(ctx, xs):
    return xs[0]


# ----------------------------------------------------------------- cut kernel schedules
#: Elements below which a cut kernel stays on one thread: a 1x16x32x32 map quantises and
#: packs in about 8 us on one core, and waking the pool (worse: waiting on a busy core) costs
#: more than the second core saves.
_PARALLEL_MIN = 65536
#: Iterations per task of the byte/code loops of bitpack and bitunpack.
_PACK_CHUNK = 512


def schedule_cut_kernels(mod, target) -> tuple[Any, dict[str, str]]:
    """Schedule every cut kernel (PrimFuncs tagged ``CUT_KERNEL_ATTR``) of ``mod`` for ``target``.

    CPU (LLVM): parallel outer loops, vectorised contiguous inner loops; GPU: every block's
    spatial loops bound to blocks and threads, reductions serial per thread. Scheduled
    functions get ``tirx.is_scheduled`` so that later schedules skip them. Returns the module
    and ``{function: "cut kernel (<kind>)"}``.
    """
    from tvm import tirx

    gpu = str(target.kind.name) in ("cuda", "rocm", "vulkan", "metal", "opencl")
    done, report = {}, {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None or CUT_KERNEL_ATTR not in func.attrs:
            continue
        if int(func.attrs.get("tirx.is_scheduled", 0)) == 1:
            continue
        kind = str(func.attrs[CUT_KERNEL_ATTR])
        new = _schedule_gpu_kernel(func, kind) if gpu else _schedule_cpu_kernel(func, kind)
        done[gv] = new.with_attr("tirx.is_scheduled", True)
        report[gv.name_hint] = f"cut kernel ({kind})"
    for gv, func in done.items():
        mod[gv] = func
    return mod, report


def _extents(sch, loops) -> list[int]:
    return [int(sch.get(lp).extent) for lp in loops]


def _parallel_if(sch, loop, work: int) -> None:
    if int(sch.get(loop).extent) > 1 and work >= _PARALLEL_MIN:
        sch.parallel(loop)


def _schedule_cpu_kernel(func, kind: str):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if kind == "quant_range":
        block = sch.get_sblock("range_partial")
        c, p, lane, o, r = sch.get_loops(block)
        extents = _extents(sch, [c, p, lane, o, r])
        sch.reorder(c, p, o, r, lane)
        cp = sch.fuse(c, p)
        _parallel_if(sch, cp, math.prod(extents))
        if extents[2] > 1:  # loop kinds first: the update stops being a reduction block without its init
            sch.vectorize(lane)
        init = sch.decompose_reduction(block, o)
        if extents[2] > 1:
            sch.vectorize(sch.get_loops(init)[-1])
    elif kind in ("quantize", "dequantize"):
        block = sch.get_sblock(kind)
        o, c, i = sch.get_loops(block)
        extents = _extents(sch, [o, c, i])
        width = _vector_width(extents[2])
        if width > 1:
            io, ii = sch.split(i, factors=[None, width])
            sch.vectorize(ii)
            outer = sch.fuse(o, c, io)
        else:
            outer = sch.fuse(o, c, i)
        _parallel_if(sch, outer, math.prod(extents))
    else:  # bitpack, bitunpack: one loop over output bytes / codes
        _schedule_cpu_pack(sch, kind, int(func.attrs["dyno.group"]))
    return sch.mod["main"]


def _schedule_cpu_pack(sch, kind: str, group: int) -> None:
    """Bytes (bitpack) or codes (bitunpack) in groups: ``group`` consecutive outputs whose
    bit positions repeat from group to group (8 codes of b bits fill b bytes).

    The loop is split by ``group`` and the group unrolled, so that every shift and index
    inside it is a constant; chunks of groups run in parallel, and LLVM's loop vectoriser
    handles each chunk's loop over groups (its interleaved loads and stores beat TVM's
    own vectorisation of these gathers by 3-10x).
    """
    block = sch.get_sblock(kind)
    (loop,) = sch.get_loops(block)
    extent = int(sch.get(loop).extent)
    work = extent * 8 if kind == "bitpack" else extent
    if 1 < group < extent:
        loop, unit = sch.split(loop, factors=[None, group])
        sch.unroll(unit)
    groups = int(sch.get(loop).extent)
    target = max(1, _PACK_CHUNK // group)
    if groups > target:  # a divisor near the target keeps the inner loop free of bounds checks
        per_task = max((d for d in range(target // 2, target + 1) if groups % d == 0), default=target)
        outer, _ = sch.split(loop, factors=[None, per_task])
        _parallel_if(sch, outer, work)


def _schedule_gpu_kernel(func, kind: str, threads: int = 256):
    """Bind each block's leading spatial loops to ``blockIdx.x`` x ``threadIdx.x`` (the
    reduction loops of ``quant_range`` run serially in each thread); bitpack/bitunpack
    unroll their period first, as on the CPU, so each thread computes one period."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for block in child_blocks(sch):
        loops = sch.get_loops(block)
        if kind in ("bitpack", "bitunpack"):
            group = int(func.attrs["dyno.group"])
            if 1 < group < int(sch.get(loops[0]).extent):
                outer, unit = sch.split(loops[0], factors=[None, group])
                sch.unroll(unit)
                loops = [outer]
        spatial = []
        for lp, iv in zip(loops, sch.get(block).iter_vars):
            if int(iv.iter_type) != 0:  # not data-parallel: the rest runs serially per thread
                break
            spatial.append(lp)
        if not spatial:
            spatial = [sch.add_unit_loop(block)]
        fused = fuse_loops(sch, spatial)
        extent = int(sch.get(fused).extent)
        bx, tx = sch.split(fused, factors=[None, min(threads, extent)])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    return sch.mod["main"]


# --------------------------------------------------------------------------- driver
@dataclass
class Lowered:
    """One Relax function of a module and how its parameters map to the graph."""

    mod: Any  # tvm.IRModule (shared by every function lowered into it)
    input_names: list[str]
    weight_names: list[str]
    output_names: list[str]
    #: Relax parameter vars for the weights, in order (for ``BindParams``).
    weight_vars: list[Any] = field(default_factory=list)
    #: The Relax function's name in ``mod``.
    name: str = "main"

    @property
    def num_input(self) -> int:
        return len(self.input_names)


_FUNC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_graph(graph: Graph) -> None:
    from dyno_compile.ir import CONST_OP

    if not graph.outputs:
        raise LoweringError(f"graph {graph.name!r} has no outputs")
    for node in graph.nodes:  # refuse before building anything
        if node.is_compute and node.op not in CONVERTERS:
            raise LoweringError(
                f"graph {graph.name!r}: node {node.name!r} uses op {node.op!r}, which has no TVM "
                f"converter; supported ops: {', '.join(supported_ops())}")
        if node.op == CONST_OP and node.name not in graph.params:
            raise LoweringError(f"graph {graph.name!r}: const node {node.name!r} has no weight")


def _lower_function(bb, graph: Graph, func_name: str) -> Lowered:
    """Add ``func_name(*inputs, *weights)`` computing ``graph`` to the block builder ``bb``."""
    from tvm import relax

    from dyno_compile.ir import CONST_OP, INPUT_OP

    order = graph.nodes
    inputs = [n for n in order if n.op == INPUT_OP]
    weights = [n for n in order if n.op == CONST_OP]

    def var(n):
        return relax.Var(_relax_name(n.name), relax.TensorType(list(n.shape), n.dtype))

    in_vars = [var(n) for n in inputs]
    w_vars = [var(n) for n in weights]
    env = {n.name: v for n, v in zip(inputs + weights, in_vars + w_vars)}

    with bb.function(func_name, in_vars + w_vars, attrs={"num_input": len(in_vars)}):
        with bb.dataflow():
            for node in order:
                if not node.is_compute:
                    continue
                ctx = _Ctx(bb, node, graph.input_types(node))
                try:
                    expr = CONVERTERS[node.op](ctx, [env[i] for i in node.inputs])
                    value = expr if isinstance(expr, relax.Var) else ctx.emit(expr)
                    value = _check_type(ctx, value)
                except LoweringError as exc:
                    if node.name in str(exc):
                        raise
                    raise LoweringError(f"graph {graph.name!r}: lowering node {node.name!r} ({node.op}) "
                                        f"failed: {exc}") from exc
                except Exception as exc:
                    raise LoweringError(f"graph {graph.name!r}: lowering node {node.name!r} ({node.op}) "
                                        f"failed: {exc}") from exc
                env[node.name] = value
            outs = [env[o] for o in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return Lowered(mod=None, input_names=[n.name for n in inputs], weight_names=[n.name for n in weights],
                   output_names=list(graph.outputs), weight_vars=w_vars, name=func_name)


def lower(graph: Graph, name: str = "main") -> Lowered:
    """Lower ``graph``; see :func:`to_relax`. Raises ``LoweringError`` naming the node at fault."""
    from tvm import relax

    _check_graph(graph)
    bb = relax.BlockBuilder()
    low = _lower_function(bb, graph, name)
    low.mod = bb.get()
    return low


def lower_functions(graphs: Mapping[str, Graph]) -> dict[str, Lowered]:
    """Lower several graphs into ONE ``IRModule``, one Relax function per name.

    Each function is ``name(*inputs, *weights)`` with its own ``num_input``; kernels that
    come out identical (the same convolution shape in two segments) are added once. Every
    ``Lowered`` returned holds the same module. Names must be identifiers, unique, and not
    a name the module gives its kernels.
    """
    from tvm import relax

    if not graphs:
        raise LoweringError("no graphs to lower")
    for name, graph in graphs.items():
        if not isinstance(name, str) or not _FUNC_NAME.match(name):
            raise LoweringError(f"function name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
        _check_graph(graph)
    bb = relax.BlockBuilder()
    lowered = {name: _lower_function(bb, graph, name) for name, graph in graphs.items()}
    mod = bb.get()
    for low in lowered.values():
        low.mod = mod
    return lowered


def _check_type(ctx: _Ctx, value):
    """The converter's result must have the node's type; a dtype left over is cast."""
    shape, dtype = _shape_of(value), _dtype_of(value)
    if shape != tuple(ctx.out.shape):
        raise LoweringError(f"node {ctx.node.name!r} ({ctx.node.op}): Relax result has shape {shape}, "
                            f"the IR says {ctx.out}")
    return ctx.cast(value, ctx.out.dtype, dtype)


def to_relax(graph: Graph):
    """``graph`` as a Relax ``IRModule`` with one function ``main(*inputs, *weights)``.

    ``main`` carries ``num_input`` (the number of graph inputs); the remaining parameters
    are the graph's weights (its ``const`` nodes, in program order).
    """
    return lower(graph).mod
