"""CIFAR-10 test images (the first 932 of the official test set), preprocessed for the zoo.

Preprocessing is the one the trained CIFAR ResNets expect (``../shared/data/README.md``):
``x / 255``, minus the per-channel mean, divided by the per-channel std, NCHW float32.
Doing it here, once, keeps accuracy figures comparable between every caller.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dyno_compile.datasets.location import data_root
from dyno_compile.errors import InputError

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
TEST_FILE = Path("cifar10") / "test_932.npz"
NUM_CLASSES = 10


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> normalised float32 NCHW."""
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InputError(
            f"CIFAR-10 test file {path} does not exist; set DYNO_DATA to the folder holding cifar10/test_932.npz"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise InputError(f"CIFAR-10 test file {path} lacks array(s) {missing}; it holds {npz.files}")
            return npz["x"], npz["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read CIFAR-10 test file {path} as .npz: {exc}") from exc


def _check(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Fail on anything but uint8 [N, 32, 32, 3] images with N labels in 0..9."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise InputError(f"{path}: 'x' must be uint8 [N, 32, 32, 3] (NHWC RGB), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{path}: 'y' must be {x.shape[0]} integer labels, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise InputError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found {y.min()}..{y.max()}")


def load_test(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: float32 [N, 3, 32, 32] preprocessed images and int64 [N] labels.

    ``limit`` keeps the first ``limit`` images (canonical test-set order), for quick runs;
    it must lie in 1..N, so a typo never silently shrinks an accuracy measurement.
    """
    path = data_root() / TEST_FILE
    x, y = _read(path)
    _check(path, x, y)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= len(y):
            raise InputError(f"limit must be an integer in 1..{len(y)} (or None for all), got {limit!r}")
        x, y = x[:limit], y[:limit]
    return preprocess(x), y.astype(np.int64)
