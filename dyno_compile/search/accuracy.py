"""Accuracy of every (cut, width, granularity) on real calibration data, simulated in JAX.

For one configuration the cloud sees, per request, the crossing tensors quantised with
*that request's* range (DynO's input-specific rule; per channel, along each tensor's own
channel axis, as the cut records it) and dequantised; everything else is the float model.
So the simulator runs the float model once up to each cut, keeps those activations, and
per configuration only rounds them with the IR's own cut ops
(``quant_range``, ``quantize``, ``dequantize``: the same meaning the split graphs have)
and runs the rest of the model. Bit packing and the lossless codec are skipped: both are
exact, so they cannot change a prediction. A lossy codec (an image codec at cut 0) is not:
its configurations run the rest of the model on what the cloud decodes from a real frame,
each sample quantised, packed, encoded, decoded and dequantised by the packing library
itself (NumPy and the codec's library), so the accuracy is the codec's, measured, not
modelled; cached per (cut, width, granularity, codec, level).

Every sample is a batch-1 request; batches of them run as ``jax.vmap`` over the batch-1
graph, so the per-request range stays per request and the graph needs no rewriting. The
model is cut into the chain of segments between the candidate cuts (the same chain a
build compiles), each jitted once: the activations at a cut come from the nearest cached
earlier cut through the segments in between, and the rest of the model from a cut is
the tail of that chain.

Memory does not grow with the number of samples: a configuration streams them through the
model one batch at a time, and activations are cached per (cut, batch) within
``cache_bytes`` (least recently used go first; what does not fit is recomputed from the
nearest cached earlier cut). Holding every sample's activations at a cut instead made a
224x224 search on 200 images peak at 5.4 GB, and it grew with every image added.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dyno_compile.artifact.plan import candidate_cuts
from dyno_compile.errors import InputError
from dyno_compile.ir import CONST_OP, Graph, evaluate, get_op
from dyno_compile.ir.ops import DEFAULT_CHANNEL_AXIS
from dyno_compile.packing import KERNEL_LAYOUT, PackConfig, decode_packed, encode_packed, pack_tensor
from dyno_compile.packing.vocab import (
    FLOAT_MODES,
    MAX_BITS,
    MIN_BITS,
    bits_key,
    bits_value,
    check_granularity,
    check_level,
    check_width,
    get_codec,
    refused_as,
)
from dyno_compile.passes import CutPoint, find_cuts
from dyno_compile.passes.segment import segment
from dyno_compile.search.calibration import CalibrationSet, check_fits

__all__ = ["DEFAULT_CACHE_BYTES", "AccuracySimulator", "decoded", "fewest_bits", "round_trip"]

#: Bound on cached cut activations; one batch in flight comes on top of it (a :meth:`head`
#: for the wire's bytes keeps its own, as large). 512 MB holds mobilenet_v2's first cut at
#: 224x224 (1.6 MB per image) for 200 images and change; a cut that does not fit costs a
#: rerun of the segments before it, a fraction of the rest of the model that every
#: configuration runs anyway.
DEFAULT_CACHE_BYTES = 512 << 20
#: Default batch: as many samples as keep the model's largest activation within
#: :data:`BATCH_BYTES`, at most :data:`MAX_BATCH`. A batch of 64 at 224x224 held some
#: 300 MB per tensor of mobilenet_v2's early layers, several such at once.
BATCH_BYTES = 64 << 20
MAX_BATCH = 64
Arrays = tuple[np.ndarray, ...]
SegmentRunner = Callable[[int, tuple], tuple]
#: What the cloud receives for one batch: ``(tensors at the cut, padded to the batch size;
#: the indices of the batch's real samples) -> tensors the rest of the model runs on``.
Transform = Callable[[tuple, range], tuple]


def round_trip(
    x: jax.Array, bits: int | str, granularity: str = "tensor", axis: int = DEFAULT_CHANNEL_AXIS
) -> jax.Array:
    """What the cloud rebuilds from one request's tensor ``x`` sent at ``bits``: the cut ops
    of :mod:`dyno_compile.passes.insert_pack`, less the (lossless) bit packing. ``axis`` is
    ``x``'s channel axis, which a per-channel range is taken along."""
    if bits == "float32":
        return x
    cast = get_op("cast").impl
    if bits == "float16":
        return cast(cast(cast(x, dtype="float16"), dtype="float32"), dtype=str(x.dtype))
    attrs = {"bits": bits, "granularity": granularity, "axis": axis}
    rng = get_op("quant_range").impl(x, **attrs)
    codes = get_op("quantize").impl(x, rng, **attrs)
    return cast(get_op("dequantize").impl(codes, rng, granularity=granularity, axis=axis), dtype=str(x.dtype))


