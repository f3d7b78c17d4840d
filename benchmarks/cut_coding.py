"""Which lossless coder makes the smallest cut frames on real activations, and at what speed?

Issue 18 item 4. For real cut activations of the shared models (CIFAR-10 ResNet-20/56 on
the test images; SqueezeNet 1.1 and EfficientNet-Lite2 on the ImageNet samples), quantised
and bit-packed exactly as the device's kernel packs them (:func:`packed_cut`, stream
layout), every coder below codes one frame's tensors; the table gives the mean frame bytes
(header + payloads + CRC, the header counted exactly as :func:`encode_packed` writes it)
and the median encode and decode time on *this host*, each coder checked to round-trip
exactly. Every coder starts from the kernel's stream bytes and ends with them, so what a
coder needs on the way (unpacking the codes, a bit-plane relayout) is in its time:

* ``lz4(table)``, ``zstd(table)`` (level 3), ``loco(table)``: the package's own codecs,
  framed and timed exactly as the search's :class:`WireBytes` does; ``/bp``: on the
  bit-plane layout. The baseline of every ratio is ``zstd(table)`` on the better layout
  for that frame, measured in the same run;
* ``lz4``, ``zstd-3``, ``zstd-19``, on the stream and the bit-plane layout (``/bp``), the
  payload alone; ``zstd-3+dict``: zstd with a dictionary trained
  (``zstandard.train_dictionary``) per (cut, width, granularity, layout) on *other*
  calibration frames than those measured, the dictionary not counted (it would ship in
  the artifact);
* ``brotli-11``, ``lzma`` (raw LZMA2, preset 6): stronger LZ + context modelling;
* ``bytes+zstd-3``: the codes one per byte (widths <= 8), then zstd;
* ``pcodec``, ``aec`` (imagecodecs; numeric coders with aarch64 wheels): codes as integers;
* ``jpegls``, ``jpegxl-eN``: the codes as a grey ``(C*H) x W`` image, lossless, through
  imagecodecs with its container headers (``loco`` is the first without them);
* ``ans-T`` / ``ans-C``: constriction's rANS with one categorical model per tensor or
  per channel, built from the frame's own histogram, the histogram sent as varints and
  counted (the measured bound for an order-0 entropy coder; its decoder here rebuilds the
  models from the codes rather than parsing the varints, so its decode time is not a
  coder's; constriction has no aarch64 wheel, so it cannot be the board's coder);
* ``entropy``: the order-0 Shannon bound of the per-tensor histogram, no header (a bound,
  not a coder);
* ``~z``: the coder after dropping all-zero channels, with a bitmap of them.

The "pays" columns weigh bytes against time for a given uplink (default 1.45 Mbit/s, the
3G median) and a device N times slower than this host (default 5 and 10: a
Raspberry-Pi-class board): see :func:`net_gain_ms`.

    python benchmarks/cut_coding.py --json rows.json      # 4 models, 4 cuts each, widths 2 4 6 8
    python benchmarks/cut_coding.py --models resnet20 --cuts 2 --bits 4 --samples 2
    python benchmarks/cut_coding.py --from-json rows.json --uplink-mbps 10
"""

from __future__ import annotations

import argparse
import json
import lzma
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import imagecodecs
import lz4.block
import numpy as np
import zstandard

from dyno_compile.configs import Config
from dyno_compile.errors import DynoError
from dyno_compile.frontend.resolve import load_model
from dyno_compile.packing import KERNEL_LAYOUT, PackedTensor, decode_packed, encode_packed
from dyno_compile.packing.bitpack import pack, unpack
from dyno_compile.packing.codec_types import PayloadInfo
from dyno_compile.passes import run_passes
from dyno_compile.search.accuracy import AccuracySimulator
from dyno_compile.search.calibration import default_calibration
from dyno_compile.search.wire_bytes import packed_cut

try:  # a measured bound only: no aarch64 wheel, so never the board's coder
    import constriction
except ImportError:  # pragma: no cover - the benchmark extra is not installed
    constriction = None

SQUEEZENET = "/work/shared/data/imagenet/squeezenet1.1_fp16.onnx"
MODELS = ("resnet20", "resnet56", SQUEEZENET, "efficientnet_lite2")
#: The package's own lossless codecs, measured through real frames as the search measures them.
TABLE_CODECS = ("lz4", "zstd", "loco")


