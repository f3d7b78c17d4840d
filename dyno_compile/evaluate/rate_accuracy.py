"""Rate–accuracy curves: bytes per image against top-1, for our cut configurations and the
baselines a reader would otherwise reach for, all measured on the same real labelled images.

Methods (every byte count is a real encoding on this host, every accuracy a top-1 on real
labelled images):

* ``ours``: cut x width x granularity x layout x lossless codec. Accuracy depends only on
  (cut, width, granularity) and is simulated once per triple with the search's
  :class:`~dyno_compile.search.accuracy.AccuracySimulator` (JAX, the IR's own cut ops, each
  image quantised with its own range); bytes depend on all five and are the mean length of
  real frames (:func:`~dyno_compile.packing.encode_packed`) over the first
  ``byte_images`` images. The codecs are read from :data:`~dyno_compile.packing.CODEC_TABLE`
  when the sweep runs (every entry with ``lossy`` False that ``accepts`` the tensor), so a
  codec added to the table joins the sweep without a change here.
* image codecs (``jpeg``, ``webp``, ``avif``, ``jpegxl``, and lossless ``png`` as the
  check): the uint8 crop the model sees, made by the preset's own geometry
  (:func:`~dyno_compile.evaluate.jpeg.model_view`), encoded at each quality, decoded,
  normalised by the preset and run through the whole float model; bytes are file sizes.
  The PNG point must give exactly the simulator's float predictions (it is the same
  input), which checks the two paths against each other.
* ``float32-split`` (Neurosurgeon): the crossing tensors as float32 frames, codec none.
* ``jalad``: JALAD's 8-bit per-tensor codes with Huffman coding, sized exactly from each
  image's own histogram (:func:`huffman_bytes`) inside our frame's header.

Each (cut, width, granularity) costs a pass of the model's tail over every image
(EfficientNet-Lite2's over 200 images at 260x260 takes about a minute on this shared
2-core host), so widths are not all tried: :func:`probe_widths` measures the widest and
bisects for the narrowest width that meets each threshold of the table. The heavy
ImageNet models also take fewer cuts and qualities by default (:func:`default_sweep`).
The device-only cut sends nothing and is left out: it is not offloading.

Plotting lives in :mod:`dyno_compile.evaluate.rate_plots`; this module only measures and
writes JSON and Markdown.
"""

from __future__ import annotations

import heapq
import io
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from inspect import signature
from typing import Any

import imagecodecs
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, features

from dyno_compile.artifact.plan import candidate_cuts
from dyno_compile.configs import Config
from dyno_compile.datasets import data_root
from dyno_compile.errors import InputError
from dyno_compile.evaluate.jpeg import model_view, raw_images, split_of
from dyno_compile.frontend.resolve import load_model
from dyno_compile.ir import Graph, evaluate
from dyno_compile.packing import (
    CODEC_TABLE,
    FLOAT_MODES,
    GRANULARITIES,
    LAYOUTS,
    PackConfig,
    PayloadInfo,
    bits_key,
    encode_packed,
    pack_tensor,
    quantize,
)
from dyno_compile.packing.image_codec import decode_pixels, encode_pixels
from dyno_compile.passes import CutPoint, run_passes
from dyno_compile.search.accuracy import AccuracySimulator
from dyno_compile.search.calibration import CalibrationSet
from dyno_compile.search.wire_bytes import packed_cut

__all__ = [
    "DEFAULT_THRESHOLDS",
    "IMAGE_CODECS",
    "MODELS",
    "ModelResult",
    "Point",
    "Sweep",
    "fewest_bytes",
    "huffman_bytes",
    "huffman_lengths",
    "lossless_codecs",
    "measure_model",
    "pareto_front",
    "threshold_table",
]

#: Top-1 losses (percentage points below the float model on the same images) the table answers.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 1.0, 2.0)
#: Images whose frames are encoded per configuration (the brief's floor is 64).
DEFAULT_BYTE_IMAGES = 64
Log = Callable[[str], None]


# --- the models -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelData:
    """Where a model, its images and its preprocessing come from. ``cuts``: which cuts the
    default sweep takes (``"candidates"``: every single-tensor cut; ``"frontier"``: only the
    cuts that cross fewer bytes than every earlier one, see :func:`select_cuts`)."""

    spec: Callable[[], str]
    images: str
    preset: str
    cuts: str
    description: str
    #: Sweep fields this model changes from :class:`Sweep`'s defaults (to fit the host's time).
    sweep: dict[str, Any] = field(default_factory=dict)


