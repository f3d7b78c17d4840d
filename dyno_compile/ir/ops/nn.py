"""Neural-network ops: convolution, dense, batch norm, layer norm, pooling, softmax.

Padding is explicit ``((top, bottom), (left, right))`` so that every frontend's
convention (ONNX auto_pad, XLA "SAME", PyTorch symmetric) lowers to one form.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from dyno_compile.ir.ops.layout import DATA_LAYOUTS, KERNEL_LAYOUTS, channel_axis, check_layout, spatial_axes, window_4d
from dyno_compile.ir.ops.registry import REQUIRED, register_op

Pad2d = tuple[tuple[int, int], tuple[int, int]]


def _accumulation_dtype(dtype: jnp.dtype) -> jnp.dtype | None:
    """Accumulate half-precision convolutions and matmuls in float32, as inference runtimes do."""
    return jnp.float32 if dtype in (jnp.float16, jnp.bfloat16) else None


def _channel_shape(ndim: int, axis: int, channels: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis] = channels
    return tuple(shape)


@register_op(
    "conv2d",
    inputs=(2, 3),
    kind="nn",
    attrs={
        "strides": (1, 1),
        "padding": ((0, 0), (0, 0)),
        "dilation": (1, 1),
        "groups": 1,
        "data_layout": "NCHW",
        "kernel_layout": "OIHW",
    },
)
def conv2d(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    strides: tuple[int, int],
    padding: Pad2d,
    dilation: tuple[int, int],
    groups: int,
    data_layout: str,
    kernel_layout: str,
) -> jax.Array:
    check_layout(data_layout, DATA_LAYOUTS)
    check_layout(kernel_layout, KERNEL_LAYOUTS)
    acc = _accumulation_dtype(x.dtype)
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=(data_layout, kernel_layout, data_layout),
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
        preferred_element_type=acc,
    )
    if b is not None:
        axis = channel_axis(data_layout)
        y = y + b.astype(y.dtype).reshape(_channel_shape(4, axis, b.shape[0]))
    return y.astype(x.dtype)


@register_op("dense", inputs=(2, 3), kind="nn")
def dense(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """``x @ w.T + b`` with ``w`` laid out [out_features, in_features], as in ONNX Gemm and PyTorch."""
    y = jnp.matmul(x, w.T, precision=lax.Precision.HIGHEST, preferred_element_type=_accumulation_dtype(x.dtype))
    if b is not None:
        y = y + b.astype(y.dtype)
    return y.astype(x.dtype)


@register_op("batch_norm", inputs=5, kind="nn", attrs={"epsilon": 1e-5, "axis": 1})
def batch_norm(
    x: jax.Array, gamma: jax.Array, beta: jax.Array, mean: jax.Array, var: jax.Array, *, epsilon: float, axis: int
) -> jax.Array:
    shape = _channel_shape(x.ndim, axis % x.ndim, x.shape[axis])
    scale = (gamma * lax.rsqrt(var + epsilon)).reshape(shape)
    return ((x - mean.reshape(shape)) * scale + beta.reshape(shape)).astype(x.dtype)


@register_op("layer_norm", inputs=(2, 3), kind="nn", attrs={"axis": -1, "epsilon": 1e-5})
def layer_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array | None = None, *, axis: int, epsilon: float
) -> jax.Array:
    """Normalise over the trailing axes from ``axis`` on, then ``* scale + bias`` (ONNX LayerNormalization).

    ``scale`` and ``bias`` broadcast against those trailing axes. Half-precision inputs are
    normalised in float32, as ONNX's default ``stash_type`` says.
    """
    axes = tuple(range(axis % x.ndim, x.ndim))
    acc = _accumulation_dtype(x.dtype) or x.dtype
    xf = x.astype(acc)
    mean = jnp.mean(xf, axis=axes, keepdims=True)
    centered = xf - mean
    var = jnp.mean(centered * centered, axis=axes, keepdims=True)
    y = centered * lax.rsqrt(var + jnp.asarray(epsilon, acc)) * scale.astype(acc)
    if bias is not None:
        y = y + bias.astype(acc)
    return y.astype(x.dtype)


_POOL_ATTRS = {"kernel": REQUIRED, "strides": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (1, 1), "layout": "NCHW"}


def _pool_window(
    *, kernel: tuple[int, int], strides: tuple[int, int], padding: Pad2d, dilation: tuple[int, int], layout: str
) -> dict:
    """``lax.reduce_window``'s window arguments from a pool's window attributes (``_POOL_ATTRS``):
    the pools take those attributes as ``**window`` and hand them on here, where they are named once."""
    h, w = spatial_axes(layout)
    pads = [(0, 0)] * 4
    pads[h], pads[w] = padding
    return {
        "window_dimensions": window_4d(layout, kernel, 1),
        "window_strides": window_4d(layout, strides, 1),
        "padding": tuple(pads),
        "window_dilation": window_4d(layout, dilation, 1),
    }


@register_op("max_pool2d", kind="nn", attrs=_POOL_ATTRS)
def max_pool2d(x: jax.Array, **window: Any) -> jax.Array:
    init = jnp.array(-jnp.inf, x.dtype)
    return lax.reduce_window(x, init, lax.max, **_pool_window(**window))


@register_op("avg_pool2d", kind="nn", attrs={**_POOL_ATTRS, "count_include_pad": False})
def avg_pool2d(x: jax.Array, *, count_include_pad: bool, **window: Any) -> jax.Array:
    reduce_args = _pool_window(**window)
    acc = x.astype(jnp.float32) if _accumulation_dtype(x.dtype) else x
    total = lax.reduce_window(acc, jnp.array(0, acc.dtype), lax.add, **reduce_args)
    if count_include_pad:
        count = window["kernel"][0] * window["kernel"][1]
    else:
        ones = jnp.ones(x.shape, acc.dtype)
        count = lax.reduce_window(ones, jnp.array(0, acc.dtype), lax.add, **reduce_args)
    return (total / count).astype(x.dtype)


@register_op("global_avg_pool2d", kind="nn", attrs={"layout": "NCHW", "keepdims": True})
def global_avg_pool2d(x: jax.Array, *, layout: str, keepdims: bool) -> jax.Array:
    acc = x.astype(jnp.float32) if _accumulation_dtype(x.dtype) else x
    return jnp.mean(acc, axis=spatial_axes(layout), keepdims=keepdims).astype(x.dtype)


@register_op("softmax", kind="nn", attrs={"axis": -1})
def softmax(x: jax.Array, *, axis: int) -> jax.Array:
    return jax.nn.softmax(x, axis=axis)