@dataclass(frozen=True)
class Codes:
    """One tensor as the device's kernel hands it over, what every coder is given: its codes
    packed in the stream layout. A coder that models the codes calls :meth:`array`, and so
    pays for unpacking them in its encode time, as the real codec does."""

    stream: bytes
    shape: tuple[int, ...]
    bits: int
    axis: int  # channel axis (per-channel ranges' axis, else 1 for NCHW)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))

    def array(self) -> np.ndarray:
        """The codes, uint16, in the tensor's shape (an unpack: charged to the caller)."""
        return unpack(self.stream, self.bits, self.count, "stream").reshape(self.shape)

    @classmethod
    def of(cls, codes: np.ndarray, bits: int, axis: int) -> Codes:
        return cls(pack(codes.reshape(-1), bits, "stream"), tuple(codes.shape), bits, axis)


Encode = Callable[[Codes], bytes]
#: Decodes to the stream-packed bytes, or to codes that the harness packs (timed) into them;
#: the Codes give shape, bits and axis (and the ANS bound's histograms, see :func:`_ans`).
Decode = Callable[[bytes, Codes], "bytes | np.ndarray"]


def _flat(c: Codes) -> np.ndarray:
    return c.array().reshape(-1)


def _byte_coder(compress: Callable[[bytes], bytes], decompress: Callable[[bytes, int], bytes], layout: str):
    """A coder of the packed bytes (what the table's lz4/zstd see): the kernel's stream bytes
    as they are, or re-laid out as bit planes (an unpack and a pack, charged as the
    runtime's relayout is)."""

    def enc(c: Codes) -> bytes:
        return compress(c.stream if layout == "stream" else pack(_flat(c), c.bits, layout))

    def dec(data: bytes, c: Codes) -> bytes | np.ndarray:
        raw = decompress(data, (c.count * c.bits + 7) // 8)
        return raw if layout == "stream" else unpack(raw, c.bits, c.count, layout)

    return enc, dec


def _zstd(level: int):
    cctx = zstandard.ZstdCompressor(level=level)
    dctx = zstandard.ZstdDecompressor()
    return cctx.compress, lambda d, n: dctx.decompress(d, max_output_size=n)


def _lz4():
    return (
        lambda b: lz4.block.compress(b, store_size=False),
        lambda d, n: lz4.block.decompress(d, uncompressed_size=n),
    )


def _lzma():
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 6}]
    return (
        lambda b: lzma.compress(b, format=lzma.FORMAT_RAW, filters=filters),
        lambda d, n: lzma.decompress(d, format=lzma.FORMAT_RAW, filters=filters),
    )


def _brotli():
    return lambda b: imagecodecs.brotli_encode(b, level=11), lambda d, n: imagecodecs.brotli_decode(d)


def _bytes_zstd():
    cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()

    def enc(c: Codes) -> bytes:
        return cctx.compress(_flat(c).astype(np.uint8).tobytes())

    def dec(data: bytes, c: Codes) -> np.ndarray:
        return np.frombuffer(dctx.decompress(data, max_output_size=c.count), np.uint8).astype(np.uint16)

    return enc, dec


def _pcodec():
    def enc(c: Codes) -> bytes:
        return imagecodecs.pcodec_encode(_flat(c))

    def dec(data: bytes, c: Codes) -> np.ndarray:
        return imagecodecs.pcodec_decode(data, shape=(c.count,), dtype=np.uint16)

    return enc, dec


def _aec():
    def enc(c: Codes) -> bytes:
        dtype = np.uint8 if c.bits <= 8 else np.uint16
        return imagecodecs.aec_encode(_flat(c).astype(dtype), bitspersample=c.bits)

    def dec(data: bytes, c: Codes) -> np.ndarray:
        # libaec may write up to a whole block past the last sample: room for one more
        out = np.empty(c.count + 1024, np.uint8 if c.bits <= 8 else np.uint16)
        return imagecodecs.aec_decode(data, bitspersample=c.bits, out=out)[: c.count].astype(np.uint16)

    return enc, dec


