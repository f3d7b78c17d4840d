"""Layer helpers and deterministic parameter initialisation shared by every zoo model.

The forward helpers emit only the JAX primitives the JAX frontend translates
(``conv_general_dilated`` in NCHW/OIHW with explicit integer padding, elementwise arithmetic,
``rsqrt``, ``reduce_window_max``, ``reduce_sum`` via ``jnp.mean``, ``dot_general``), so a
model written with them imports without surprises. Keeping them in one place means a
change of convention (say, the batch-norm formula the ``fold_bn`` pass pattern-matches)
happens once, for all models.

Parameters are described first (:class:`ParamSpec`: shape and initialiser) and only then
materialised, so a weights file can be validated against the shapes without building a
random model, and so one seed gives the same arrays whatever code asks for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Tensor = np.ndarray | jax.Array
"""A weight or activation: NumPy when materialised here, a ``jax.Array`` (or tracer) under ``jit``."""

Params = Mapping[str, Tensor]

BN_EPSILON = 1e-5
"""PyTorch's ``BatchNorm2d`` default, which every trained weight file here was made with."""

_DIMENSION_NUMBERS = ("NCHW", "OIHW", "NCHW")

Padding = int | tuple[tuple[int, int], tuple[int, int]]
"""Symmetric amount (PyTorch) or explicit ``((top, bottom), (left, right))`` pairs (TF "SAME" is often uneven)."""


# --------------------------------------------------------------------------- forward helpers


def conv2d(
    x: jax.Array, w: Tensor, b: Tensor | None = None, *, stride: int = 1, padding: Padding = 0, groups: int = 1
) -> jax.Array:
    """PyTorch ``Conv2d`` semantics: OIHW weight, optional bias, ``padding`` symmetric or as explicit pairs.

    Padding reaches JAX as explicit pairs (never "SAME") so the frontend sees the exact
    amounts (see :func:`same_padding` for TF models); ``groups`` equal to the channel count
    gives a depthwise conv.
    """
    pads = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    # lax converts a NumPy weight itself; its stub types the kernel as jax.Array only
    y = lax.conv_general_dilated(
        x,
        w,  # type: ignore[arg-type]
        window_strides=(stride, stride),
        padding=pads,
        dimension_numbers=_DIMENSION_NUMBERS,
        feature_group_count=groups,
    )
    return y if b is None else y + per_channel(b)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one spatial axis: ``(before, after)``, the smaller half before.

    The total is what makes the output ``ceil(size / stride)`` long; with stride 2 it is
    often odd, so models trained in TF pad one more row/column at the bottom/right than a
    symmetric PyTorch padding would, and a symmetric one shifts every later feature map.
    """
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def per_channel(v: Tensor) -> Tensor:
    """Reshape a [C] vector to [1, C, 1, 1] so it broadcasts over NCHW activations."""
    return v.reshape(1, -1, 1, 1)


def batch_norm(x: jax.Array, params: Params, prefix: str, eps: float = BN_EPSILON) -> jax.Array:
    """Inference-mode ``BatchNorm2d`` from ``{prefix}.weight/bias/running_mean/running_var``.

    Written as ``(x - mean) * (gamma * rsqrt(var + eps)) + beta``: the scale is a
    weights-only subexpression, which is the form the BN-folding pass recognises.
    """
    scale = params[f"{prefix}.weight"] * lax.rsqrt(params[f"{prefix}.running_var"] + eps)
    return (x - per_channel(params[f"{prefix}.running_mean"])) * per_channel(scale) + per_channel(
        params[f"{prefix}.bias"]
    )


def dense(x: jax.Array, params: Params, prefix: str) -> jax.Array:
    """PyTorch ``Linear``: ``x @ weight.T + bias`` with ``weight`` laid out [out, in]."""
    return x @ params[f"{prefix}.weight"].T + params[f"{prefix}.bias"]


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0) -> jax.Array:
    """PyTorch ``MaxPool2d``: padding counts as -inf, so it never wins the max."""
    pads = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, kernel, kernel), (1, 1, stride, stride), pads)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over H and W: [N, C, H, W] -> [N, C] (``AdaptiveAvgPool2d(1)`` then ``flatten``)."""
    return jnp.mean(x, axis=(2, 3))


def squeeze_excite(
    x: jax.Array,
    params: Params,
    reduce: str,
    expand: str,
    act: Callable[[jax.Array], jax.Array],
    gate: Callable[[jax.Array], jax.Array],
) -> jax.Array:
    """``x * gate(expand(act(reduce(pool(x)))))``, ``reduce``/``expand`` 1x1 convs with bias:
    the squeeze-excite block of MobileNetV3 (relu, hard sigmoid) and EfficientNet (silu,
    sigmoid), which only their weight names and activations tell apart."""
    s = global_avg_pool(x)[:, :, None, None]
    s = act(conv2d(s, params[f"{reduce}.weight"], params[f"{reduce}.bias"]))
    return x * gate(conv2d(s, params[f"{expand}.weight"], params[f"{expand}.bias"]))


def conv_bn(
    x: jax.Array,
    params: Params,
    conv: str,
    bn: str,
    *,
    stride: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    eps: float = BN_EPSILON,
) -> jax.Array:
    """Bias-free conv followed by batch norm: the unit every BN network here is built from."""
    y = conv2d(x, params[f"{conv}.weight"], stride=stride, padding=padding, groups=groups)
    return batch_norm(y, params, bn, eps)


