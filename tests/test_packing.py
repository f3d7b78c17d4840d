"""dyno_compile.packing: quantisation, bit packing, codecs and the wire format.

References here are written independently of the implementation (Python big integers for
the bit streams, the formula spelt out for quantisation) so a shared mistake cannot pass.
"""

from __future__ import annotations

import struct
import zlib
from datetime import timedelta

import lz4.block
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyno_compile.errors import DynoError
from dyno_compile.packing import (
    MAGIC,
    PackConfig,
    PackError,
    QuantParams,
    compress,
    decode,
    decompress,
    dequantize,
    encode,
    pack,
    packed_nbytes,
    quantize,
    unpack,
)

WIDTHS = list(range(1, 17))
LAYOUTS = ["stream", "bitplane"]
SIZES = [1, 7, 13, 1001]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of float32 arrays (so -0.0 != 0.0 and NaN payloads count)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def post_relu(rng: np.random.Generator, shape=(64, 32, 32), zeros: float = 0.7) -> np.ndarray:
    """A sparse non-negative map: half-normal values, ``zeros`` of them exactly 0."""
    x = np.abs(rng.normal(size=shape)) * (rng.random(shape) >= zeros)
    return x.astype(np.float32)


def refresh_crc(frame: bytes) -> bytes:
    """Recompute the trailing CRC32, so a test reaches the field checks behind it."""
    body = frame[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def mutate(frame: bytes, data: st.DataObject, fix_crc: bool) -> bytes:
    """One to four overwrites, insertions or cuts of ``frame``, drawn by hypothesis; with
    the CRC recomputed when ``fix_crc``, so the mutations reach the checks behind it. The
    fuzz harness of every frame kind (tests of each codec family import it)."""
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf)))
        kind = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if kind == "set" and i < len(buf):
            buf[i] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[i : i + data.draw(st.integers(1, 8))]
    return refresh_crc(bytes(buf)) if fix_crc and len(buf) >= 4 else bytes(buf)


def patch(frame: bytes, offset: int, data: bytes) -> bytes:
    """Overwrite bytes at ``offset`` and fix the CRC."""
    return refresh_crc(frame[:offset] + data + frame[offset + len(data) :])


# --- bitpack ------------------------------------------------------------------------------


def ref_stream(codes: np.ndarray, bits: int) -> bytes:
    """Code i at bits [i*b, (i+1)*b) of one little-endian integer."""
    value = 0
    for i, c in enumerate(codes.tolist()):
        value |= c << (i * bits)
    return value.to_bytes(packed_nbytes(len(codes), bits), "little")


def ref_bitplane(codes: np.ndarray, bits: int) -> bytes:
    """Bit j of code i at stream bit j*N + i."""
    n, value = len(codes), 0
    for i, c in enumerate(codes.tolist()):
        for j in range(bits):
            value |= ((c >> j) & 1) << (j * n + i)
    return value.to_bytes(packed_nbytes(n, bits), "little")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bits", WIDTHS)
def test_pack_matches_reference_and_round_trips(bits, layout, rng):
    ref = ref_stream if layout == "stream" else ref_bitplane
    for n in SIZES:
        codes = rng.integers(0, 1 << bits, size=n).astype(np.uint16)
        codes[0] = (1 << bits) - 1  # the top code always appears
        buf = pack(codes, bits, layout)
        assert len(buf) == (n * bits + 7) // 8
        if n <= 13 or bits in (1, 3, 8, 16):  # the big-int reference is slow at 1001 x 16
            assert buf == ref(codes, bits)
        out = unpack(buf, bits, n, layout)
        assert out.dtype == np.uint16 and np.array_equal(out, codes)


def test_bitplane_is_per_plane_packbits_when_n_is_a_multiple_of_8(rng):
    codes = rng.integers(0, 32, size=64).astype(np.uint16)
    planes = [np.packbits(((codes >> j) & 1).astype(np.uint8), bitorder="little") for j in range(5)]
    assert pack(codes, 5, "bitplane") == b"".join(p.tobytes() for p in planes)


