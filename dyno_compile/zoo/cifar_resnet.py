"""CIFAR-10 ResNet-20/56 (He et al. 2016, "option A" shortcuts), as in ``../shared/data``.

Matches akamaster/pytorch_resnet_cifar10, whose trained weights live in
``data_root()/cifar10/resnet{20,56}.npz``: conv3x3(3->16) BN ReLU, three stages of basic
blocks with 16, 32, 64 channels, global average pool, ``linear`` 64->10. The first block
of stages 2 and 3 strides by 2 and its shortcut has no weights: it subsamples with
``x[:, :, ::2, ::2]`` and zero-pads planes/4 channels on each side.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from dyno_compile.datasets import data_root
from dyno_compile.zoo.layers import Params, ParamSpec, SpecBuilder, conv_bn, dense, global_avg_pool

NUM_CLASSES = 10
INPUT_CHW = (3, 32, 32)
_STAGE_PLANES = (16, 32, 64)
DEPTHS = (20, 56)


def blocks_per_stage(depth: int) -> int:
    """``depth = 6n + 2``: two convs per block, three stages, plus the stem conv and the linear."""
    if depth not in DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {DEPTHS}, got {depth}")
    return (depth - 2) // 6


def _blocks(depth: int) -> list[tuple[str, int, int, int]]:
    """``(name, in_planes, planes, stride)`` for every block, in order."""
    out, in_planes = [], _STAGE_PLANES[0]
    for stage, planes in enumerate(_STAGE_PLANES, start=1):
        for i in range(blocks_per_stage(depth)):
            out.append((f"layer{stage}.{i}", in_planes, planes, 2 if stage > 1 and i == 0 else 1))
            in_planes = planes
    return out


def param_specs(depth: int) -> dict[str, ParamSpec]:
    """Parameter shapes (and He init for random use), in the weight files' key order."""
    b = SpecBuilder()
    b.conv("conv1", 16, 3, 3)
    b.batch_norm("bn1", 16)
    for name, in_planes, planes, _ in _blocks(depth):
        b.conv(f"{name}.conv1", planes, in_planes, 3)
        b.batch_norm(f"{name}.bn1", planes)
        b.conv(f"{name}.conv2", planes, planes, 3)
        b.batch_norm(f"{name}.bn2", planes)
    b.dense("linear", NUM_CLASSES, _STAGE_PLANES[-1])
    return b.specs


def weights_path(depth: int) -> Path:
    """Where the trained weights for ``depth`` are expected (they are not in the repository)."""
    blocks_per_stage(depth)
    return data_root() / "cifar10" / f"resnet{depth}.npz"


def _option_a_shortcut(x: jax.Array, planes: int) -> jax.Array:
    """Subsample by 2 and zero-pad channels: the weight-free shortcut of "option A"."""
    pad = planes // 4
    return jnp.pad(x[:, :, ::2, ::2], ((0, 0), (pad, pad), (0, 0), (0, 0)))


def forward(depth: int, params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, 10] for NCHW ``x`` of 32x32, preprocessed as ``datasets.cifar10``."""
    y = jax.nn.relu(conv_bn(x, params, "conv1", "bn1", padding=1))
    for name, in_planes, planes, stride in _blocks(depth):
        with jax.named_scope(name):  # names the block's nodes in the IR (layer1.0.relu)
            shortcut = y if stride == 1 and in_planes == planes else _option_a_shortcut(y, planes)
            z = jax.nn.relu(conv_bn(y, params, f"{name}.conv1", f"{name}.bn1", stride=stride, padding=1))
            z = conv_bn(z, params, f"{name}.conv2", f"{name}.bn2", padding=1)
            y = jax.nn.relu(z + shortcut)
    return dense(global_avg_pool(y), params, "linear")
