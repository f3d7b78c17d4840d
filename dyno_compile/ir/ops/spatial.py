"""Ops of detection and segmentation backbones and older CNNs: resizing, transposed
convolution, parametric ReLUs, instance and local response normalisation.

Each is one IR op (one user-level layer), so a cut never falls inside it. Their meaning is
ONNX's, as ONNX Runtime computes it:

* ``resize2d`` samples the input at source coordinates computed per output index in
  float32 exactly as ONNX Runtime does (``scale`` divides, it is not inverted first), so
  nearest-neighbour picks agree even at ties. Shapes are static, so the coordinates are a
  constant table per spatial axis (:func:`resize_taps`): the JAX impl and the TVM lowering
  both apply that one table, as gathers and a weighted sum;
* ``conv2d_transpose`` takes ONNX's layouts (NCHW data, IOHW weights) and states its
  output size through ``padding`` and ``output_padding``;
* ``lrn`` sums squares over a window of ``size`` channels, ``(size - 1) // 2`` before the
  channel and ``size // 2`` after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dyno_compile.ir.ops.layout import spatial_axes
from dyno_compile.ir.ops.nn import Pad2d, _accumulation_dtype, _channel_shape
from dyno_compile.ir.ops.registry import REQUIRED, register_op

#: ``coordinate_transformation_mode`` values ``resize2d`` implements (ONNX's, less
#: ``tf_crop_and_resize``, which needs a region of interest).
RESIZE_COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric")
RESIZE_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
RESIZE_METHODS = ("nearest", "linear")


# ====================================================================== resize
@dataclass(frozen=True)
class Tap:
    """One term of a resampled axis: ``out[i] += weight[i] * in[index[i]]`` (``weight``
    None: the term is the gathered value itself, nearest-neighbour sampling)."""

    index: np.ndarray
    weight: np.ndarray | None


#: How far from ``.5`` a source coordinate still counts as a tie for the ``round_prefer_*``
#: modes: ONNX Runtime 1.32 rounds 6.4999995 (39 -> 6 samples, asymmetric) as 6.5 and
#: 8.5000012 as 8.5 but not 8.5000019 (measured).
_TIE = np.float32(1e-6)


def resize_plan(
    in_hw: tuple[int, int],
    size: tuple[int, int],
    scales: tuple[float, float] | None,
    *,
    method: str,
    coordinate_mode: str,
    nearest_mode: str,
) -> tuple[tuple[Tap, ...], ...]:
    """The taps of each spatial axis (:func:`resize_taps`), or none at all when the output
    has the input's size: ONNX Runtime then copies the input, whatever the scales say."""
    if tuple(in_hw) == tuple(size):
        return ()
    return tuple(
        resize_taps(
            in_hw[k],
            size[k],
            scales[k] if scales is not None else None,
            method=method,
            coordinate_mode=coordinate_mode,
            nearest_mode=nearest_mode,
        )
        for k in range(2)
    )