#: Qualities for the ImageNet models, where every quality is a whole-model pass over 200
#: images (EfficientNet-Lite2's took about 2 minutes on this shared 2-core host): four for
#: the two common codecs, three for the newer ones, reaching up to where the loss falls
#: within a point (EfficientNet-Lite2 needed JPEG and WebP at 95: at 85 JPEG lost 3.5 points).
_IMAGENET_QUALITIES: dict[str, tuple[int, ...]] = {
    "jpeg": (50, 75, 90, 95),
    "webp": (50, 75, 90, 95),
    "avif": (40, 70, 90),
    "jpegxl": (50, 80, 95),
    "png": (100,),
}
#: What the ImageNet models change: those qualities, no float16 and no lossy table codecs
#: at cut 0 (each level a whole-model pass, and the input-codec baselines cover that ground).
_IMAGENET_SWEEP: dict[str, Any] = {
    "image_codecs": _IMAGENET_QUALITIES,
    "widths": (1, 2, 3, 4, 5, 6, 8),
    "lossy_levels": (),
}
#: The CIFAR ResNets: 8 of their 22 / 58 candidate cuts, and 6 / 4 qualities per image codec
#: (a pass over 932 images costs seconds, but ResNet-56 has 58 cuts).
_CIFAR_SWEEP: dict[str, Any] = {
    "max_cuts": 8,
    "image_codecs": {
        "jpeg": (10, 30, 50, 70, 85, 95),
        "webp": (10, 30, 50, 70, 85, 95),
        "avif": (30, 50, 70, 90),
        "jpegxl": (30, 50, 70, 90),
        "png": (100,),
    },
}
MODELS: dict[str, ModelData] = {
    "resnet20": ModelData(
        lambda: "resnet20", "cifar10", "cifar10", "spread", "CIFAR-10 ResNet-20, 32x32", _CIFAR_SWEEP
    ),
    "resnet56": ModelData(
        lambda: "resnet56", "cifar10", "cifar10", "spread", "CIFAR-10 ResNet-56, 32x32", _CIFAR_SWEEP
    ),
    "squeezenet": ModelData(
        lambda: str(data_root() / "imagenet" / "squeezenet1.1_fp16.onnx"),
        "imagenet",
        "squeezenet",
        "frontier",
        "SqueezeNet 1.1 ONNX (float16 weights), 224x224",
        {**_IMAGENET_SWEEP, "max_cuts": 3},
    ),
    "efficientnet_lite2": ModelData(
        lambda: "efficientnet_lite2",
        "imagenet",
        "efficientnet_lite",
        "frontier",
        "EfficientNet-Lite2, 260x260",
        {**_IMAGENET_SWEEP, "max_cuts": 2},
    ),
}
CUT_RULES = ("model", "candidates", "frontier", "spread")


def check_models(names: Iterable[str]) -> list[str]:
    """``names`` as a list, each a key of :data:`MODELS`; InputError naming the unknown ones."""
    names = list(names) or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise InputError(f"unknown model(s) {unknown}; rate-accuracy knows {sorted(MODELS)}")
    return list(dict.fromkeys(names))


def select_cuts(graph: Graph, rule: str) -> list[CutPoint]:
    """The cuts to sweep, never device-only (it sends nothing). ``"candidates"`` (and
    ``"spread"``, which thins them later: :func:`_thin`): the
    build's candidate cuts (single-tensor cuts and cloud-only). ``"frontier"``: of those, the
    ones crossing fewer bytes than every earlier cut — a later cut that sends more costs
    more device compute *and* more bytes than an earlier one, so it rarely wins a rate
    comparison, and dropping it halves the passes of the heavy ImageNet models."""
    if rule not in CUT_RULES[1:]:
        raise InputError(f"cut rule must be one of {CUT_RULES[1:]}, got {rule!r}")
    cuts = [c for c in candidate_cuts(graph) if c.kind != "device-only"]
    if rule == "candidates":
        return cuts
    kept, least = [], math.inf
    for c in cuts:
        if c.nbytes < least:
            kept.append(c)
            least = c.nbytes
    return kept


# --- points, the Pareto front and the threshold table -----------------------------------------


