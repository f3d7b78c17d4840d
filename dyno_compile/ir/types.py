"""Tensor types of the IR: a static shape and a NumPy dtype name.

Kept as plain tuples and strings so that graphs serialise to JSON without custom codecs.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
from numpy.typing import DTypeLike

from dyno_compile.errors import GraphError

Shape = tuple[int, ...]

SUPPORTED_DTYPES = frozenset(
    {
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "bool",
    }
)


def canonical_dtype(dtype: DTypeLike) -> str:
    """Return the NumPy name of ``dtype`` ("float32"), refusing dtypes the IR cannot hold."""
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise GraphError(f"not a dtype: {dtype!r}") from exc
    if name not in SUPPORTED_DTYPES:
        raise GraphError(f"dtype {name!r} is not supported; use one of {sorted(SUPPORTED_DTYPES)}")
    return name


@dataclass(frozen=True)
class TensorType:
    """Shape and dtype of one tensor; every node's output has exactly one."""

    shape: Shape
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if any(d < 0 for d in self.shape):
            raise GraphError(f"negative dimension in shape {self.shape}")

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"