def test_stream_8_and_16_are_the_codes_little_endian_bytes(rng):
    codes = rng.integers(0, 1 << 16, size=9).astype(np.uint16)
    assert pack(codes, 16) == codes.astype("<u2").tobytes()
    assert pack(codes & 0xFF, 8) == (codes & 0xFF).astype(np.uint8).tobytes()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_code_arrays_pack_to_nothing(layout):
    """Empty inputs are handled (not rejected): zero codes, zero bytes."""
    assert pack(np.zeros(0, np.uint16), 5, layout) == b""
    assert unpack(b"", 5, 0, layout).shape == (0,)


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: pack(np.array([4], np.uint16), 2), "codes"),
        (lambda: pack(np.array([-1]), 4), "codes"),
        (lambda: pack(np.array([0.5]), 4), "codes"),
        (lambda: pack(np.array([1]), 0), "bits"),
        (lambda: pack(np.array([1]), 17), "bits"),
        (lambda: pack(np.array([1]), 4, "planar"), "layout"),
        (lambda: unpack(b"\x00", 4, 3), "payload length"),
        (lambda: unpack(b"\x00\x00\x00", 4, 3), "payload length"),
        (lambda: unpack(b"\x00\xf0", 4, 3), "payload padding"),
        (lambda: unpack(b"", 4, -1), "count"),
    ],
)
def test_bitpack_rejects_bad_arguments(call, field):
    with pytest.raises(PackError) as err:
        call()
    assert err.value.field == field


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 16), layout=st.sampled_from(LAYOUTS), data=st.data())
def test_pack_round_trip_property(bits, layout, data):
    codes = np.array(data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=200)), np.uint16)
    assert np.array_equal(unpack(pack(codes, bits, layout), bits, codes.size, layout), codes)


# --- quantize -----------------------------------------------------------------------------


def ref_quantize(x: np.ndarray, bits: int, axis: int | None):
    """The formula of quantize.py's docstring, spelt out in float32, per tensor (axis None)
    or per channel."""
    f32 = np.float32
    reduce = None if axis is None else tuple(d for d in range(x.ndim) if d != axis)
    lo = np.min(x, axis=reduce, keepdims=True).astype(f32)
    hi = np.max(x, axis=reduce, keepdims=True).astype(f32)
    scale = (hi - lo) * f32(1 / (2**bits - 1))
    scale = np.where(scale >= f32(2.0**-126), scale, f32(1)).astype(f32)
    q = np.clip(np.rint((x - lo) * (f32(1) / scale)), 0, 2**bits - 1).astype(np.uint16)
    return q, (q.astype(f32) * scale + lo), scale


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("bits", WIDTHS)
def test_quantize_frame_decode_is_bit_exact(bits, granularity, rng):
    x = (rng.normal(size=(2, 3, 5, 7)) * rng.uniform(0.1, 10, size=(1, 3, 1, 1)) + 1).astype(np.float32)
    axis = 1 if granularity == "channel" else None
    ref_q, ref_x, ref_scale = ref_quantize(x, bits, axis)
    codes, params = quantize(x, bits, granularity=granularity)
    assert np.array_equal(codes, ref_q) and same_bits(dequantize(codes, params), ref_x)
    for layout in LAYOUTS:
        for codec in ("none", "lz4", "zstd"):
            cfg = PackConfig(bits=bits, granularity=granularity, layout=layout, codec=codec)
            frame = decode(encode([x], cfg, cut_id=1, request_id=2))
            assert same_bits(frame.tensors[0], ref_x)
            assert frame.params[0] == params
    eps = 4 * np.spacing(np.max(np.abs(x), axis=None if axis is None else (0, 2, 3), keepdims=True))
    assert np.all(np.abs(ref_x - x) <= ref_scale / 2 + eps)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize(
    "x",
    [
        np.zeros((1, 4, 3, 3), np.float32),
        np.full((1, 4, 3, 3), -2.75, np.float32),
        np.array([[[[3.5]]]], np.float32),
    ],
    ids=["all-zero", "constant", "single-element"],
)
@pytest.mark.parametrize("bits", [1, 4, 8, 16])
def test_constant_tensors_decode_exactly(x, bits, granularity):
    codes, params = quantize(x, bits, granularity=granularity)
    assert not codes.any() and np.all(params.scale == 1)
    frame = decode(encode([x], PackConfig(bits=bits, granularity=granularity, codec="zstd"), cut_id=0, request_id=0))
    assert same_bits(frame.tensors[0], x)


