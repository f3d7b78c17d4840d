"""The space of configurations, the four objectives, Pareto filtering and hypervolume.

Objectives, all minimised: ``device_s``, ``cloud_s``, ``bytes`` and the accuracy loss.
Accuracies are fractions 0..1 everywhere, as in :class:`Evaluation`; accuracy *losses* and
the accuracy *budget* are in percentage points (``baseline − accuracy`` × 100), because
that is how a budget is stated ("at most one point below float"). A negative loss (a
quantised configuration that happens to score above the baseline) is kept as it is.

Hypervolume compares searches (sampler benchmarks, "the search found ≥ 95 % of what the
exhaustive sweep finds"), so every set must be measured on one shared scale:
:class:`HypervolumeScale` is fitted on a reference set (usually the exhaustive one).
Times and bytes are compared on a log scale: the run-time selector ranks configurations
by ``device_s + bytes / bandwidth + cloud_s`` for bandwidths spanning orders of magnitude,
so halving 2 KB matters at 1 Mbit/s as much as halving 2 MB does at 1 Gbit/s; on a linear
scale every small-tensor configuration would be squashed against zero and count for
nothing. The device-only cut sends 0 bytes and runs 0 s in the cloud, so each log
objective is offset by the smallest positive value the reference set has for it (zero
lands one doubling below the smallest real value instead of at minus infinity). The
accuracy loss stays linear (it is already a difference, and can be negative).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from optuna._hypervolume import compute_hypervolume  # Optuna's exact WFG hypervolume (no public alias in 5.0)

from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.packing.image_codec import IMAGE_CODECS
from dyno_compile.packing.vocab import (
    CODEC_TABLE,
    FLOAT_MODES,
    GRANULARITIES,
    LAYOUTS,
    bits_key,
    check_level,
    default_level,
    mode_width,
    refused_as,
)

OBJECTIVES = ("device_s", "cloud_s", "bytes", "accuracy_loss")
#: Objectives compared on a log scale in the hypervolume (see the module docstring).
LOG_OBJECTIVES = (True, True, True, False)
#: Normalised reference point: a little beyond the worst reference value, so the extreme
#: points of the reference front still add volume.
REFERENCE_POINT = 1.1
#: Widths DynO considers by default: both floats and the integer widths where accuracy
#: and bytes actually trade (above 8 bits accuracy no longer moves; below 4 it falls fast).
DEFAULT_BITS = ("float32", "float16", "16", "8", "6", "4", "3", "2", "1")
#: The codecs crossed with every cut and width: the table's lossless ones.
LOSSLESS_CODECS: tuple[str, ...] = tuple(c.name for c in CODEC_TABLE if not c.lossy)
#: Image codecs: lossy, and only for the model input, so only at the cloud-only cut.
IMAGE_CODEC_NAMES: tuple[str, ...] = tuple(c.name for c in IMAGE_CODECS)
#: The cut whose crossing tensor is the model input (cloud-only), the only one an image
#: codec can code; and the width it codes (an 8-bit plane is an 8-bit image).
CLOUD_ONLY_CUT = 0
IMAGE_BITS = "8"
#: Qualities an image codec is searched at unless told otherwise: from a thumbnail-grade
#: 25 to a near-transparent 90, where bytes and accuracy both move on 32x32 CIFAR-10 and
#: 224x224 ImageNet inputs alike.
DEFAULT_QUALITIES: tuple[int, ...] = (25, 50, 75, 90)


@dataclass(frozen=True)
class Objectives:
    """How evaluations become objective vectors: the float model's accuracy (fraction)
    and the largest accuracy loss allowed (points; ``None``: no limit)."""

    baseline_accuracy: float
    accuracy_budget: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.baseline_accuracy <= 1.0:
            raise InputError(
                f"baseline_accuracy is a fraction 0..1 (like Evaluation.accuracy), got {self.baseline_accuracy!r}"
            )
        if self.accuracy_budget is not None and not self.accuracy_budget >= 0.0:
            raise InputError(f"accuracy_budget is a loss in percentage points >= 0, got {self.accuracy_budget!r}")

    def loss(self, evaluation: Evaluation) -> float:
        """Accuracy loss in percentage points, rounded to 1e-9 so that a loss of exactly the
        budget (0.92 − 0.91 = 1.0000000000000009 points in floats) counts as within it."""
        return round((self.baseline_accuracy - evaluation.accuracy) * 100.0, 9)

    def vector(self, evaluation: Evaluation) -> tuple[float, float, float, float]:
        """The objective values, in :data:`OBJECTIVES` order."""
        return evaluation.device_s, evaluation.cloud_s, evaluation.bytes, self.loss(evaluation)

    def matrix(self, evaluations: Sequence[Evaluation]) -> np.ndarray:
        return np.array([self.vector(e) for e in evaluations], dtype=float).reshape(len(evaluations), len(OBJECTIVES))

    def violation(self, evaluation: Evaluation) -> float:
        """Points beyond the budget, Optuna's constraint value: ``<= 0`` is within it
        (always 0 with no budget)."""
        return 0.0 if self.accuracy_budget is None else self.loss(evaluation) - self.accuracy_budget

    def feasible(self, evaluations: Iterable[Evaluation]) -> list[Evaluation]:
        return [e for e in evaluations if self.violation(e) <= 0.0]

    def pareto(self, evaluations: Iterable[Evaluation]) -> list[Evaluation]:
        """The feasible evaluations no other feasible one dominates, in input order.
        Evaluations with equal objective vectors do not dominate each other: both stay, as
        they are different configurations the selector may choose between."""
        candidates = self.feasible(evaluations)
        keep = non_dominated(self.matrix(candidates))
        return [e for e, k in zip(candidates, keep) if k]


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``points`` (n × d, minimised) that no other row
    dominates (``<=`` everywhere and ``<`` somewhere). One row at a time, so memory stays
    O(n·d) for exhaustive sets of thousands."""
    points = np.asarray(points, dtype=float)
    dominated = np.zeros(len(points), dtype=bool)
    for row in points:
        dominated |= np.all(row <= points, axis=1) & np.any(row < points, axis=1)
    return ~dominated