@partial(jax.jit, static_argnames=("bits", "granularity", "axes"))
def _round_trip_batch(
    xs: tuple[jax.Array, ...], bits: int | str, granularity: str, axes: tuple[int, ...]
) -> tuple[jax.Array, ...]:
    """``round_trip`` per sample of a batch (each request keeps its own range); ``axes``:
    each tensor's channel axis."""
    return tuple(
        jax.vmap(partial(round_trip, bits=bits, granularity=granularity, axis=axis))(x) for x, axis in zip(xs, axes)
    )


def decoded(
    tensors: Sequence[np.ndarray],
    axes: Sequence[int],
    bits: int,
    granularity: str,
    codec: str,
    level: int | None,
    *,
    cut_id: int = 0,
    request_id: int = 0,
) -> tuple[np.ndarray, ...]:
    """What the cloud gets from one request's crossing ``tensors`` (batch-1 arrays) sent at
    integer width ``bits`` through ``codec`` at ``level``: a real frame, packed, encoded,
    decoded and dequantised by the packing library, in each tensor's own dtype. ``axes``:
    each tensor's channel axis. For a lossy codec this is the only faithful simulation."""
    packed = [
        pack_tensor(t, PackConfig(bits=bits, granularity=granularity, axis=axis, layout=KERNEL_LAYOUT))
        for t, axis in zip(tensors, axes)
    ]
    frame = encode_packed(packed, codec=codec, level=level, cut_id=cut_id, request_id=request_id)
    return tuple(p.values().astype(t.dtype, copy=False) for p, t in zip(decode_packed(frame).tensors, tensors))


