"""Calibration data: the real inputs on which the search measures accuracy and bytes.

DynO picks, per cut, the fewest bits that keep accuracy; that figure is only honest when
it is measured on real, correctly preprocessed inputs of the model. A
:class:`CalibrationSet` holds them as one float32 array ``x`` of shape ``[N, *input[1:]]``:
sample ``i`` is the batch-1 request ``x[i:i+1]``, so each sample can be quantised with its
own range exactly as one request is.

Sources: an ``.npz`` (``x`` and optional integer ``y``; ``x`` float32 already preprocessed,
or uint8 ``[N, H, W, 3]`` RGB images to preprocess), or a folder of images with an
optional ``labels.tsv`` (``file<TAB>class_index<TAB>...``, as in the ImageNet samples).
Preprocessing is named, never guessed: a wrong guess would not fail, it would only make
every accuracy figure quietly wrong.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dyno_compile.datasets import cifar10, data_root
from dyno_compile.datasets.imagenet import (
    CROP,
    EFFICIENTNET_LITE_CROP,
    RESIZE_SHORT,
    centre_crop,
    load_image,
    preprocess_efficientnet_lite,
    preprocess_squeezenet,
    read_labels,
    resize_short_side,
    samples_dir,
)
from dyno_compile.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "PRESETS", "CalibrationSet", "check_fits", "default_calibration", "load_calibration"]

#: Image files a calibration folder may hold (compared lower-case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: One RGB image and the model's (height, width) -> float32 [C, H, W].
Preprocess = Callable[[Image.Image, tuple[int, int]], np.ndarray]


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """``x``: float32 ``[N, ...]``, sample ``i`` being the batch-1 input ``x[i:i+1]``;
    ``labels``: int64 ``[N]`` class indices, or None where they mean nothing (random
    weights, unlabelled data); ``source``: where it came from and how it was preprocessed,
    for reports."""

    x: np.ndarray
    labels: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        x = self.x
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2:
            raise InputError(
                f"calibration {self.source}: x must be a float32 array [N, ...], got "
                f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
            )
        if len(x) == 0:
            raise InputError(f"calibration {self.source}: the set is empty (0 samples)")
        if not np.isfinite(x).all():
            raise InputError(f"calibration {self.source}: x holds NaN or Inf values")
        if self.labels is not None:
            object.__setattr__(self, "labels", _checked_labels(self.labels, len(x), self.source))

    def __len__(self) -> int:
        return len(self.x)

    def head(self, n: int) -> CalibrationSet:
        """The first ``n`` samples: a quicker measurement on the same data."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self):
            raise InputError(f"calibration {self.source}: subset size must be an integer in 1..{len(self)}, got {n!r}")
        labels = None if self.labels is None else self.labels[:n]
        return CalibrationSet(self.x[:n], labels, f"{self.source} (first {n})")


