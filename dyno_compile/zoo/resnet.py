"""torchvision ImageNet ResNet-18 (BasicBlock) and ResNet-50 (Bottleneck, v1.5).

Layout and parameter names follow ``torchvision.models.resnet`` exactly, so a torchvision
``state_dict`` saved as ``.npz`` loads unchanged. v1.5 means the Bottleneck strides on its
3x3 conv, not the first 1x1, as torchvision does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax

from dyno_compile.zoo.layers import Params, ParamSpec, SpecBuilder, conv_bn, dense, global_avg_pool, max_pool

NUM_CLASSES = 1000
INPUT_CHW = (3, 224, 224)
_STAGE_PLANES = (64, 128, 256, 512)


@dataclass(frozen=True)
class ResNetConfig:
    """Which block and how many per stage; ``expansion`` is the block's output/planes ratio."""

    bottleneck: bool
    blocks: tuple[int, int, int, int]

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1


RESNET18 = ResNetConfig(bottleneck=False, blocks=(2, 2, 2, 2))
RESNET50 = ResNetConfig(bottleneck=True, blocks=(3, 4, 6, 3))


def _blocks(cfg: ResNetConfig) -> list[tuple[str, int, int, int]]:
    """``(name, in_channels, planes, stride)`` for every block, in order; shared by specs and forward."""
    out, inplanes = [], 64
    for stage, (planes, count) in enumerate(zip(_STAGE_PLANES, cfg.blocks), start=1):
        for i in range(count):
            stride = 2 if stage > 1 and i == 0 else 1
            out.append((f"layer{stage}.{i}", inplanes, planes, stride))
            inplanes = planes * cfg.expansion
    return out


def _has_downsample(cfg: ResNetConfig, inplanes: int, planes: int, stride: int) -> bool:
    return stride != 1 or inplanes != planes * cfg.expansion


def param_specs(cfg: ResNetConfig, num_classes: int = NUM_CLASSES) -> dict[str, ParamSpec]:
    """Parameter shapes and torchvision initialisers, in ``state_dict`` order."""
    b = SpecBuilder()
    b.conv("conv1", 64, 3, 7)
    b.batch_norm("bn1", 64)
    for name, inplanes, planes, stride in _blocks(cfg):
        if cfg.bottleneck:
            b.conv(f"{name}.conv1", planes, inplanes, 1)
            b.batch_norm(f"{name}.bn1", planes)
            b.conv(f"{name}.conv2", planes, planes, 3)
            b.batch_norm(f"{name}.bn2", planes)
            b.conv(f"{name}.conv3", planes * 4, planes, 1)
            b.batch_norm(f"{name}.bn3", planes * 4)
        else:
            b.conv(f"{name}.conv1", planes, inplanes, 3)
            b.batch_norm(f"{name}.bn1", planes)
            b.conv(f"{name}.conv2", planes, planes, 3)
            b.batch_norm(f"{name}.bn2", planes)
        if _has_downsample(cfg, inplanes, planes, stride):
            b.conv(f"{name}.downsample.0", planes * cfg.expansion, inplanes, 1)
            b.batch_norm(f"{name}.downsample.1", planes * cfg.expansion)
    b.dense("fc", num_classes, 512 * cfg.expansion)
    return b.specs


def _basic_block(p: Params, x: jax.Array, name: str, stride: int) -> jax.Array:
    y = jax.nn.relu(conv_bn(x, p, f"{name}.conv1", f"{name}.bn1", stride=stride, padding=1))
    return conv_bn(y, p, f"{name}.conv2", f"{name}.bn2", padding=1)


def _bottleneck(p: Params, x: jax.Array, name: str, stride: int) -> jax.Array:
    y = jax.nn.relu(conv_bn(x, p, f"{name}.conv1", f"{name}.bn1"))
    y = jax.nn.relu(conv_bn(y, p, f"{name}.conv2", f"{name}.bn2", stride=stride, padding=1))
    return conv_bn(y, p, f"{name}.conv3", f"{name}.bn3")


def forward(cfg: ResNetConfig, params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, classes] for NCHW ``x``; the stem is conv7x7/2, BN, ReLU, maxpool3x3/2."""
    y = jax.nn.relu(conv_bn(x, params, "conv1", "bn1", stride=2, padding=3))
    y = max_pool(y, 3, 2, padding=1)
    block = _bottleneck if cfg.bottleneck else _basic_block
    for name, inplanes, planes, stride in _blocks(cfg):
        with jax.named_scope(name):  # names the block's nodes in the IR (layer1.0.relu)
            shortcut = y
            if _has_downsample(cfg, inplanes, planes, stride):
                shortcut = conv_bn(y, params, f"{name}.downsample.0", f"{name}.downsample.1", stride=stride)
            y = jax.nn.relu(block(params, y, name, stride) + shortcut)
    return dense(global_avg_pool(y), params, "fc")


resnet18 = partial(forward, RESNET18)
resnet50 = partial(forward, RESNET50)
