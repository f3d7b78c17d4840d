"""Beyond uniform levels (issue 18 item 5): bytes at equal top-1, per-input rules vs min-max.

Today a cut tensor is quantised with the uniform range [min, max] of *this input*
(``dyno_compile/packing/quantize.py``). One outlier stretches that range, so most values
share a few levels. This script measures whether another per-input rule sends fewer bytes
for the same top-1, on real weights, real labelled images and the real cut activations:

* ``uniform``: min-max, the rule on the wire now (reproduced here code for code, and
  checked against ``packing.quantize`` by ``--smoke``);
* ``clip-pP``: lo, hi at the (100 - P)th and Pth percentile of this input (per tensor or
  per channel); values outside are clipped. The decoder is unchanged (x' = q * scale + lo);
  the device needs a selection pass instead of min/max;
* ``msK``: lo, hi = mean -/+ K std of this input, within [min, max]: one more reduction
  pass (sum, sum of squares) on the device, no sort;
* ``pow0.5``: codes of sign(x) sqrt(|x|) with their own min-max, decoded by squaring: finer
  levels near zero, where most post-ReLU values sit;
* ``mu15``: mu-law companding, sign(x) log1p(15 |x| / m) / log1p(15), m = max |x| of this
  input (same granularity as the range), decoded by the inverse.

For each model and cut, every rule and granularity is evaluated at 1..6 bits, from the
fewest up, stopping at the first width within the tightest budget (more bits only cost
more bytes; rules other than uniform start two widths below uniform's answer). Each
configuration gives top-1 on all images with the rest of the model run in JAX on the
dequantised tensor, and the mean bytes of a real frame over the first ``--byte-samples``
images: the codes packed with ``bitpack.pack`` in both layouts, compressed with zstd and
framed by ``packing.encode_packed`` (header and CRC included; the smaller layout counts,
as the search would pick it). The answer per budget (0.5, 1, 2 points of top-1 below the
float model) is the fewest bytes each rule needs, and its ratio to uniform's in the same
run. Results: docs/nonuniform-quant.md.

Companded frames are framed with today's header (lo and scale of the companded domain); a
real companding mode would need a new value of the header's mode byte (same size).

    nice -n 5 .venv/bin/python benchmarks/nonuniform_quant.py            # all models, all images
    nice -n 5 .venv/bin/python benchmarks/nonuniform_quant.py --models resnet20 --limit 200
    nice -n 5 .venv/bin/python benchmarks/nonuniform_quant.py --models efficientnet_lite2 --cuts _blocks.14.add_6
    .venv/bin/python benchmarks/nonuniform_quant.py --smoke              # synthetic self-check, ~s
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dyno_compile.packing import LAYOUTS, PackedTensor, encode_packed
from dyno_compile.packing.bitpack import pack
from dyno_compile.packing.quantize import QuantParams

#: Widths compared: the issue asks for 2..6; 1 is added because several cuts already hold
#: top-1 at 2 bits, and a rule can only win bytes there by holding it at 1.
WIDTHS = (1, 2, 3, 4, 5, 6)
#: Allowed top-1 loss in points; the tightest one ends the walk up the widths.
BUDGETS = (0.5, 1.0, 2.0)
GRANULARITIES = ("tensor", "channel")
SQUEEZENET = "/work/shared/data/imagenet/squeezenet1.1_fp16.onnx"
#: Per model: cuts named by the node before them (early, middle, late), so that a change in
#: cut numbering cannot silently move them. SqueezeNet's squeeze outputs and
#: EfficientNet's residual sums are those models' smallest tensors (the cuts a split would
#: use); EfficientNet's are signed (no activation), unlike every other cut here.
CUTS: dict[str, tuple[str, ...]] = {
    "resnet20": ("layer1.2.relu_1", "layer2.2.relu_1", "layer3.1.relu_1"),
    "resnet56": ("layer1.8.relu_1", "layer2.8.relu_1", "layer3.4.relu_1"),
    "squeezenet": ("fire3_squeeze1x1_2", "fire5_squeeze1x1_2", "fire7_squeeze1x1_2"),
    # Late only by default: from the earlier residual sums the rest of the model cost 13-21 s
    # per configuration per 64 images in XLA on the shared 2-core host this ran on.
    "efficientnet_lite2": ("_blocks.19.add_6",),
}
MIN_SCALE = np.float32(2.0**-126)
MU = 15.0


# --------------------------------------------------------------------------- the rules
def _reduce(x: jax.Array, fn: Callable, granularity: str, axis: int) -> jax.Array:
    """``fn`` over the whole tensor, or over all axes but ``axis``; keepdims, to broadcast."""
    axes = tuple(range(x.ndim)) if granularity == "tensor" else tuple(d for d in range(x.ndim) if d != axis)
    return fn(x, axis=axes, keepdims=True)


def _min_max(x: jax.Array, granularity: str, axis: int) -> tuple[jax.Array, jax.Array]:
    return _reduce(x, jnp.min, granularity, axis), _reduce(x, jnp.max, granularity, axis)


def _percentile(p: float) -> Callable:
    """lo, hi at the (100 - p)th and pth percentile of this input."""

    def rng(x: jax.Array, granularity: str, axis: int) -> tuple[jax.Array, jax.Array]:
        q = jnp.asarray([(100.0 - p) / 100.0, p / 100.0], jnp.float32)
        lo, hi = _reduce(x, lambda a, **kw: jnp.quantile(a, q, **kw), granularity, axis)
        return lo.astype(x.dtype), hi.astype(x.dtype)

    return rng


def _mean_std(k: float) -> Callable:
    """lo, hi = mean -/+ k std of this input, kept within [min, max]."""

    def rng(x: jax.Array, granularity: str, axis: int) -> tuple[jax.Array, jax.Array]:
        mean = _reduce(x, jnp.mean, granularity, axis)
        std = _reduce(x, jnp.std, granularity, axis)
        lo, hi = _min_max(x, granularity, axis)
        return jnp.maximum(lo, mean - k * std), jnp.minimum(hi, mean + k * std)

    return rng


def widths(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(``float32(1 / (2**bits - 1))`` rounded once from double, as the wire has it; the
    largest code): passed traced, so one compiled function serves every width."""
    return np.float32(1 / ((1 << bits) - 1)), np.float32((1 << bits) - 1)


