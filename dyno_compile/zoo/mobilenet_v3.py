"""torchvision MobileNetV3-Small: inverted residuals with squeeze-excite and hard-swish.

It is here because its squeeze-excite blocks (global average pool, 1x1 reduce conv + ReLU,
1x1 expand conv + hard-sigmoid, multiplied into the depthwise output) are what a user's
own MobileNetV3 export brings to every target, the batched cloud GPU build included.
Parameter names follow ``torchvision.models.mobilenetv3``: ``features.0`` the stem,
``features.1``-``features.11`` the blocks, ``features.12`` the last 1x1 conv; inside a
block, ``block.{j}`` indexes its Sequential (expand, depthwise, SE, project), with the
expand conv absent where the block does not expand. Dropout is omitted (inference).

:data:`SMALL` is torchvision's configuration; any other tuple of :class:`BlockConfig`
gives a MobileNetV3-style network of that shape (the tests build a tiny one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax

from dyno_compile.zoo import layers
from dyno_compile.zoo.layers import Params, ParamSpec, SpecBuilder, conv_bn, dense, global_avg_pool

NUM_CLASSES = 1000
INPUT_CHW = (3, 224, 224)
STEM = 16
LAST_CONV, LAST_LINEAR = 576, 1024


@dataclass(frozen=True)
class BlockConfig:
    """torchvision's ``InvertedResidualConfig`` (width 1.0): input, kernel, expanded and output
    channels, squeeze-excite, activation (``"RE"`` ReLU, ``"HS"`` hard-swish), stride."""

    inp: int
    kernel: int
    expanded: int
    out: int
    se: bool
    activation: str
    stride: int


#: MobileNetV3-Small's blocks (torchvision ``_mobilenet_v3_conf("mobilenet_v3_small")``).
SMALL = (
    BlockConfig(16, 3, 16, 16, True, "RE", 2),
    BlockConfig(16, 3, 72, 24, False, "RE", 2),
    BlockConfig(24, 3, 88, 24, False, "RE", 1),
    BlockConfig(24, 5, 96, 40, True, "HS", 2),
    BlockConfig(40, 5, 240, 40, True, "HS", 1),
    BlockConfig(40, 5, 240, 40, True, "HS", 1),
    BlockConfig(40, 5, 120, 48, True, "HS", 1),
    BlockConfig(48, 5, 144, 48, True, "HS", 1),
    BlockConfig(48, 5, 288, 96, True, "HS", 2),
    BlockConfig(96, 5, 576, 96, True, "HS", 1),
    BlockConfig(96, 5, 576, 96, True, "HS", 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, never below 90 %."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _squeezed(cfg: BlockConfig) -> int:
    return make_divisible(cfg.expanded // 4)


def _act(x: jax.Array, activation: str) -> jax.Array:
    return jax.nn.hard_swish(x) if activation == "HS" else jax.nn.relu(x)


def _layers(cfg: BlockConfig) -> list[str]:
    """The block's Sequential entries in order, named by what they are."""
    return [*(["expand"] if cfg.expanded != cfg.inp else []), "depthwise", *(["se"] if cfg.se else []), "project"]


def _last_conv(blocks: Sequence[BlockConfig]) -> str:
    return f"features.{len(blocks) + 1}"


def param_specs(blocks: Sequence[BlockConfig] = SMALL, num_classes: int = NUM_CLASSES) -> dict[str, ParamSpec]:
    """Parameter shapes and torchvision initialisers, in ``state_dict`` order."""
    b = SpecBuilder()
    b.conv("features.0.0", STEM, 3, 3)
    b.batch_norm("features.0.1", STEM)
    for i, cfg in enumerate(blocks, start=1):
        for j, layer in enumerate(_layers(cfg)):
            name = f"features.{i}.block.{j}"
            if layer == "se":
                b.conv(f"{name}.fc1", _squeezed(cfg), cfg.expanded, 1, bias=True)
                b.conv(f"{name}.fc2", cfg.expanded, _squeezed(cfg), 1, bias=True)
                continue
            out, inp, kernel, groups = {
                "expand": (cfg.expanded, cfg.inp, 1, 1),
                "depthwise": (cfg.expanded, cfg.expanded, cfg.kernel, cfg.expanded),
                "project": (cfg.out, cfg.expanded, 1, 1),
            }[layer]
            b.conv(f"{name}.0", out, inp, kernel, groups=groups)
            b.batch_norm(f"{name}.1", out)
    last = _last_conv(blocks)
    b.conv(f"{last}.0", LAST_CONV, blocks[-1].out, 1)
    b.batch_norm(f"{last}.1", LAST_CONV)
    b.dense("classifier.0", LAST_LINEAR, LAST_CONV, std=0.01)
    b.dense("classifier.3", num_classes, LAST_LINEAR, std=0.01)
    return b.specs


def squeeze_excite(p: Params, y: jax.Array, name: str) -> jax.Array:
    """torchvision's ``SqueezeExcitation`` with hard-sigmoid: ``y * hsig(fc2(relu(fc1(pool(y)))))``."""
    return layers.squeeze_excite(y, p, f"{name}.fc1", f"{name}.fc2", jax.nn.relu, jax.nn.hard_sigmoid)


def _block(p: Params, x: jax.Array, index: int, cfg: BlockConfig) -> jax.Array:
    y = x
    for j, layer in enumerate(_layers(cfg)):
        name = f"features.{index}.block.{j}"
        if layer == "se":
            y = squeeze_excite(p, y, name)
        elif layer == "expand":
            y = _act(conv_bn(y, p, f"{name}.0", f"{name}.1", eps=1e-3), cfg.activation)
        elif layer == "depthwise":
            pad = (cfg.kernel - 1) // 2
            y = conv_bn(y, p, f"{name}.0", f"{name}.1", stride=cfg.stride, padding=pad, groups=cfg.expanded, eps=1e-3)
            y = _act(y, cfg.activation)
        else:
            y = conv_bn(y, p, f"{name}.0", f"{name}.1", eps=1e-3)
    return x + y if cfg.stride == 1 and cfg.inp == cfg.out else y


def forward(blocks: Sequence[BlockConfig], params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, classes] of the MobileNetV3-style network with ``blocks`` (NCHW ``x``)."""
    y = jax.nn.hard_swish(conv_bn(x, params, "features.0.0", "features.0.1", stride=2, padding=1, eps=1e-3))
    for i, cfg in enumerate(blocks, start=1):
        with jax.named_scope(f"features.{i}"):
            y = _block(params, y, i, cfg)
    last = _last_conv(blocks)
    y = jax.nn.hard_swish(conv_bn(y, params, f"{last}.0", f"{last}.1", eps=1e-3))
    y = jax.nn.hard_swish(dense(global_avg_pool(y), params, "classifier.0"))
    return dense(y, params, "classifier.3")


def mobilenet_v3_small(params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, 1000] of torchvision's MobileNetV3-Small."""
    return forward(SMALL, params, x)
