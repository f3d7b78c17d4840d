"""Data layouts of 4-D activations and conv kernels, named as TVM and XLA name them."""

from __future__ import annotations

from dyno_compile.errors import GraphError

DATA_LAYOUTS = ("NCHW", "NHWC")
KERNEL_LAYOUTS = ("OIHW", "HWIO")
#: The channel axis of a tensor whose layout nothing states: NCHW's, and a 2-D tensor's features.
DEFAULT_CHANNEL_AXIS = 1


def check_layout(layout: str, allowed: tuple[str, ...]) -> str:
    if layout not in allowed:
        raise GraphError(f"layout {layout!r} is not supported; use one of {allowed}")
    return layout


def channel_axis(data_layout: str) -> int:
    return check_layout(data_layout, DATA_LAYOUTS).index("C")


def spatial_axes(data_layout: str) -> tuple[int, int]:
    layout = check_layout(data_layout, DATA_LAYOUTS)
    return layout.index("H"), layout.index("W")


def window_4d(data_layout: str, hw: tuple[int, int], fill: int) -> tuple[int, ...]:
    """A 4-tuple with ``hw`` at the spatial axes of ``data_layout`` and ``fill`` elsewhere."""
    out = [fill] * 4
    h, w = spatial_axes(data_layout)
    out[h], out[w] = hw
    return tuple(out)
