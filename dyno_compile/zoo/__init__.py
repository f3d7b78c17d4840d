"""Model zoo: plain JAX CNNs with PyTorch-named weights, ready for the JAX frontend.

Every model is ``fn(params, x) -> logits`` with ``params`` a flat ``dict[str, np.ndarray]``
keyed by PyTorch ``state_dict`` names and ``x`` NCHW float32, written only with the
primitives the frontend translates (see :mod:`dyno_compile.zoo.layers`). The torchvision
ImageNet models come with seeded random weights (no trained weights are shipped); the
CIFAR-10 ResNets load their real trained weights from ``data_root()/cifar10`` and
EfficientNet-Lite2 its from ``data_root()/imagenet``.

Usage::

    m = get_model("resnet20")                 # real weights, input [1, 3, 32, 32]
    logits = jax.jit(m.fn)(m.params, m.random_input())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.zoo import (
    cifar_resnet,
    densenet,
    efficientnet_b0,
    efficientnet_lite,
    mobilenet_v2,
    mobilenet_v3,
    resnet,
    vgg16,
)
from dyno_compile.zoo.layers import Params, ParamSpec, init_params
from dyno_compile.zoo.weights import load_weights

__all__ = ["RANDOM", "ZooModel", "get_model", "list_models", "param_specs"]

RANDOM = "random"
"""``weights=RANDOM`` asks for seeded random weights even where real ones exist.

To load a file literally named ``random``, pass it as a ``Path``.
"""

ModelFn = Callable[[Params, jax.Array], jax.Array]
"""``fn(params, x) -> logits``; written to be traced (``jax.jit``, the JAX frontend), so ``x`` is a JAX array."""


@dataclass(frozen=True)
class ZooModel:
    """A model ready to run or import: its function, weights and the input it expects.

    ``real_weights`` is True when the weights were loaded from a file (trained), False
    when drawn from ``seed``; ``weights_source`` says which file or seed, for reports.
    """

    name: str
    fn: ModelFn
    params: dict[str, np.ndarray]
    input_shape: tuple[int, int, int, int]
    num_classes: int
    description: str
    real_weights: bool
    weights_source: str

    def random_input(self, seed: int = 0) -> np.ndarray:
        """A standard-normal float32 input of ``input_shape``: roughly what preprocessing yields."""
        return np.random.default_rng(seed).standard_normal(self.input_shape, dtype=np.float32)


@dataclass(frozen=True)
class _Entry:
    fn: ModelFn
    specs: Callable[[], dict[str, ParamSpec]]
    input_chw: tuple[int, int, int]
    num_classes: int
    description: str
    default_weights: Callable[[], Path] | None = None


def _cifar_resnet(depth: int, million_params: str) -> _Entry:
    """A CIFAR-10 ResNet: one family whose members differ only in depth, so their function,
    parameters and real weights are all found by it."""
    return _Entry(
        partial(cifar_resnet.forward, depth),
        partial(cifar_resnet.param_specs, depth),
        cifar_resnet.INPUT_CHW,
        cifar_resnet.NUM_CLASSES,
        f"CIFAR-10 ResNet-{depth} (option-A shortcuts), 32x32, {million_params} M params",
        partial(cifar_resnet.weights_path, depth),
    )


_REGISTRY: dict[str, _Entry] = {
    "resnet18": _Entry(
        resnet.resnet18,
        partial(resnet.param_specs, resnet.RESNET18),
        resnet.INPUT_CHW,
        resnet.NUM_CLASSES,
        "torchvision ResNet-18 (BasicBlock), ImageNet 224x224, 11.7 M params",
    ),
    "resnet50": _Entry(
        resnet.resnet50,
        partial(resnet.param_specs, resnet.RESNET50),
        resnet.INPUT_CHW,
        resnet.NUM_CLASSES,
        "torchvision ResNet-50 v1.5 (Bottleneck), ImageNet 224x224, 25.6 M params",
    ),
    "mobilenet_v2": _Entry(
        mobilenet_v2.mobilenet_v2,
        mobilenet_v2.param_specs,
        mobilenet_v2.INPUT_CHW,
        mobilenet_v2.NUM_CLASSES,
        "torchvision MobileNetV2 (width 1.0, ReLU6), ImageNet 224x224, 3.5 M params",
    ),
    "mobilenet_v3_small": _Entry(
        mobilenet_v3.mobilenet_v3_small,
        mobilenet_v3.param_specs,
        mobilenet_v3.INPUT_CHW,
        mobilenet_v3.NUM_CLASSES,
        "torchvision MobileNetV3-Small (hard-swish, squeeze-excite), ImageNet 224x224, 2.5 M params",
    ),
    "densenet121": _Entry(
        densenet.densenet121,
        densenet.param_specs,
        densenet.INPUT_CHW,
        densenet.NUM_CLASSES,
        "torchvision DenseNet-121 (growth 32), ImageNet 224x224, 8.0 M params",
    ),
    "vgg16": _Entry(
        vgg16.vgg16,
        vgg16.param_specs,
        vgg16.INPUT_CHW,
        vgg16.NUM_CLASSES,
        "torchvision VGG16 (no BN), ImageNet 224x224, 138 M params",
    ),
    "resnet20": _cifar_resnet(20, "0.27"),
    "resnet56": _cifar_resnet(56, "0.86"),
    efficientnet_lite.NAME: _Entry(
        efficientnet_lite.efficientnet_lite,
        efficientnet_lite.param_specs,
        efficientnet_lite.INPUT_CHW,
        efficientnet_lite.NUM_CLASSES,
        "EfficientNet-Lite2 (ReLU6, no SE, TF SAME padding), ImageNet 260x260, 6.1 M params",
        efficientnet_lite.weights_path,
    ),
    # Random weights only: they are here so published device latencies can be costed (search.device_model).
    "efficientnet_b0": _Entry(
        efficientnet_b0.efficientnet_b0,
        partial(efficientnet_b0.param_specs, se=True),
        efficientnet_b0.INPUT_CHW,
        efficientnet_b0.NUM_CLASSES,
        "EfficientNet-B0 (Swish, squeeze-excite, TF SAME padding), ImageNet 224x224, 5.3 M params, random weights",
    ),
    "efficientnet_lite0": _Entry(
        efficientnet_b0.efficientnet_lite0,
        partial(efficientnet_b0.param_specs, se=False),
        efficientnet_b0.INPUT_CHW,
        efficientnet_b0.NUM_CLASSES,
        "EfficientNet-Lite0 (ReLU6, no SE, TF SAME padding), ImageNet 224x224, 4.7 M params, random weights",
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, in registry order."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}") from None


def param_specs(name: str) -> dict[str, ParamSpec]:
    """Shapes and initialisers of ``name``'s parameters, without materialising any array."""
    return _entry(name).specs()