def _uniform_codes(
    x: jax.Array, lo: jax.Array, hi: jax.Array, inv: jax.Array, top: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The wire's rule (docs/wire-format.md) with a given range: codes, lo, scale, x'.
    ``inv``, ``top``: :func:`widths`."""
    scale = (hi - lo) * inv
    scale = jnp.where(scale >= MIN_SCALE, scale, jnp.float32(1.0))
    q = jnp.clip(jnp.rint((x - lo) * (jnp.float32(1) / scale)), 0, top)
    return q.astype(jnp.uint16), lo, scale, q * scale + lo


def _pow_compand(x: jax.Array, scale_ref: jax.Array) -> jax.Array:
    del scale_ref
    return jnp.sign(x) * jnp.sqrt(jnp.abs(x))


def _pow_expand(y: jax.Array, scale_ref: jax.Array) -> jax.Array:
    del scale_ref
    return jnp.sign(y) * y * y


def _mu_compand(x: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.log1p(MU * jnp.abs(x) / m) / np.log1p(MU)


def _mu_expand(y: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.sign(y) * jnp.expm1(jnp.abs(y) * np.log1p(MU)) * m / MU


@dataclass(frozen=True)
class Rule:
    """A per-input quantiser: a range rule (uniform levels in it), or a compander whose
    output is quantised with its own min-max and expanded back on decode."""

    name: str
    family: str  # "uniform", "clip" (range only: no wire change) or "compand" (new wire mode)
    range_fn: Callable = _min_max
    compand: tuple[Callable, Callable] | None = None

    def apply(
        self, x: jax.Array, inv: jax.Array, top: jax.Array, granularity: str, axis: int
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(codes, lo, scale, x') for one batch-1 tensor; x' in ``x``'s dtype."""
        dtype = x.dtype
        x = x.astype(jnp.float32)
        if self.compand is None:
            lo, hi = self.range_fn(x, granularity, axis)
            codes, lo, scale, xq = _uniform_codes(x, lo, hi, inv, top)
            return codes, lo, scale, xq.astype(dtype)
        forward, inverse = self.compand
        m = _reduce(jnp.abs(x), jnp.max, granularity, axis)
        m = jnp.where(m > 0, m, jnp.float32(1.0))
        y = forward(x, m)
        lo, hi = _min_max(y, granularity, axis)
        codes, lo, scale, yq = _uniform_codes(y, lo, hi, inv, top)
        return codes, lo, scale, inverse(yq, m).astype(dtype)


RULES: tuple[Rule, ...] = (
    Rule("uniform", "uniform"),
    Rule("clip-p99", "clip", _percentile(99.0)),
    Rule("clip-p99.9", "clip", _percentile(99.9)),
    Rule("clip-p99.99", "clip", _percentile(99.99)),
    Rule("ms3", "clip", _mean_std(3.0)),
    Rule("ms5", "clip", _mean_std(5.0)),
    Rule("pow0.5", "compand", compand=(_pow_compand, _pow_expand)),
    Rule("mu15", "compand", compand=(_mu_compand, _mu_expand)),
)

FAMILIES = ("uniform", "clip", "compand")
#: Measured by default: in a 200-image ResNet-20 trial clip-p99 and ms3 (too tight),
#: clip-p99.99 (the same as uniform) and mu15 (as pow0.5) never beat these, and each rule
#: costs minutes on the ImageNet models on a shared 2-core host.
DEFAULT_RULES = ("uniform", "clip-p99.9", "ms5", "pow0.5")


@partial(jax.jit, static_argnames=("rule", "granularity", "axes"))
def _batch_jit(xs: tuple, inv: jax.Array, top: jax.Array, rule: Rule, granularity: str, axes: tuple[int, ...]) -> tuple:
    return tuple(
        jax.vmap(partial(rule.apply, inv=inv, top=top, granularity=granularity, axis=axis))(x)
        for x, axis in zip(xs, axes)
    )


def _batch(xs: tuple, rule: Rule, bits: int, granularity: str, axes: tuple[int, ...]) -> tuple:
    """``rule.apply`` per sample (each request keeps its own range), every tensor of a cut."""
    return _batch_jit(xs, *widths(bits), rule, granularity, axes)


def frame_bytes(
    arrays: Sequence[np.ndarray], rule: Rule, bits: int, granularity: str, axes: Sequence[int], cut_id: int = 0
) -> float:
    """Mean bytes of a real zstd frame per sample of ``arrays`` (``[N, *batch-1 shape]``
    each), in the better of the two bit layouts."""
    outs = _batch(tuple(jnp.asarray(a) for a in arrays), rule, bits, granularity, tuple(axes))
    outs = [tuple(np.asarray(o) for o in out) for out in outs]
    best = float("inf")
    for layout in LAYOUTS:
        sizes = []
        for i in range(len(arrays[0])):
            tensors = []
            for a, axis, (codes, lo, scale, _) in zip(arrays, axes, outs):
                params = QuantParams(
                    bits, granularity, axis if granularity == "channel" else 0, lo[i].reshape(-1), scale[i].reshape(-1)
                )
                data = pack(codes[i], bits, layout)
                tensors.append(PackedTensor(a.dtype, tuple(a.shape[1:]), params, layout, data))
            sizes.append(len(encode_packed(tensors, codec="zstd", cut_id=cut_id, request_id=i)))
        best = min(best, float(np.mean(sizes)))
    return best


# --------------------------------------------------------------------------- measuring
@dataclass
class Point:
    """One measured configuration."""

    model: str
    cut: int
    cut_name: str
    shape: str
    rule: str
    family: str
    granularity: str
    bits: int
    top1: float
    bytes: float


def _model(name: str) -> tuple:
    """(graph, calibration) as the search builds them: zoo or ONNX import, run_passes, the
    default calibration set (real labelled images)."""
    from dyno_compile.frontend.resolve import load_model
    from dyno_compile.passes import run_passes
    from dyno_compile.search.calibration import default_calibration

    spec = SQUEEZENET if name == "squeezenet" else name
    graph = run_passes(load_model(spec))
    return graph, default_calibration(spec, graph.inputs[0].shape)


def measure_model(
    name: str, rules: Sequence[Rule], limit: int | None, byte_samples: int, log: Callable[[str], None]
) -> tuple[float, list[Point]]:
    """Float top-1 and every measured :class:`Point` of one model's cuts. Accuracy runs the
    simulator's own jitted tail (``_chain_index``/``_predict``, read only: the public
    ``evaluate`` knows only the wire's min-max rule) on this script's dequantised tensors."""
    from dyno_compile.passes import find_cuts
    from dyno_compile.search.accuracy import AccuracySimulator

    graph, calibration = _model(name)
    if limit is not None:
        calibration = calibration.head(limit)
    by_name = {c.after: c for c in find_cuts(graph)}
    cuts = [by_name[n] for n in CUTS[name]]
    sim = AccuracySimulator(graph, calibration, cuts, batch=32)
    float_top1 = sim.float_accuracy
    floor = float_top1 - min(BUDGETS) / 100 - 1e-12
    log(f"{name}: float top-1 {float_top1:.2%} on {len(calibration)} images ({calibration.source})")
    points: list[Point] = []
    for cut in cuts:
        arrays = sim.activations(cut.position)
        axes = tuple(cut.channel_axes)
        k = sim._chain_index(cut.position)  # the tail from this cut: the simulator's own segments (read only)
        head = tuple(a[:byte_samples] for a in arrays)
        shape = "x".join(map(str, arrays[0].shape[1:])) if len(arrays) == 1 else f"{len(arrays)} tensors"
        first: dict[str, int] = {}  # per granularity: uniform's first width within the tightest budget
        for rule in rules:
            for gran in GRANULARITIES:
                # Other rules start two widths below uniform's answer: none is expected to
                # hold top-1 with a quarter of uniform's levels, and each width costs a pass.
                start_bits = max(WIDTHS[0], first.get(gran, WIDTHS[0]) - 2)
                for bits in (w for w in WIDTHS if w >= start_bits):
                    start = time.perf_counter()

                    def transform(
                        xs: tuple, _rows: range, rule: Rule = rule, bits: int = bits, gran: str = gran
                    ) -> tuple:
                        return tuple(out[3] for out in _batch(xs, rule, bits, gran, axes))

                    predictions = sim._predict(k, transform)
                    top1 = float(np.mean(predictions == sim.calibration.labels))
                    nbytes = frame_bytes(head, rule, bits, gran, axes, cut.position)
                    points.append(
                        Point(name, cut.position, cut.after, shape, rule.name, rule.family, gran, bits, top1, nbytes)
                    )
                    log(
                        f"  cut {cut.position} {cut.after} {rule.name:12s} {gran:7s} {bits}b "
                        f"top-1 {top1:.2%} {nbytes:9.0f} B  ({time.perf_counter() - start:.1f}s)"
                    )
                    if top1 >= floor:
                        break
                if rule.family == "uniform":
                    first[gran] = bits
    return float_top1, points


def fewest(points: Sequence[Point], float_top1: float, budget: float) -> Point | None:
    """The configuration with the fewest bytes within ``budget`` points of the float model."""
    ok = [p for p in points if p.top1 >= float_top1 - budget / 100 - 1e-12]
    return min(ok, key=lambda p: p.bytes) if ok else None


def _cell(p: Point | None, base: Point | None, measured: bool = True) -> str:
    if not measured:
        return "n/a"
    if p is None:
        return "none ≤6b"
    ratio = f" ({p.bytes / base.bytes:.2f}x)" if base is not None else ""
    return f"{p.bytes:.0f}{ratio} {p.bits}b {p.granularity[0]}"


def report(results: dict[str, tuple[float, list[Point]]]) -> str:
    """Markdown tables: per model, cut and budget, the fewest bytes of uniform, of each
    rule family's best rule, and of every rule; ratios against uniform in this run."""
    names = list(dict.fromkeys(p.rule for _, points in results.values() for p in points))
    lines = [
        "\n### Per model: the fewest bytes at any measured cut (the cut a split would choose), "
        "per rule family; ratio to uniform\n",
        "| model | budget | uniform | best clip | best compand |",
        "|---|---|---|---|---|",
    ]
    for model, (float_top1, points) in results.items():
        for budget in BUDGETS:
            fam = {f: fewest([p for p in points if p.family == f], float_top1, budget) for f in FAMILIES}
            cells = [
                _cell(fam[f], fam["uniform"], any(p.family == f for p in points))
                + (f" {fam[f].rule} cut {fam[f].cut}" if fam[f] else "")
                for f in FAMILIES
            ]
            lines.append(f"| {model} | {budget:g} | " + " | ".join(cells) + " |")
    for budget in BUDGETS:
        lines += [
            f"\n### Fewest bytes within {budget:g} point(s) of float top-1 "
            "(mean zstd frame bytes; ratio to uniform; bits; t = per tensor, c = per channel)\n",
            "| model | cut | tensor | " + " | ".join(names) + " | best clip | best compand |",
            "|---" * (len(names) + 5) + "|",
        ]
        for model, (float_top1, points) in results.items():
            for cut in dict.fromkeys(p.cut for p in points):
                at = [p for p in points if p.cut == cut]
                best = {n: fewest([p for p in at if p.rule == n], float_top1, budget) for n in names}
                base = best["uniform"]
                fam = {f: fewest([p for p in at if p.family == f], float_top1, budget) for f in ("clip", "compand")}
                cells = [_cell(best[n], base) for n in names]
                cells += [
                    _cell(fam[f], base, any(p.family == f for p in at)) + (f" {fam[f].rule}" if fam[f] else "")
                    for f in ("clip", "compand")
                ]
                lines.append(f"| {model} | {cut} {at[0].cut_name} | {at[0].shape} | " + " | ".join(cells) + " |")
    lines += [
        "\n### Bytes at equal bits: each rule's frame over uniform's, same cut, width and granularity\n",
        "| rule | granularity | pairs | min | median | max |",
        "|---|---|---|---|---|---|",
    ]
    for name in names[1:]:
        for gran in GRANULARITIES:
            ratios = [
                p.bytes / u.bytes
                for _, points in results.values()
                for u in points
                if u.rule == "uniform" and u.granularity == gran
                for p in points
                if p.rule == name and (p.model, p.cut, p.granularity, p.bits) == (u.model, u.cut, u.granularity, u.bits)
            ]
            if ratios:
                spread = " | ".join(f"{v:.2f}" for v in (min(ratios), np.median(ratios), max(ratios)))
                lines.append(f"| {name} | {gran} | {len(ratios)} | {spread} |")
    lines += [
        "\n### Top-1 and bytes at equal bits, as measured (each rule walks up from its first width "
        "to the first within the tightest budget)\n",
        "| model | cut | gran | bits | " + " | ".join(names) + " |",
        "|---" * (len(names) + 4) + "|",
    ]
    for model, (_, points) in results.items():
        table = {(p.cut, p.granularity, p.bits, p.rule): p for p in points}
        for cut, gran, bits in sorted({(p.cut, p.granularity, p.bits) for p in points}):
            cells = [
                f"{table[cut, gran, bits, n].top1:.2%} {table[cut, gran, bits, n].bytes:.0f} B"
                if (cut, gran, bits, n) in table
                else ""
                for n in names
            ]
            lines.append(f"| {model} | {cut} | {gran} | {bits} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def smoke() -> None:
    """Synthetic self-check in a few seconds: the uniform rule here gives the wire's codes
    and range bit for bit (``packing.quantize``), x' is the documented dequantisation, a
    frame's bytes equal ``pack_tensor`` + ``encode_packed`` for the same tensor, clipping
    moves the range inward, companding decodes to within one level, and ``fewest`` picks
    the cheapest configuration within the budget."""
    from dyno_compile.packing import PackConfig, pack_tensor
    from dyno_compile.packing.quantize import dequantize, quantize

    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((4, 1, 8, 6, 5)).astype(np.float32), 0)
    x[0, 0, 2, 3, 1] = 40.0  # an outlier: the case clipping is for
    uniform, clip = RULES[0], RULES[1]
    for gran in GRANULARITIES:
        for bits in (2, 5):
            codes, lo, scale, xq = (np.asarray(o) for o in _batch((jnp.asarray(x),), uniform, bits, gran, (1,))[0])
            for i in range(len(x)):
                ref_codes, ref = quantize(x[i], bits, granularity=gran, axis=1)
                assert np.array_equal(codes[i], ref_codes), (gran, bits, i)
                assert np.array_equal(lo[i].reshape(-1), ref.lo) and np.array_equal(scale[i].reshape(-1), ref.scale)
                assert np.allclose(xq[i], dequantize(ref_codes, ref), rtol=0, atol=1e-6)
            for layout in LAYOUTS:
                want = np.mean(
                    [
                        len(
                            encode_packed(
                                [pack_tensor(x[i], PackConfig(bits=bits, granularity=gran, axis=1, layout=layout))],
                                codec="zstd",
                                cut_id=0,
                                request_id=i,
                            )
                        )
                        for i in range(len(x))
                    ]
                )
                got = frame_bytes([x], uniform, bits, gran, (1,))
                assert got <= want + 1e-9, (got, want, layout)
    _, lo_c, scale_c, _ = (np.asarray(o) for o in _batch((jnp.asarray(x),), clip, 4, "tensor", (1,))[0])
    _, lo_u, scale_u, _ = (np.asarray(o) for o in _batch((jnp.asarray(x),), uniform, 4, "tensor", (1,))[0])
    assert scale_c[0].item() < scale_u[0].item() / 4, "p99 must drop the 40.0 outlier from sample 0's range"
    signed = rng.standard_normal((2, 1, 4, 8, 8)).astype(np.float32)
    for rule in RULES[-2:]:
        _, _, _, back = (np.asarray(o) for o in _batch((jnp.asarray(signed),), rule, 6, "channel", (1,))[0])
        assert np.abs(back - signed).max() < 0.25, rule.name
    pts = [Point("m", 1, "c", "s", "r", "f", "tensor", b, t, n) for b, t, n in ((2, 0.80, 100), (3, 0.905, 150))]
    assert fewest(pts, 0.91, 1.0) is pts[1] and fewest(pts, 0.91, 0.1) is None and fewest(pts, 0.91, 11) is pts[0]
    print("smoke: ok")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(CUTS), choices=list(CUTS))
    p.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES), choices=[r.name for r in RULES])
    p.add_argument("--limit", type=int, default=None, help="first LIMIT images (default: all)")
    p.add_argument("--byte-samples", type=int, default=32, help="frames measured per configuration (default 32)")
    p.add_argument("--json", type=Path, default=None, help="also write every measured point here")
    p.add_argument("--smoke", action="store_true", help="synthetic self-check only")
    p.add_argument("--cuts", nargs="+", default=None, help="cuts by the node before them (one model only)")
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="print the tables of --json files; measure nothing",
    )
    args = p.parse_args(argv)
    if args.smoke:
        smoke()
        return
    if args.report is not None:
        merged: dict[str, tuple[float, list[Point]]] = {}
        for path in args.report:
            for m, v in json.loads(path.read_text()).items():
                merged.setdefault(m, (v["float_top1"], []))[1].extend(Point(**p) for p in v["points"])
        print(report(merged))
        return
    if args.cuts is not None:
        if len(args.models) != 1:
            p.error("--cuts names the cuts of one model: give one --models")
        CUTS[args.models[0]] = tuple(args.cuts)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    rules = tuple(r for r in RULES if r.name in args.rules or r.family == "uniform")
    results: dict[str, tuple[float, list[Point]]] = {}
    for m in args.models:
        results[m] = measure_model(m, rules, args.limit, args.byte_samples, log)
        if args.json is not None:  # after each model, so a long run's finished models survive
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps({k: {"float_top1": f, "points": [asdict(p) for p in ps]} for k, (f, ps) in results.items()})
            )
    print(
        f"Measured on this host ({jax.devices()[0].platform}, JAX {jax.__version__}) in "
        f"{time.perf_counter() - start:.0f} s: top-1 on real labelled images with the rest of the model "
        "in JAX at the model's own dtype (float32; SqueezeNet's ONNX file is float16), bytes as mean "
        f"zstd frames over the first {args.byte_samples} images."
    )
    for model, (float_top1, points) in results.items():
        print(f"- {model}: float top-1 {float_top1:.2%}; {len(points)} configurations measured")
    print(report(results))


if __name__ == "__main__":
    main()
