"""EfficientNet-B0 and EfficientNet-Lite0 (Tan & Le), 224x224, from the architecture table.

These two exist so that published device latencies of them (ncnn's B0, TFLite's Lite0)
can be costed through the IR like every other model (:mod:`dyno_compile.search.device_model`);
no trained weights are shipped, the zoo draws seeded random ones, which is all a cost
needs. Parameter names follow ``efficientnet_pytorch`` as :mod:`.efficientnet_lite` does.

Both use the B0 block table (width 1.0, depth 1.0: :data:`STAGES`), stem 32, head 1280,
BN epsilon 1e-3 and TF "SAME" padding. They differ as the papers say:

* B0: Swish (SiLU) everywhere, and squeeze-excite in every block: global average pool,
  1x1 reduce conv (``max(1, in/4)`` channels, with bias) + Swish, 1x1 expand conv (bias) +
  sigmoid, multiplied into the depthwise output.
* Lite0: ReLU6, no squeeze-excite (the "lite" changes for mobile CPUs and quantisation).

Dropout and drop-connect are omitted: this is inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from dyno_compile.zoo.layers import (
    Params,
    ParamSpec,
    SpecBuilder,
    conv_bn,
    dense,
    global_avg_pool,
    same_padding,
    squeeze_excite,
)

NUM_CLASSES = 1000
INPUT_CHW = (3, 224, 224)
BN_EPSILON = 1e-3
STEM, HEAD = 32, 1280
#: EfficientNet-B0's stages: expansion, kernel, first stride, output channels, repeats.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class Block:
    index: int
    inp: int
    out: int
    expand: int
    kernel: int
    stride: int

    @property
    def name(self) -> str:
        return f"_blocks.{self.index}"

    @property
    def hidden(self) -> int:
        return self.inp * self.expand

    @property
    def squeezed(self) -> int:
        """Squeeze-excite width: a quarter of the block's *input* channels (B0's se_ratio 0.25)."""
        return max(1, self.inp // 4)

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.inp == self.out


def blocks() -> list[Block]:
    out: list[Block] = []
    inp = STEM
    for expand, kernel, stride, channels, repeats in STAGES:
        for r in range(repeats):
            out.append(Block(len(out), inp, channels, expand, kernel, stride if r == 0 else 1))
            inp = channels
    return out


def param_specs(*, se: bool) -> dict[str, ParamSpec]:
    """Parameter specs (random init) of B0 (``se=True``) or Lite0 (``se=False``)."""
    b = SpecBuilder()
    b.conv("_conv_stem", STEM, 3, 3)
    b.batch_norm("_bn0", STEM)
    for blk in blocks():
        if blk.expand != 1:
            b.conv(f"{blk.name}._expand_conv", blk.hidden, blk.inp, 1)
            b.batch_norm(f"{blk.name}._bn0", blk.hidden)
        b.conv(f"{blk.name}._depthwise_conv", blk.hidden, blk.hidden, blk.kernel, groups=blk.hidden)
        b.batch_norm(f"{blk.name}._bn1", blk.hidden)
        if se:
            b.conv(f"{blk.name}._se_reduce", blk.squeezed, blk.hidden, 1, bias=True)
            b.conv(f"{blk.name}._se_expand", blk.hidden, blk.squeezed, 1, bias=True)
        b.conv(f"{blk.name}._project_conv", blk.out, blk.hidden, 1)
        b.batch_norm(f"{blk.name}._bn2", blk.out)
    b.conv("_conv_head", HEAD, blocks()[-1].out, 1)
    b.batch_norm("_bn1", HEAD)
    b.dense("_fc", NUM_CLASSES, HEAD, std=0.01)
    return b.specs


def _conv_bn_act(x: jax.Array, p: Params, conv: str, bn: str, se: bool, *, stride: int = 1, groups: int = 1):
    k = p[f"{conv}.weight"].shape[2]
    pads = (same_padding(x.shape[2], k, stride), same_padding(x.shape[3], k, stride))
    y = conv_bn(x, p, conv, bn, stride=stride, padding=pads, groups=groups, eps=BN_EPSILON)
    return jax.nn.silu(y) if se else jax.nn.relu6(y)


def _squeeze_excite(p: Params, y: jax.Array, blk: Block) -> jax.Array:
    return squeeze_excite(y, p, f"{blk.name}._se_reduce", f"{blk.name}._se_expand", jax.nn.silu, jax.nn.sigmoid)


def _mbconv(p: Params, x: jax.Array, blk: Block, se: bool) -> jax.Array:
    y = x
    if blk.expand != 1:
        y = _conv_bn_act(y, p, f"{blk.name}._expand_conv", f"{blk.name}._bn0", se)
    y = _conv_bn_act(y, p, f"{blk.name}._depthwise_conv", f"{blk.name}._bn1", se, stride=blk.stride, groups=blk.hidden)
    if se:
        y = _squeeze_excite(p, y, blk)
    y = conv_bn(y, p, f"{blk.name}._project_conv", f"{blk.name}._bn2", eps=BN_EPSILON)
    return x + y if blk.residual else y


def _forward(params: Params, x: jax.Array, se: bool) -> jax.Array:
    y = _conv_bn_act(x, params, "_conv_stem", "_bn0", se, stride=2)
    for blk in blocks():
        with jax.named_scope(blk.name):
            y = _mbconv(params, y, blk, se)
    y = _conv_bn_act(y, params, "_conv_head", "_bn1", se)
    return dense(global_avg_pool(y), params, "_fc")


def efficientnet_b0(params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, 1000] of EfficientNet-B0 (Swish, squeeze-excite)."""
    return _forward(params, x, True)


def efficientnet_lite0(params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, 1000] of EfficientNet-Lite0 (ReLU6, no squeeze-excite)."""
    return _forward(params, x, False)
