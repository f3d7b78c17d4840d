"""IR op -> Relax: one small converter per op (registered in :data:`CONVERTERS`).

The JAX impls in :mod:`dyno_compile.ir.ops` define the semantics and the converters follow
them exactly, where Relax's defaults differ: max pooling pads with and reduces from
``-inf`` (Relax's starts at the lowest finite value), average pooling divides as
``count_include_pad`` says (over dilation holes too, as JAX counts), float16
convolutions, matmuls, pooling, sums and means accumulate in float32, integer ``div`` is
true division, integer ``pow`` is JAX's binary exponentiation, ``cast`` to bool is
``!= 0``, negative pads crop, and negative slice strides work. ``erf`` and ``gelu`` use
TOPI's fast erf and tanh (within 5e-7 of JAX's) rather than libm's, 3-14x slower.

The cut ops (``quant_range``, ``quantize``, ``dequantize``, ``bitpack``, ``bitunpack``;
``send`` is the identity) call kernels of their own (:mod:`dyno_compile.targets.cut_kernels`,
which also schedules them): their converters reshape the tensor to the kernels' 3-D view
and back, and leave out the kernels that would only copy (8-bit packing of uint8 codes).

:func:`convert_node` converts one node and checks its result's type; the driver that
walks a graph is :mod:`dyno_compile.targets.lower`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dyno_compile.targets.cut_kernels import code_dtype, prim_func, quant_view
from dyno_compile.targets.errors import LoweringError

if TYPE_CHECKING:  # the IR (and JAX behind it) is needed to lower, not to import this module
    from dyno_compile.ir import Node

__all__ = ["CONVERTERS", "convert_node", "converter", "relax_name", "supported_ops"]

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
        return self.bb.emit(expr, name_hint=name or relax_name(self.node.name))

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


def relax_name(name: str) -> str:
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


for _op, _fn in {
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "exp": "exp",
    "log": "log",
    "sqrt": "sqrt",
    "rsqrt": "rsqrt",
    "neg": "negative",
    "abs": "abs",
}.items():
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


#: Float types whose erf and tanh are TOPI's ``fast_erf``/``fast_tanh`` in float32: rational
#: approximations within 5e-7 of JAX's (measured over [-6, 6] and [-12, 12]) at 14x and
#: 3x the speed of LLVM's libm calls (1.9 vs 27 and 2.8 vs 7.7 ns an element). The float16
#: forms are 4e-2 off, so float16 computes in float32.
_FAST_MATH_DTYPES = ("float32", "float16")


@converter("erf")
def _erf(ctx, xs):
    from tvm import relax, topi

    return _in_float32(
        ctx,
        xs[0],
        relax.op.erf,
        lambda x: ctx.bb.emit_te(topi.fast_erf, x, primfunc_name_hint="erf", name_hint=relax_name(ctx.node.name)),
    )


@converter("gelu")
def _gelu(ctx, xs):
    """``x * (0.5 + 0.5 * erf(x / sqrt 2))``, or jax.nn's tanh approximation, with the fast
    erf and tanh (Relax's ``gelu`` calls libm's erf, which made it 17 ms of a 36 ms
    ConvNeXt block at 56x56x96; under 2 ms with the fast one)."""
    from tvm import relax

    approximate = bool(ctx.attrs["approximate"])
    return _in_float32(
        ctx,
        xs[0],
        relax.op.nn.gelu_tanh if approximate else relax.op.nn.gelu,
        lambda x: ctx.bb.emit_te(
            _te_gelu, x, approximate, primfunc_name_hint="gelu", name_hint=relax_name(ctx.node.name)
        ),
    )


def _in_float32(ctx: _Ctx, x, exact: Callable, fast: Callable):
    """``fast(x)`` computed in float32 for the ``_FAST_MATH_DTYPES``, else Relax's ``exact(x)``."""
    dtype = _dtype_of(x)
    if dtype not in _FAST_MATH_DTYPES:
        return exact(x)
    return ctx.cast(fast(ctx.cast(x, "float32")), dtype)


