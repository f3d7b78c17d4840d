"""Where the shared data directory is."""

from __future__ import annotations

import os
from pathlib import Path

from dyno_compile.errors import InputError

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """``$DYNO_DATA`` if set, else ``../shared/data`` relative to the project root."""
    root = Path(os.environ.get("DYNO_DATA", _PROJECT_ROOT.parent / "shared" / "data"))
    if not root.is_dir():
        raise InputError(
            f"data directory {root} does not exist; set DYNO_DATA to the folder holding cifar10/ and imagenet/"
        )
    return root