def test_per_channel_constant_channel_next_to_a_varying_one():
    x = np.stack([np.full((4, 4), 7.0), np.arange(16.0).reshape(4, 4)])[None].astype(np.float32)
    codes, params = quantize(x, 4, granularity="channel")
    assert params.scale.tolist() == [1.0, 1.0] and params.lo.tolist() == [7.0, 0.0]
    assert same_bits(dequantize(codes, params), x)  # 16 levels, 16 integers: exact


@pytest.mark.parametrize("mode", ["float16", "float32"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_passthrough_is_exact(mode, dtype, rng):
    x = (rng.normal(size=(2, 3, 4)) * 100).astype(dtype)
    frame = decode(encode([x], PackConfig(bits=mode, codec="lz4"), cut_id=0, request_id=0))
    assert same_bits(frame.tensors[0], x.astype(mode).astype(np.float32))
    assert frame.headers[0].dtype == np.dtype(dtype) and frame.params[0].is_passthrough


@pytest.mark.parametrize("bits", [1, 8, 16])
def test_nan_and_inf_are_refused_by_integer_modes(bits):
    x = np.array([1.0, np.nan, np.inf, -np.inf, np.nan, 0.0], np.float32)
    with pytest.raises(PackError, match=r"4 non-finite values \(2 NaN, 2 ±Inf\)"):
        quantize(x, bits)
    with pytest.raises(PackError, match="non-finite") as err:
        encode([np.zeros(3, np.float32), x], PackConfig(bits=bits), cut_id=0, request_id=0)
    assert err.value.field == "tensor[1].values"


@pytest.mark.parametrize("mode", ["float16", "float32"])
def test_passthrough_carries_nan_and_inf(mode):
    x = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    out = decode(encode([x], PackConfig(bits=mode), cut_id=0, request_id=0)).tensors[0]
    assert np.array_equal(out, x, equal_nan=True)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("shape", [(0,), (2, 0, 3), (1, 0), (0, 3, 2)])
def test_empty_tensors_are_handled(shape, granularity):
    """Empty tensors are handled, not rejected: no payload, lo = 0 and scale = 1."""
    if granularity == "channel" and len(shape) < 2:
        pytest.skip("per-channel needs axis 1")
    x = np.zeros(shape, np.float32)
    frame = decode(encode([x], PackConfig(bits=3, granularity=granularity, codec="zstd"), cut_id=0, request_id=0))
    assert frame.tensors[0].shape == shape and frame.sizes == [(0, 0)]


def test_quantize_argument_errors():
    x = np.ones((2, 3), np.float32)
    for bad, field in [(x.astype(np.float64), "dtype"), (x.astype(np.int32), "dtype")]:
        with pytest.raises(PackError, match="float32 or float16") as err:
            quantize(bad, 8)
        assert err.value.field == field
    with pytest.raises(PackError, match="out of range") as err:
        quantize(x, 8, granularity="channel", axis=2)
    assert err.value.field == "axis"
    assert quantize(x, 8, granularity="channel", axis=-1)[1].axis == 1
    with pytest.raises(PackError, match="overflows float32"):
        quantize(np.array([-3e38, 3e38], np.float32), 8)


@pytest.mark.parametrize("x", [[0.0, 1e-45], [0.0, 1e-38], [-5e-39, 5e-39], [3.0, 3.0000002]])
def test_tiny_ranges_never_produce_nan_or_inf(x):
    """A scale below the smallest normal float32 becomes 1: its reciprocal would be inf,
    and ``(x - lo) * inf`` NaN where ``x == lo``."""
    x = np.array(x, np.float32)
    with np.errstate(all="raise"):
        for bits in (1, 8, 16):
            codes, params = quantize(x, bits)
            assert params.scale[0] >= np.float32(2.0**-126)
            err = np.max(np.abs(dequantize(codes, params) - x))
            assert err <= max(params.scale[0] / 2 + 4 * np.spacing(np.float32(3)), 1e-37)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_matches_the_jax_cut_ops_bit_for_bit(granularity, rng):
    """The contract with ``dyno_compile/ir/ops/quant.py``: the same lo, scale, codes and stream
    bytes under jit (where XLA rewrites divisions into reciprocal multiplies, which is why
    the formula is written with them), and the same dequantised values run eagerly."""
    from functools import partial

    import jax

    import dyno_compile.ir  # noqa: F401  (registers the ops)
    from dyno_compile.ir.ops.registry import get_op

    x = (rng.normal(size=(2, 8, 6, 5)) * rng.uniform(0.01, 50, size=(1, 8, 1, 1))).astype(np.float32)
    x[:, 3] = 0.25  # a constant channel
    for bits in (1, 3, 8, 13, 16):
        q_attrs = {"bits": bits, "granularity": granularity, "axis": 1}
        rng_jax = np.asarray(jax.jit(partial(get_op("quant_range").impl, **q_attrs))(x))
        codes_jax = np.asarray(jax.jit(partial(get_op("quantize").impl, **q_attrs))(x, rng_jax))
        dequantize_jax = partial(get_op("dequantize").impl, granularity=granularity, axis=1)
        deq_eager = np.asarray(dequantize_jax(codes_jax, rng_jax))
        deq_jit = np.asarray(jax.jit(dequantize_jax)(codes_jax, rng_jax))
        packed_jax = np.asarray(jax.jit(partial(get_op("bitpack").impl, bits=bits))(codes_jax))
        codes, params = quantize(x, bits, granularity=granularity)
        assert same_bits(rng_jax[0].reshape(-1), params.lo) and same_bits(rng_jax[1].reshape(-1), params.scale)
        assert np.array_equal(codes_jax, codes)
        reference = dequantize(codes, params)
        assert same_bits(deq_eager, reference)
        # Under jit, XLA's CPU backend contracts q * scale + lo into an FMA (one rounding, not
        # two); float64 emulates it (the product is exact in double).
        shape = (1, -1, 1, 1) if granularity == "channel" else ()
        fused = (
            codes * params.scale.astype(np.float64).reshape(shape) + params.lo.astype(np.float64).reshape(shape)
        ).astype(np.float32)
        assert np.all((deq_jit == reference) | (deq_jit == fused))
        assert packed_jax.tobytes() == pack(codes, bits, "stream")


def test_quant_params_equality_is_bitwise():
    p = QuantParams(4, "tensor", 0, [0.0], [1.0])
    assert p == QuantParams(4, "tensor", 0, np.array([0.0]), np.array([1.0]))
    assert p != QuantParams(4, "tensor", 0, [-0.0], [1.0])


# --- codec --------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_codec_round_trip(codec, rng):
    data = bytes(rng.integers(0, 4, size=5000, dtype=np.uint8))
    for level in {None, 1 if codec != "none" else 0}:
        assert decompress(compress(data, codec, level), codec, len(data)) == data
    assert compress(b"", codec) == b"" and decompress(b"", codec, 0) == b""


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_decompression_is_bounded(codec):
    """A small payload that expands far beyond the declared size is refused, not expanded."""
    bomb = compress(bytes(50_000_000), codec)
    assert len(bomb) < 300_000
    with pytest.raises(PackError):
        decompress(bomb, codec, 1000)
    with pytest.raises(PackError):
        decompress(compress(bytes(1000), codec), codec, 999)


def test_zstd_frames_without_content_size_or_with_trailing_data_are_refused():
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(100))
    with pytest.raises(PackError, match="declares"):
        decompress(no_size, "zstd", 100)
    with pytest.raises(PackError):
        decompress(compress(bytes(100), "zstd") + b"\x00", "zstd", 100)
    with pytest.raises(PackError):
        decompress(lz4.block.compress(bytes(100), store_size=False)[:-1], "lz4", 100)


# --- PackConfig ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"bits": 1},
        {"bits": 16},
        {"bits": np.int64(5)},
        {"bits": "float16"},
        {"bits": "float32"},
        {"granularity": "channel", "axis": -1},
        {"layout": "bitplane"},
        {"codec": "lz4", "level": 12},
        {"codec": "zstd", "level": 22},
        {"codec": "zstd", "level": 1},
        {"codec": "none", "level": 0},
    ],
)
def test_pack_config_accepts(kwargs):
    cfg = PackConfig(**kwargs)
    assert isinstance(cfg.level, int)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bits": 0}, r"1\.\.16"),
        ({"bits": 17}, r"1\.\.16"),
        ({"bits": True}, r"1\.\.16"),
        ({"bits": 8.0}, r"1\.\.16"),
        ({"bits": "int8"}, "float16"),
        ({"granularity": "row"}, "'tensor', 'channel'"),
        ({"axis": 8}, r"-8\.\.7"),
        ({"axis": "1"}, r"-8\.\.7"),
        ({"layout": "planes"}, "'stream', 'bitplane'"),
        ({"codec": "gzip"}, "'none', 'lz4', 'zstd'"),
        ({"codec": "zstd", "level": 23}, r"1\.\.22"),
        ({"codec": "lz4", "level": -1}, r"0\.\.12"),
        ({"codec": "none", "level": 3}, r"0\.\.0"),
    ],
)
def test_pack_config_rejects_with_the_allowed_range(kwargs, message):
    with pytest.raises(PackError, match=message) as err:
        PackConfig(**kwargs)
    assert err.value.field.startswith("PackConfig.") and isinstance(err.value, DynoError)


