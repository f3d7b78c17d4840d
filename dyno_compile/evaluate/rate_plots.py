"""The rate–accuracy figure of one model: bytes per image (log axis) against top-1.

Kept apart from :mod:`dyno_compile.evaluate.rate_accuracy`, which measures, so measuring
never needs matplotlib and a figure can be redrawn from the JSON. Built on
:class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, no display), written to a
temporary file and renamed, as :mod:`dyno_compile.search.plots` does.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from dyno_compile.errors import InputError
from dyno_compile.evaluate.rate_accuracy import ModelResult, Point, floor_for, pareto_front
from dyno_compile.search.plots import save_png

__all__ = ["plot_model"]

#: Image codecs drawn as lines over their qualities, with their colours.
_IMAGE_STYLE = {"jpeg": "tab:orange", "webp": "tab:green", "avif": "tab:purple", "jpegxl": "tab:brown"}
#: How far below the float model the axis reaches (points): the table's region and some context.
_SPAN_POINTS = 12.0


def plot_model(result: ModelResult, path: str | Path) -> Path:
    """Write ``result``'s curves to ``path`` (PNG): our configurations faint with their
    Pareto front on top, each image codec over its qualities, PNG, float32 and JALAD per
    cut, and dashed lines at the table's loss thresholds."""
    if not result.points:
        raise InputError(f"nothing to plot for {result.model}: no points")
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write plot {path}: folder {path.parent} does not exist")
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    ax = figure.subplots()
    by_method: dict[str, list[Point]] = {}
    for p in result.points:
        by_method.setdefault(p.method, []).append(p)
    ours = by_method.get("ours", [])
    if ours:
        ax.scatter(
            [p.bytes for p in ours],
            [100 * p.accuracy for p in ours],
            s=8,
            color="0.7",
            alpha=0.6,
            linewidths=0,
            label="ours: every configuration",
        )
        front = pareto_front(ours)
        ax.step(
            [p.bytes for p in front],
            [100 * p.accuracy for p in front],
            where="post",
            color="tab:blue",
            marker="o",
            markersize=4,
            linewidth=1.8,
            label="ours: Pareto front",
        )
    for codec, colour in _IMAGE_STYLE.items():
        points = sorted(by_method.get(codec, []), key=lambda p: p.where.get("quality", 0))
        if points:
            ax.plot(
                [p.bytes for p in points],
                [100 * p.accuracy for p in points],
                marker="s",
                markersize=3.5,
                color=colour,
                linewidth=1.2,
                label=f"{codec} (quality sweep)",
            )
    for method, marker, colour, label in (
        ("png", "D", "black", "PNG (lossless input)"),
        ("float32-split", "x", "tab:red", "float32 split per cut (Neurosurgeon)"),
        ("jalad", "^", "tab:olive", "JALAD 8-bit + Huffman per cut"),
    ):
        points = by_method.get(method, [])
        if points:
            ax.scatter(
                [p.bytes for p in points], [100 * p.accuracy for p in points], marker=marker, color=colour, label=label
            )
    top = 100 * result.float_accuracy
    ax.axhline(top, color="black", linewidth=0.8, label=f"float model {top:.1f} %")
    for t in result.thresholds:
        ax.axhline(100 * floor_for(result.float_accuracy, t), color="0.4", linewidth=0.7, linestyle="--")
        ax.annotate(
            f"-{t:g} pt",
            (1.0, 100 * floor_for(result.float_accuracy, t)),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            ha="right",
            va="bottom",
            color="0.3",
        )
    ax.set_xscale("log")
    ax.set_ylim(max(0.0, top - _SPAN_POINTS), min(100.0, top + 2.0))
    ax.set(
        xlabel="bytes per image (mean of real encodings, log scale)",
        ylabel="top-1 (%)",
        title=f"{result.model}: rate–accuracy on {result.images} labelled images",
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize="x-small")
    return save_png(figure, path, dpi=110)
