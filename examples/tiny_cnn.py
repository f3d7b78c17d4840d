"""A user's own JAX model, for ``python -m dyno_compile inspect examples.tiny_cnn:build``.

``build()`` returns ``(fn, params, example_input)``; ``fn(params, x)`` is the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def tiny_cnn(params: dict[str, np.ndarray], x: jax.Array) -> jax.Array:
    y = lax.conv_general_dilated(
        x, params["conv1.weight"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    y = jax.nn.relu(y + params["conv1.bias"][None, :, None, None])
    y = lax.reduce_window(y, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    y = lax.conv_general_dilated(
        y, params["conv2.weight"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    y = jax.nn.relu(y)
    return jnp.mean(y, axis=(2, 3)) @ params["fc.weight"].T + params["fc.bias"]


def build() -> tuple:
    rng = np.random.default_rng(0)
    params = {
        "conv1.weight": rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32),
        "conv1.bias": np.zeros(8, np.float32),
        "conv2.weight": rng.normal(0, 0.1, (16, 8, 3, 3)).astype(np.float32),
        "fc.weight": rng.normal(0, 0.1, (10, 16)).astype(np.float32),
        "fc.bias": np.zeros(10, np.float32),
    }
    return tiny_cnn, params, np.zeros((1, 3, 32, 32), np.float32)