def test_pack_config_is_keyword_only():
    with pytest.raises(TypeError):
        PackConfig(8)  # type: ignore[misc]


# --- frame --------------------------------------------------------------------------------


def small_frame(codec: str = "none") -> bytes:
    x = np.array([[0.0, 1.5, 3.0], [0.25, 0.0, 2.0]], np.float32)
    return encode(
        [x, x[:1]], PackConfig(bits=5, granularity="channel", axis=0, codec=codec), cut_id=9, request_id=2**64 - 1
    )


def test_frame_round_trip_of_a_residual_cut(rng):
    branch = post_relu(rng, (2, 16, 8, 8))
    shortcut = rng.normal(size=(2, 16, 8, 8)).astype(np.float16)
    cfg = PackConfig(bits=6, granularity="channel", layout="bitplane", codec="zstd", level=5)
    buf = encode([branch, shortcut], cfg, cut_id=17, request_id=123456789)
    frame = decode(buf)
    assert (frame.cut_id, frame.request_id, frame.nbytes) == (17, 123456789, len(buf))
    for x, out, header in zip([branch, shortcut], frame.tensors, frame.headers):
        codes, params = quantize(x, 6, granularity="channel")
        assert same_bits(out, dequantize(codes, params)) and header.params == params
        assert header.shape == x.shape and header.dtype == x.dtype and out.dtype == np.float32
        assert header.raw_nbytes == packed_nbytes(x.size, 6) and (header.layout, header.codec) == ("bitplane", "zstd")