@dataclass(frozen=True)
class HypervolumeScale:
    """Per-objective maps onto ``[0, 1]`` (0: best, 1: worst in the reference set),
    fitted once so hypervolumes of different sets are comparable."""

    offsets: tuple[float, ...]
    lows: tuple[float, ...]
    highs: tuple[float, ...]

    @classmethod
    def fit(cls, reference: Sequence[Evaluation], objectives: Objectives) -> HypervolumeScale:
        """Fit on the feasible part of ``reference`` (the exhaustive set, normally)."""
        matrix = objectives.matrix(objectives.feasible(reference))
        if len(matrix) == 0:
            raise InputError("the hypervolume reference set has no evaluation within the accuracy budget")
        offsets = tuple(_log_offset(column) if log else 0.0 for column, log in zip(matrix.T, LOG_OBJECTIVES))
        scaled = _transform(matrix, offsets)
        return cls(offsets, tuple(scaled.min(axis=0)), tuple(scaled.max(axis=0)))

    def normalise(self, matrix: np.ndarray) -> np.ndarray:
        span = np.array(self.highs) - np.array(self.lows)
        return (_transform(matrix, self.offsets) - np.array(self.lows)) / np.where(span > 0, span, 1.0)


def _log_offset(values: np.ndarray) -> float:
    """Smallest positive value (so a 0 maps one doubling below it); 1 if none is positive."""
    if np.any(values < 0):
        raise InputError(f"times and bytes must be >= 0, got {values.min()!r}")
    positive = values[values > 0]
    return float(positive.min()) if positive.size else 1.0


def _transform(matrix: np.ndarray, offsets: tuple[float, ...]) -> np.ndarray:
    out = matrix.astype(float).copy()
    for j, (log, offset) in enumerate(zip(LOG_OBJECTIVES, offsets)):
        if log:
            out[:, j] = np.log2(np.maximum(out[:, j], 0.0) + offset)
    return out


def hypervolume(evaluations: Sequence[Evaluation], objectives: Objectives, scale: HypervolumeScale) -> float:
    """Hypervolume of the feasible part of ``evaluations`` on ``scale``, against the
    reference point 1.1 in every normalised objective; points worse than it (possible for
    sets other than the reference) are clipped there and add nothing."""
    front = objectives.pareto(evaluations)
    if not front:
        return 0.0
    reference = np.full(len(OBJECTIVES), REFERENCE_POINT)
    points = np.minimum(scale.normalise(objectives.matrix(front)), reference)
    return float(compute_hypervolume(points, reference, assume_pareto=True))


def hypervolume_ratio(found: Sequence[Evaluation], reference: Sequence[Evaluation], objectives: Objectives) -> float:
    """``hypervolume(found) / hypervolume(reference)`` on the scale fitted on
    ``reference``: 1.0 when a search found everything that matters."""
    scale = HypervolumeScale.fit(reference, objectives)
    return hypervolume(found, objectives, scale) / hypervolume(reference, objectives, scale)


