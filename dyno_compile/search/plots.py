"""PNG plots of a search: the Pareto front, and bytes and accuracy per cut and bit width.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never pyplot,
so nothing needs a display and no global matplotlib state is touched. Each PNG is written
to a temporary file beside the target and renamed over it, so a reader never sees half a
file and a failed plot leaves the previous one in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from dyno_compile.configs import Evaluation
from dyno_compile.errors import InputError
from dyno_compile.packing.vocab import FLOAT_MODES, mode_width
from dyno_compile.search.pareto import Objectives


def _checked_target(evaluations: Sequence[Evaluation], path: str | Path) -> Path:
    if not evaluations:
        raise InputError("nothing to plot: no evaluations")
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write plot {path}: folder {path.parent} does not exist")
    return path


def save_png(figure: Figure, path: Path, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG to ``path`` atomically (temporary file, then rename): a
    reader never sees half a plot, and a failed write leaves the old one."""
    FigureCanvasAgg(figure)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _panel(
    ax: Axes,
    evaluations: Sequence[Evaluation],
    front: Sequence[Evaluation],
    x: Callable[[Evaluation], float],
    y: Callable[[Evaluation], float],
) -> None:
    """All evaluations faint, the front on top coloured by cut."""
    ax.scatter(
        [x(e) for e in evaluations],
        [y(e) for e in evaluations],
        color="0.75",
        s=8,
        alpha=0.5,
        linewidths=0,
        label="all evaluated",
    )
    points = ax.scatter(
        [x(e) for e in front],
        [y(e) for e in front],
        c=[e.config.cut for e in front],
        cmap="viridis",
        s=22,
        edgecolors="black",
        linewidths=0.4,
        label="Pareto front",
    )
    ax.figure.colorbar(points, ax=ax, label="cut")
    ax.grid(True, alpha=0.3)


def plot_pareto(evaluations: Sequence[Evaluation], objectives: Objectives, path: str | Path) -> Path:
    """Two views of the 4-objective front (feasible, non-dominated configurations):
    bytes vs accuracy loss (with the budget line) and device time vs cloud time. Bytes use
    a symlog axis so the device-only configuration (0 bytes) still shows."""
    path = _checked_target(evaluations, path)
    front = objectives.pareto(evaluations)
    figure = Figure(figsize=(12, 5), layout="constrained")
    left, right = figure.subplots(1, 2)
    _panel(left, evaluations, front, lambda e: e.bytes, objectives.loss)
    left.set_xscale("symlog", linthresh=64)
    left.set(xlabel="bytes on the wire", ylabel="accuracy loss (points)", title="bytes vs accuracy")
    if objectives.accuracy_budget is not None:
        left.axhline(objectives.accuracy_budget, color="red", linestyle="--", linewidth=1, label="accuracy budget")
    left.legend(loc="upper right", fontsize="small")
    _panel(right, evaluations, front, lambda e: e.device_s * 1e3, lambda e: e.cloud_s * 1e3)
    right.set(xlabel="device time (ms)", ylabel="cloud time (ms)", title="device vs cloud time")
    figure.suptitle(f"{len(front)} Pareto-optimal of {len(evaluations)} configurations")
    return save_png(figure, path)


def _grid(
    evaluations: Sequence[Evaluation],
    value: Callable[[Evaluation], float],
    best: Callable,
) -> tuple[list[int], list[str], np.ndarray]:
    """Cut × bits table of ``best`` (min or max) of ``value`` over the other axes
    (granularity, layout, codec); NaN where a pair was not evaluated."""
    cuts = sorted({e.config.cut for e in evaluations})
    bits = sorted({e.config.bits for e in evaluations}, key=lambda b: (-mode_width(b), b not in FLOAT_MODES))
    table = np.full((len(cuts), len(bits)), np.nan)
    for e in evaluations:
        i, j = cuts.index(e.config.cut), bits.index(e.config.bits)
        table[i, j] = value(e) if np.isnan(table[i, j]) else best(table[i, j], value(e))
    return cuts, bits, table


def _heatmap(
    ax: Axes,
    cuts: list[int],
    bits: list[str],
    table: np.ndarray,
    title: str,
    label: str,
    fmt: Callable[[float], str],
    cmap: str,
    norm: Normalize | None = None,
) -> None:
    image = ax.imshow(np.ma.masked_invalid(table), aspect="auto", origin="lower", cmap=cmap, norm=norm)
    ax.figure.colorbar(image, ax=ax, label=label)
    ax.set_xticks(range(len(bits)), bits, rotation=45)
    ax.set_yticks(range(len(cuts)), [str(c) for c in cuts])
    ax.set(xlabel="bits", ylabel="cut", title=title)
    if table.size <= 400:  # values as text while cells are big enough to read
        for (i, j), v in np.ndenumerate(table):
            if not np.isnan(v):
                red, green, blue, _ = image.cmap(image.norm(v))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                ax.text(j, i, fmt(v), ha="center", va="center", fontsize=6, color="white" if dark else "black")


def plot_per_cut(evaluations: Sequence[Evaluation], path: str | Path) -> Path:
    """Heatmaps over cut × bit width: the fewest bytes any granularity/layout/codec gets
    (log colour scale: sizes span 4 orders of magnitude) and the best accuracy any
    granularity gets, which is where accuracy collapses and what each width costs."""
    path = _checked_target(evaluations, path)
    figure = Figure(figsize=(13, 5.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    cuts, bits, size = _grid(evaluations, lambda e: e.bytes, min)
    positive = size[size > 0]
    norm = LogNorm(positive.min(), positive.max()) if positive.size else None
    _heatmap(
        left,
        cuts,
        bits,
        np.where(size > 0, size, np.nan),
        "fewest bytes (blank: nothing sent)",
        "bytes",
        lambda v: f"{v / 1024:.1f}k" if v >= 1024 else f"{v:.0f}",
        norm=norm,
        cmap="magma",
    )
    cuts, bits, accuracy = _grid(evaluations, lambda e: e.accuracy, max)
    _heatmap(
        right, cuts, bits, accuracy * 100, "best top-1 accuracy", "accuracy (%)", lambda v: f"{v:.1f}", cmap="viridis"
    )
    return save_png(figure, path)