def test_frame_size_matches_the_documented_worked_example(rng):
    """docs/wire-format.md: 1x64x32x32 at 4 bits per tensor, no codec = 32,833 bytes."""
    x = post_relu(rng, (1, 64, 32, 32))
    assert len(encode([x], PackConfig(bits=4), cut_id=0, request_id=0)) == 22 + 39 + 32768 + 4 == 32833
    per_channel = encode([x], PackConfig(bits=4, granularity="channel"), cut_id=0, request_id=0)
    assert len(per_channel) == 22 + (2 + 16 + 5 + 64 * 8 + 8) + 32768 + 4 == 33337
    assert len(encode([x, x], PackConfig(bits=4), cut_id=0, request_id=0)) == 65640


def test_every_prefix_of_a_frame_is_rejected():
    buf = small_frame("lz4")
    for n in range(len(buf)):
        with pytest.raises(PackError):
            decode(buf[:n])
    with pytest.raises(PackError, match="truncated") as err:
        decode(buf[:-1])
    assert err.value.field == "frame length"


def test_every_single_byte_corruption_is_rejected():
    for codec in ("none", "zstd"):
        buf = small_frame(codec)
        for i in range(len(buf)):
            for flip in (0x01, 0x80, 0xFF):
                bad = bytearray(buf)
                bad[i] ^= flip
                with pytest.raises(PackError):
                    decode(bytes(bad))


