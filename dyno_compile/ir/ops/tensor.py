"""Shape and data-movement ops, and reductions."""

from __future__ import annotations

from math import prod

import jax
import jax.numpy as jnp
from jax import lax

from dyno_compile.ir.ops.registry import REQUIRED, register_op


@register_op("concat", inputs=(1, None), attrs={"axis": REQUIRED})
def concat(*xs: jax.Array, axis: int) -> jax.Array:
    return jnp.concatenate(xs, axis=axis)


@register_op("pad", attrs={"pads": REQUIRED, "value": 0.0})
def pad(x: jax.Array, *, pads: tuple[tuple[int, int], ...], value: float) -> jax.Array:
    """Constant padding; ``pads`` holds (before, after) per axis, negative values crop."""
    if len(pads) != x.ndim:
        raise ValueError(f"pads has {len(pads)} entries for a rank-{x.ndim} tensor")
    return lax.pad(x, jnp.array(value, x.dtype), [(lo, hi, 0) for lo, hi in pads])


@register_op("flatten", attrs={"axis": 1})
def flatten(x: jax.Array, *, axis: int) -> jax.Array:
    return x.reshape(prod(x.shape[:axis]), prod(x.shape[axis:]))


@register_op("reshape", attrs={"shape": REQUIRED})
def reshape(x: jax.Array, *, shape: tuple[int, ...]) -> jax.Array:
    return x.reshape(shape)


@register_op("transpose", attrs={"perm": REQUIRED})
def transpose(x: jax.Array, *, perm: tuple[int, ...]) -> jax.Array:
    return jnp.transpose(x, perm)


@register_op("broadcast_to", attrs={"shape": REQUIRED})
def broadcast_to(x: jax.Array, *, shape: tuple[int, ...]) -> jax.Array:
    return jnp.broadcast_to(x, shape)


@register_op("slice", attrs={"starts": REQUIRED, "limits": REQUIRED, "strides": None})
def slice_(
    x: jax.Array, *, starts: tuple[int, ...], limits: tuple[int | None, ...], strides: tuple[int, ...] | None
) -> jax.Array:
    """``x[start:limit:stride]`` per axis; a ``None`` limit runs to the end, so a slice that
    keeps a whole axis (the batch) stays valid when that axis is resized."""
    if not len(starts) == len(limits) == x.ndim or (strides is not None and len(strides) != x.ndim):
        raise ValueError(f"slice needs one start, limit and stride per axis of a rank-{x.ndim} tensor")
    steps = strides or (1,) * x.ndim
    return x[tuple(slice(s, l, st) for s, l, st in zip(starts, limits, steps))]


def _reduction(fn):
    def impl(x: jax.Array, *, axes: tuple[int, ...], keepdims: bool) -> jax.Array:
        return fn(x, axis=tuple(axes), keepdims=keepdims)

    return impl


for _name, _fn in {
    "reduce_sum": jnp.sum,
    "reduce_max": jnp.max,
    "reduce_min": jnp.min,
    "reduce_mean": jnp.mean,
}.items():
    register_op(_name, kind="reduce", attrs={"axes": REQUIRED, "keepdims": False})(_reduction(_fn))