def _te_gelu(x, approximate: bool):
    from tvm import te, tirx, topi

    c = lambda v: tirx.const(v, x.dtype)  # noqa: E731
    if approximate:  # tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)), as jax.nn.gelu
        arg = te.compute(x.shape, lambda *i: c(math.sqrt(2 / math.pi)) * (x[i] + c(0.044715) * x[i] * x[i] * x[i]))
        core = topi.fast_tanh(arg)
    else:
        core = topi.fast_erf(te.compute(x.shape, lambda *i: x[i] * c(math.sqrt(0.5))))
    return te.compute(x.shape, lambda *i: x[i] * (c(0.5) + c(0.5) * core[i]), name="gelu")


@converter("identity")
def _identity(ctx, xs):
    return xs[0]


_BINARY = {
    "add": "add",
    "sub": "subtract",
    "mul": "multiply",
    "div": "divide",
    "maximum": "maximum",
    "minimum": "minimum",
}


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
    return ctx.bb.emit_te(_te_int_pow, a, b, primfunc_name_hint="int_pow", name_hint=relax_name(ctx.node.name))


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
    (top, bottom), (left, right) = a["padding"]
    x, w = xs[0], xs[1]
    dtype = _dtype_of(x)
    acc = _acc_dtype(dtype)
    w = ctx.cast(w, dtype)
    y = ctx.emit(
        relax.op.nn.conv2d(
            x,
            w,
            strides=tuple(a["strides"]),
            padding=(top, left, bottom, right),
            dilation=tuple(a["dilation"]),
            groups=int(a["groups"]),
            data_layout=a["data_layout"],
            kernel_layout=a["kernel_layout"],
            out_dtype=acc,
        )
    )
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
    import jax.numpy as jnp
    from tvm import relax

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


@converter("layer_norm")
def _layer_norm(ctx, xs):
    """Relax's ``layer_norm`` over the trailing axes; scale and bias broadcast to those axes'
    shape (Relax wants exactly that shape), a missing bias is zeros, half floats normalise
    in float32 as the JAX impl does."""
    from tvm import relax

    x = xs[0]
    shape = _shape_of(x)
    axes = list(range(ctx.attrs["axis"] % len(shape), len(shape)))
    dtype = _dtype_of(x)
    acc = _acc_dtype(dtype)
    norm_shape = [shape[a] for a in axes]

    def param(v):
        v = ctx.cast(v, acc)
        if _shape_of(v) != tuple(norm_shape):
            v = ctx.emit(relax.op.broadcast_to(v, norm_shape))
        return v

    gamma = param(xs[1])
    beta = param(xs[2]) if len(xs) == 3 else ctx.const(np.zeros(norm_shape), acc)
    y = ctx.emit(relax.op.nn.layer_norm(ctx.cast(x, acc), gamma, beta, axes, epsilon=float(ctx.attrs["epsilon"])))
    return ctx.cast(y, dtype) if acc != dtype else y


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
    return ctx.bb.emit_te(
        _te_max_pool,
        x,
        tuple(a["kernel"]),
        tuple(a["strides"]),
        tuple(a["dilation"]),
        a["layout"],
        padding,
        primfunc_name_hint="max_pool2d",
        name_hint=relax_name(ctx.node.name),
    )


def _te_max_pool(data, kernel, strides, dilation, layout, padding):
    from tvm import te, tirx

    h, w = layout.index("H"), layout.index("W")
    shape = [int(d) for d in data.shape]
    out = list(shape)
    for axis, k, s, d, (lo, hi) in (
        (h, kernel[0], strides[0], dilation[0], padding[0]),
        (w, kernel[1], strides[1], dilation[1], padding[1]),
    ):
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
    y = ctx.emit(
        relax.op.mean(
            ctx.cast(x, acc), axis=[layout.index("H"), layout.index("W")], keepdims=bool(ctx.attrs["keepdims"])
        )
    )
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
    for axis, (first, limit, st, dim) in enumerate(zip(a["starts"], a["limits"], steps, shape)):
        start, stop, step = slice(first, limit, st).indices(dim)
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
def _emit_cut_kernel(ctx: _Ctx, kind: str, args: list, **params):
    """Add the ``kind`` cut kernel over ``args`` (:func:`cut_kernels.prim_func`) to the
    module and emit its ``call_tir``."""
    from tvm import relax

    func, outs = prim_func(kind, [(_shape_of(a), _dtype_of(a)) for a in args], **params)
    gv = ctx.bb.add_func(func, kind)
    out_ty = [relax.TensorType(shape, dtype) for shape, dtype in outs]
    return ctx.emit(relax.call_tir(gv, args, out_ty[0] if len(out_ty) == 1 else out_ty))