def test_corrupt_payload_is_caught_by_the_checksum_before_the_codec():
    good = small_frame("zstd")
    last = decode(good).headers[-1].compressed_nbytes
    buf = bytearray(good)
    buf[-4 - last] ^= 0xFF  # the first byte of the last payload: the zstd frame's magic
    with pytest.raises(PackError) as err:
        decode(bytes(buf))
    assert err.value.field == "checksum"
    with pytest.raises(PackError) as err:  # same corruption with a forged CRC: the codec notices
        decode(refresh_crc(bytes(buf)))
    assert err.value.field == "tensor[1].payload"


# Offsets in small_frame(): fixed header 22 bytes; tensor 0 header: dtype 22, rank 23,
# dims 24..31, mode 32, granularity 33, axis 34, layout 35, codec 36, lo 37..44, scale 45..52,
# raw length 53, compressed length 57.
@pytest.mark.parametrize(
    "offset, data, field",
    [
        (0, b"DYNX", "magic"),
        (4, struct.pack("<H", 2), "version"),
        (6, struct.pack("<H", 1), "flags"),
        (20, struct.pack("<H", 0), "n_tensors"),
        (20, struct.pack("<H", 3), "tensor[2].rank"),  # reads payload bytes as a third header
        (22, b"\x02", "tensor[0].dtype"),
        (23, b"\x09", "tensor[0].rank"),
        (24, struct.pack("<I", 100_000), "tensor[0].lo"),  # 100,000 channels: lo runs past the end
        (24, struct.pack("<II", 65536, 65536), "tensor[0].dims"),
        (32, b"\x00", "tensor[0].mode"),
        (32, b"\x11", "tensor[0].mode"),
        (32, b"\x90", "tensor[0].mode"),
        (33, b"\x02", "tensor[0].granularity"),
        (34, b"\x02", "tensor[0].axis"),
        (35, b"\x02", "tensor[0].layout"),
        (36, b"\x03", "tensor[0].codec"),
        (37, struct.pack("<f", np.nan), "tensor[0].lo"),
        (45, struct.pack("<f", 0.0), "tensor[0].scale"),
        (49, struct.pack("<f", -1.0), "tensor[0].scale"),
        (45, struct.pack("<f", np.inf), "tensor[0].scale"),
        (53, struct.pack("<I", 5), "tensor[0].raw length"),
        (57, struct.pack("<I", 2**32 - 1), "tensor[0].compressed length"),
        (57, struct.pack("<I", 3), "tensor[0].compressed length"),
    ],
)
def test_each_header_field_is_validated(offset, data, field):
    with pytest.raises(PackError) as err:
        decode(patch(small_frame(), offset, data))
    assert err.value.field == field, err.value


def test_size_limits():
    buf = small_frame()
    with pytest.raises(PackError, match="max_bytes") as err:
        decode(buf, max_bytes=len(buf) - 1)
    assert err.value.field == "frame length"
    assert decode(buf, max_bytes=len(buf)).cut_id == 9
    big = encode([np.zeros((1, 64, 64, 64), np.float32)], PackConfig(bits=1, codec="zstd"), cut_id=0, request_id=0)
    assert len(big) < 200
    with pytest.raises(PackError, match="max_bytes") as err:  # a tiny frame that would decode to 1 MiB
        decode(big, max_bytes=1 << 16)
    assert err.value.field == "tensor[0].dims"
    assert decode(big, max_bytes=1 << 20).tensors[0].shape == (1, 64, 64, 64)