def _plane(c: Codes) -> np.ndarray:
    """The codes as one grey image: channels stacked vertically, ``(C*H, W)``."""
    moved = np.moveaxis(c.array(), c.axis, 0)
    return moved.reshape(-1, moved.shape[-1]).astype(np.uint8 if c.bits <= 8 else np.uint16)


def _from_plane(image: np.ndarray, c: Codes) -> np.ndarray:
    moved_shape = np.moveaxis(np.empty(c.shape, np.uint8), c.axis, 0).shape
    return np.moveaxis(np.asarray(image).reshape(moved_shape), 0, c.axis).reshape(-1).astype(np.uint16)


def _jpegls():
    """Lossless JPEG-LS (LOCO-I: context-modelled Golomb coding of a 2-D predictor's residuals)."""

    def enc(c: Codes) -> bytes:
        return imagecodecs.jpegls_encode(_plane(c), level=0)

    return enc, lambda data, c: _from_plane(imagecodecs.jpegls_decode(data), c)


def _jpegxl(effort: int):
    """Lossless JPEG XL (modular mode: context-tree-modelled ANS)."""

    def enc(c: Codes) -> bytes:
        return imagecodecs.jpegxl_encode(_plane(c), lossless=True, effort=effort, bitspersample=max(c.bits, 2))

    return enc, lambda data, c: _from_plane(imagecodecs.jpegxl_decode(data), c)


def _varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _histogram_bytes(counts: np.ndarray) -> int:
    """Bytes of a histogram sent as varints: its length, then each count up to the last non-zero."""
    used = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    return len(_varints(np.concatenate([[used], counts[:used]]).astype(np.int64)))


def _ans(per_channel: bool):
    """constriction rANS with order-0 categorical models from the frame's own histogram(s);
    returns (payload, header bytes) as one blob whose length counts the histograms."""

    def groups(c: Codes) -> list[np.ndarray]:
        if not per_channel:
            return [_flat(c)]
        moved = np.moveaxis(c.array(), c.axis, 0)
        return [ch.reshape(-1) for ch in moved]

    def enc(c: Codes) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        header = 0
        for g in reversed(groups(c)):  # a stack: encode last first
            counts = np.bincount(g, minlength=1)
            header += _histogram_bytes(counts)
            if np.count_nonzero(counts) <= 1:
                continue  # one symbol: the histogram says it all
            model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
            coder.encode_reverse(g.astype(np.int32), model)
        body = coder.get_compressed().tobytes()
        return bytes(header) + body  # length is what counts; decode re-reads the histograms below

    def dec(data: bytes, c: Codes) -> np.ndarray:
        # The header bytes are placeholders above; rebuild the models from the codes' own
        # histograms (what the real header carries) and decode the body to check it.
        gs = groups(c)
        header = sum(_histogram_bytes(np.bincount(g, minlength=1)) for g in gs)
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(data[header:], np.uint32).copy())
        out = []
        for g in gs:
            counts = np.bincount(g, minlength=1)
            if np.count_nonzero(counts) <= 1:
                out.append(np.full(g.size, int(np.argmax(counts)), np.uint16))
                continue
            model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
            out.append(coder.decode(model, g.size).astype(np.uint16))
        inner = np.moveaxis(np.empty(c.shape, np.uint8), c.axis, 0).shape[1:]
        moved = np.stack([o.reshape(inner) for o in out]) if per_channel else None
        return np.moveaxis(moved, 0, c.axis).reshape(-1) if per_channel else out[0]

    return enc, dec


def _entropy_bound(c: Codes) -> int:
    counts = np.bincount(_flat(c)).astype(np.float64)
    p = counts[counts > 0] / c.count
    return int(np.ceil(-(counts[counts > 0] * np.log2(p)).sum() / 8))