@dataclass(frozen=True)
class Point:
    """One measured configuration: ``method`` (``"ours"``, an image codec, ``"float32-split"``,
    ``"jalad"``), mean ``bytes`` per image, top-1 ``accuracy`` (a fraction) and ``where``:
    what makes it (cut, bits, granularity, layout, codec, quality; only the keys that apply)."""

    method: str
    bytes: float
    accuracy: float
    where: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.where.items())


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The points no other point beats, by bytes ascending: each has strictly higher accuracy
    than every point with fewer or equal bytes before it (ties in bytes keep the more
    accurate, then the first given)."""
    ordered = sorted(points, key=lambda p: (p.bytes, -p.accuracy))
    front, best = [], -math.inf
    for p in ordered:
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def fewest_bytes(points: Iterable[Point], floor: float) -> Point | None:
    """The point with the fewest bytes whose accuracy is at least ``floor`` (None if none
    is); ties in bytes go to the more accurate."""
    ok = [p for p in points if p.accuracy >= floor]
    return min(ok, key=lambda p: (p.bytes, -p.accuracy)) if ok else None


def check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    """Losses in percentage points: finite, >= 0, at least one; sorted, duplicates dropped."""
    given = list(thresholds)
    bad = [t for t in given if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < math.inf]
    if not given or bad:
        raise InputError(f"thresholds must be top-1 losses in points, finite numbers >= 0; got {given!r}")
    return tuple(sorted({float(t) for t in given}))


def floor_for(float_accuracy: float, loss_points: float) -> float:
    """The least accuracy within ``loss_points`` of ``float_accuracy`` (a fraction); the tiny
    slack keeps an exact tie (e.g. 2 images of 200 at 1 point) from failing on rounding."""
    return float_accuracy - loss_points / 100 - 1e-9


def threshold_table(
    points: Iterable[Point], float_accuracy: float, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, dict[float, Point | None]]:
    """Per method and threshold, the point with the fewest bytes whose top-1 is at most that
    many points below ``float_accuracy``; also ``"best image codec"`` over the lossy image
    codecs (PNG, the lossless check, is not one)."""
    thresholds = check_thresholds(thresholds)
    points = list(points)
    by_method: dict[str, list[Point]] = {}
    for p in points:
        by_method.setdefault(p.method, []).append(p)
    lossy = [p for p in points if p.method in IMAGE_CODECS and IMAGE_CODECS[p.method].lossy]
    if lossy:
        by_method["best image codec"] = lossy
    return {m: {t: fewest_bytes(ps, floor_for(float_accuracy, t)) for t in thresholds} for m, ps in by_method.items()}


# --- JALAD's Huffman coding -------------------------------------------------------------------


def huffman_lengths(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Huffman code lengths for symbol ``counts`` (0 for unused symbols; a lone used symbol
    still takes 1 bit per occurrence, as a decodable code must)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise InputError(f"counts must be a 1-D array of non-negative integers, got shape {counts.shape}")
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1
    if len(used) <= 1:
        return lengths
    # Each heap entry: (weight, tie-break, symbols under it); merging deepens them all by one.
    heap = [(int(counts[s]), k, [int(s)]) for k, s in enumerate(used)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        lengths[s1] += 1
        lengths[s2] += 1
        heapq.heappush(heap, (w1 + w2, tie, s1 + s2))
        tie += 1
    return lengths


def huffman_table_bytes(lengths: np.ndarray) -> int:
    """What the decoder needs to rebuild a canonical Huffman code: every symbol's code length,
    as one byte per symbol of the alphabet or, when fewer symbols are used, a count byte and
    a (symbol, length) byte pair per used symbol — whichever is smaller."""
    return min(len(lengths), 1 + 2 * int(np.count_nonzero(lengths)))


def huffman_bytes(codes: np.ndarray, alphabet: int = 256) -> int:
    """Bytes of ``codes`` (integers in ``0..alphabet-1``) Huffman-coded with a code built from
    their own histogram: the payload rounded up to whole bytes, plus the code table."""
    codes = np.asarray(codes).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() >= alphabet):
        raise InputError(f"codes must lie in 0..{alphabet - 1}, got {codes.min()}..{codes.max()}")
    counts = np.bincount(codes.astype(np.int64), minlength=alphabet)
    lengths = huffman_lengths(counts)
    return (int(counts @ lengths) + 7) // 8 + huffman_table_bytes(lengths)


# --- image codecs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageCodec:
    """An image codec over a uint8 RGB crop: ``encode(crop, quality) -> bytes`` and
    ``decode(bytes, (width, height)) -> RGB image``; ``qualities``: the default sweep;
    ``library``: which library encodes, for provenance."""

    encode: Callable[[Image.Image, int], bytes]
    decode: Callable[[bytes, tuple[int, int]], Image.Image]
    qualities: tuple[int, ...]
    library: str
    available: Callable[[], bool]
    lossy: bool = True


def _wire_encode(codec: str, crop: Image.Image, quality: int) -> bytes:
    """The crop as the wire's image codec encodes it (:func:`~dyno_compile.packing.image_codec.encode_pixels`):
    the baseline and the search's cut-0 uploads use one set of library settings."""
    return encode_pixels(np.asarray(crop.convert("RGB")), codec, quality)


