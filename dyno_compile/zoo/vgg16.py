"""torchvision VGG16 (configuration "D", no batch norm) for 224x224 inputs.

``features.{i}`` indices are torchvision's Sequential positions (conv, ReLU and max-pool
each take one), so a torchvision ``state_dict`` loads unchanged. torchvision's
``AdaptiveAvgPool2d((7, 7))`` is the identity here because a 224 input already reaches
7x7, so it is left out rather than emitting an op the frontend would have to translate;
the input shape is therefore fixed at 224. Dropout is omitted (inference).
"""

from __future__ import annotations

import jax

from dyno_compile.zoo.layers import Params, ParamSpec, SpecBuilder, conv2d, dense, max_pool

NUM_CLASSES = 1000
INPUT_CHW = (3, 224, 224)
_POOL = "M"
_CONFIG_D = (64, 64, _POOL, 128, 128, _POOL, 256, 256, 256, _POOL, 512, 512, 512, _POOL, 512, 512, 512, _POOL)
_FEATURES_OUT = 512 * 7 * 7
# (name, in, out) of the classifier's Linear layers: torchvision indices 0, 3, 6.
_CLASSIFIER = (("classifier.0", _FEATURES_OUT, 4096), ("classifier.3", 4096, 4096))


def _features() -> list[tuple[str, int, int] | None]:
    """Each feature layer as ``(name, in, out)`` for a conv, or ``None`` for a max-pool."""
    out: list[tuple[str, int, int] | None] = []
    index, channels = 0, 3
    for v in _CONFIG_D:
        if isinstance(v, str):  # _POOL, the only non-channel entry
            out.append(None)
            index += 1
        else:
            out.append((f"features.{index}", channels, v))
            index, channels = index + 2, v  # conv then ReLU
    return out


def param_specs(num_classes: int = NUM_CLASSES) -> dict[str, ParamSpec]:
    """Parameter shapes and torchvision initialisers, in ``state_dict`` order."""
    b = SpecBuilder()
    for layer in _features():
        if layer is not None:
            name, cin, cout = layer
            b.conv(name, cout, cin, 3, bias=True)
    for name, fin, fout in _CLASSIFIER:
        b.dense(name, fout, fin, std=0.01)
    b.dense("classifier.6", num_classes, 4096, std=0.01)
    return b.specs


def vgg16(params: Params, x: jax.Array) -> jax.Array:
    """Logits [N, classes] for NCHW ``x`` of 224x224."""
    y = x
    for layer in _features():
        if layer is None:
            y = max_pool(y, 2, 2)
        else:
            name = layer[0]
            y = jax.nn.relu(conv2d(y, params[f"{name}.weight"], params[f"{name}.bias"], padding=1))
    y = y.reshape(y.shape[0], _FEATURES_OUT)  # torch.flatten(x, 1) of NCHW: C, H, W order
    for name, _, _ in _CLASSIFIER:
        y = jax.nn.relu(dense(y, params, name))
    return dense(y, params, "classifier.6")
