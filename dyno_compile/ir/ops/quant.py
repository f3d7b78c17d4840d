"""Ops at a cut: DynO's input-specific quantization, dense bit packing, and the send marker.

The range is taken from *this input* (per tensor, or per channel along ``axis``), so the
codes use every level the tensor needs; ``lo`` and ``scale`` travel with the data.
Exactly, in float32 and in this order (the NumPy reference in ``dyno_compile.packing``
and the TVM kernels compute the same, bit for bit)::

    lo, hi = min(x), max(x)                      # over the reduced axes
    scale  = (hi - lo) * float32(1 / (2**bits - 1))   # 1.0 where below 2**-126 (constant input)
    q      = clip(round_half_even((x - lo) * (1 / scale)), 0, 2**bits - 1)
    x'     = q * scale + lo

``quant_range`` returns ``[2]`` (tensor) or ``[2, C]`` (channel): row 0 ``lo``, row 1
``scale``. ``bitpack`` lays b-bit codes end to end in a little-endian, LSB-first bit
stream of ``ceil(N * b / 8)`` bytes; ``bitunpack`` inverts it.
"""

from __future__ import annotations

from math import prod

import jax
import jax.numpy as jnp

from dyno_compile.ir.ops.layout import DEFAULT_CHANNEL_AXIS
from dyno_compile.ir.ops.registry import REQUIRED, register_op
from dyno_compile.packing.bitpack import packed_nbytes
from dyno_compile.packing.quantize import inverse_levels, levels
from dyno_compile.packing.vocab import MIN_SCALE, check_granularity, code_dtype

_Q_ATTRS = {"bits": REQUIRED, "granularity": "tensor", "axis": DEFAULT_CHANNEL_AXIS}


def _reduce_axes(x: jax.Array, granularity: str, axis: int) -> tuple[int, ...]:
    if check_granularity(granularity) == "tensor":
        return tuple(range(x.ndim))
    return tuple(a for a in range(x.ndim) if a != axis % x.ndim)


def _per_channel(v: jax.Array, x: jax.Array, granularity: str, axis: int) -> jax.Array:
    """Reshape a [C] (or scalar) vector to broadcast along ``axis`` of ``x``."""
    if granularity == "tensor":
        return v
    shape = [1] * x.ndim
    shape[axis % x.ndim] = x.shape[axis % x.ndim]
    return v.reshape(shape)


@register_op("quant_range", kind="quant", attrs=_Q_ATTRS)
def quant_range(x: jax.Array, *, bits: int, granularity: str, axis: int) -> jax.Array:
    code_dtype(bits)
    x = x.astype(jnp.float32)
    axes = _reduce_axes(x, granularity, axis)
    lo, hi = jnp.min(x, axis=axes), jnp.max(x, axis=axes)
    # A multiply, not a division by a constant: XLA rewrites that division into a
    # reciprocal multiply anyway, so stating it keeps every implementation bit-identical.
    scale = (hi - lo) * inverse_levels(bits)
    # A (near-)constant input has no usable range: codes 0 and dequantisation to lo. The
    # test is "scale below the smallest normal float32" since XLA flushes subnormals to 0.
    scale = jnp.where(scale < MIN_SCALE, jnp.float32(1.0), scale)
    return jnp.stack([lo, scale])


@register_op("quantize", inputs=2, kind="quant", attrs=_Q_ATTRS)
def quantize(x: jax.Array, rng: jax.Array, *, bits: int, granularity: str, axis: int) -> jax.Array:
    x = x.astype(jnp.float32)
    lo, scale = (_per_channel(rng[i], x, granularity, axis) for i in (0, 1))
    # Multiply by the reciprocal: XLA turns a division by a broadcast value into exactly
    # that (not correctly rounded otherwise), so every implementation states it the same way.
    q = jnp.round((x - lo) * (jnp.float32(1) / scale))  # round half to even, as NumPy and te.round
    return jnp.clip(q, 0, levels(bits)).astype(code_dtype(bits))


@register_op("dequantize", inputs=2, kind="quant", attrs={"granularity": "tensor", "axis": DEFAULT_CHANNEL_AXIS})
def dequantize(codes: jax.Array, rng: jax.Array, *, granularity: str, axis: int) -> jax.Array:
    lo, scale = (_per_channel(rng[i], codes, granularity, axis) for i in (0, 1))
    return codes.astype(jnp.float32) * scale + lo


@register_op("bitpack", kind="quant", attrs={"bits": REQUIRED})
def bitpack(codes: jax.Array, *, bits: int) -> jax.Array:
    flat = codes.reshape(-1).astype(jnp.uint32)
    stream = ((flat[:, None] >> jnp.arange(bits, dtype=jnp.uint32)) & 1).reshape(-1)
    stream = jnp.pad(stream, (0, -stream.size % 8)).reshape(-1, 8)
    return (stream << jnp.arange(8, dtype=jnp.uint32)).sum(axis=1).astype(jnp.uint8)


@register_op("bitunpack", kind="quant", attrs={"bits": REQUIRED, "shape": REQUIRED})
def bitunpack(packed: jax.Array, *, bits: int, shape: tuple[int, ...]) -> jax.Array:
    count = prod(shape)
    if packed.shape != (packed_nbytes(count, bits),):
        raise ValueError(f"{count} codes of {bits} bits need {packed_nbytes(count, bits)} bytes, got {packed.shape}")
    stream = ((packed.astype(jnp.uint32)[:, None] >> jnp.arange(8, dtype=jnp.uint32)) & 1).reshape(-1)
    stream = stream[: count * bits].reshape(count, bits)
    codes = (stream << jnp.arange(bits, dtype=jnp.uint32)).sum(axis=1)
    return codes.astype(code_dtype(bits)).reshape(shape)


@register_op("send", kind="io", attrs={"cut": REQUIRED, "slot": REQUIRED})
def send(x: jax.Array, *, cut: int, slot: int) -> jax.Array:
    """Marks a tensor leaving the device at cut ``cut``; the value is unchanged."""
    return x
