"""Converters of the ops in :mod:`dyno_compile.ir.ops.spatial` (IR op -> Relax), registered
into :data:`dyno_compile.targets.convert.CONVERTERS` on import (the driver,
:mod:`dyno_compile.targets.lower`, imports this module).

Where Relax has the op with the JAX impl's meaning, the converter emits it; where it
differs, the converter composes Relax ops or a TE compute that follow the JAX impl:

* ``resize2d`` applies the JAX impl's own sample tables (``resize_plan``) in one TE
  compute, a gather and a weighted sum per output element: Relax's ``image.resize2d``
  places samples by ``input / output size``, not by ONNX's scale, and rounds halfway
  coordinates without ONNX Runtime's tolerance;
* ``conv2d_transpose`` is Relax's, which takes pads up to the dilated kernel's extent less
  one and an ``output_padding`` below the stride; any pad or output padding beyond that is
  a crop or a zero pad of its result (before the bias, which covers every output pixel);
* ``instance_norm`` is composed (mean, centred mean of squares, rsqrt) because Relax's
  computes the variance as ``E[x^2] - E[x]^2``: 15 % off on a plane of mean 1000 and
  standard deviation 3 (measured);
* ``prelu`` is a ``where``, since Relax's takes only a 1-D per-channel slope and ONNX's
  broadcasts any way NumPy does;
* ``lrn`` is a TE compute (Relax has none): a sum of squares over the channel window,
  bounds-checked rather than padded, then the power.
"""

from __future__ import annotations

from dyno_compile.targets.convert import (
    _acc_dtype,
    _channel_shape,
    _Ctx,
    _dtype_of,
    _pad,
    _shape_of,
    converter,
    relax_name,
)

__all__: list[str] = []


@converter("resize2d")
def _resize2d(ctx: _Ctx, xs: list):
    from dyno_compile.ir.ops import spatial_axes
    from dyno_compile.ir.ops.spatial import resize_plan

    a = ctx.attrs
    x = xs[0]
    shape = _shape_of(x)
    axes = spatial_axes(a["layout"])
    plan = resize_plan(
        (shape[axes[0]], shape[axes[1]]),
        tuple(a["size"]),
        a["scales"],
        method=a["method"],
        coordinate_mode=a["coordinate_mode"],
        nearest_mode=a["nearest_mode"],
    )
    if not plan:
        return x
    acc = _acc_dtype(_dtype_of(x))
    tables = [
        ctx.const(table, dtype)
        for taps in plan
        for tap in taps
        for table, dtype in ((tap.index, "int64"), (tap.weight, acc))
        if table is not None
    ]
    y = ctx.bb.emit_te(
        _te_resize,
        x,
        *tables,
        axes=axes,
        taps=len(plan[0]),
        acc=acc if plan[0][0].weight is not None else None,
        primfunc_name_hint="resize2d",
        name_hint=relax_name(ctx.node.name),
    )
    return ctx.cast(y, ctx.out.dtype)


def _te_resize(data, *tables, axes: tuple[int, int], taps: int, acc: str | None):
    """One gather (and weighted sum, when ``acc`` names the dtype to sum in) per output
    element, in the JAX impl's order: along the height first, then the width. ``tables``:
    per axis, per tap, the index table (and weight table)."""
    from tvm import te

    per = 1 if acc is None else 2
    rows, cols = tables[: taps * per], tables[taps * per :]
    shape = [int(d) for d in data.shape]
    shape[axes[0]], shape[axes[1]] = int(rows[0].shape[0]), int(cols[0].shape[0])

    def compute(*i):
        def at(th: int, tw: int):
            src = list(i)
            src[axes[0]] = rows[th * per][i[axes[0]]]
            src[axes[1]] = cols[tw * per][i[axes[1]]]
            value = data[tuple(src)]
            return value if acc is None else value.astype(acc)

        if acc is None:
            return at(0, 0)
        out = None
        for tw in range(taps):
            column = at(0, tw) * rows[1][i[axes[0]]]
            for th in range(1, taps):
                column = column + at(th, tw) * rows[th * per + 1][i[axes[0]]]
            column = column * cols[tw * per + 1][i[axes[1]]]
            out = column if out is None else out + column
        return out

    return te.compute(shape, compute, name="resize2d")


