"""ResNet-50 v1 (He et al.'s Caffe network): the Bottleneck strides on its first 1x1 conv.

It exists to cost the published ncnn latencies of "resnet50", whose benchmark network
(``Tencent/ncnn`` ``benchmark/resnet50.param``: ``res3a_branch2a ... 3=2``) is this v1, not
torchvision's v1.5 (:mod:`.resnet`, stride on the 3x3 conv): in v1 every 3x3 conv has
stride 1 and runs on the already halved map. The parameters are v1.5's, name for name
(only where the stride is applied differs): call it with ``get_model("resnet50")``'s
parameters. It is not a registered zoo model (nothing runs it but the cost features).
"""

from __future__ import annotations

import jax

from dyno_compile.zoo.layers import Params, conv_bn, dense, global_avg_pool, max_pool
from dyno_compile.zoo.resnet import RESNET50, _blocks, _has_downsample


def _bottleneck_v1(p: Params, x: jax.Array, name: str, stride: int) -> jax.Array:
    y = jax.nn.relu(conv_bn(x, p, f"{name}.conv1", f"{name}.bn1", stride=stride))
    y = jax.nn.relu(conv_bn(y, p, f"{name}.conv2", f"{name}.bn2", padding=1))
    return conv_bn(y, p, f"{name}.conv3", f"{name}.bn3")


def resnet50_v1(params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, 1000] for NCHW ``x``: stem conv7x7/2, BN, ReLU, maxpool3x3/2, v1 bottlenecks."""
    y = jax.nn.relu(conv_bn(x, params, "conv1", "bn1", stride=2, padding=3))
    y = max_pool(y, 3, 2, padding=1)
    for name, inplanes, planes, stride in _blocks(RESNET50):
        with jax.named_scope(name):
            shortcut = y
            if _has_downsample(RESNET50, inplanes, planes, stride):
                shortcut = conv_bn(y, params, f"{name}.downsample.0", f"{name}.downsample.1", stride=stride)
            y = jax.nn.relu(_bottleneck_v1(params, y, name, stride) + shortcut)
    return dense(global_avg_pool(y), params, "fc")