def _checked_labels(labels: object, n: int, source: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"calibration {source}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) != n:
        raise InputError(f"calibration {source}: {len(y)} labels for {n} samples; the counts must match")
    if y.size and y.min() < 0:
        raise InputError(f"calibration {source}: labels must be class indices >= 0, found {y.min()}")
    return y.astype(np.int64)


def check_fits(calibration: CalibrationSet, input_shape: Sequence[int]) -> None:
    """Refuse a set whose samples are not batch-1 inputs of this shape."""
    shape = _model_input(input_shape)
    if calibration.x.shape[1:] != shape[1:]:
        raise InputError(
            f"calibration {calibration.source}: samples of shape {calibration.x.shape[1:]} do not "
            f"fit the model input {shape} (expected [N, {', '.join(map(str, shape[1:]))}])"
        )


def _model_input(input_shape: Sequence[int]) -> tuple[int, ...]:
    """The model's input shape, which must have batch 1: each request is one sample."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise InputError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if len(shape) < 2 or shape[0] != 1 or min(shape) < 1:
        raise InputError(f"input_shape must be the batch-1 model input [1, ...] with positive sizes, got {shape}")
    return shape


# --- preprocessing presets --------------------------------------------------------------


def _image_size(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of an NCHW RGB model input; presets make 3-channel images only."""
    if len(input_shape) != 4 or input_shape[1] != 3:
        raise InputError(f"image presets make RGB NCHW inputs [1, 3, H, W]; the model takes {input_shape}")
    return input_shape[2], input_shape[3]


def _cifar10(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The CIFAR ResNets' preprocessing, with no resizing: CIFAR images are used as they are."""
    if img.size != (size[1], size[0]):
        raise InputError(
            f"preset 'cifar10' does not resize: image is {img.size[0]}x{img.size[1]}, the model "
            f"takes {size[1]}x{size[0]}"
        )
    return cifar10.preprocess(np.asarray(img)[None])[0]


def _squeezenet(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    if size != (CROP, CROP):
        raise InputError(f"preset 'squeezenet' makes {CROP}x{CROP} inputs; the model takes {size[1]}x{size[0]}")
    return preprocess_squeezenet(img)[0]


def _efficientnet_lite(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    if size != (EFFICIENTNET_LITE_CROP, EFFICIENTNET_LITE_CROP):
        raise InputError(
            f"preset 'efficientnet_lite' makes {EFFICIENTNET_LITE_CROP}x{EFFICIENTNET_LITE_CROP} inputs; "
            f"the model takes {size[1]}x{size[0]}"
        )
    return preprocess_efficientnet_lite(img)[0]


def _imagenet(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """torchvision's ImageNet recipe scaled to the input: short side to size * 256/224,
    centre crop, then the RGB mean/std normalisation (the same constants the CIFAR ResNets
    were trained with, so :func:`cifar10.preprocess` computes exactly that step)."""
    if size[0] != size[1]:
        raise InputError(f"preset 'imagenet' centre-crops a square; the model takes {size[1]}x{size[0]}")
    resized = resize_short_side(img, round(size[0] * RESIZE_SHORT / CROP))
    return cifar10.preprocess(np.asarray(centre_crop(resized, size[0]))[None])[0]


#: Preset name -> (function, description for reports).
PRESETS: dict[str, tuple[Preprocess, str]] = {
    "cifar10": (_cifar10, "x/255, RGB mean/std (CIFAR ResNets), no resize"),
    "squeezenet": (_squeezenet, "short side 256, centre crop 224, BGR 0-255 minus (104, 117, 123)"),
    "imagenet": (_imagenet, "torchvision: short side size*256/224, centre crop, RGB mean/std"),
    "efficientnet_lite": (_efficientnet_lite, "short side 292, centre crop 260, RGB (x - 127) / 128"),
}


def _preset(name: str | None) -> Preprocess:
    if name is None:
        raise InputError(f"these are raw images: name their preprocessing, one of {sorted(PRESETS)}")
    if name not in PRESETS:
        raise InputError(f"unknown preprocessing preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name][0]


def _preprocess_all(images: Sequence[Image.Image], preset: str | None, input_shape: tuple[int, ...]) -> np.ndarray:
    fn, size = _preset(preset), _image_size(input_shape)
    return np.stack([fn(img, size) for img in images]).astype(np.float32, copy=False)


# --- sources ----------------------------------------------------------------------------


def load_calibration(
    spec: str | Path,
    *,
    input_shape: Sequence[int],
    preprocess: str | None = None,
    limit: int | None = None,
    labels: bool = True,
) -> CalibrationSet:
    """A calibration set from an ``.npz`` or a folder of images, fitted to ``input_shape``.

    ``preprocess`` names a :data:`PRESETS` entry; it is needed for raw images (uint8 arrays,
    image files) and ignored for float32 arrays, which are taken as already preprocessed.
    ``limit`` keeps the first ``limit`` samples (read no more); ``labels=False`` drops the
    labels, for models whose weights make labels meaningless.
    """
    shape = _model_input(input_shape)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer or None, got {limit!r}")
    path = Path(spec)
    if path.is_dir():
        x, y, source = _from_folder(path, preprocess, shape, limit)
    elif path.is_file():
        x, y, source = _from_npz(path, preprocess, shape, limit)
    else:
        raise InputError(f"calibration source {path} does not exist (give an .npz file or a folder of images)")
    calibration = CalibrationSet(x, y if labels else None, source)
    check_fits(calibration, shape)
    return calibration


def _from_npz(
    path: Path, preset: str | None, shape: tuple[int, ...], limit: int | None
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``(x, y, source)``; labels are checked against all of ``x`` before ``limit`` cuts
    both, so a short label array cannot hide behind a small limit."""
    x, y = _read_npz(path)
    if x.ndim == 0 or len(x) == 0:
        raise InputError(f"calibration {path}: the set is empty (x has shape {x.shape})")
    if y is not None:
        y = _checked_labels(y, len(x), str(path))[:limit]
    x = x[:limit]
    if x.dtype == np.float32:
        return x, y, f"{path} (preprocessed float32)"
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise InputError(
            f"calibration {path}: x must be float32 (preprocessed) or uint8 [N, H, W, 3] RGB images, "
            f"got {x.dtype} {x.shape}"
        )
    return _preprocess_all([Image.fromarray(img) for img in x], preset, shape), y, f"{path} ({preset})"


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise InputError(f"calibration {path} lacks the array 'x'; it holds {npz.files}")
            return npz["x"], (npz["y"] if "y" in npz.files else None)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read calibration file {path} as .npz: {exc}") from exc


def _from_folder(
    folder: Path, preset: str | None, shape: tuple[int, ...], limit: int | None
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Images listed by ``labels.tsv`` (with their labels) or, without one, every image file."""
    _preset(preset)  # an unknown preset fails before any image is decoded
    tsv = folder / "labels.tsv"
    if tsv.is_file():
        names, classes = read_labels(tsv)
        y: np.ndarray | None = np.asarray(classes[:limit], dtype=np.int64)
    else:
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        y = None
    names = names[:limit]
    if not names:
        raise InputError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return _preprocess_all([load_image(folder / n) for n in names], preset, shape), y, f"{folder} ({preset})"


def default_calibration(model: str | Path, input_shape: Sequence[int]) -> CalibrationSet:
    """The real shared data that fits a model, with labels only where its weights are trained.

    ``resnet20``/``resnet56`` (real CIFAR-10 weights): the 932 CIFAR-10 test images, labelled.
    A SqueezeNet ``.onnx`` (or a model named after one): the 200 ImageNet samples, SqueezeNet
    preprocessing, labelled. ``efficientnet_lite2`` (real ImageNet weights): the same 200
    samples with its own preprocessing, labelled.
    Any other 3x224x224 model (the zoo's ImageNet models have random weights): the ImageNet
    samples, torchvision preprocessing, no labels (accuracy is then agreement with the
    float model). Any other 3x32x32 model: CIFAR-10, no labels (its training is unknown).
    """
    shape = _model_input(input_shape)
    name = Path(str(model)).name.lower()
    if name in ("resnet20", "resnet56"):
        return load_calibration(data_root() / cifar10.TEST_FILE, input_shape=shape, preprocess="cifar10")
    if "squeezenet" in name:  # the .onnx file, or its artifact (named after the file stem)
        return load_calibration(samples_dir(), input_shape=shape, preprocess="squeezenet")
    if name == "efficientnet_lite2":
        return load_calibration(samples_dir(), input_shape=shape, preprocess="efficientnet_lite")
    if shape[1:] == (3, CROP, CROP):
        return load_calibration(samples_dir(), input_shape=shape, preprocess="imagenet", labels=False)
    if shape[1:] == (3, 32, 32):
        return load_calibration(data_root() / cifar10.TEST_FILE, input_shape=shape, preprocess="cifar10", labels=False)
    raise InputError(
        f"no default calibration data for model {str(model)!r} with input {shape}; pass an .npz or an image folder"
    )
