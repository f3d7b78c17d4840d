"""Elementwise ops: activations, arithmetic with NumPy broadcasting, casts."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dyno_compile.ir.ops.registry import REQUIRED, register_op

_UNARY: dict[str, Callable[..., jax.Array]] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "hardswish": jax.nn.hard_swish,
    "hardsigmoid": jax.nn.hard_sigmoid,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "exp": jnp.exp,
    "log": jnp.log,
    "sqrt": jnp.sqrt,
    "rsqrt": jax.lax.rsqrt,
    "neg": jnp.negative,
    "abs": jnp.abs,
    "erf": jax.lax.erf,
    "identity": lambda x: x,
}

_BINARY: dict[str, Callable[..., jax.Array]] = {
    "add": jnp.add,
    "sub": jnp.subtract,
    "mul": jnp.multiply,
    "div": jnp.divide,
    "maximum": jnp.maximum,
    "minimum": jnp.minimum,
    "pow": jnp.power,
}

#: Names of the plain unary and binary ops, for frontends and pattern passes.
UNARY_OPS = frozenset(_UNARY)
BINARY_OPS = frozenset(_BINARY)

for _name, _fn in _UNARY.items():
    register_op(_name, kind="elementwise")(_fn)

for _name, _fn in _BINARY.items():
    register_op(_name, inputs=2, kind="elementwise")(_fn)


@register_op("clip", attrs={"min": REQUIRED, "max": REQUIRED}, kind="elementwise")
def clip(x: jax.Array, *, min: float | None, max: float | None) -> jax.Array:
    return jnp.clip(x, min, max)


@register_op("cast", attrs={"dtype": REQUIRED}, kind="elementwise")
def cast(x: jax.Array, *, dtype: str) -> jax.Array:
    return x.astype(dtype)


@register_op("gelu", attrs={"approximate": False}, kind="elementwise")
def gelu(x: jax.Array, *, approximate: bool) -> jax.Array:
    """``x * Phi(x)``, exact (erf) or tanh-approximated; one op so that no cut falls inside it."""
    return jax.nn.gelu(x, approximate=approximate)