def _skip_zero_channels(enc: Encode, dec: Decode) -> tuple[Encode, Decode]:
    """The coder on the channels that are not all zero, after a bitmap of which are."""

    def split(c: Codes) -> tuple[np.ndarray, np.ndarray]:
        moved = np.moveaxis(c.array(), c.axis, 0)
        keep = moved.reshape(moved.shape[0], -1).any(axis=1)
        return keep, moved[keep]

    def enc2(c: Codes) -> bytes:
        keep, kept = split(c)
        bitmap = np.packbits(keep, bitorder="little").tobytes()
        if not kept.size:
            return bitmap
        return bitmap + enc(Codes.of(np.moveaxis(kept, 0, c.axis), c.bits, c.axis))

    def dec2(data: bytes, c: Codes) -> np.ndarray:
        channels = c.shape[c.axis]
        n = (channels + 7) // 8
        keep = np.unpackbits(np.frombuffer(data[:n], np.uint8), count=channels, bitorder="little").astype(bool)
        inner = np.moveaxis(np.empty(c.shape, np.uint8), c.axis, 0).shape[1:]
        moved = np.zeros((channels, *inner), np.uint16)
        if keep.any():
            shape = np.moveaxis(np.empty((int(keep.sum()), *inner), np.uint8), 0, c.axis).shape
            inner_codes = dec(data[n:], Codes(b"", shape, c.bits, c.axis))  # the shape is all it reads
            if isinstance(inner_codes, bytes):
                inner_codes = unpack(inner_codes, c.bits, int(np.prod(shape)), "stream")
            moved[keep] = np.moveaxis(inner_codes.reshape(shape), c.axis, 0)
        return np.moveaxis(moved, 0, c.axis).reshape(-1)

    return enc2, dec2


def coders(args: argparse.Namespace) -> dict[str, tuple[Encode, Decode]]:
    table: dict[str, tuple[Encode, Decode]] = {}
    for layout, tag in (("stream", ""), ("bitplane", "/bp")):
        table["lz4" + tag] = _byte_coder(*_lz4(), layout)
        table["zstd-3" + tag] = _byte_coder(*_zstd(3), layout)
        table["zstd-19" + tag] = _byte_coder(*_zstd(19), layout)
    table["brotli-11"] = _byte_coder(*_brotli(), "stream")  # the bit planes measured worse for both
    table["lzma"] = _byte_coder(*_lzma(), "stream")
    table["bytes+zstd-3"] = _bytes_zstd()
    table["pcodec"] = _pcodec()
    table["aec"] = _aec()
    table["jpegls"] = _jpegls()
    for effort in args.jxl_efforts:
        table[f"jpegxl-e{effort}"] = _jpegxl(effort)
    if constriction is not None:
        table["ans-T"] = _ans(per_channel=False)
        table["ans-C"] = _ans(per_channel=True)
    for name in list(table):  # not the slow ones, nor the ANS bound (its decoder reads the codes' histograms)
        if args.zero_skip and not name.startswith(("lzma", "brotli", "zstd-19", "jpegxl", "ans")):
            table[name + "~z"] = _skip_zero_channels(*table[name])
    return {name: coder for name, coder in table.items() if any(fnmatch(name, p) for p in args.coders)}


