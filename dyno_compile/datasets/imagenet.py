"""The 200 real ImageNet sample images and SqueezeNet's and EfficientNet-Lite's preprocessing of them.

The images live in ``data_root()/imagenet/samples/`` with ``labels.tsv`` beside them (see
the data README). Preprocessing follows the README word for word, because the accuracy
figure it quotes (ONNX Runtime, 65.0 %) was measured with it: short side to 256 with
Pillow's bilinear filter, centre crop 224, BGR, 0-255 minus the per-channel mean
(104, 117, 123), NCHW float32.

The README does not say how the resized long side and the crop offset are rounded, and
top-1 on these 200 images moves with it: measured with ONNX Runtime, 130/200 for a
rounded long side with a floored crop offset, 131 rounded/rounded, 134 truncated/rounded
(torchvision's choice), 135 truncated/floored. The first is the one that reproduces the
README's 130/200, so it is the one used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dyno_compile.datasets.location import data_root
from dyno_compile.errors import InputError

__all__ = [
    "EFFICIENTNET_LITE_CROP",
    "SQUEEZENET_MEAN_BGR",
    "load_image",
    "load_samples",
    "preprocess_efficientnet_lite",
    "preprocess_squeezenet",
    "samples_dir",
    "squeezenet_batch",
]

#: Per-channel mean subtracted from 0-255 BGR pixels (Caffe convention of the model zoo).
SQUEEZENET_MEAN_BGR = (104.0, 117.0, 123.0)
RESIZE_SHORT = 256
CROP = 224
#: EfficientNet-Lite2 (data README): RGB, short side 292, centre crop 260, ``(x - 127) / 128``.
EFFICIENTNET_LITE_RESIZE_SHORT = 292
EFFICIENTNET_LITE_CROP = 260
EFFICIENTNET_LITE_MEAN = 127.0
EFFICIENTNET_LITE_STD = 128.0


def samples_dir() -> Path:
    """``data_root()/imagenet/samples``, refusing a missing folder with what to do."""
    folder = data_root() / "imagenet" / "samples"
    if not folder.is_dir():
        raise InputError(
            f"ImageNet sample folder {folder} does not exist; set DYNO_DATA to the folder holding imagenet/samples/"
        )
    return folder


def load_samples(limit: int | None = None) -> tuple[list[str], np.ndarray]:
    """File names (in ``labels.tsv`` order) and their class indices 0-999 as int64.

    ``limit`` keeps only the first ``limit`` samples, for quick runs.
    """
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0 or None, got {limit}")
    folder = samples_dir()
    names, labels = read_labels(folder / "labels.tsv")
    names, labels = names[:limit], labels[:limit]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise InputError(f"{folder}: labels.tsv lists {len(missing)} image(s) that are missing, e.g. {missing[0]!r}")
    return names, np.asarray(labels, dtype=np.int64)


def read_labels(path: Path) -> tuple[list[str], list[int]]:
    """Parse ``file<TAB>class_index<TAB>wnid`` lines, skipping ``#`` comments."""
    if not path.is_file():
        raise InputError(f"label file {path} does not exist")
    names, labels = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        try:
            label = int(fields[1])
        except (IndexError, ValueError):
            raise InputError(f"{path}:{lineno}: expected 'file<TAB>class_index<TAB>wnid', got {line!r}") from None
        if not 0 <= label < 1000:
            raise InputError(f"{path}:{lineno}: class index {label} is outside 0-999")
        names.append(fields[0])
        labels.append(label)
    return names, labels


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB (grayscale and CMYK JPEGs exist in ImageNet); bad files raise InputError."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"image {path} cannot be decoded (corrupt or not an image): {exc}") from exc


def preprocess_squeezenet(image: Image.Image | str | Path) -> np.ndarray:
    """One image as SqueezeNet's input: float32 [1, 3, 224, 224], BGR, 0-255 minus mean."""
    img = image if isinstance(image, Image.Image) else load_image(image)
    img = centre_crop(resize_short_side(img.convert("RGB"), RESIZE_SHORT), CROP)
    bgr = np.asarray(img, dtype=np.float32)[:, :, ::-1]
    bgr = bgr - np.asarray(SQUEEZENET_MEAN_BGR, dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None])


def preprocess_efficientnet_lite(image: Image.Image | str | Path) -> np.ndarray:
    """One image as EfficientNet-Lite2's input: float32 [1, 3, 260, 260], RGB, ``(x - 127) / 128``.

    Resizing and cropping round as for SqueezeNet (:func:`resize_short_side`,
    :func:`centre_crop`): with them the JAX forward pass gets the README's 184/200.
    """
    img = image if isinstance(image, Image.Image) else load_image(image)
    img = centre_crop(resize_short_side(img.convert("RGB"), EFFICIENTNET_LITE_RESIZE_SHORT), EFFICIENTNET_LITE_CROP)
    rgb = (np.asarray(img, dtype=np.float32) - np.float32(EFFICIENTNET_LITE_MEAN)) / np.float32(EFFICIENTNET_LITE_STD)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])


def squeezenet_batch(names: Sequence[str | Path]) -> np.ndarray:
    """Several images preprocessed and stacked: float32 [N, 3, 224, 224].

    Relative names (as ``load_samples`` returns them) are read from ``samples_dir()``.
    """
    if not names:
        return np.zeros((0, 3, CROP, CROP), np.float32)
    folder = samples_dir()
    return np.concatenate([preprocess_squeezenet(folder / n) for n in names])


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is ``size``, keeping the aspect ratio; the long side rounds to nearest."""
    w, h = img.size
    if w <= h:
        new = (size, round(size * h / w))
    else:
        new = (round(size * w / h), size)
    return img.resize(new, Image.Resampling.BILINEAR)


def centre_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:
        raise InputError(f"image of size {w}x{h} is smaller than the {size}x{size} crop")
    left, top = (w - size) // 2, (h - size) // 2  # floor: see the module docstring
    return img.crop((left, top, left + size, top + size))