# --------------------------------------------------------------------------- parameter specs


@dataclass(frozen=True)
class ParamSpec:
    """Shape of one parameter and how to initialise it.

    ``init`` names an entry of :data:`INITIALISERS`; ``scale`` is its one number
    (standard deviation, uniform bound or constant), unused by the BN initialisers.
    """

    shape: tuple[int, ...]
    init: str
    scale: float = 0.0


class SpecBuilder:
    """Collects :class:`ParamSpec` entries under PyTorch ``state_dict`` names, in module order.

    Insertion order is the order arrays are drawn from the generator, so it is part of
    what makes a seed reproducible: add parameters in the order the model declares them.
    """

    def __init__(self) -> None:
        self.specs: dict[str, ParamSpec] = {}

    def add(self, name: str, spec: ParamSpec) -> None:
        if name in self.specs:
            raise ValueError(f"parameter {name!r} declared twice")
        self.specs[name] = spec

    def conv(self, prefix: str, out_ch: int, in_ch: int, kernel: int, *, groups: int = 1, bias: bool = False) -> None:
        """OIHW conv weight with He-normal init, ``mode="fan_out"`` as torchvision.

        PyTorch's fan-out is ``out_ch * kernel * kernel`` regardless of groups, so depthwise
        convs get the same (small) standard deviation as in torchvision.
        """
        fan_out = out_ch * kernel * kernel
        self.add(
            f"{prefix}.weight", ParamSpec((out_ch, in_ch // groups, kernel, kernel), "normal", math.sqrt(2.0 / fan_out))
        )
        if bias:
            self.add(f"{prefix}.bias", ParamSpec((out_ch,), "constant", 0.0))

    def batch_norm(self, prefix: str, channels: int) -> None:
        """``weight``, ``bias``, ``running_mean``, ``running_var`` of a ``BatchNorm2d``."""
        for field in ("weight", "bias", "running_mean", "running_var"):
            self.add(f"{prefix}.{field}", ParamSpec((channels,), f"bn_{field}"))

    def dense(self, prefix: str, out_features: int, in_features: int, *, std: float | None = None) -> None:
        """``Linear`` weight [out, in] and bias.

        ``std=None`` is PyTorch's default ``Linear`` init (uniform in +-1/sqrt(in) for both,
        used by torchvision ResNet); a number gives normal(0, std) weights and zero bias
        (torchvision VGG and MobileNetV2 use 0.01).
        """
        if std is None:
            bound = 1.0 / math.sqrt(in_features)
            self.add(f"{prefix}.weight", ParamSpec((out_features, in_features), "uniform", bound))
            self.add(f"{prefix}.bias", ParamSpec((out_features,), "uniform", bound))
        else:
            self.add(f"{prefix}.weight", ParamSpec((out_features, in_features), "normal", std))
            self.add(f"{prefix}.bias", ParamSpec((out_features,), "constant", 0.0))


# --------------------------------------------------------------------------- initialisation

Initialiser = Callable[[np.random.Generator, ParamSpec, bool], np.ndarray]


def _normal(rng: np.random.Generator, spec: ParamSpec, random_bn: bool) -> np.ndarray:
    arr = rng.standard_normal(spec.shape, dtype=np.float32)
    arr *= np.float32(spec.scale)  # in place: VGG16's first dense weight alone is 400 MB
    return arr


def _uniform(rng: np.random.Generator, spec: ParamSpec, random_bn: bool) -> np.ndarray:
    return rng.uniform(-spec.scale, spec.scale, spec.shape).astype(np.float32)


def _constant(rng: np.random.Generator, spec: ParamSpec, random_bn: bool) -> np.ndarray:
    return np.full(spec.shape, spec.scale, np.float32)


def _bn(fresh: float, low: float, high: float) -> Initialiser:
    """BN field: ``fresh`` as a new torchvision layer, else uniform in [low, high).

    Random statistics make folding BN into the conv change the numbers, so a wrong fold
    shows in tests; the ranges keep each layer's output scale near 1, so deep nets stay finite.
    """

    def init(rng: np.random.Generator, spec: ParamSpec, random_bn: bool) -> np.ndarray:
        if not random_bn:
            return np.full(spec.shape, fresh, np.float32)
        return rng.uniform(low, high, spec.shape).astype(np.float32)

    return init


INITIALISERS: dict[str, Initialiser] = {
    "normal": _normal,
    "uniform": _uniform,
    "constant": _constant,
    "bn_weight": _bn(1.0, 0.5, 1.5),
    "bn_bias": _bn(0.0, -0.2, 0.2),
    "bn_running_mean": _bn(0.0, -0.2, 0.2),
    "bn_running_var": _bn(1.0, 0.5, 1.5),
}


def init_params(specs: Mapping[str, ParamSpec], seed: int = 0, *, random_bn: bool = False) -> dict[str, np.ndarray]:
    """Materialise ``specs`` as float32 arrays drawn from ``numpy.random.default_rng(seed)``.

    One generator, consumed in spec order, so the same specs and seed give bit-identical
    arrays on every machine.
    """
    rng = np.random.default_rng(seed)
    return {name: INITIALISERS[spec.init](rng, spec, random_bn) for name, spec in specs.items()}