def _time(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _cuts(simulator: AccuracySimulator, count: int) -> list[int]:
    """``count`` cuts spread evenly over the candidates that send one rank-4 tensor."""
    inner = [c.position for c in simulator.cuts[1:-1] if c.single_tensor]
    inner = [p for p in inner if len(simulator.graph.node(simulator.cut(p).tensors[0]).shape) == 4]
    if len(inner) <= count:
        return inner
    picks = np.linspace(0, len(inner) - 1, count).round().astype(int)
    return [inner[i] for i in sorted(set(picks.tolist()))]


def measure_model(model: str, args: argparse.Namespace, table: dict[str, tuple[Encode, Decode]]) -> list[dict]:
    graph = run_passes(load_model(model))
    calibration = default_calibration(model, graph.inputs[0].shape)
    n_train = args.train if args.dict else 0
    calibration = calibration.head(min(len(calibration), args.samples + n_train))
    simulator = AccuracySimulator(graph, calibration)
    name = Path(model).stem
    rows = []
    for cut in _cuts(simulator, args.cuts):
        shape = graph.node(simulator.cut(cut).tensors[0]).shape
        for bits in args.bits:
            for granularity in args.granularities:
                config = Config(cut, str(bits), granularity=granularity)
                frames = [packed_cut(simulator, config, i) for i in range(len(calibration))]
                measured, training = frames[: args.samples], frames[args.samples :]
                row = {"model": name, "cut": cut, "shape": list(shape), "bits": bits, "granularity": granularity}
                row["coders"] = _measure_config(measured, training, table, args, cut)
                rows.append(row)
                best = _baseline(row)["bytes"]
                print(
                    f"{name:18s} cut {cut:3d} {'x'.join(map(str, shape)):14s} {bits:2d}b {granularity:7s} "
                    f"zstd {best:9.0f} B | "
                    + " ".join(
                        f"{k} {v['bytes'] / best:.3f}"
                        for k, v in row["coders"].items()
                        if k in ("zstd-3+dict", "lzma", "ans-C~z", "ans-T~z", "pcodec~z", *args.highlight)
                    ),
                    flush=True,
                )
    return rows


def _codes(t: PackedTensor) -> Codes:
    """The tensor as the kernel hands it over (:func:`packed_cut` packs in the kernel's layout)."""
    assert t.layout == KERNEL_LAYOUT == "stream"
    return Codes(t.data, tuple(t.shape), t.params.bits, t.params.axis or 1)


def _overhead(tensors: list[PackedTensor]) -> int:
    """Frame bytes other than the payloads: exactly what encode_packed writes around them."""
    return len(encode_packed(tensors, cut_id=0, request_id=0)) - sum(len(t.data) for t in tensors)


def _row(sizes: list[float], enc_s: list[float], dec_s: list[float]) -> dict[str, float]:
    return {
        "bytes": float(np.mean(sizes)),
        "encode_ms": 1e3 * statistics.median(enc_s),
        "decode_ms": 1e3 * statistics.median(dec_s),
    }


def _measure_coder(enc: Encode, dec: Decode, codes: list[list[Codes]], overhead: list[int]) -> dict[str, float]:
    """Mean frame bytes, median encode and decode ms of one coder; checks the round trip."""
    warm = codes[0][0]  # one untimed round first: a library's first call sets itself up
    dec(enc(warm), warm)
    sizes, enc_s, dec_s = [], [], []
    for frame, extra in zip(codes, overhead):
        total, te, td = extra, 0.0, 0.0
        for c in frame:
            payload, t1 = _time(lambda: enc(c))

            def decode_to_stream() -> bytes:
                out = dec(payload, c)
                return out if isinstance(out, bytes) else pack(np.asarray(out, np.uint16).reshape(-1), c.bits, "stream")

            back, t2 = _time(decode_to_stream)
            if back != c.stream:
                raise AssertionError("does not round-trip")
            total, te, td = total + len(payload), te + t1, td + t2
        sizes.append(total)
        enc_s.append(te)
        dec_s.append(td)
    return _row(sizes, enc_s, dec_s)


def _measure_table_codec(codec: str, layout: str, measured: list[list[PackedTensor]], cut: int) -> dict[str, float]:
    """A codec of the package's table, framed and timed exactly as :class:`WireBytes` times
    it for the search: relayout + :func:`encode_packed` on the device, :func:`decode_packed`
    + relayout to the kernel's layout on the cloud."""

    def encode(frame: list[PackedTensor]) -> bytes:
        return encode_packed([t.relayout(layout) for t in frame], codec=codec, cut_id=cut, request_id=0)

    def decode(blob: bytes) -> list[bytes]:
        return [t.relayout(KERNEL_LAYOUT).data for t in decode_packed(blob).tensors]

    decode(encode(measured[0]))  # untimed warm-up round
    sizes, enc_s, dec_s = [], [], []
    for frame in measured:
        blob, t1 = _time(lambda: encode(frame))
        back, t2 = _time(lambda: decode(blob))
        if back != [t.data for t in frame]:
            raise AssertionError(f"{codec} does not round-trip at cut {cut}")
        sizes.append(len(blob))
        enc_s.append(t1)
        dec_s.append(t2)
    return _row(sizes, enc_s, dec_s)


def _measure_config(
    measured: list[list[PackedTensor]],
    training: list[list[PackedTensor]],
    table: dict[str, tuple[Encode, Decode]],
    args: argparse.Namespace,
    cut: int,
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for codec in TABLE_CODECS:
        for layout, tag in (("stream", ""), ("bitplane", "/bp")):
            if codec != "loco" or layout == "stream":  # loco unpacks the codes: the layout is moot
                out[f"{codec}(table){tag}"] = _measure_table_codec(codec, layout, measured, cut)
    overhead = [_overhead(f) for f in measured]
    codes = [[_codes(t) for t in frame] for frame in measured]
    coders = dict(table)
    if args.dict and training and any(fnmatch("zstd-3+dict", p) for p in args.coders):
        for layout, tag in (("stream", ""), ("bitplane", "/bp")):
            samples = [pack(_flat(_codes(t)), t.params.bits, layout) for frame in training for t in frame]
            try:
                d = zstandard.train_dictionary(args.dict_size, samples, level=3)
            except zstandard.ZstdError:
                continue
            cctx = zstandard.ZstdCompressor(level=3, dict_data=d)
            dctx = zstandard.ZstdDecompressor(dict_data=d)
            coders["zstd-3+dict" + tag] = _byte_coder(
                cctx.compress, lambda b, n, dctx=dctx: dctx.decompress(b, max_output_size=n), layout
            )
    for name, (enc, dec) in coders.items():
        try:
            out[name] = _measure_coder(enc, dec, codes, overhead)
        except AssertionError as err:
            raise AssertionError(f"{name} at cut {cut}: {err}") from None
    bound = [extra + sum(_entropy_bound(c) for c in frame) for frame, extra in zip(codes, overhead)]
    out["entropy"] = {"bytes": float(np.mean(bound)), "encode_ms": 0.0, "decode_ms": 0.0}
    return out


def _info(t: PackedTensor) -> PayloadInfo:
    axis = t.params.axis if t.params.granularity == "channel" else None
    return PayloadInfo(t.params.bits, tuple(t.shape), t.layout, axis)


BASELINE = "zstd(table)"


def _baseline(row: dict) -> dict[str, float]:
    """The table's zstd (level 3) on the better layout for this frame, framed and timed as
    the search does: the strongest configuration the table offered before."""
    return min((row["coders"][BASELINE], row["coders"][BASELINE + "/bp"]), key=lambda v: v["bytes"])


def net_gain_ms(coder: dict[str, float], base: dict[str, float], *, uplink_bps: float, device_factor: float) -> float:
    """Milliseconds a request saves with ``coder`` instead of ``base``: the upload time of
    the bytes saved, minus the extra encode time on a device ``device_factor`` times slower
    than this host, minus the extra decode time on a cloud as fast as this host."""
    saved = (base["bytes"] - coder["bytes"]) * 8 / uplink_bps * 1e3
    return saved - device_factor * (coder["encode_ms"] - base["encode_ms"]) - (coder["decode_ms"] - base["decode_ms"])


def _gm(xs: list[float]) -> float:
    return float(np.exp(np.mean(np.log(xs)))) if xs else float("nan")


def summarize(rows: list[dict], *, uplink_bps: float, factors: tuple[float, float]) -> str:
    """Per coder: geometric-mean bytes ratio against the best zstd-3 layout, per model and
    overall; median encode/decode ms; and at ``uplink_bps``, for a device ``factors`` times
    slower than this host, the share of frames where it pays for itself against that
    baseline and the median ms it saves per request; markdown."""
    ratios: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    times: dict[str, list[tuple[float, float]]] = defaultdict(list)
    gains: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for r in rows:
        base = _baseline(r)
        for name, v in r["coders"].items():
            ratios[name][r["model"]].append(v["bytes"] / base["bytes"])
            ratios[name]["all"].append(v["bytes"] / base["bytes"])
            times[name].append((v["encode_ms"], v["decode_ms"]))
            if name != "entropy":  # a bound, not a coder: it has no time
                for f in factors:
                    gains[name][f].append(net_gain_ms(v, base, uplink_bps=uplink_bps, device_factor=f))
    pays = " | ".join(f"pays x{f:g} | saves ms x{f:g}" for f in factors)
    lines = [
        "| coder | " + " | ".join(models) + f" | all | encode ms | decode ms | {pays} |",
        "| --- | " + " | ".join("---:" for _ in models) + " | ---: | ---: | ---: |" + " ---: | ---: |" * len(factors),
    ]
    for name in sorted(ratios, key=lambda k: _gm(ratios[k]["all"])):
        enc = statistics.median(t[0] for t in times[name])
        dec = statistics.median(t[1] for t in times[name])
        cells = " | ".join(f"{_gm(ratios[name][m]):.3f}" for m in models)
        paid = " | ".join(
            f"{np.mean(np.array(gains[name][f]) > 0):.0%} | {statistics.median(gains[name][f]):+.1f}"
            if gains[name][f]
            else "- | -"
            for f in factors
        )
        lines.append(f"| {name} | {cells} | {_gm(ratios[name]['all']):.3f} | {enc:.2f} | {dec:.2f} | {paid} |")
    return "\n".join(lines)


def detail(rows: list[dict], coder: str, bits: set[int]) -> str:
    """Per frame kind at ``bits``: bytes of the zstd-3 baseline and of ``coder``, and both
    coders' encode and decode ms; markdown."""
    lines = [
        f"| model | cut | tensor | bits | ranges | zstd B (layout) | {coder} B | ratio | "
        f"zstd enc/dec ms | {coder} enc/dec ms | float32 / {coder} |",
        "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["bits"] not in bits or coder not in r["coders"]:
            continue
        base, v = _baseline(r), r["coders"][coder]
        layout = "stream" if base is r["coders"][BASELINE] else "bitplane"
        lines.append(
            f"| {r['model']} | {r['cut']} | {'x'.join(map(str, r['shape']))} | {r['bits']} | {r['granularity']} | "
            f"{base['bytes']:.0f} ({layout}) | {v['bytes']:.0f} | {v['bytes'] / base['bytes']:.3f} | "
            f"{base['encode_ms']:.2f} / {base['decode_ms']:.2f} | {v['encode_ms']:.2f} / {v['decode_ms']:.2f} | "
            f"{4 * np.prod(r['shape']) / v['bytes']:.0f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--cuts", type=int, default=4, help="cuts per model, spread evenly (default 4)")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--granularities", nargs="+", default=["tensor", "channel"])
    parser.add_argument("--samples", type=int, default=6, help="frames measured per configuration")
    parser.add_argument("--train", type=int, default=24, help="other frames a dictionary is trained on")
    parser.add_argument("--dict-size", type=int, default=8192)
    parser.add_argument("--no-dict", dest="dict", action="store_false")
    parser.add_argument("--no-zero-skip", dest="zero_skip", action="store_false")
    parser.add_argument("--jxl-efforts", type=int, nargs="*", default=[1, 3])
    parser.add_argument(
        "--coders",
        nargs="*",
        default=["*"],
        help="patterns of the coders to run besides the table's (none: only those)",
    )
    parser.add_argument("--highlight", nargs="*", default=[], help="coders to print per row too")
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--from-json", type=Path, nargs="+", help="summarise rows written before instead")
    parser.add_argument("--uplink-mbps", type=float, default=1.45, help="uplink for 'pays' (default 3G median 1.45)")
    parser.add_argument("--device-factors", type=float, nargs=2, default=[5.0, 10.0], help="device slowdown vs host")
    parser.add_argument("--detail", default="loco(table)", help="coder of the per-frame table")
    parser.add_argument("--detail-bits", type=int, nargs="*", default=[2, 4, 8])
    args = parser.parse_args(argv)
    if args.from_json:
        rows = [row for path in args.from_json for row in json.loads(path.read_text())]
    else:
        print(f"host: {platform.machine()} {platform.processor() or ''} python {sys.version.split()[0]}; times here")
        table = coders(args)
        rows = []
        for model in args.models:
            try:
                rows += measure_model(model, args, table)
            except DynoError as err:  # an unknown model or missing data: one line, not a traceback
                parser.exit(2, f"cut_coding.py: {model}: {err}\n")
            if args.json:  # after each model, so a long run leaves what it measured
                args.json.write_text(json.dumps(rows, indent=1))
    print()
    print(summarize(rows, uplink_bps=args.uplink_mbps * 1e6, factors=tuple(args.device_factors)))
    print()
    print(detail(rows, args.detail, set(args.detail_bits)))


if __name__ == "__main__":
    main()