class AccuracySimulator:
    """Top-1 accuracy and agreement with the float model, per (cut, bits, granularity).

    ``cuts``: the candidate cuts (CutPoints or positions; default the build's
    :func:`candidate_cuts`); cloud-only and device-only are always included. ``batch``:
    samples per jitted call, and the unit everything streams in (default: by the size of
    the model's largest activation, :data:`BATCH_BYTES`). Results are cached, so
    asking twice costs nothing. Memory: the calibration set, at most ``cache_bytes`` of
    cached activations, one batch in flight and one top-1 class per sample and
    configuration, whatever the number of samples; only :meth:`activations` hands out
    every sample's tensors at once, for callers that ask for them.

    ``segments``: runs segment ``k`` of the chain on a batch instead of JAX —
    ``segments(k, inputs) -> outputs``, batched ``[B, ...]`` arrays in the segment's input
    and output order. Quantisation stays in JAX either way. The search passes the
    artifact's compiled host library here for large models: XLA's CPU convolutions
    (depthwise above all) ran mobilenet_v2 at 224x224 some ten times slower than TVM's.
    """

    def __init__(
        self,
        graph: Graph,
        calibration: CalibrationSet,
        cuts: Iterable[CutPoint | int] | None = None,
        *,
        batch: int | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        segments: SegmentRunner | None = None,
    ) -> None:
        _check_graph(graph, calibration)
        if batch is None:
            largest = max(n.type.nbytes for n in graph.nodes if n.op != CONST_OP)
            batch = max(1, min(MAX_BATCH, BATCH_BYTES // largest))
        for name, value, low in (("batch", batch, 1), ("cache_bytes", cache_bytes, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        every = find_cuts(graph)
        chosen = candidate_cuts(graph) if cuts is None else cuts
        positions = sorted({0, len(every) - 1, *(_position(c, every, graph) for c in chosen)})
        self.graph, self.calibration, self.cache_bytes = graph, calibration, cache_bytes
        self.cuts: list[CutPoint] = [every[p] for p in positions]
        self._index = {p: k for k, p in enumerate(positions)}
        self._chain = segment(graph, positions)
        self._batch = min(batch, len(calibration))
        self._segment_fns: dict[int, Callable[[tuple], tuple]] = {}
        self._parent: AccuracySimulator | None = None
        self._segments = segments
        self._cache: OrderedDict[tuple[int, int], Arrays] = OrderedDict()
        self._cached_bytes = 0
        self._predictions: dict[tuple, np.ndarray] = {}
        self._float: np.ndarray | None = None

    # ------------------------------------------------------------------ public
    @property
    def float_predictions(self) -> np.ndarray:
        """The float model's top-1 class per sample, computed once."""
        if self._float is None:
            self._float = self._predict(0, lambda xs, rows: xs)
        return self._float

    @property
    def float_accuracy(self) -> float:
        return self._score(self.float_predictions)[0]

    @property
    def cached_bytes(self) -> int:
        """Bytes of cut activations held now (the input is the calibration set itself)."""
        return self._cached_bytes

    def cut(self, position: int) -> CutPoint:
        return self.cuts[self._chain_index(position)]

    def head(self, n: int) -> AccuracySimulator:
        """This simulator over the first ``n`` calibration samples, for measurements that
        need a few samples' tensors at many cuts (the wire's bytes) and not the whole set's.
        It shares the compiled segments and the batch size (so nothing compiles again, and
        its batches are the first of this one's) and slices this simulator's cached
        activations where it has them."""
        sub = copy.copy(self)
        sub.calibration = self.calibration.head(n)
        sub._cache, sub._cached_bytes, sub._predictions, sub._float, sub._parent = OrderedDict(), 0, {}, None, self
        return sub

    def activations(self, position: int) -> Arrays:
        """The float tensors crossing cut ``position``, one array ``[N, *tensor_shape]`` per
        tensor (sample ``i`` is ``a[i]``, a batch-1 tensor); empty for device-only. Every
        sample's at once, so memory grows with the set: the search itself asks only a
        :meth:`head` of a few samples (the wire's bytes) and streams everything else."""
        k = self._chain_index(position)
        if k == len(self._chain):
            return ()
        chunks = [self._chunk(k, start) for start in self._starts()]
        return chunks[0] if len(chunks) == 1 else tuple(np.concatenate(column) for column in zip(*chunks))

    def predictions(
        self, position: int, bits: int | str, granularity: str = "tensor", codec: str = "none", level: int | None = None
    ) -> np.ndarray:
        """Top-1 class per sample when cut ``position`` sends its tensors at ``bits`` (and,
        for a lossy ``codec``, through it at ``level``; a lossless codec changes nothing)."""
        key = self._key(position, bits, granularity, codec, level)
        if key not in self._predictions:
            k = self._chain_index(position)
            if len(key) > 3:
                self._predictions[key] = self._predict(k, partial(self._decoded, position, key))
            elif k == len(self._chain) or key[1] == "float32":
                # Device-only sends nothing and float32 sends the tensors as they are: the
                # float model's own computation, segment for segment, so its predictions.
                self._predictions[key] = self.float_predictions
            else:
                width, gran, axes = bits_value(key[1]), key[2], self.cut(position).channel_axes
                self._predictions[key] = self._predict(k, lambda xs, rows: _round_trip_batch(xs, width, gran, axes))
        return self._predictions[key]

    def evaluate(
        self, position: int, bits: int | str, granularity: str = "tensor", codec: str = "none", level: int | None = None
    ) -> tuple[float, float]:
        """``(accuracy, agreement)`` as fractions: top-1 against the labels (agreement where
        there are none) and top-1 agreement with the float model."""
        return self._score(self.predictions(position, bits, granularity, codec, level))

    # ------------------------------------------------------------------ internals
    def _chain_index(self, position: int) -> int:
        """Index of ``position`` in the chain: segment k starts there (len(chain) = device-only)."""
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or position not in self._index:
            raise InputError(f"cut {position!r} is not one of the simulator's cuts {sorted(self._index)}")
        return self._index[int(position)]

    def _key(self, position: int, bits: int | str, granularity: str, codec: str, level: int | None) -> tuple:
        """Cache key; float widths and device-only ignore granularity, so it is normalised
        away. A lossy codec adds itself and its level (the default's number for ``None``):
        ``(cut, bits, granularity, codec, level)``; a lossless one adds nothing."""
        self._chain_index(position)
        with refused_as(InputError):
            key, granularity = bits_key(bits), check_granularity(granularity)
            lossy = get_codec(codec).lossy
            level = check_level(codec, level)
        if lossy:
            if key in FLOAT_MODES or self.cut(position).kind == "device-only":
                raise InputError(
                    f"codec {codec!r} is lossy: it codes integer codes sent at a cut, not {key} at cut {position}"
                )
            return int(position), key, granularity, codec, level
        if key in FLOAT_MODES or self.cut(position).kind == "device-only":
            granularity = "tensor"
        return int(position), key, granularity

    def _decoded(self, position: int, key: tuple, xs: tuple, rows: range) -> Arrays:
        """A batch's crossing tensors as the cloud decodes them through a lossy codec
        (:func:`decoded`), sample ``rows[j]`` being row ``j`` of ``xs``; the padding rows
        stay as they are. A codec that cannot code them is an InputError naming why."""
        _, bits, granularity, codec, level = key
        axes, width = self.cut(position).channel_axes, check_width(bits_value(bits))
        arrays = tuple(np.array(x) for x in xs)
        with refused_as(InputError):
            for j, i in enumerate(rows):
                cloud = decoded(
                    [a[j] for a in arrays], axes, width, granularity, codec, level, cut_id=position, request_id=i
                )
                for a, d in zip(arrays, cloud):
                    a[j] = d
        return arrays

    def _segment_fn(self, k: int) -> Callable[[tuple], tuple]:
        """Segment ``k`` jitted once, vmapped over batch-1 samples, weights as arguments."""
        if self._segments is not None:
            return partial(self._segments, k)
        if k not in self._segment_fns:
            seg = self._chain[k]
            params = {name: jnp.asarray(v) for name, v in seg.graph.params.items()}

            def one(p: dict, xs: tuple) -> tuple:
                return tuple(evaluate(seg.graph, p, dict(zip(seg.inputs, xs))))

            self._segment_fns[k] = partial(jax.jit(jax.vmap(one, in_axes=(None, 0))), params)
        return self._segment_fns[k]

    def _run(self, start: int, stop: int, xs: tuple) -> tuple:
        """Segments ``start..stop-1`` on a batch: from the tensors at cut ``start`` to those at ``stop``."""
        for k in range(start, stop):
            xs = self._segment_fn(k)(xs)
        return xs

    def _starts(self) -> range:
        """First sample of each batch: the unit activations are computed, cached and streamed in."""
        return range(0, len(self.calibration), self._batch)

    def _chunk(self, k: int, start: int) -> Arrays:
        """The tensors at chain index ``k`` of the batch of samples from ``start``
        (``[b, *tensor_shape]``, b <= batch): cached, sliced from the parent's cache (a
        :meth:`head`), or run from the nearest earlier cut cached for this batch."""
        stop = min(start + self._batch, len(self.calibration))
        if k == 0:
            return (self.calibration.x[start:stop, None].astype(self.graph.inputs[0].dtype, copy=False),)
        key = (self.cuts[k].position, start)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self._parent is not None and key in self._parent._cache:
            return tuple(a[: stop - start] for a in self._parent._cache[key])
        begin = max((j for j in range(1, k) if (self.cuts[j].position, start) in self._cache), default=0)
        outs = self._run(begin, k, tuple(_padded(a, self._batch) for a in self._chunk(begin, start)))
        # A short last batch is copied out of its padded buffer, which would stay alive uncounted.
        arrays = tuple(np.asarray(o) if stop - start == self._batch else np.array(o[: stop - start]) for o in outs)
        self._remember(key, arrays)
        return arrays

    def _predict(self, k: int, transform: Transform) -> np.ndarray:
        """Top-1 per sample of the model's first output, from the tensors at chain index
        ``k`` as ``transform`` turns them into what the cloud receives, batch by batch.
        The last batch is padded to full size so that nothing compiles twice."""
        end, n = len(self._chain), len(self.calibration)
        top1 = np.empty(n, np.int64)
        for start in self._starts():
            rows = range(start, min(start + self._batch, n))
            xs = tuple(_padded(x, self._batch) for x in self._chunk(k, start))
            logits = self._run(k, end, transform(xs, rows))[0]
            top1[start : rows.stop] = np.asarray(logits)[: len(rows)].reshape(len(rows), -1).argmax(axis=1)
        return top1

    def _remember(self, key: tuple[int, int], arrays: Arrays) -> None:
        """Cache one batch's ``arrays``, evicting least recently used ones to stay within
        ``cache_bytes``; a batch larger than the whole budget is not cached."""
        size = sum(a.nbytes for a in arrays)
        if size > self.cache_bytes:
            return
        while self._cache and self._cached_bytes + size > self.cache_bytes:
            self._cached_bytes -= sum(a.nbytes for a in self._cache.popitem(last=False)[1])
        self._cache[key] = arrays
        self._cached_bytes += size

    def _score(self, predictions: np.ndarray) -> tuple[float, float]:
        agreement = float(np.mean(predictions == self.float_predictions))
        labels = self.calibration.labels
        return (agreement if labels is None else float(np.mean(predictions == labels))), agreement


def _padded(a: np.ndarray, size: int) -> np.ndarray:
    return a if len(a) == size else np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])


def _check_graph(graph: Graph, calibration: CalibrationSet) -> None:
    """One input the calibration samples fit, and at least one output to read predictions from."""
    if len(graph.inputs) != 1 or not graph.outputs:
        raise InputError(
            f"model {graph.name!r}: accuracy simulation needs one input and an output, got "
            f"{len(graph.inputs)} input(s) and {len(graph.outputs)} output(s)"
        )
    check_fits(calibration, graph.inputs[0].shape)


def _position(cut: CutPoint | int, every: Sequence[CutPoint], graph: Graph) -> int:
    """A cut's position, refusing one out of range or found on another graph."""
    position = cut.position if isinstance(cut, CutPoint) else cut
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not 0 <= position < len(every):
        raise InputError(f"model {graph.name!r}: cut {position!r} is out of range 0..{len(every) - 1}")
    if isinstance(cut, CutPoint) and cut.tensors != every[position].tensors:
        raise InputError(
            f"model {graph.name!r}: cut {position} crosses {list(every[position].tensors)}, not "
            f"{list(cut.tensors)}; was it found on another graph?"
        )
    return int(position)


def fewest_bits(
    simulator: AccuracySimulator,
    cuts: Iterable[CutPoint | int] | None = None,
    *,
    budget: float = 1.0,
    widths: Iterable[int] = range(1, 17),
    granularity: str = "tensor",
) -> dict[int, int | None]:
    """Per cut, the fewest bits whose accuracy stays within ``budget`` percentage points of
    the float model's (None where no width does): DynO's observation that this differs
    from cut to cut is what makes the per-cut width worth searching.

    Widths are tried from the fewest up and the first that meets the budget is the
    answer, so accuracy need not be monotonic in bits for the result to be what it says.
    Cuts that send nothing (device-only) are left out. Default ``cuts``: all the simulator's.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget < float("inf"):
        raise InputError(f"budget must be a finite number of percentage points >= 0, got {budget!r}")
    given = list(widths)
    with refused_as(InputError):
        values = [bits_value(w, "widths") for w in given]
    integers = [v for v in values if not isinstance(v, str)]
    if not values or len(integers) != len(values):
        raise InputError(f"widths must be integers in {MIN_BITS}..{MAX_BITS}, got {given!r}")
    tried = sorted(set(integers))
    floor = simulator.float_accuracy - budget / 100 - 1e-12  # float rounding must not fail an exact tie
    positions = [
        simulator.cut(c.position if isinstance(c, CutPoint) else c).position
        for c in (simulator.cuts if cuts is None else cuts)
    ]
    return {
        p: next((w for w in tried if simulator.evaluate(p, w, granularity)[0] >= floor), None)
        for p in positions
        if simulator.cut(p).kind != "device-only"
    }
