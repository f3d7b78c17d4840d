"""Lower an IR ``Graph`` to a TVM Relax ``IRModule``.

One Relax function ``main(*inputs, *weights)`` with the attribute ``num_input`` set to the
number of graph inputs, so that the weights (the graph's ``const`` nodes, in program
order) can either be bound into the module or passed at run time from a param file. It
returns the graph output, or a tuple of them.

Each IR op has one small converter (registered in ``CONVERTERS``). The JAX impls in
:mod:`dyno_compile.ir.ops` define the semantics and the converters follow them exactly,
where Relax's defaults differ: max pooling pads with and reduces from ``-inf`` (Relax's
starts at the lowest finite value), average pooling divides as ``count_include_pad``
says (over dilation holes too, as JAX counts), float16 convolutions, matmuls, pooling,
sums and means accumulate in float32, integer ``div`` is true division, integer ``pow``
is JAX's binary exponentiation, ``cast`` to bool is ``!= 0``, negative pads crop, and
negative slice strides work.

``lower(graph)`` also returns the parameter order; ``to_relax(graph)`` just the module.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from dyno_compile.errors import DynoError
from dyno_compile.ir import Graph, Node
from dyno_compile.ir.node import CONST_OP, INPUT_OP

__all__ = ["CONVERTERS", "LoweringError", "Lowered", "lower", "supported_ops", "to_relax"]


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
    """Pad with -inf, then a max reduction whose identity is -inf, as ``lax.reduce_window``.

    Relax's own max pooling starts from the lowest finite value, so a window of only
    padding or only ``-inf`` would give -3.4e38 instead of JAX's ``-inf``.
    """
    a = ctx.attrs
    x = xs[0]
    dtype = _dtype_of(x)
    if any(p for pair in a["padding"] for p in pair):
        x = _pad(ctx, x, _pad_hw(a["layout"], a["padding"]), _lowest(dtype))
    return ctx.bb.emit_te(_te_max_pool, x, tuple(a["kernel"]), tuple(a["strides"]), tuple(a["dilation"]),
                          a["layout"], primfunc_name_hint="max_pool2d", name_hint=_relax_name(ctx.node.name))


def _te_max_pool(data, kernel, strides, dilation, layout):
    from tvm import te, tirx

    h, w = layout.index("H"), layout.index("W")
    shape = [int(d) for d in data.shape]
    out = list(shape)
    for axis, k, s, d in ((h, kernel[0], strides[0], dilation[0]), (w, kernel[1], strides[1], dilation[1])):
        out[axis] = (shape[axis] - d * (k - 1) - 1) // s + 1
    rh = te.reduce_axis((0, kernel[0]), name="rh")
    rw = te.reduce_axis((0, kernel[1]), name="rw")
    dtype = str(data.dtype)
    lowest = (lambda t: tirx.const(-math.inf, t)) if _is_float(dtype) else (lambda t: tirx.min_value(t))
    reducer = te.comm_reducer(lambda p, q: tirx.max(p, q), lowest, name="max_from_lowest")

    def compute(*idx):
        src = list(idx)
        src[h] = idx[h] * strides[0] + rh * dilation[0]
        src[w] = idx[w] * strides[1] + rw * dilation[1]
        return reducer(data[tuple(src)], axis=[rh, rw])

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


# --------------------------------------------------------------------------- driver
@dataclass
class Lowered:
    """The Relax module and how its parameters map to the graph."""

    mod: Any  # tvm.IRModule
    input_names: list[str]
    weight_names: list[str]
    output_names: list[str]
    #: Relax parameter vars for the weights, in order (for ``BindParams``).
    weight_vars: list[Any] = field(default_factory=list)

    @property
    def num_input(self) -> int:
        return len(self.input_names)


def lower(graph: Graph) -> Lowered:
    """Lower ``graph``; see :func:`to_relax`. Raises ``LoweringError`` naming the node at fault."""
    from tvm import relax

    if not graph.outputs:
        raise LoweringError(f"graph {graph.name!r} has no outputs")
    order = graph.nodes
    for node in order:  # refuse before building anything
        if node.is_compute and node.op not in CONVERTERS:
            raise LoweringError(
                f"graph {graph.name!r}: node {node.name!r} uses op {node.op!r}, which has no TVM "
                f"converter; supported ops: {', '.join(supported_ops())}")
    inputs = [n for n in order if n.op == INPUT_OP]
    weights = [n for n in order if n.op == CONST_OP]
    for w in weights:
        if w.name not in graph.params:
            raise LoweringError(f"graph {graph.name!r}: const node {w.name!r} has no weight")

    def var(n: Node):
        return relax.Var(_relax_name(n.name), relax.TensorType(list(n.shape), n.dtype))

    in_vars = [var(n) for n in inputs]
    w_vars = [var(n) for n in weights]
    env = {n.name: v for n, v in zip(inputs + weights, in_vars + w_vars)}

    bb = relax.BlockBuilder()
    with bb.function("main", in_vars + w_vars, attrs={"num_input": len(in_vars)}):
        with bb.dataflow():
            for node in order:
                if not node.is_compute:
                    continue
                ctx = _Ctx(bb, node, graph.input_types(node))
                try:
                    expr = CONVERTERS[node.op](ctx, [env[i] for i in node.inputs])
                    value = expr if isinstance(expr, relax.Var) else ctx.emit(expr)
                    value = _check_type(ctx, value)
                except LoweringError:
                    raise
                except Exception as exc:
                    raise LoweringError(f"graph {graph.name!r}: lowering node {node.name!r} ({node.op}) "
                                        f"failed: {exc}") from exc
                env[node.name] = value
            outs = [env[o] for o in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    mod = bb.get()
    return Lowered(mod=mod, input_names=[n.name for n in inputs], weight_names=[n.name for n in weights],
                   output_names=list(graph.outputs), weight_vars=w_vars)


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

