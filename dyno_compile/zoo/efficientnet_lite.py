"""EfficientNet-Lite2 (Tan & Le; the mobile-CPU "lite" variant), real weights from ``../shared/data``.

The weights (``data_root()/imagenet/efficientnet_lite2.npz``, PyTorch ``state_dict`` names of
the ``efficientnet_pytorch`` layout) are the architecture's definition here: every block's
kernel size, expansion and channel counts are read off the array shapes
(:func:`blocks`), so there is no second table to drift from the file. What shapes cannot
say is taken from the data README: which blocks stride (:data:`STRIDE_2_BLOCKS`), TF "SAME"
padding, BN epsilon 1e-3 and ReLU6 everywhere (no squeeze-excite, no swish: that is "lite").

Stem 3x3/2 conv + BN + ReLU6; MBConv blocks ``_blocks.{i}``: optional 1x1 expand + BN +
ReLU6, kxk depthwise + BN + ReLU6, 1x1 project + BN, residual add where the block keeps
its shape; 1x1 head conv + BN + ReLU6, global average pool, ``_fc``. Dropout is omitted:
this is inference, where it is the identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jax

from dyno_compile.datasets import data_root
from dyno_compile.errors import InputError
from dyno_compile.zoo.layers import Params, ParamSpec, SpecBuilder, conv_bn, dense, global_avg_pool, same_padding
from dyno_compile.zoo.weights import read_shapes

NAME = "efficientnet_lite2"
NUM_CLASSES = 1000
INPUT_CHW = (3, 260, 260)
BN_EPSILON = 1e-3
"""TF's BatchNormalization default, which these weights were trained with (not PyTorch's 1e-5)."""
STRIDE_2_BLOCKS = frozenset({1, 4, 7, 15})
"""The first block of the stages that halve the resolution (data README); the stem strides too."""
_STEM_STRIDE = 2

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Block:
    """One MBConv block: where its parameters live and the shapes that define it."""

    index: int
    inp: int
    hidden: int
    out: int
    kernel: int
    stride: int

    @property
    def name(self) -> str:
        return f"_blocks.{self.index}"

    @property
    def expands(self) -> bool:
        """Block 0 (expansion ratio 1) has no expand conv: the depthwise runs on its input."""
        return self.hidden != self.inp

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.inp == self.out


def weights_path() -> Path:
    """Where the trained weights are expected (they are not in the repository)."""
    return data_root() / "imagenet" / f"{NAME}.npz"


def blocks(shapes: Shapes) -> list[Block]:
    """Every MBConv block, read from the parameter shapes (a weights file's or a params dict's).

    Blocks are numbered from 0 with no gaps; each one's input must be the previous output
    (the stem's for block 0), so a file of another layout fails here, by name.
    """
    out: list[Block] = []
    inp = _shape(shapes, "_conv_stem.weight")[0]
    while f"_blocks.{len(out)}._depthwise_conv.weight" in shapes:
        i = len(out)
        hidden, _, kernel, _ = _shape(shapes, f"_blocks.{i}._depthwise_conv.weight")
        expand = shapes.get(f"_blocks.{i}._expand_conv.weight")
        takes = expand[1] if expand is not None else hidden
        if takes != inp:
            raise InputError(f"{NAME}: block {i} takes {takes} channels, the one before it gives {inp}")
        proj = _shape(shapes, f"_blocks.{i}._project_conv.weight")[0]
        out.append(Block(i, inp, hidden, proj, kernel, 2 if i in STRIDE_2_BLOCKS else 1))
        inp = proj
    if not out:
        raise InputError(f"{NAME}: the weights hold no '_blocks.0._depthwise_conv.weight'")
    return out


def _shape(shapes: Shapes, key: str) -> tuple[int, ...]:
    try:
        return tuple(shapes[key])
    except KeyError:
        raise InputError(f"{NAME}: the weights lack {key!r}") from None


def specs_from_shapes(shapes: Shapes) -> dict[str, ParamSpec]:
    """Parameter specs (He init for random use) of the network those shapes describe, in file order."""
    stem = _shape(shapes, "_conv_stem.weight")
    head = _shape(shapes, "_conv_head.weight")
    fc = _shape(shapes, "_fc.weight")
    b = SpecBuilder()
    b.conv("_conv_stem", stem[0], stem[1], stem[2])
    b.batch_norm("_bn0", stem[0])
    for blk in blocks(shapes):
        if blk.expands:
            b.conv(f"{blk.name}._expand_conv", blk.hidden, blk.inp, 1)
            b.batch_norm(f"{blk.name}._bn0", blk.hidden)
        b.conv(f"{blk.name}._depthwise_conv", blk.hidden, blk.hidden, blk.kernel, groups=blk.hidden)
        b.batch_norm(f"{blk.name}._bn1", blk.hidden)
        b.conv(f"{blk.name}._project_conv", blk.out, blk.hidden, 1)
        b.batch_norm(f"{blk.name}._bn2", blk.out)
    b.conv("_conv_head", head[0], head[1], 1)
    b.batch_norm("_bn1", head[0])
    b.dense("_fc", fc[0], fc[1], std=0.01)
    return b.specs


def param_specs() -> dict[str, ParamSpec]:
    """Specs read from the weights file's headers (its arrays are not loaded); it must exist."""
    return specs_from_shapes(read_shapes(weights_path(), NAME))


def _conv_bn_relu6(x: jax.Array, p: Params, conv: str, bn: str, *, stride: int = 1, groups: int = 1) -> jax.Array:
    """Conv with TF "SAME" padding for ``x``'s size, BN (eps 1e-3), ReLU6: every activated unit here."""
    k = p[f"{conv}.weight"].shape[2]
    pads = (same_padding(x.shape[2], k, stride), same_padding(x.shape[3], k, stride))
    return jax.nn.relu6(conv_bn(x, p, conv, bn, stride=stride, padding=pads, groups=groups, eps=BN_EPSILON))


def _mbconv(p: Params, x: jax.Array, blk: Block) -> jax.Array:
    y = x
    if blk.expands:
        y = _conv_bn_relu6(y, p, f"{blk.name}._expand_conv", f"{blk.name}._bn0")
    y = _conv_bn_relu6(y, p, f"{blk.name}._depthwise_conv", f"{blk.name}._bn1", stride=blk.stride, groups=blk.hidden)
    y = conv_bn(y, p, f"{blk.name}._project_conv", f"{blk.name}._bn2", eps=BN_EPSILON)
    return x + y if blk.residual else y


def efficientnet_lite(params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, classes] for NCHW ``x`` preprocessed as the ``efficientnet_lite`` preset."""
    y = _conv_bn_relu6(x, params, "_conv_stem", "_bn0", stride=_STEM_STRIDE)
    for blk in blocks({k: v.shape for k, v in params.items()}):
        with jax.named_scope(blk.name):  # names the block's nodes in the IR (_blocks.3.add)
            y = _mbconv(params, y, blk)
    y = _conv_bn_relu6(y, params, "_conv_head", "_bn1")
    return dense(global_avg_pool(y), params, "_fc")
