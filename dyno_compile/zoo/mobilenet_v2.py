"""torchvision MobileNetV2 (width 1.0): inverted residuals with ReLU6 and linear bottlenecks.

Parameter names follow ``torchvision.models.mobilenetv2``: ``features.{i}`` are the stem
(0), the 17 inverted-residual blocks (1-17) and the last 1x1 conv (18); inside a block,
``conv.{j}`` indexes its Sequential (expand 1x1, depthwise 3x3, project 1x1, BN).
Dropout (``classifier.0``) is omitted: this is inference, where it is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from dyno_compile.zoo.layers import Params, ParamSpec, SpecBuilder, conv_bn, dense, global_avg_pool

NUM_CLASSES = 1000
INPUT_CHW = (3, 224, 224)
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280
# torchvision's inverted_residual_setting: expand ratio t, output channels c, repeats n, first stride s.
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


@dataclass(frozen=True)
class _Block:
    """One inverted residual: where its parameters live and the shapes that define it."""

    name: str
    inp: int
    out: int
    stride: int
    expand: int

    @property
    def hidden(self) -> int:
        return self.inp * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.inp == self.out

    def layer(self, j: int) -> str:
        """Name of Sequential entry ``j`` counted as if there were no expand conv.

        torchvision drops the expand conv when ``t == 1``, which shifts every later index
        down by one; this is where that shift is handled, once.
        """
        return f"{self.name}.conv.{j + (1 if self.expand != 1 else 0)}"


def _blocks() -> list[_Block]:
    out, inp, index = [], _STEM_CHANNELS, 1
    for t, c, n, s in _SETTING:
        for i in range(n):
            out.append(_Block(f"features.{index}", inp, c, s if i == 0 else 1, t))
            inp, index = c, index + 1
    return out


_LAST = f"features.{len(_blocks()) + 1}"


def param_specs(num_classes: int = NUM_CLASSES) -> dict[str, ParamSpec]:
    """Parameter shapes and torchvision initialisers, in ``state_dict`` order."""
    b = SpecBuilder()
    b.conv("features.0.0", _STEM_CHANNELS, 3, 3)
    b.batch_norm("features.0.1", _STEM_CHANNELS)
    for blk in _blocks():
        if blk.expand != 1:
            b.conv(f"{blk.name}.conv.0.0", blk.hidden, blk.inp, 1)
            b.batch_norm(f"{blk.name}.conv.0.1", blk.hidden)
        b.conv(f"{blk.layer(0)}.0", blk.hidden, blk.hidden, 3, groups=blk.hidden)
        b.batch_norm(f"{blk.layer(0)}.1", blk.hidden)
        b.conv(blk.layer(1), blk.out, blk.hidden, 1)
        b.batch_norm(blk.layer(2), blk.out)
    b.conv(f"{_LAST}.0", _LAST_CHANNELS, _blocks()[-1].out, 1)
    b.batch_norm(f"{_LAST}.1", _LAST_CHANNELS)
    b.dense("classifier.1", num_classes, _LAST_CHANNELS, std=0.01)
    return b.specs


def _inverted_residual(p: Params, x: jax.Array, blk: _Block) -> jax.Array:
    y = x
    if blk.expand != 1:
        y = jax.nn.relu6(conv_bn(y, p, f"{blk.name}.conv.0.0", f"{blk.name}.conv.0.1"))
    y = jax.nn.relu6(
        conv_bn(y, p, f"{blk.layer(0)}.0", f"{blk.layer(0)}.1", stride=blk.stride, padding=1, groups=blk.hidden)
    )
    y = conv_bn(y, p, blk.layer(1), blk.layer(2))
    return x + y if blk.residual else y


def mobilenet_v2(params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, classes] for NCHW ``x``."""
    y = jax.nn.relu6(conv_bn(x, params, "features.0.0", "features.0.1", stride=2, padding=1))
    for blk in _blocks():
        with jax.named_scope(blk.name):  # names the block's nodes in the IR (features.2.add)
            y = _inverted_residual(params, y, blk)
    y = jax.nn.relu6(conv_bn(y, params, f"{_LAST}.0", f"{_LAST}.1"))
    return dense(global_avg_pool(y), params, "classifier.1")
