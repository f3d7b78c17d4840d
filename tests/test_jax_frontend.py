"""JAX frontend: plain lax/jnp functions and Flax modules into the IR, and its refusals."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import rel_err
from dyno_compile.errors import FrontendError, UnsupportedOpError
from dyno_compile.frontend.jax_import import from_jax
from dyno_compile.ir import Interpreter, validate
from dyno_compile.passes import run_passes


def _mixed(p, x):
    """Exercises every translation rule the zoo does not."""
    y = lax.conv_general_dilated(
        x, p["w"], (2, 2), ((1, 0), (0, 1)), rhs_dilation=(1, 1), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    y = jax.nn.silu(y) + jax.nn.hard_swish(y) - jax.nn.sigmoid(y) * jnp.tanh(y)
    y = jnp.clip(y, -1.0, 2.0) ** 2 + jnp.exp(-jnp.abs(y)) + jnp.sqrt(jnp.abs(y) + 1)
    y = jnp.maximum(y, 0.1 * y)
    y = lax.reduce_window(y, 0.0, lax.add, (1, 1, 2, 2), (1, 1, 1, 1), "VALID") / 4.0
    y = jnp.concatenate([y, jnp.transpose(y, (0, 1, 3, 2))], axis=1)
    y = jnp.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)))[:, :, ::2, 1:]
    y = y.reshape(y.shape[0], -1)
    y = jnp.max(y, axis=1, keepdims=True) + y @ p["d"] + jnp.log(jnp.sum(jnp.exp(y), axis=1, keepdims=True))
    return jax.nn.softmax(y)


def test_translates_a_mixed_function_exactly(rng):
    x = rng.normal(size=(2, 3, 9, 9)).astype(np.float32)
    p = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32)}
    p["d"] = rng.normal(size=(_flat_width(p, x), 10)).astype(np.float32) * 0.1
    g = from_jax(_mixed, p, x, name="mixed")
    validate(g)
    ref = _mixed(p, x)
    assert rel_err(Interpreter(g)(x), ref) <= 1e-5
    assert rel_err(Interpreter(run_passes(g))(x), ref) <= 1e-5


def _flat_width(p, x) -> int:
    """Width of ``_mixed``'s flattened features, to size its dense weight."""

    def upto_flat(p, x):
        y = lax.conv_general_dilated(x, p["w"], (2, 2), ((1, 0), (0, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
        y = lax.reduce_window(y, 0.0, lax.add, (1, 1, 2, 2), (1, 1, 1, 1), "VALID")
        y = jnp.concatenate([y, jnp.transpose(y, (0, 1, 3, 2))], axis=1)
        return jnp.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)))[:, :, ::2, 1:].reshape(x.shape[0], -1)

    return jax.eval_shape(upto_flat, p, x).shape[1]


class _FlaxNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), strides=(2, 2))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        x = nn.Conv(8, (3, 3), feature_group_count=8, padding="SAME")(x)
        x = nn.relu6(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.avg_pool(x, (2, 2), (1, 1), padding="SAME")
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(10)(x)


def test_flax_module_through_apply(rng):
    x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    model = _FlaxNet()
    variables = model.init(jax.random.key(0), x)
    stats = jax.tree.map(lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype), variables["batch_stats"])
    variables = {**variables, "batch_stats": stats}
    g = from_jax(model.apply, variables, x, name="flax")
    ref = model.apply(variables, x)
    assert rel_err(Interpreter(g)(x), ref) <= 1e-5
    h = run_passes(g)
    assert rel_err(Interpreter(h)(x), ref) <= 1e-5
    ops = [n.op for n in h.compute_nodes]
    assert "batch_norm" not in ops and ops.count("conv2d") == 2 and "global_avg_pool2d" in ops
    assert h.node("params.Conv_0").attrs["data_layout"] == "NHWC"


def test_weights_keep_their_pytree_names(rng):
    p = {"conv": {"weight": rng.normal(size=(2, 3, 1, 1)).astype(np.float32)}}
    f = lambda p, x: lax.conv_general_dilated(x, p["conv"]["weight"], (1, 1), "VALID")  # noqa: E731
    g = from_jax(f, p, np.zeros((1, 3, 4, 4), np.float32))
    assert "conv.weight" in g.params
    assert g.compute_nodes[0].name == "conv"


def test_unsupported_primitive_is_a_clear_error():
    f = lambda p, x: jnp.cumsum(x, axis=1)  # noqa: E731
    with pytest.raises(UnsupportedOpError, match="unsupported operator 'cumsum'") as info:
        from_jax(f, {}, np.zeros((1, 4), np.float32), name="bad")
    assert "test_jax_frontend.py" in str(info.value)


def test_tracing_failure_is_a_frontend_error():
    f = lambda p, x: x @ p["w"]  # noqa: E731  (shapes do not fit)
    with pytest.raises(FrontendError, match="tracing the JAX function failed"):
        from_jax(f, {"w": np.zeros((5, 2), np.float32)}, np.zeros((1, 4), np.float32))


def test_requires_an_example_input():
    with pytest.raises(FrontendError, match="example input"):
        from_jax(lambda p, x: x, {})