def _view(ctx: _Ctx, x, shape: Sequence[int]):
    """``x`` reshaped (a view at run time: the build turns lone reshapes into views)."""
    from tvm import relax

    shape = [int(d) for d in shape]
    return x if list(_shape_of(x)) == shape else ctx.emit(relax.op.reshape(x, shape))


def _q_attrs(ctx: _Ctx) -> tuple[Any, bool, tuple[int, int, int]]:
    """``(bits, per_channel, 3-D view)`` of a quant_range, quantize or dequantize node
    (``bits`` unchecked; None for dequantize)."""
    a = ctx.attrs
    return a.get("bits"), a["granularity"] == "channel", quant_view(ctx.in_types[0].shape, a["granularity"], a["axis"])


@converter("quant_range")
def _quant_range(ctx, xs):
    bits, per_channel, view = _q_attrs(ctx)
    code_dtype(bits)
    return _emit_cut_kernel(ctx, "quant_range", [_view(ctx, xs[0], view)], bits=int(bits), per_channel=per_channel)


@converter("quantize")
def _quantize(ctx, xs):
    bits, per_channel, view = _q_attrs(ctx)
    code_dtype(bits)
    rng = ctx.cast(xs[1], "float32")
    codes = _emit_cut_kernel(ctx, "quantize", [_view(ctx, xs[0], view), rng], bits=int(bits), per_channel=per_channel)
    return _view(ctx, codes, ctx.out.shape)


@converter("dequantize")
def _dequantize(ctx, xs):
    _, per_channel, view = _q_attrs(ctx)
    rng = ctx.cast(xs[1], "float32")
    values = _emit_cut_kernel(ctx, "dequantize", [_view(ctx, xs[0], view), rng], per_channel=per_channel)
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
    return _emit_cut_kernel(ctx, "bitpack", [_view(ctx, codes, [count])], bits=int(bits))


@converter("bitunpack")
def _bitunpack(ctx, xs):
    bits, shape = ctx.attrs["bits"], tuple(ctx.attrs["shape"])
    dtype = code_dtype(bits)
    count = math.prod(shape)
    if count == 0:
        return ctx.const(np.zeros(shape, dtype), dtype)
    if bits == 8:  # the stream is the codes: a free view
        return _view(ctx, xs[0], shape)
    codes = _emit_cut_kernel(ctx, "bitunpack", [xs[0]], bits=int(bits), count=count)
    return _view(ctx, codes, shape)


@converter("send")
def _send(ctx, xs):
    return xs[0]


# --------------------------------------------------------------------------- one node
def convert_node(bb: Any, node: Node, in_types: tuple, inputs: list):
    """Emit ``node`` (its inputs: the Relax values ``inputs`` of types ``in_types``) into
    the block builder ``bb``; the bound Relax var, of the node's type."""
    from tvm import relax

    ctx = _Ctx(bb, node, in_types)
    expr = CONVERTERS[node.op](ctx, inputs)
    value = expr if isinstance(expr, relax.Var) else ctx.emit(expr)
    return _check_type(ctx, value)


def _check_type(ctx: _Ctx, value):
    """The converter's result must have the node's type; a dtype left over is cast."""
    shape, dtype = _shape_of(value), _dtype_of(value)
    if shape != tuple(ctx.out.shape):
        raise LoweringError(
            f"node {ctx.node.name!r} ({ctx.node.op}): Relax result has shape {shape}, the IR says {ctx.out}"
        )
    return ctx.cast(value, ctx.out.dtype, dtype)