@converter("conv2d_transpose")
def _conv2d_transpose(ctx: _Ctx, xs: list):
    from tvm import relax

    a = ctx.attrs
    x = xs[0]
    dtype = _dtype_of(x)
    acc = _acc_dtype(dtype)
    w = ctx.cast(xs[1], dtype)
    spans = [d * (k - 1) for k, d in zip(_shape_of(w)[2:], a["dilation"])]
    pads, extra, rest = [], [], [[0, 0], [0, 0]]
    for n, (lo, hi), span, stride, out_pad in zip(
        _shape_of(x)[2:], a["padding"], spans, a["strides"], a["output_padding"]
    ):
        full = (n - 1) * stride + span + 1  # the uncropped result; zeros past it
        begin, want_end = min(max(lo, 0), span), full - hi + out_pad
        end, grow = (min(full - want_end, span), 0) if want_end <= full else (0, min(want_end - full, stride - 1))
        pads.append((begin, end))
        extra.append(grow)
        rest.append([begin - lo, want_end - (full - end + grow)])  # what Relax's padding could not say
    (top, bottom), (left, right) = pads
    y = ctx.emit(
        relax.op.nn.conv2d_transpose(
            x,
            w,
            strides=tuple(a["strides"]),
            padding=(top, left, bottom, right),
            output_padding=tuple(extra),
            dilation=tuple(a["dilation"]),
            groups=int(a["groups"]),
            out_dtype=acc,
        )
    )
    if any(v for side in rest for v in side):
        y = _pad(ctx, y, rest, 0.0)
    if len(xs) == 3:
        bias = ctx.emit(relax.op.reshape(ctx.cast(xs[2], acc), _channel_shape(4, 1, _shape_of(xs[2])[0])))
        y = ctx.emit(relax.op.add(y, bias))
    return ctx.cast(y, dtype)


@converter("leaky_relu")
def _leaky_relu(ctx: _Ctx, xs: list):
    from tvm import relax

    return relax.op.nn.leakyrelu(xs[0], float(ctx.attrs["alpha"]))


@converter("prelu")
def _prelu(ctx: _Ctx, xs: list):
    """``where(x < 0, x * slope, x)``, as the JAX impl."""
    from tvm import relax

    dtype = ctx.out.dtype
    x, slope = (ctx.cast(v, dtype) for v in xs)
    negative = ctx.emit(relax.op.less(x, ctx.const(0, dtype)))
    return relax.op.where(negative, ctx.emit(relax.op.multiply(x, slope)), x)


@converter("instance_norm")
def _instance_norm(ctx: _Ctx, xs: list):
    """The JAX impl step by step: centre on the plane's mean, divide by the root of the
    centred squares' mean plus epsilon, then scale and shift per channel."""
    from tvm import relax

    x, scale, bias = xs
    shape = _shape_of(x)
    axis = int(ctx.attrs["axis"]) % len(shape)
    axes = [a for a in range(1, len(shape)) if a != axis]
    dtype = _dtype_of(x)
    acc = _acc_dtype(dtype)
    xf = ctx.cast(x, acc)
    centered = ctx.emit(relax.op.subtract(xf, ctx.emit(relax.op.mean(xf, axis=axes, keepdims=True))))
    var = ctx.emit(relax.op.mean(ctx.emit(relax.op.multiply(centered, centered)), axis=axes, keepdims=True))
    inv = ctx.emit(relax.op.rsqrt(ctx.emit(relax.op.add(var, ctx.const(ctx.attrs["epsilon"], acc)))))
    channel = _channel_shape(len(shape), axis, shape[axis])
    y = ctx.emit(relax.op.multiply(centered, inv))
    y = ctx.emit(relax.op.multiply(y, ctx.emit(relax.op.reshape(ctx.cast(scale, acc), channel))))
    y = ctx.emit(relax.op.add(y, ctx.emit(relax.op.reshape(ctx.cast(bias, acc), channel))))
    return ctx.cast(y, dtype)


@converter("lrn")
def _lrn(ctx: _Ctx, xs: list):
    a = ctx.attrs
    x = xs[0]
    dtype = _dtype_of(x)
    acc = _acc_dtype(dtype)
    y = ctx.bb.emit_te(
        _te_lrn,
        ctx.cast(x, acc),
        int(a["size"]),
        int(a["axis"]) % len(_shape_of(x)),
        float(a["alpha"]),
        float(a["beta"]),
        float(a["bias"]),
        primfunc_name_hint="lrn",
        name_hint=relax_name(ctx.node.name),
    )
    return ctx.cast(y, dtype)


def _te_lrn(data, size: int, axis: int, alpha: float, beta: float, bias: float):
    """``x / (bias + alpha / size * sum of x^2 over channels c - (size-1)//2 .. c + size//2) ** beta``."""
    from tvm import te, tirx

    shape = [int(d) for d in data.shape]
    dtype = str(data.dtype)
    r = te.reduce_axis((0, size), name="rc")

    def squares(*idx):
        src = list(idx)
        src[axis] = idx[axis] + r - (size - 1) // 2
        value = data[tuple(src)]
        inside = tirx.all(src[axis] >= 0, src[axis] < shape[axis])
        return te.sum(tirx.if_then_else(inside, value * value, tirx.const(0, dtype)), axis=r)

    total = te.compute(shape, squares, name="lrn_squares")

    def norm(*idx):
        base = tirx.const(bias, dtype) + tirx.const(alpha / size, dtype) * total[idx]
        return data[idx] / tirx.power(base, tirx.const(beta, dtype))

    return te.compute(shape, norm, name="lrn")