def test_trailing_garbage_and_wrong_magic():
    buf = small_frame()
    with pytest.raises(PackError, match="trailing") as err:
        decode(buf + b"\x00")
    assert err.value.field == "frame length"
    with pytest.raises(PackError, match="not a dyno-compile frame"):
        decode(b"GIF89a" + buf)
    with pytest.raises(PackError):
        decode(b"")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"tensors": np.zeros(3, np.float32)}, "tensors"),
        ({"tensors": []}, "tensors"),
        ({"tensors": [np.zeros(3)]}, "tensor[0].dtype"),
        ({"tensors": [np.zeros((1,) * 9, np.float32)]}, "tensor[0].dims"),
        ({"cut_id": -1}, "cut_id"),
        ({"cut_id": 2**32}, "cut_id"),
        ({"request_id": 2**64}, "request_id"),
        ({"config": {"bits": 8}}, "config"),
        ({"config": PackConfig(granularity="channel", axis=3)}, "tensor[0].axis"),
    ],
)
def test_encode_rejects_bad_arguments(kwargs, field):
    args = {"tensors": [np.zeros(3, np.float32)], "config": PackConfig(), "cut_id": 0, "request_id": 0} | kwargs
    with pytest.raises(PackError) as err:
        encode(args.pop("tensors"), args.pop("config"), **args)
    assert err.value.field == field


def _valid_frames() -> list[bytes]:
    rng = np.random.default_rng(1)
    x = post_relu(rng, (1, 3, 4, 4))
    configs = [
        PackConfig(bits=3, granularity="channel", codec="zstd"),
        PackConfig(bits=12, layout="bitplane", codec="lz4"),
        PackConfig(bits="float16"),
        PackConfig(bits=1, codec="none"),
    ]
    frames = [encode([x, x[0, 0]], cfg, cut_id=i, request_id=i) for i, cfg in enumerate(configs)]
    # The image codecs' frames (one 8-bit C x H x W plane each), so mutations reach their decoders.
    images = [PackConfig(bits=8, granularity="channel", codec=c, level=50) for c in ("jpeg", "webp", "avif", "jpegxl")]
    return frames + [encode([x], cfg, cut_id=0, request_id=i) for i, cfg in enumerate(images)]


VALID_FRAMES = _valid_frames()
FUZZ = settings(
    max_examples=1200,
    deadline=timedelta(milliseconds=500),
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def _decode_only_pack_errors(buf: bytes) -> None:
    try:
        frame = decode(buf, max_bytes=1 << 20)
    except PackError:
        return
    assert all(t.dtype == np.float32 for t in frame.tensors)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: MAGIC + b"\x01\x00\x00\x00" + b)))
def test_random_bytes_only_raise_pack_error(buf):
    _decode_only_pack_errors(buf)


@FUZZ
@given(frame=st.sampled_from(VALID_FRAMES), data=st.data(), fix_crc=st.booleans())
def test_mutated_frames_only_raise_pack_error(frame, data, fix_crc):
    """Overwrites, insertions and cuts of valid frames; with the CRC fixed half the time so
    the mutations reach the field checks, the codecs and the unpacker behind it."""
    _decode_only_pack_errors(mutate(frame, data, fix_crc))


# --- compression pays on post-ReLU maps ---------------------------------------------------


def test_bitplane_zstd_beats_plain_stream_on_a_sparse_post_relu_map(rng):
    x = post_relu(rng, (1, 64, 32, 32), zeros=0.7)
    raw = x.nbytes
    sizes = {
        (layout, codec): len(encode([x], PackConfig(bits=8, layout=layout, codec=codec), cut_id=0, request_id=0))
        for layout in LAYOUTS
        for codec in ("none", "lz4", "zstd")
    }
    print(f"\n8-bit frame bytes for a 1x64x32x32 map, 70% zeros (float32: {raw} B):")
    for (layout, codec), n in sizes.items():
        print(f"  {layout:8s} {codec:4s} {n:7d} B  {raw / n:5.2f}x smaller than float32")
    assert sizes["bitplane", "zstd"] < 0.75 * sizes["stream", "none"]