def resize_taps(
    in_size: int, out_size: int, scale: float | None, *, method: str, coordinate_mode: str, nearest_mode: str
) -> tuple[Tap, ...]:
    """How ``resize2d`` samples one axis: one tap (nearest) or two (linear).

    ``scale`` is ONNX's (``out_size / in_size`` when the model gave sizes, not scales).
    Float32 throughout, in ONNX Runtime's order of operations.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r} is not supported; use one of {RESIZE_METHODS}")
    s = np.float32(scale) if scale is not None else np.float32(out_size) / np.float32(in_size)
    coords = _source_coords(in_size, out_size, s, coordinate_mode)
    last = in_size - 1
    if method == "nearest":
        return (Tap(np.clip(_round(coords, nearest_mode), 0, last).astype(np.int64), None),)
    x = np.clip(coords, np.float32(0), np.float32(last))
    lo = np.minimum(x.astype(np.int64), last)
    hi = np.minimum(lo + 1, last)
    w_hi = np.abs(x - lo.astype(np.float32))  # the weight of `hi` is the distance from `lo`
    w_lo = np.abs(x - hi.astype(np.float32))
    same = lo == hi
    w_lo[same] = w_hi[same] = np.float32(0.5)
    return Tap(lo, w_lo), Tap(hi, w_hi)


def _source_coords(in_size: int, out_size: int, scale: np.float32, mode: str) -> np.ndarray:
    """The input coordinate each output index maps to (ONNX's coordinate_transformation_mode)."""
    x = np.arange(out_size, dtype=np.float32)
    half, n_in, n_out = np.float32(0.5), np.float32(in_size), np.float32(out_size)
    if mode == "asymmetric":
        return x / scale
    if mode == "half_pixel":
        return (x + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if out_size > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if out_size > 1 else np.zeros_like(x)
    if mode == "half_pixel_symmetric":  # the offset in float32, the rest in float64 (ONNX Runtime's)
        offset = n_in / 2 * (1 - n_out / (scale * n_in))
        return (np.float64(offset) + (x.astype(np.float64) + 0.5) / np.float64(scale) - 0.5).astype(np.float32)
    raise ValueError(f"coordinate transformation mode {mode!r} is not supported; use one of {RESIZE_COORDINATE_MODES}")


def _round(x: np.ndarray, mode: str) -> np.ndarray:
    """ONNX's nearest_mode on source coordinates (negative ones clamp to 0 whatever the mode)."""
    floor = np.floor(x)
    if mode == "floor":
        return floor
    if mode == "ceil":
        return np.ceil(x)
    frac = x - floor
    tie = np.abs(frac - np.float32(0.5)) < _TIE
    if mode == "round_prefer_floor":
        return floor + ((frac > 0.5) & ~tie)
    if mode == "round_prefer_ceil":
        return floor + ((frac > 0.5) | tie)
    raise ValueError(f"nearest mode {mode!r} is not supported; use one of {RESIZE_NEAREST_MODES}")


@register_op(
    "resize2d",
    kind="nn",
    attrs={
        "size": REQUIRED,
        "scales": None,
        "method": "nearest",
        "coordinate_mode": "half_pixel",
        "nearest_mode": "round_prefer_floor",
        "layout": "NCHW",
    },
)
def resize2d(
    x: jax.Array,
    *,
    size: tuple[int, int],
    scales: tuple[float, float] | None,
    method: str,
    coordinate_mode: str,
    nearest_mode: str,
    layout: str,
) -> jax.Array:
    """Resample the spatial axes to ``size`` (height, width); ``scales`` (ONNX's, when the
    model gave them) place the samples, else ``size / input size``."""
    plan = resize_plan(
        tuple(x.shape[a] for a in spatial_axes(layout)),  # type: ignore[arg-type]
        size,
        scales,
        method=method,
        coordinate_mode=coordinate_mode,
        nearest_mode=nearest_mode,
    )
    acc = _accumulation_dtype(x.dtype) or x.dtype
    y = x
    for axis, taps in zip(spatial_axes(layout), plan):
        y = _apply_taps(y, axis, taps, acc)
    return y.astype(x.dtype)


def _apply_taps(x: jax.Array, axis: int, taps: tuple[Tap, ...], acc: jnp.dtype) -> jax.Array:
    terms = []
    for tap in taps:
        gathered = jnp.take(x, tap.index, axis=axis)
        if tap.weight is not None:
            gathered = gathered.astype(acc) * tap.weight.astype(acc).reshape(_channel_shape(x.ndim, axis, -1))
        terms.append(gathered)
    return sum(terms[1:], terms[0])


# ====================================================================== transposed convolution
@register_op(
    "conv2d_transpose",
    inputs=(2, 3),
    kind="nn",
    attrs={
        "strides": (1, 1),
        "padding": ((0, 0), (0, 0)),
        "output_padding": (0, 0),
        "dilation": (1, 1),
        "groups": 1,
    },
)
def conv2d_transpose(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    strides: tuple[int, int],
    padding: Pad2d,
    output_padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> jax.Array:
    """ONNX ConvTranspose on NCHW data with IOHW weights ``[C_in, C_out / groups, kh, kw]``.

    Each output side is ``stride * (in - 1) + output_padding + dilation * (k - 1) + 1 -
    pad_begin - pad_end``: the full scatter of every input pixel's kernel, cropped by the
    pads and extended (with zeros, then bias) by ``output_padding`` at the end. Computed as
    the equivalent convolution: the input dilated by the strides, the kernel flipped and
    regrouped to OIHW, padded by ``dilation * (k - 1)`` less the pads.
    """
    c_in, per_group, kh, kw = w.shape
    if c_in % groups or x.shape[1] != c_in:
        raise ValueError(f"weights {w.shape} do not fit input {x.shape} in {groups} groups")
    k = w.reshape(groups, c_in // groups, per_group, kh, kw).swapaxes(1, 2)
    k = k.reshape(groups * per_group, c_in // groups, kh, kw)[:, :, ::-1, ::-1]
    pads = [
        (d * (n - 1) - lo, d * (n - 1) - hi + extra)
        for n, d, (lo, hi), extra in zip((kh, kw), dilation, padding, output_padding)
    ]
    acc = _accumulation_dtype(x.dtype)
    y = lax.conv_general_dilated(
        x,
        k.astype(x.dtype),
        window_strides=(1, 1),
        padding=pads,
        lhs_dilation=strides,
        rhs_dilation=dilation,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
        preferred_element_type=acc,
    )
    if b is not None:
        y = y + b.astype(y.dtype).reshape(_channel_shape(4, 1, b.shape[0]))
    return y.astype(x.dtype)


# ====================================================================== activations
@register_op("leaky_relu", kind="elementwise", attrs={"alpha": 0.01})
def leaky_relu(x: jax.Array, *, alpha: float) -> jax.Array:
    return jax.nn.leaky_relu(x, negative_slope=alpha)


@register_op("prelu", inputs=2, kind="elementwise")
def prelu(x: jax.Array, slope: jax.Array) -> jax.Array:
    """``slope * x`` where ``x < 0``, else ``x``; ``slope`` broadcasts as NumPy does (a
    per-channel slope of an NCHW tensor is shaped ``[C, 1, 1]``)."""
    return jnp.where(x < 0, x * slope, x)


# ====================================================================== normalisation
@register_op("instance_norm", inputs=3, kind="nn", attrs={"epsilon": 1e-5, "axis": 1})
def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, *, epsilon: float, axis: int) -> jax.Array:
    """Normalise each sample's channel over its other axes (all but 0 and ``axis``), then
    ``* scale + bias`` per channel; half floats normalise in float32."""
    axis %= x.ndim
    axes = tuple(a for a in range(1, x.ndim) if a != axis)
    acc = _accumulation_dtype(x.dtype) or x.dtype
    xf = x.astype(acc)
    centered = xf - jnp.mean(xf, axis=axes, keepdims=True)
    var = jnp.mean(centered * centered, axis=axes, keepdims=True)
    shape = _channel_shape(x.ndim, axis, x.shape[axis])
    y = centered * lax.rsqrt(var + jnp.asarray(epsilon, acc)) * scale.astype(acc).reshape(shape)
    return (y + bias.astype(acc).reshape(shape)).astype(x.dtype)


@register_op("lrn", kind="nn", attrs={"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "bias": 1.0, "axis": 1})
def lrn(x: jax.Array, *, size: int, alpha: float, beta: float, bias: float, axis: int) -> jax.Array:
    """Local response normalisation across channels: ``x / (bias + alpha / size *
    sum of squares over the window) ** beta``."""
    axis %= x.ndim
    acc = _accumulation_dtype(x.dtype) or x.dtype
    xf = x.astype(acc)
    window = _channel_shape(x.ndim, axis, size)
    pads = [(0, 0)] * x.ndim
    pads[axis] = ((size - 1) // 2, size // 2)
    squares = lax.reduce_window(xf * xf, jnp.array(0, acc), lax.add, window, (1,) * x.ndim, pads)
    return (xf / (bias + alpha / size * squares) ** beta).astype(x.dtype)