def _wire_decode(codec: str, data: bytes, size: tuple[int, int]) -> Image.Image:
    width, height = size
    return Image.fromarray(decode_pixels(data, codec, height, width, 3))


def _pillow_has(feature: str) -> bool:
    return bool(features.check(feature))


def _png_encode(crop: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    crop.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _png_decode(data: bytes, size: tuple[int, int]) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


_SWEEP = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
#: Every image codec the sweep knows; one whose library is missing here is skipped (and said so).
IMAGE_CODECS: dict[str, ImageCodec] = {
    "jpeg": ImageCodec(
        partial(_wire_encode, "jpeg"), partial(_wire_decode, "jpeg"), _SWEEP, "Pillow (libjpeg, 4:2:0)", lambda: True
    ),
    "webp": ImageCodec(
        partial(_wire_encode, "webp"),
        partial(_wire_decode, "webp"),
        _SWEEP,
        "Pillow (libwebp)",
        partial(_pillow_has, "webp"),
    ),
    "avif": ImageCodec(
        partial(_wire_encode, "avif"),
        partial(_wire_decode, "avif"),
        _SWEEP,
        "Pillow (libavif)",
        partial(_pillow_has, "avif"),
    ),
    "jpegxl": ImageCodec(
        partial(_wire_encode, "jpegxl"),
        partial(_wire_decode, "jpegxl"),
        _SWEEP,
        "imagecodecs (libjxl)",
        lambda: bool(imagecodecs.JPEGXL.available),
    ),
    "png": ImageCodec(_png_encode, _png_decode, (100,), "Pillow (zlib, lossless)", lambda: True, lossy=False),
}


# --- the sweep --------------------------------------------------------------------------------


def lossless_codecs() -> tuple[str, ...]:
    """The lossless codecs of :data:`CODEC_TABLE` as it is now, in wire-id order."""
    return tuple(c.name for c in CODEC_TABLE if not c.lossy)


@dataclass(frozen=True)
class Sweep:
    """What to measure. ``widths``: integer code widths and float16; ``codecs``: None for
    every lossless codec of the table at run time; ``cuts``: ``"model"`` for the model's
    default rule, else a :func:`select_cuts` rule; ``image_codecs``: name -> qualities
    (None: every available codec at its default qualities); ``limit``: the first images only;
    ``byte_images``: images whose frames are encoded per configuration."""

    widths: tuple[int | str, ...] = (1, 2, 3, 4, 5, 6, 8, "float16")
    granularities: tuple[str, ...] = GRANULARITIES
    layouts: tuple[str, ...] = LAYOUTS
    codecs: tuple[str, ...] | None = None
    cuts: str = "model"
    max_cuts: int | None = None
    image_codecs: dict[str, tuple[int, ...]] | None = None
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    limit: int | None = None
    byte_images: int = DEFAULT_BYTE_IMAGES
    lossy_levels: tuple[int, ...] = (50, 75, 90)

    def checked(self) -> Sweep:
        """This sweep with every field validated (InputError naming the bad one)."""
        try:
            widths = tuple(dict.fromkeys(bits_key(w) for w in self.widths))
        except Exception as exc:  # PackError; named here for the caller
            raise InputError(f"sweep widths: {exc}") from None
        if not widths or "float32" in widths:
            raise InputError(f"sweep widths must be 1..16 or float16 (float32 is the Neurosurgeon baseline): {widths}")
        for name, given, known in (
            ("granularities", self.granularities, GRANULARITIES),
            ("layouts", self.layouts, LAYOUTS),
        ):
            if not given or any(g not in known for g in given):
                raise InputError(f"sweep {name} must be some of {known}, got {given!r}")
        codecs = lossless_codecs() if self.codecs is None else tuple(self.codecs)
        if not codecs or any(c not in lossless_codecs() for c in codecs):
            raise InputError(f"sweep codecs must be lossless codecs of the table {lossless_codecs()}, got {codecs!r}")
        if self.cuts not in CUT_RULES:
            raise InputError(f"sweep cuts must be one of {CUT_RULES}, got {self.cuts!r}")
        images = (
            {n: c.qualities for n, c in IMAGE_CODECS.items()} if self.image_codecs is None else dict(self.image_codecs)
        )
        for name, qualities in images.items():
            if name not in IMAGE_CODECS:
                raise InputError(f"unknown image codec {name!r}; known: {sorted(IMAGE_CODECS)}")
            if any(isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= 100 for q in qualities):
                raise InputError(f"image codec {name!r}: qualities must be integers in 0..100, got {qualities!r}")
        for name, value, low in (("limit", self.limit, 1), ("byte_images", self.byte_images, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InputError(f"sweep {name} must be an integer >= {low}, got {value!r}")
        if self.max_cuts is not None and (not isinstance(self.max_cuts, int) or self.max_cuts < 1):
            raise InputError(f"sweep max_cuts must be an integer >= 1, got {self.max_cuts!r}")
        if any(isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100 for q in self.lossy_levels):
            raise InputError(f"sweep lossy_levels must be qualities in 1..100, got {self.lossy_levels!r}")
        return Sweep(
            widths,
            tuple(self.granularities),
            tuple(self.layouts),
            codecs,
            self.cuts,
            self.max_cuts,
            images,
            check_thresholds(self.thresholds),
            self.limit,
            self.byte_images,
            tuple(self.lossy_levels),
        )


@dataclass
class ModelResult:
    """Everything measured for one model: the points, the float model's top-1 on the same
    images, what was measured on how many images, what was skipped and why, and timings."""

    model: str
    description: str
    images: int
    byte_images: int
    float_accuracy: float
    points: list[Point]
    cuts: list[dict[str, Any]]
    provenance: dict[str, str]
    skipped: list[str]
    seconds: dict[str, float]
    thresholds: tuple[float, ...]
    #: The command line that measured it (set by the command), so a merged report says which run made what.
    command: str = ""

    def table(self) -> dict[str, dict[float, Point | None]]:
        return threshold_table(self.points, self.float_accuracy, self.thresholds)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["points"] = [asdict(p) for p in self.points]
        d["table"] = {
            m: {str(t): (None if p is None else asdict(p)) for t, p in row.items()} for m, row in self.table().items()
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelResult:
        """A result as :meth:`to_dict` wrote it (the table is derived, so it is not read)."""
        try:
            return cls(
                **{k: d[k] for k in (f.name for f in fields(cls)) if k in d and k not in ("points", "thresholds")},
                points=[
                    Point(p["method"], float(p["bytes"]), float(p["accuracy"]), dict(p["where"])) for p in d["points"]
                ],
                thresholds=tuple(d["thresholds"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a rate-accuracy result of this version ({type(exc).__name__}: {exc})") from None


class _WholeModel:
    """The float model from input to logits in JAX, jitted once, vmapped over batch-1 requests
    (the simulator's own recipe), for inputs the simulator does not hold: decoded images."""

    def __init__(self, graph: Graph, batch: int) -> None:
        params = {k: jnp.asarray(v) for k, v in graph.params.items()}
        name = graph.inputs[0].name
        self.dtype = np.dtype(str(graph.inputs[0].dtype))

        def one(p: dict, x: jax.Array) -> jax.Array:
            return evaluate(graph, p, {name: x})[0]

        self._fn = partial(jax.jit(jax.vmap(one, in_axes=(None, 0))), params)
        self.batch = batch

    def top1(self, x: np.ndarray) -> np.ndarray:
        """Top-1 class per sample of float32 ``x [N, C, H, W]``; the last batch is padded so
        nothing compiles twice."""
        out = []
        for start in range(0, len(x), self.batch):
            chunk = x[start : start + self.batch, None].astype(self.dtype)
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            logits = np.asarray(self._fn(chunk))[:n]
            out.append(logits.reshape(n, -1).argmax(axis=1))
        return np.concatenate(out)


def measure_model(name: str, sweep: Sweep | None = None, log: Log | None = None) -> ModelResult:
    """Measure every method for model ``name`` (a key of :data:`MODELS`) over ``sweep``."""
    (name,) = check_models([name])
    sweep = (sweep or Sweep()).checked()
    say: Log = log or (lambda _msg: None)
    data = MODELS[name]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    graph = run_passes(load_model(data.spec()))
    pictures, labels = raw_images(data.images, sweep.limit)
    if labels is None:
        raise InputError(f"model {name}: the {data.images} images have no labels; top-1 needs them")
    size = (int(graph.inputs[0].shape[2]), int(graph.inputs[0].shape[3]))
    views = [model_view(img, data.preset, size) for img in pictures]
    crops = [crop for crop, _ in views]
    x = np.stack([v for _, v in views]).astype(np.float32, copy=False)
    calibration = CalibrationSet(x, labels, f"{data.images} ({len(x)} images, preset {data.preset})")
    rule = data.cuts if sweep.cuts == "model" else sweep.cuts
    cuts = _thin(select_cuts(graph, "candidates" if rule == "spread" else rule), sweep.max_cuts, rule)
    simulator = AccuracySimulator(graph, calibration, cuts, batch=min(64, len(x)))
    float_accuracy = simulator.float_accuracy
    seconds["load_and_float"] = time.perf_counter() - t0
    say(f"{name}: {len(x)} images, float top-1 {100 * float_accuracy:.2f} %, {len(cuts)} cuts ({rule})")
    n_bytes = min(sweep.byte_images, len(x))
    points: list[Point] = []
    skipped: list[str] = []
    t1 = time.perf_counter()
    for cut in cuts:
        start = time.perf_counter()
        points += _cut_points(simulator, cut, sweep, n_bytes, skipped)
        say(f"{name}: cut {cut.position} {list(cut.tensors)} done in {time.perf_counter() - start:.1f} s")
    seconds["cuts"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    assert sweep.image_codecs is not None  # checked() fills it
    points += _image_points(graph, crops, data.preset, simulator, sweep.image_codecs, skipped, say, name)
    seconds["image_codecs"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    half = str(graph.inputs[0].dtype) == "float16"
    itemsize = np.dtype(str(graph.inputs[0].dtype)).itemsize  # the cut table counts bytes in the model's dtype
    provenance = {
        "bytes": (
            f"measured on this host: ours, float32-split and jalad as the mean length of real frames "
            f"(dyno_compile.packing.encode_packed) over the first {n_bytes} images; image codecs as the "
            f"mean encoded file size over all {len(x)} images"
        ),
        "accuracy": (
            f"top-1 on {len(x)} real labelled {data.images} images: ours and jalad simulated in JAX with "
            f"our cut ops (each image quantised with its own range); image codecs by the whole "
            f"float model in JAX on the decoded images; float32-split equals the float model"
            + ("; this model computes in float16, as its ONNX file stores it" if half else "")
        ),
        "jalad": "8-bit per-tensor codes, Huffman code from each image's own histogram, table included",
        "codecs": ", ".join(sweep.codecs or ()),
        "lossy codecs at cut 0": (
            f"{', '.join(c.name for c in CODEC_TABLE if c.lossy)} at levels {list(sweep.lossy_levels)}, "
            f"{sweep.granularities[0]} range; accuracy from the model on what the cloud decodes from real frames"
            if any(p.method == "ours" and "level" in p.where for p in points)
            else "none measured (no cloud-only cut in the sweep, or no lossy codec in the table)"
        ),
        "image_codecs": "; ".join(f"{n}: {IMAGE_CODECS[n].library}" for n in sweep.image_codecs),
    }
    return ModelResult(
        name,
        data.description,
        len(x),
        n_bytes,
        float_accuracy,
        points,
        [{**c.to_dict(), "values": c.nbytes // itemsize} for c in cuts],
        provenance,
        skipped,
        seconds,
        sweep.thresholds,
    )


def _thin(cuts: list[CutPoint], most: int | None, rule: str) -> list[CutPoint]:
    """At most ``most`` cuts. ``"spread"``: evenly over the model, the first and the last kept
    (the CIFAR ResNets' candidates are dozens of equal-sized block outputs, and one in a few
    shows the curve); otherwise the last ``most``, which on a frontier cross the fewest
    bytes and have the cheapest tails to simulate."""
    if most is None or len(cuts) <= most:
        return cuts
    if rule != "spread":
        return cuts[-most:]
    picks = sorted({round(i * (len(cuts) - 1) / max(most - 1, 1)) for i in range(most)})
    return [cuts[i] for i in picks]


def default_sweep(model: str) -> Sweep:
    """The sweep ``model`` gets when nothing is asked: :class:`Sweep`'s defaults with the
    model's own changes (fewer cuts, widths and qualities for the heavy ImageNet models)."""
    (model,) = check_models([model])
    return replace(Sweep(), **MODELS[model].sweep)


def _cut_points(
    simulator: AccuracySimulator, cut: CutPoint, sweep: Sweep, n_bytes: int, skipped: list[str]
) -> list[Point]:
    """Every point of one cut: ours over each granularity's probed widths, then float32 and JALAD."""
    p = cut.position
    points = []
    floors = [floor_for(simulator.float_accuracy, t) for t in sweep.thresholds]
    for granularity in sweep.granularities:

        def top1(width: str, granularity: str = granularity) -> float:
            return simulator.evaluate(p, width, granularity)[0]

        for bits, accuracy in probe_widths(top1, sweep, floors):
            gran = "tensor" if bits in FLOAT_MODES else granularity
            if bits in FLOAT_MODES and granularity != sweep.granularities[0]:
                continue  # a float width has no range: one point, not one per granularity
            points += _our_points(simulator, cut, bits, gran, accuracy, sweep, n_bytes, skipped)
    if cut.kind == "cloud-only":
        points += _lossy_points(simulator, cut, sweep, n_bytes, skipped)
    float32 = [len(_frame(simulator, cut, "float32", "tensor", "stream", "none", i)) for i in range(n_bytes)]
    points.append(Point("float32-split", float(np.mean(float32)), simulator.float_accuracy, {"cut": p}))
    points.append(Point("jalad", _jalad_bytes(simulator, cut, n_bytes), simulator.evaluate(p, 8)[0], {"cut": p}))
    return points


def probe_widths(accuracy: Callable[[str], float], sweep: Sweep, floors: Sequence[float]) -> list[tuple[str, float]]:
    """``(width, top-1)`` for the widths worth a pass of the model's tail: the widest integer
    width, then, per accuracy floor (tightest first), a bisection for the narrowest width
    that reaches it, reusing every width already probed; float widths always. Exact when
    top-1 does not fall as the width grows (each probed width is measured, none assumed);
    it probes about 4 of 7 widths instead of all 7, which on EfficientNet-Lite2 saves
    minutes per cut."""
    integers = sorted((str(w) for w in sweep.widths if w not in FLOAT_MODES), key=int)
    probed: dict[str, float] = {}

    def top1(w: str) -> float:
        if w not in probed:
            probed[w] = accuracy(w)
        return probed[w]

    if integers:
        top1(integers[-1])
        for floor in sorted(floors, reverse=True):
            if top1(integers[-1]) < floor:
                continue
            lo, hi = 0, len(integers) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if top1(integers[mid]) >= floor:
                    hi = mid
                else:
                    lo = mid + 1
    for w in sweep.widths:
        if w in FLOAT_MODES:
            top1(str(w))
    return sorted(probed.items(), key=lambda kv: (kv[0] in FLOAT_MODES, int(kv[0]) if kv[0].isdecimal() else 0))


def _frame(simulator: AccuracySimulator, cut: CutPoint, bits: str, gran: str, layout: str, codec: str, i: int) -> bytes:
    packed = packed_cut(simulator, Config(cut.position, bits, gran), i)
    return encode_packed([t.relayout(layout) for t in packed], codec=codec, cut_id=cut.position, request_id=i)


def _our_points(
    simulator: AccuracySimulator,
    cut: CutPoint,
    bits: str,
    granularity: str,
    accuracy: float,
    sweep: Sweep,
    n_bytes: int,
    skipped: list[str],
) -> list[Point]:
    """One point per (layout, codec) for this (cut, bits, granularity): mean frame bytes over
    the first ``n_bytes`` images. A float width has no layout (its values go as they are)."""
    layouts = ["stream"] if bits in FLOAT_MODES else list(sweep.layouts)
    sizes: dict[tuple[str, str], list[int]] = {}
    assert sweep.codecs is not None
    for i in range(n_bytes):
        packed = packed_cut(simulator, Config(cut.position, bits, granularity), i)
        for layout in layouts:
            tensors = [t.relayout(layout) for t in packed]
            for codec in sweep.codecs:
                key = (layout, codec)
                if key in sizes and sizes[key] is None:
                    continue
                reason = _refusal(codec, tensors, layout)
                if reason is not None:
                    sizes[key] = None  # type: ignore[assignment]
                    skipped.append(f"cut {cut.position} {bits}b {granularity} {layout} {codec}: {reason}")
                    continue
                frame = encode_packed(tensors, codec=codec, cut_id=cut.position, request_id=i)
                sizes.setdefault(key, []).append(len(frame))
    return [
        Point(
            "ours",
            float(np.mean(s)),
            accuracy,
            {"cut": cut.position, "bits": bits, "granularity": granularity, "layout": layout, "codec": codec},
        )
        for (layout, codec), s in sizes.items()
        if s is not None
    ]


def _lossy_points(
    simulator: AccuracySimulator, cut: CutPoint, sweep: Sweep, n_bytes: int, skipped: list[str]
) -> list[Point]:
    """Ours at cloud-only through the table's lossy codecs (image codecs over the input's
    8-bit codes, stream layout), at each of ``sweep.lossy_levels``: accuracy from the model
    on what the cloud decodes from real frames (the simulator's lossy path), bytes from
    the same frames. Skipped, and said so, where the table or the simulator has no levels."""
    lossy = [c for c in CODEC_TABLE if c.lossy]
    if not lossy or not sweep.lossy_levels:
        return []
    if "level" not in {f.name for f in fields(Config)} or "level" not in signature(simulator.evaluate).parameters:
        skipped.append("lossy codecs of the table: Config or the simulator has no level here")
        return []
    granularity = sweep.granularities[0]
    packed = [packed_cut(simulator, Config(cut.position, "8", granularity), i) for i in range(n_bytes)]
    points = []
    for codec in lossy:
        reason = _refusal(codec.name, packed[0], "stream")
        if reason is not None:
            skipped.append(f"cut {cut.position} 8b {granularity} stream {codec.name}: {reason}")
            continue
        for level in sweep.lossy_levels:
            accuracy = simulator.evaluate(cut.position, 8, granularity, codec.name, level)[0]
            sizes = [
                len(encode_packed(t, codec=codec.name, level=level, cut_id=cut.position, request_id=i))
                for i, t in enumerate(packed)
            ]
            where = {"cut": cut.position, "bits": "8", "granularity": granularity, "layout": "stream"}
            points.append(
                Point("ours", float(np.mean(sizes)), accuracy, {**where, "codec": codec.name, "level": level})
            )
    return points


def _refusal(codec: str, tensors: list, layout: str) -> str | None:
    """Why ``codec`` cannot code one of these packed tensors (None when it can)."""
    entry = next(c for c in CODEC_TABLE if c.name == codec)
    for t in tensors:
        bits = t.params.bits
        info = PayloadInfo(
            None if isinstance(bits, str) else bits,
            tuple(t.shape),
            t.layout,
            t.params.axis if t.params.granularity == "channel" else None,
        )
        reason = entry.accepts(info)
        if reason is not None:
            return reason
    return None


def _jalad_bytes(simulator: AccuracySimulator, cut: CutPoint, n_bytes: int) -> float:
    """JALAD's frame: our frame's header for 8-bit per-tensor codes (codec none), with the
    raw payload replaced by each tensor's Huffman-coded codes and code table."""
    arrays = simulator.activations(cut.position)
    sizes = []
    for i in range(n_bytes):
        tensors = [pack_tensor(a[i], PackConfig(bits=8)) for a in arrays]
        header = len(encode_packed(tensors, cut_id=cut.position, request_id=i)) - sum(len(t.data) for t in tensors)
        huffman = sum(huffman_bytes(quantize(a[i], 8)[0]) for a in arrays)
        sizes.append(header + huffman)
    return float(np.mean(sizes))


def _image_points(
    graph: Graph,
    crops: list[Image.Image],
    preset: str,
    simulator: AccuracySimulator,
    codecs: dict[str, tuple[int, ...]],
    skipped: list[str],
    say: Log,
    name: str,
) -> list[Point]:
    """Each image codec at each quality: encode the crop, decode, normalise, run the float model."""
    if not codecs:
        return []
    _, normalise = split_of(preset)
    model = _WholeModel(graph, batch=min(64, len(crops)))
    labels = simulator.calibration.labels
    points = []
    for codec, qualities in codecs.items():
        entry = IMAGE_CODECS[codec]
        if not entry.available():
            skipped.append(f"image codec {codec}: {entry.library} is not available on this host")
            continue
        for q in qualities:
            start = time.perf_counter()
            data = [entry.encode(crop, q) for crop in crops]
            x = np.stack([normalise(entry.decode(d, crop.size)) for d, crop in zip(data, crops)]).astype(
                np.float32, copy=False
            )
            predictions = model.top1(x)
            accuracy = float(np.mean(predictions == labels))
            where: dict[str, Any] = {"codec": codec} if not entry.lossy else {"codec": codec, "quality": q}
            if not entry.lossy:
                mismatch = int(np.sum(predictions != simulator.float_predictions))
                where["differs_from_float"] = mismatch
                if mismatch:
                    skipped.append(
                        f"check: the lossless {codec} input gave {mismatch} top-1 classes other than the "
                        f"simulator's float model (expected 0)"
                    )
            points.append(Point(codec, float(np.mean([len(d) for d in data])), accuracy, where))
            say(
                f"{name}: {codec} q{q}: {points[-1].bytes:.0f} B, top-1 {100 * accuracy:.1f} % "
                f"({time.perf_counter() - start:.1f} s)"
            )
    return points


#: ``--quick``: a small sweep that still exercises every method, for a check in minutes.
QUICK: dict[str, Any] = {
    "widths": (2, 4, 8),
    "granularities": ("tensor",),
    "layouts": ("stream",),
    "max_cuts": 2,
    "image_codecs": {"jpeg": (30, 70, 90), "webp": (30, 70, 90), "png": (100,)},
    "byte_images": 16,
}
