"""The rate–accuracy report: the must-show comparison, the Markdown tables and the JSON.

Reads :class:`~dyno_compile.evaluate.rate_accuracy.ModelResult` only, so a report can be
rewritten from measured results without measuring again; the figures are drawn by
:mod:`dyno_compile.evaluate.rate_plots`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dyno_compile.errors import InputError
from dyno_compile.evaluate.rate_accuracy import (
    IMAGE_CODECS,
    MODELS,
    ModelResult,
    Point,
    check_thresholds,
    fewest_bytes,
    floor_for,
)
from dyno_compile.packing import FLOAT_MODES

__all__ = [
    "FLOAT_GOAL",
    "IMAGE_GOAL",
    "IMAGE_GOAL_MODELS",
    "MustShow",
    "must_show",
    "merged",
    "CutRow",
    "must_show_lines",
    "per_cut_rows",
    "read_results",
    "render_markdown",
    "write_results",
]


# --- files ------------------------------------------------------------------------------------


def read_results(out: str | Path) -> list[ModelResult]:
    """The results ``out``'s ``rate_accuracy.json`` holds ([] when there is none), so a run of
    some models can keep the others' (an unreadable file is an error, never silently lost)."""
    path = Path(out) / "rate_accuracy.json"
    if not path.is_file():
        return []
    try:
        payload = json.loads(path.read_text())
        return [ModelResult.from_dict(d) for d in payload["models"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a rate-accuracy result file ({exc}); move it away or pass --fresh") from None


def merged(kept: Sequence[ModelResult], new: Sequence[ModelResult]) -> list[ModelResult]:
    """``kept`` with each model measured again replaced by its ``new`` result, in
    :data:`MODELS` order (models it does not know last)."""
    by_model = {r.model: r for r in kept} | {r.model: r for r in new}
    order = list(MODELS)
    return sorted(by_model.values(), key=lambda r: order.index(r.model) if r.model in order else len(order))


def write_results(results: Sequence[ModelResult], out: str | Path) -> dict[str, Path]:
    """Write ``rate_accuracy.json`` (every point) and ``README.md`` (the tables) under ``out``,
    each file replaced whole (written beside it, then renamed)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "rate_accuracy.json", "markdown": folder / "README.md"}
    texts = {
        "json": json.dumps({"models": [r.to_dict() for r in results]}, indent=1) + "\n",
        "markdown": render_markdown(results),
    }
    for key, path in paths.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(texts[key])
        os.replace(tmp, path)
    return paths


# --- the must-show comparison -----------------------------------------------------------------

#: The issue's goals at <= 1 point of loss: ours at most this share of the best image codec's
#: bytes (on the ImageNet models) and at least this many times fewer bytes than float32 at our cut.
IMAGE_GOAL, FLOAT_GOAL = 0.5, 100.0
IMAGE_GOAL_MODELS = ("squeezenet", "efficientnet_lite2")


@dataclass(frozen=True)
class MustShow:
    """At ``loss`` points: our fewest-bytes point, the best lossy image codec's, the float32
    split at our point's cut, and the ratios ``ours / image`` and ``float32 / ours``."""

    loss: float
    ours: Point | None
    image: Point | None
    float32: Point | None
    image_ratio: float | None
    float_ratio: float | None
    #: The largest ``float32 / ours`` over every cut (ours' fewest bytes there within ``loss``), and its cut.
    best_float_ratio: float | None = None
    best_float_cut: int | None = None


def best_float_ratio(result: ModelResult, loss: float) -> tuple[float, int] | None:
    """Over every cut, float32's bytes over our fewest bytes at that cut within ``loss``
    points: how far below float32 a cut can go, wherever the cut is."""
    floor = floor_for(result.float_accuracy, loss)
    best = None
    for p in result.points:
        if p.method != "float32-split":
            continue
        here = [q for q in result.points if q.method == "ours" and q.where["cut"] == p.where["cut"]]
        ours = fewest_bytes(here, floor)
        if ours is not None and (best is None or p.bytes / ours.bytes > best[0]):
            best = (p.bytes / ours.bytes, int(p.where["cut"]))
    return best


def must_show(result: ModelResult, loss: float = 1.0) -> MustShow:
    """The issue's must-show comparison for one model at ``loss`` points of top-1."""
    (loss,) = check_thresholds([loss])
    floor = floor_for(result.float_accuracy, loss)
    ours = fewest_bytes([p for p in result.points if p.method == "ours"], floor)
    lossy = [p for p in result.points if p.method in IMAGE_CODECS and IMAGE_CODECS[p.method].lossy]
    image = fewest_bytes(lossy, floor)
    float32 = None
    if ours is not None:
        same = [p for p in result.points if p.method == "float32-split" and p.where["cut"] == ours.where["cut"]]
        float32 = same[0] if same else None
    return MustShow(
        loss,
        ours,
        image,
        float32,
        None if ours is None or image is None else ours.bytes / image.bytes,
        None if ours is None or float32 is None else float32.bytes / ours.bytes,
        *(best_float_ratio(result, loss) or (None, None)),
    )


# --- Markdown ---------------------------------------------------------------------------------

_METHOD_ORDER = ("ours", "best image codec", "jpeg", "webp", "avif", "jpegxl", "png", "jalad", "float32-split")


def _bytes(b: float) -> str:
    return f"{b:,.0f} B" if b < 10_000 else f"{b / 1000:,.1f} kB"


def _cell(p: Point | None) -> str:
    if p is None:
        return "none reaches it"
    where = {k: v for k, v in p.where.items() if k != "differs_from_float"}
    if p.method in ("best image codec",) or p.method in IMAGE_CODECS:
        text = " ".join(f"{v}" if k == "codec" else f"q{v}" for k, v in where.items())
    else:
        text = ", ".join(f"{k} {v}" for k, v in where.items())
    return f"**{_bytes(p.bytes)}** ({100 * p.accuracy:.1f} %; {text})"


def _cut_name(result: ModelResult, position: int) -> str:
    cut = next((c for c in result.cuts if c["position"] == position), None)
    return f"cut {position}" if cut is None else f"cut {position} ({', '.join(cut['tensors'])})"


def _values_at(result: ModelResult, position: int) -> int:
    """Values crossing a cut, for the 'why' lines."""
    return int(next(c for c in result.cuts if c["position"] == position)["values"])


def _float_miss(m: MustShow, values: int, bits_per_value: float) -> str:
    """Why ours stays under the float32 goal, in numbers: the frame header (the float32 frame
    less its 4-byte values) and the bits per value the goal would need."""
    assert m.ours is not None and m.float32 is not None
    header = m.float32.bytes - 4 * values
    budget = m.float32.bytes / FLOAT_GOAL
    width = m.ours.where["bits"]
    if width in FLOAT_MODES:
        return f"Why: ours is a {width} passthrough here, at most 2x below float32."
    text = (
        f"Why: the cut crosses {values:,} values; float32 sends {4 * values:,} B of them plus {header:.0f} B of "
        f"frame header. {FLOAT_GOAL:g}x means a whole frame under {budget:.0f} B, {8 * budget / values:.2f} bits "
        f"per value; ours spends {bits_per_value:.2f} ({width}-bit codes, header included)"
    )
    if budget <= header:
        return text + ": the goal is below the header alone, so no coding of the values can reach it at this cut."
    shrink = (m.ours.bytes - header) / (budget - header)
    return text + f": its payload would have to shrink {shrink:.1f}x more."


def must_show_lines(result: ModelResult, loss: float = 1.0) -> list[str]:
    """The must-show sentences, misses said plainly with the arithmetic behind them."""
    m = must_show(result, loss)
    lines = []
    if m.ours is None:
        return [f"- No configuration of ours stays within {loss:g} point of the float model."]
    ours = m.ours
    lines.append(
        f"- **Ours at <= {loss:g} point:** {_bytes(ours.bytes)} per image ({_cut_name(result, ours.where['cut'])}, "
        f"{ours.where['bits']} bits, {ours.where['granularity']}, {ours.where['layout']}, {ours.where['codec']}; "
        f"top-1 {100 * ours.accuracy:.1f} %)."
    )
    if m.image is None or m.image_ratio is None:
        lines.append(
            f"- No lossy image codec of the sweep stays within {loss:g} point (even its highest quality loses "
            f"more), so there is no ratio against one."
        )
    else:
        goal = result.model in IMAGE_GOAL_MODELS
        verdict = ""
        if goal:
            verdict = (
                f" Goal <= {IMAGE_GOAL:g}x: **met**."
                if m.image_ratio <= IMAGE_GOAL
                else f" Goal <= {IMAGE_GOAL:g}x: **missed** ({m.image_ratio:.2f}x)."
            )
        lines.append(
            f"- **Against the best image codec at the same loss:** {m.image.method} q{m.image.where['quality']} "
            f"needs {_bytes(m.image.bytes)}; ours is **{m.image_ratio:.3f}x** its bytes.{verdict}"
        )
        if goal and m.image_ratio > IMAGE_GOAL:
            n = _values_at(result, ours.where["cut"])
            lines.append(
                f"  Why: our fewest bytes at this loss send {n:,} values at cut {ours.where['cut']} "
                f"({8 * ours.bytes / n:.2f} bits per value, header included); the goal needs under "
                f"{_bytes(IMAGE_GOAL * m.image.bytes)}, i.e. {8 * IMAGE_GOAL * m.image.bytes / n:.2f} bits per value "
                f"there, and no width, granularity, layout or lossless codec of the sweep got that far within "
                f"{loss:g} point."
            )
    if m.float32 is not None and m.float_ratio is not None:
        n = _values_at(result, ours.where["cut"])
        bits = ours.bytes * 8 / n
        verdict = "**met**" if m.float_ratio >= FLOAT_GOAL else f"**missed** ({m.float_ratio:.1f}x)"
        lines.append(
            f"- **Against float32 at the same cut:** {_bytes(m.float32.bytes)}; ours is **{m.float_ratio:.1f}x** "
            f"fewer. Goal >= {FLOAT_GOAL:g}x: {verdict}."
        )
        if m.float_ratio < FLOAT_GOAL:
            lines.append("  " + _float_miss(m, n, bits))
        if m.best_float_ratio is not None and m.best_float_cut is not None:
            lines.append(
                f"- Over every cut, within {loss:g} point, float32 over ours peaks at **{m.best_float_ratio:.1f}x** "
                f"({_cut_name(result, m.best_float_cut)}, {_values_at(result, m.best_float_cut):,} values)."
            )
    return lines


@dataclass(frozen=True)
class CutRow:
    """One cut's row of the per-cut table (see :func:`per_cut_rows`)."""

    cut: int
    values: int
    float32: float
    ours: Point | None
    float_ratio: float | None
    image_ratio: float | None


def per_cut_rows(result: ModelResult, loss: float = 1.0) -> list[CutRow]:
    """Per measured cut, in model order: the values crossing it, float32's bytes there, our
    fewest bytes there within ``loss`` points (and how), and the ratios against float32 and
    against the best lossy image codec within the same loss. The headline picks the one cut
    with the fewest bytes, which is nearly always the last (the device then runs almost the
    whole model); these rows show what each earlier cut, where the cloud does more of the
    work, costs on the wire."""
    (loss,) = check_thresholds([loss])
    floor = floor_for(result.float_accuracy, loss)
    lossy = [p for p in result.points if p.method in IMAGE_CODECS and IMAGE_CODECS[p.method].lossy]
    image = fewest_bytes(lossy, floor)
    rows = []
    for p in sorted((p for p in result.points if p.method == "float32-split"), key=lambda p: p.where["cut"]):
        cut = int(p.where["cut"])
        ours = fewest_bytes([q for q in result.points if q.method == "ours" and q.where["cut"] == cut], floor)
        rows.append(
            CutRow(
                cut,
                _values_at(result, cut),
                p.bytes,
                ours,
                None if ours is None else p.bytes / ours.bytes,
                None if ours is None or image is None else ours.bytes / image.bytes,
            )
        )
    return rows


def _per_cut_table(result: ModelResult, loss: float = 1.0) -> list[str]:
    rows = per_cut_rows(result, loss)
    if not rows:
        return []
    out = [
        f"Every measured cut at <= {loss:g} point (ours: the fewest bytes at that cut; x image: over the best lossy "
        "image codec at the same loss):",
        "",
        "| cut | values | float32 | ours | bits, granularity, layout, codec | float32 / ours | ours / image codec |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        how = (
            "none within the loss"
            if r.ours is None
            else ", ".join(str(r.ours.where[k]) for k in ("bits", "granularity", "layout", "codec"))
        )
        out.append(
            f"| {_cut_name(result, r.cut)} | {r.values:,} | {_bytes(r.float32)} | "
            + ("-" if r.ours is None else _bytes(r.ours.bytes))
            + f" | {how} | "
            + ("-" if r.float_ratio is None else f"{r.float_ratio:.1f}x")
            + " | "
            + ("-" if r.image_ratio is None else f"{r.image_ratio:.3f}x")
            + " |"
        )
    return [*out, ""]


def render_markdown(results: Sequence[ModelResult]) -> str:
    """The table per model (fewest bytes per method and threshold, and where), the must-show
    lines, the provenance of every figure and what was skipped."""
    total = sum(r.seconds.get("total", 0.0) for r in results)
    out = [
        "# Rate–accuracy: bytes per image against top-1",
        "",
        "Generated by `python -m dyno_compile rate-accuracy` (each model's command line is under it), "
        f"{total / 60:.1f} min of measuring in all on this host (a 2-core VM shared with other work). "
        "Every point is in `rate_accuracy.json`; each model's curves are in its PNG.",
        "",
        "Methods: **ours** (cut x width x granularity x layout x lossless codec of `CODEC_TABLE`; at cut 0 also "
        "the table's lossy image codecs over the input's 8-bit codes, where the table has them), the model "
        "input sent with **image codecs** at its own resolution (JPEG, WebP, AVIF, JPEG XL over a quality sweep; "
        "PNG as the lossless check), **float32-split** (Neurosurgeon: the cut tensors as float32) and **jalad** "
        "(8-bit per-tensor codes, Huffman-coded from each image's own histogram, code table included). "
        "Loss is in top-1 points below the float model on the same images. The device-only cut sends nothing and "
        "is left out.",
        "",
        "Context, published and not measured here (sc2-benchmark, ResNet-50 on ImageNet at 224x224): JPEG about "
        "8 KB per image for 73 % top-1 and about 45 KB for the float model's 76 %; WebP 9.5 KB for 74 %.",
        "",
    ]
    for r in results:
        pct = 100 / r.images
        out += [
            f"## {r.model}",
            "",
            f"{r.description}. **{r.images} labelled images** (1 image = {pct:.3g} points of top-1"
            + (f", so 1 point = {r.images / 100:g} images" if 100 <= r.images < 1000 else "")
            + f"); float top-1 **{100 * r.float_accuracy:.2f} %**. "
            + f"Measured in {r.seconds.get('total', 0) / 60:.1f} min"
            + (f" by `{r.command}`." if r.command else "."),
            "",
            f"![{r.model}]({r.model}.png)",
            "",
            "| method | " + " | ".join(f"<= {t:g} point" for t in r.thresholds) + " |",
            "| --- | " + " | ".join("---" for _ in r.thresholds) + " |",
        ]
        table = r.table()
        for method in sorted(table, key=lambda m: (_METHOD_ORDER + (m,)).index(m)):
            out.append(f"| {method} | " + " | ".join(_cell(table[method][t]) for t in r.thresholds) + " |")
        out += ["", *must_show_lines(r, 1.0), "", *_per_cut_table(r, 1.0), "Provenance:", ""]
        out += [f"- {k}: {v}" for k, v in r.provenance.items()]
        if r.skipped:
            shown = r.skipped[:8]
            out += ["", "Skipped or flagged:", "", *(f"- {s}" for s in shown)]
            if len(r.skipped) > len(shown):
                out.append(f"- ... and {len(r.skipped) - len(shown)} more (in the JSON)")
        out.append("")
    return "\n".join(out)
