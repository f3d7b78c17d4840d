"""torchvision DenseNet (Huang et al.): dense blocks whose layers each read the concatenation
of every earlier feature map, joined by transitions (BN, ReLU, 1x1 conv, 2x2 average pool).

It is here because its long chains of concatenations give a 224x224 build hundreds of
fused functions (the longest compile of the common CNN families) and cut points that cross
many tensors. Parameter names follow ``torchvision.models.densenet``:
``features.conv0/norm0``, ``features.denseblock{i}.denselayer{j}.norm1/conv1/norm2/conv2``,
``features.transition{i}.norm/conv``, ``features.norm5``, ``classifier``.

:data:`DENSENET121` is torchvision's DenseNet-121; any other :class:`DenseConfig` gives a
DenseNet-style network of that shape (the tests build a tiny one).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from dyno_compile.zoo.layers import Params, ParamSpec, SpecBuilder, batch_norm, conv2d, dense, global_avg_pool, max_pool

NUM_CLASSES = 1000
INPUT_CHW = (3, 224, 224)


@dataclass(frozen=True)
class DenseConfig:
    """Layers per dense block, growth rate, stem width and bottleneck factor (``bn_size``)."""

    blocks: tuple[int, ...]
    growth: int = 32
    stem: int = 64
    bn_size: int = 4


DENSENET121 = DenseConfig((6, 12, 24, 16))


def _widths(cfg: DenseConfig) -> list[tuple[int, int]]:
    """Input channels of each dense block and of the transition (or final norm) after it."""
    out, ch = [], cfg.stem
    for i, layers in enumerate(cfg.blocks):
        end = ch + layers * cfg.growth
        out.append((ch, end))
        ch = end // 2 if i < len(cfg.blocks) - 1 else end
    return out


def param_specs(cfg: DenseConfig = DENSENET121, num_classes: int = NUM_CLASSES) -> dict[str, ParamSpec]:
    """Parameter shapes and torchvision initialisers, in ``state_dict`` order."""
    b = SpecBuilder()
    b.conv("features.conv0", cfg.stem, 3, 7)
    b.batch_norm("features.norm0", cfg.stem)
    for i, ((start, end), layers) in enumerate(zip(_widths(cfg), cfg.blocks), start=1):
        for j in range(layers):
            name = f"features.denseblock{i}.denselayer{j + 1}"
            ch = start + j * cfg.growth
            b.batch_norm(f"{name}.norm1", ch)
            b.conv(f"{name}.conv1", cfg.bn_size * cfg.growth, ch, 1)
            b.batch_norm(f"{name}.norm2", cfg.bn_size * cfg.growth)
            b.conv(f"{name}.conv2", cfg.growth, cfg.bn_size * cfg.growth, 3)
        if i < len(cfg.blocks):
            b.batch_norm(f"features.transition{i}.norm", end)
            b.conv(f"features.transition{i}.conv", end // 2, end, 1)
    final = _widths(cfg)[-1][1]
    b.batch_norm("features.norm5", final)
    b.dense("classifier", num_classes, final)
    return b.specs


def _bn_relu(x: jax.Array, p: Params, name: str) -> jax.Array:
    return jax.nn.relu(batch_norm(x, p, name))


def _avg_pool2(x: jax.Array) -> jax.Array:
    """``AvgPool2d(2, 2)``: sum of each 2x2 window, divided by 4."""
    return lax.reduce_window(x, 0.0, lax.add, (1, 1, 2, 2), (1, 1, 2, 2), "VALID") / 4.0


def forward(cfg: DenseConfig, params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, classes] of the DenseNet-style network ``cfg`` (NCHW ``x``)."""
    p = params
    y = conv2d(x, p["features.conv0.weight"], stride=2, padding=3)
    y = max_pool(_bn_relu(y, p, "features.norm0"), 3, 2, 1)
    for i, layers in enumerate(cfg.blocks, start=1):
        with jax.named_scope(f"features.denseblock{i}"):
            for j in range(1, layers + 1):
                name = f"features.denseblock{i}.denselayer{j}"
                h = conv2d(_bn_relu(y, p, f"{name}.norm1"), p[f"{name}.conv1.weight"])
                h = conv2d(_bn_relu(h, p, f"{name}.norm2"), p[f"{name}.conv2.weight"], padding=1)
                y = jnp.concatenate([y, h], axis=1)
        if i < len(cfg.blocks):
            name = f"features.transition{i}"
            y = _avg_pool2(conv2d(_bn_relu(y, p, f"{name}.norm"), p[f"{name}.conv.weight"]))
    y = _bn_relu(y, p, "features.norm5")
    return dense(global_avg_pool(y), p, "classifier")


def densenet121(params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, 1000] of torchvision's DenseNet-121."""
    return forward(DENSENET121, params, x)