def get_model(
    name: str, *, batch: int = 1, seed: int = 0, weights: str | Path | None = None, random_bn: bool = False
) -> ZooModel:
    """Build ``name`` with input batch ``batch``.

    ``weights``: ``None`` uses the model's real trained weights where the zoo has them
    (resnet20, resnet56, efficientnet_lite2) and seeded random ones otherwise; :data:`RANDOM` forces seeded
    random weights; any other string or path is an ``.npz`` of ``state_dict`` arrays,
    checked key by key. ``random_bn`` draws random BN statistics instead of torchvision's
    fresh (identity) ones, so BN folding is exercised with non-trivial values; it only
    affects random weights.
    """
    entry = _entry(name)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"{name}: batch must be a positive integer, got {batch!r}")
    specs = entry.specs()
    if weights is None and entry.default_weights is not None:
        weights = entry.default_weights()
    if weights is None or (isinstance(weights, str) and weights == RANDOM):
        params, real, source = (
            init_params(specs, seed, random_bn=random_bn),
            False,
            f"random(seed={seed}, random_bn={random_bn})",
        )
    else:
        params, real, source = load_weights(weights, specs, name), True, str(weights)
    return ZooModel(
        name=name,
        fn=entry.fn,
        params=params,
        input_shape=(batch, *entry.input_chw),
        num_classes=entry.num_classes,
        description=entry.description,
        real_weights=real,
        weights_source=source,
    )