def _distinct(name: str, values: Iterable[Any], allowed: Sequence[Any] | None = None) -> tuple:
    values = tuple(values)
    if not values:
        raise InputError(f"search space: {name} is empty")
    if len(set(values)) != len(values):
        raise InputError(f"search space: {name} has repeated values {values!r}")
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise InputError(f"search space: {name} {bad!r} not among {allowed!r}")
    return values


@dataclass(frozen=True)
class SearchSpace:
    """The grid DynO searches: every cut × bits × granularity × layout × lossless codec,
    and the image uploads: each image codec at each quality at the cloud-only cut.

    Several grid points are the same configuration: float widths have no quantisation
    range and are never bit-packed, so their granularity and layout are irrelevant
    (canonical ``"tensor"``/``"stream"``); the device-only cut sends nothing, so only the
    cut matters. :meth:`canonical` maps a grid point to its configuration and
    :meth:`configs` lists each configuration once. Which cut is device-only is a
    parameter, because cut positions are model-specific (it is ``n`` for an ``n``-node
    graph; see :func:`dyno_compile.passes.find_cuts`).

    Image codecs (``image_codecs``, at ``qualities``) code the model input as an 8-bit
    image, so their configurations exist only at cut 0 with 8 bits in the stream layout;
    the grid has one codec axis (lossless and image codecs) and, when there are image
    codecs, a ``level`` axis of qualities. An image codec at any grid point is its cut-0
    configuration (cut, width and layout are irrelevant to it, as granularity is to a
    float width) and a lossless codec ignores the quality (its level stays the default):
    so no image codec is offered at another cut and no lossless codec a quality. One axis
    rather than a conditional one for the same reason as the other irrelevant axes
    (:mod:`.study`): samplers keep every parameter in every trial.
    """

    cuts: tuple[int, ...]
    bits: tuple[str, ...] = DEFAULT_BITS
    granularities: tuple[str, ...] = GRANULARITIES
    layouts: tuple[str, ...] = LAYOUTS
    codecs: tuple[str, ...] = LOSSLESS_CODECS
    device_only_cut: int | None = None
    image_codecs: tuple[str, ...] = ()
    qualities: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in self.cuts):
            raise InputError(f"search space: cuts must be integer cut positions, got {self.cuts!r}")
        with refused_as(InputError):
            bits = _distinct("bits", (bits_key(b) for b in self.bits))
        fields = {
            "cuts": _distinct("cuts", (int(c) for c in self.cuts)),
            "bits": bits,
            "granularities": _distinct("granularities", self.granularities, GRANULARITIES),
            "layouts": _distinct("layouts", self.layouts, LAYOUTS),
            "codecs": _distinct("codecs", self.codecs, LOSSLESS_CODECS),
            **self._image_fields(bits),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        if self.device_only_cut is not None and self.device_only_cut not in self.cuts:
            raise InputError(f"search space: device_only_cut {self.device_only_cut} is not one of the cuts {self.cuts}")

    def _image_fields(self, bits: tuple[str, ...]) -> dict[str, tuple]:
        """``image_codecs`` and ``qualities`` checked: both or neither, qualities every
        image codec takes, and a space that has the cut-0 8-bit configuration they code."""
        codecs, qualities = tuple(self.image_codecs), tuple(self.qualities)
        if not codecs:
            if qualities:
                raise InputError(f"search space: qualities {qualities!r} given without image codecs")
            return {"image_codecs": (), "qualities": ()}
        codecs = _distinct("image_codecs", codecs, IMAGE_CODEC_NAMES)
        qualities = _distinct("qualities", qualities)
        for codec in codecs:
            for q in qualities:
                with refused_as(InputError):
                    check_level(codec, q, f"search space: {codec} quality")
        if CLOUD_ONLY_CUT not in self.cuts or CLOUD_ONLY_CUT == self.device_only_cut or IMAGE_BITS not in bits:
            raise InputError(
                f"search space: image codecs code the model input as 8-bit codes, so they need cut "
                f"{CLOUD_ONLY_CUT} (cloud-only) and width {IMAGE_BITS!r}; got cuts {self.cuts}, bits {bits}"
            )
        return {"image_codecs": codecs, "qualities": tuple(int(q) for q in qualities)}

    @property
    def dimensions(self) -> dict[str, tuple]:
        """Grid axes by :class:`Config` field name (the Optuna parameter names)."""
        axes = {
            "cut": self.cuts,
            "bits": self.bits,
            "granularity": self.granularities,
            "layout": self.layouts,
            "codec": self.codecs + self.image_codecs,
        }
        return {**axes, "level": self.qualities} if self.image_codecs else axes

    def config_of(self, point: dict[str, Any]) -> Config:
        """The configuration a grid point (one value per axis of :attr:`dimensions`) is:
        the quality goes to image codecs only, as a lossless codec takes none."""
        values = dict(point)
        if values.get("codec") not in IMAGE_CODEC_NAMES:
            values.pop("level", None)
        return self.canonical(Config(**values))

    def canonical(self, config: Config) -> Config:
        """The configuration a grid point is (see the class docstring)."""
        if config.codec in IMAGE_CODEC_NAMES:
            level = config.level if config.level is not None else default_level(config.codec)
            return Config(CLOUD_ONLY_CUT, IMAGE_BITS, config.granularity, "stream", config.codec, level)
        if config.cut == self.device_only_cut:
            return Config(config.cut)
        if config.bits in FLOAT_MODES:
            return Config(config.cut, config.bits, codec=config.codec)
        return replace(config, level=None)

    def image_configs(self) -> list[Config]:
        """Every image upload of the space: cut 0, 8 bits, each granularity, codec and quality."""
        return [
            Config(CLOUD_ONLY_CUT, IMAGE_BITS, g, "stream", c, q)
            for g in self.granularities
            for c in self.image_codecs
            for q in self.qualities
        ]

    def anchors(self) -> list[dict[str, Any]]:
        """Two grid points per cut, the widest and the narrowest width (the first value of
        the other axes): the search evaluates these first. They bracket each cut's
        bytes/accuracy trade-off. The widest loses no accuracy, so every cut gets a point
        within any budget, and the extremes a random start can miss are covered:
        cloud-only (least device time) and device-only (no bytes, no cloud time). The
        narrowest finds the cuts that tolerate it — late cuts of small tensors, whose few
        bytes make them extreme points of the front. On resnet20 a single such point
        (2 bits after the global pool) held a fifth of the exhaustive hypervolume, and
        searches that missed it, or cloud-only, lost up to a quarter
        (benchmarks/search_samplers.py)."""
        widths = sorted(self.bits, key=lambda b: (mode_width(b), b in FLOAT_MODES))
        rest = {"granularity": self.granularities[0], "layout": self.layouts[0], "codec": self.codecs[0]}
        points = {
            (cut, bits)
            for cut in self.cuts
            for bits in (widths[-1], widths[0])
            if cut != self.device_only_cut or bits == widths[-1]
        }
        ordered = sorted(points, key=lambda p: (p[0], -mode_width(p[1])))
        anchors = [{"cut": cut, "bits": bits, **rest} for cut, bits in ordered]
        if not self.image_codecs:
            return anchors
        # Each image codec at its lowest and highest quality, after every cut's widths: few
        # points that bracket the uploads' bytes/accuracy trade-off, as the widths bracket a
        # cut's. Last, because a budget smaller than the anchors should still span the cuts
        # (a short search would otherwise measure little but uploads).
        qualities = sorted({min(self.qualities), max(self.qualities)})
        uploads = [
            {**rest, "cut": CLOUD_ONLY_CUT, "bits": IMAGE_BITS, "codec": c, "level": q}
            for c in self.image_codecs
            for q in qualities
        ]
        level = {"level": self.qualities[0]}  # irrelevant to lossless codecs, but every trial has every axis
        return [*({**a, **level} for a in anchors), *uploads]

    def configs(self) -> list[Config]:
        """Every distinct configuration, sorted."""
        axes: list[tuple[Any, ...]] = [self.cuts, self.bits, self.granularities, self.layouts, self.codecs]
        grid = (Config(*point) for point in itertools.product(*axes))
        return sorted({self.canonical(c) for c in grid} | set(self.image_configs()))

    def to_dict(self) -> dict[str, Any]:
        """The axes by name and the device-only cut; a space without image codecs writes
        what spaces wrote before they existed, so a study of it can be continued."""
        return {
            **{name: list(values) for name, values in self.dimensions.items()},
            "device_only_cut": self.device_only_cut,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        codecs = tuple(d["codec"])
        return cls(
            tuple(d["cut"]),
            tuple(d["bits"]),
            tuple(d["granularity"]),
            tuple(d["layout"]),
            tuple(c for c in codecs if c not in IMAGE_CODEC_NAMES),
            d.get("device_only_cut"),
            tuple(c for c in codecs if c in IMAGE_CODEC_NAMES),
            tuple(d.get("level", ())),
        )
