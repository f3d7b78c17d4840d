"""Load a model's weights from ``.npz`` and check them against its parameter specs.

A weights file with a wrong or missing key would otherwise fail deep inside tracing
(``KeyError`` from a layer helper) or, worse, with a shape error far from its cause; here
every mismatch is reported up front, naming the key, as an :class:`InputError`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.zoo.layers import ParamSpec

_IGNORED_SUFFIXES = (".num_batches_tracked",)
"""PyTorch bookkeeping that some ``state_dict`` dumps keep; it plays no part at inference."""


def _require_file(path: Path, model: str) -> None:
    if not path.is_file():
        raise InputError(f"{model}: weights file {path} does not exist")


def _read_npz(path: Path, model: str) -> dict[str, np.ndarray]:
    _require_file(path, model)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{model}: cannot read weights file {path} as .npz: {exc}") from exc


def read_shapes(path: Path, model: str) -> dict[str, tuple[int, ...]]:
    """Each array's shape in the ``.npz`` at ``path``, from the ``.npy`` headers alone.

    For models whose architecture is read off their weights file: its shapes are known
    without decoding (or holding) the arrays; ``num_batches_tracked`` entries are left out.
    """
    _require_file(path, model)
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                key = member.removesuffix(".npy")
                if key.endswith(_IGNORED_SUFFIXES):
                    continue
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, _ = np.lib.format.read_array_header_2_0(f)
                shapes[key] = tuple(shape)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{model}: cannot read weights file {path} as .npz: {exc}") from exc
    return shapes


def check_weights(
    arrays: Mapping[str, np.ndarray], specs: Mapping[str, ParamSpec], model: str, source: str
) -> dict[str, np.ndarray]:
    """Arrays as float32 in spec order, or an :class:`InputError` naming every bad key.

    ``num_batches_tracked`` entries are dropped; missing, unexpected, non-float and
    wrongly-shaped entries are all errors, so a file for another model never half-loads.
    """
    given = {k: v for k, v in arrays.items() if not k.endswith(_IGNORED_SUFFIXES)}
    problems = [f"missing key {k!r}" for k in specs if k not in given]
    problems += [f"unexpected key {k!r}" for k in given if k not in specs]
    for key, spec in specs.items():
        arr = given.get(key)
        if arr is None:
            continue
        if arr.shape != spec.shape:
            problems.append(f"key {key!r} has shape {arr.shape}, expected {spec.shape}")
        elif not np.issubdtype(arr.dtype, np.floating):
            problems.append(f"key {key!r} has dtype {arr.dtype}, expected a float type")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise InputError(f"{model}: weights from {source} do not fit the model: {shown}")
    return {key: np.asarray(given[key], dtype=np.float32) for key in specs}


def load_weights(path: str | Path, specs: Mapping[str, ParamSpec], model: str) -> dict[str, np.ndarray]:
    """Read ``path`` (an ``.npz`` of PyTorch ``state_dict`` names) and validate it for ``model``."""
    path = Path(path)
    return check_weights(_read_npz(path, model), specs, model, str(path))
