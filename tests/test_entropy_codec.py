"""The entropy codecs of the cut (``dyno_compile.packing.entropy_codec``): ``loco``.

Exact round trips at every width, layout and granularity and on the edge cases; fewer bytes
than zstd on a real activation; the payload layout as documented; and the fuzz harness on
frames and on bare payloads: any bytes decode or raise PackError, never anything else, and
every decode is quick (a bound on the time per decode: no hangs).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import imagecodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_packing import mutate, refresh_crc

from conftest import shared_data
from dyno_compile.packing import (
    CODEC_TABLE,
    PackConfig,
    PackError,
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
from dyno_compile.packing.codec import get_codec, payload_bounds
from dyno_compile.packing.codec_types import PayloadInfo
from dyno_compile.packing.entropy_codec import (
    ENTROPY_CODECS,
    LOCO_WIRE_ID,
    SCAN,
    STORED,
    _pack_codes,
    _unpack_codes,
    image_dims,
)

LAYOUTS = ["stream", "bitplane"]
#: Seconds one decode of a fuzzed frame may take: the genuine frames here decode in well
#: under a millisecond, so anything near this is a hang, not a slow machine.
DECODE_BOUND_S = 0.5


def post_relu(rng: np.random.Generator, shape=(1, 16, 32, 32), zeros: float = 0.6) -> np.ndarray:
    """A sparse non-negative map with spatial structure (what a convolution's ReLU leaves):
    smooth blobs, thresholded, so zeros come in runs and values follow their neighbours."""
    noise = rng.normal(size=shape)
    smooth = noise.copy()
    for axis in (-1, -2):
        smooth = (np.roll(smooth, 1, axis) + smooth + np.roll(smooth, -1, axis)) / 3
    cut = np.quantile(smooth, zeros)
    return np.maximum(smooth - cut, 0).astype(np.float32)


def round_trips(x: np.ndarray, config: PackConfig) -> bytes:
    frame = encode([x], config, cut_id=3, request_id=4)
    want = dequantize(*quantize(x, config.bits, granularity=config.granularity, axis=config.axis))
    got = decode(frame).tensors[0]
    assert got.shape == x.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    return frame


# --- the table entry ------------------------------------------------------------------------


def test_entropy_codecs_follow_the_image_codecs_in_the_table():
    assert [(c.name, c.wire_id, c.levels, c.lossy) for c in ENTROPY_CODECS] == [("loco", 8, (0, 0), False)]
    assert get_codec("loco") is ENTROPY_CODECS[0] and ENTROPY_CODECS[0] in CODEC_TABLE
    assert all(c.wire_id >= LOCO_WIRE_ID for c in ENTROPY_CODECS)


def test_accepts_integer_codes_that_fold_to_a_jpeg_ls_image():
    loco = get_codec("loco")
    assert loco.accepts(PayloadInfo(4, (1, 16, 32, 32), "stream")) is None
    assert loco.accepts(PayloadInfo(4, (0, 70000), "stream")) is None  # empty: never coded
    assert loco.accepts(PayloadInfo(None, (4,), "stream")) is None  # stored
    assert loco.accepts(PayloadInfo(4, (70000,), "stream")) is None  # refolded into rows of 4096
    assert "65535" in loco.accepts(PayloadInfo(4, (65536 * 4096 + 1,), "stream"))


@pytest.mark.parametrize("mode", ["float16", "float32"])
def test_float_passthrough_is_stored(mode, rng):
    """The search crosses every lossless codec with the float widths too: loco stores them."""
    x = rng.normal(size=(1, 3, 5, 5)).astype(np.float32)
    frame = encode([x], PackConfig(bits=mode, codec="loco"), cut_id=0, request_id=0)
    plain = encode([x], PackConfig(bits=mode), cut_id=0, request_id=0)
    assert len(frame) == len(plain) + 1
    assert np.array_equal(decode(frame).tensors[0], x.astype(mode).astype(np.float32))
    info = PayloadInfo(None, (4,), "stream")
    with pytest.raises(PackError, match="is stored"):
        decompress(bytes([SCAN]) + bytes(8), "loco", 8, info)


def test_image_dims_fold_every_dim_but_the_last_into_rows():
    assert image_dims((1, 16, 32, 8)) == (512, 8)
    assert image_dims((7,)) == (1, 7)
    assert image_dims(()) == (1, 1)
    assert image_dims((70001,)) == (18, 4096)  # too wide: rows of 4096, the last padded
    assert image_dims((3, 30000, 2)) == (44, 4096)  # too tall


@pytest.mark.parametrize("shape", [(70001,), (1, 66000, 2)])
def test_tensors_too_large_for_one_natural_image_round_trip_refolded(shape, rng):
    x = rng.normal(size=shape).astype(np.float32)
    for layout in LAYOUTS:
        round_trips(x, PackConfig(bits=3, layout=layout, codec="loco"))


# --- exact round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_round_trip_at_every_width_layout_and_granularity(bits, layout, granularity, rng):
    x = post_relu(rng, (1, 5, 9, 7))
    round_trips(x, PackConfig(bits=bits, layout=layout, granularity=granularity, codec="loco"))


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((1, 4, 8, 8), np.float32),  # all zero: one run per row
        np.full((1, 4, 8, 8), 2.5, np.float32),  # constant: every code 0
        np.float32(3.0).reshape(()),  # a scalar
        np.linspace(-1, 1, 13, dtype=np.float32),  # a vector, odd size, signed
        np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7),  # odd sizes, a ramp
        np.random.default_rng(5).normal(size=(2, 3, 11, 1)).astype(np.float32),  # one column
    ],
    ids=["zeros", "constant", "scalar", "vector", "ramp", "column"],
)
@pytest.mark.parametrize("bits", [1, 3, 8, 16])
def test_round_trip_of_edge_cases(x, bits):
    for layout in LAYOUTS:
        round_trips(x, PackConfig(bits=bits, layout=layout, codec="loco"))


def test_empty_and_residual_tensors_in_one_frame(rng):
    x = post_relu(rng, (1, 8, 16, 16))
    config = PackConfig(bits=6, granularity="channel", codec="loco")
    frame = encode([x, x[:, :3], np.zeros((0, 5), np.float32)], config, cut_id=1, request_id=2)
    decoded = decode(frame)
    for got, want in zip(decoded.tensors, [x, x[:, :3]]):
        assert np.array_equal(got, dequantize(*quantize(want, 6, granularity="channel")))
    assert decoded.headers[2].compressed_nbytes == 0 and decoded.tensors[2].shape == (0, 5)


def test_16_bit_codes_take_the_full_range(rng):
    codes = rng.integers(0, 1 << 16, 257, dtype=np.uint16)
    codes[:3] = [0, 65535, 32768]
    info = PayloadInfo(16, (257,), "stream")
    data = pack(codes, 16, "stream")
    assert np.array_equal(
        unpack(decompress(compress(data, "loco", info=info), "loco", len(data), info), 16, 257), codes
    )


# --- the payload layout (docs/wire-format.md) ----------------------------------------------------


def test_payload_is_a_tag_then_the_scan_charls_decodes_with_the_rebuilt_headers(rng):
    x = post_relu(rng, (1, 8, 16, 16))
    codes, _ = quantize(x, 8)
    data = pack(codes.reshape(-1), 8, "stream")
    info = PayloadInfo(8, x.shape, "stream")
    payload = compress(data, "loco", info=info)
    assert payload[0] == SCAN and len(payload) < len(data)
    # The documented headers, written out here independently: SOI, SOF55 (P=8, 128 x 16, one
    # component), SOS (one component, NEAR 0, ILV 0), then the scan and EOI.
    headers = bytes.fromhex("ffd8fff7000b080080001001011100ffda00080101000000 00".replace(" ", ""))
    image = imagecodecs.jpegls_decode(headers + payload[1:] + b"\xff\xd9")
    assert np.array_equal(image, codes.reshape(128, 16))


def test_codes_that_do_not_shrink_are_stored(rng):
    codes = rng.integers(0, 2, 64, dtype=np.uint16)  # coin flips: 8 bytes packed, no structure
    data = pack(codes, 1, "bitplane")
    info = PayloadInfo(1, (64,), "bitplane")
    payload = compress(data, "loco", info=info)
    assert payload == bytes([STORED]) + data
    assert decompress(payload, "loco", len(data), info) == data
    assert payload_bounds("loco", len(data), info) == (1, len(data) + 1)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "at least its tag byte"),
        (b"\x02abc", "tag must be 0"),
        (b"\x00" + bytes(7), "stored loco payload holds 7 bytes"),
        (b"\x00" + b"\xff" * 9, "padding"),
        (b"\x01\xff\xd9", "corrupt JPEG-LS scan"),
    ],
)
def test_corrupt_payloads_are_pack_errors(payload, message):
    info = PayloadInfo(5, (13,), "stream")  # 9 bytes packed, 5 unused padding bits
    with pytest.raises(PackError, match=message):
        decompress(payload, "loco", packed_nbytes(13, 5), info)


def test_a_scan_decoding_to_codes_over_the_width_is_refused():
    image = np.full((4, 4), 200, np.uint8)  # 8-bit samples; the header will say 4-bit codes
    stream = bytes(imagecodecs.jpegls_encode(image))
    scan = stream[stream.index(b"\xff\xda") + 10 : -2]
    with pytest.raises(PackError, match="code over 4 bits"):
        decompress(bytes([SCAN]) + scan, "loco", 8, PayloadInfo(4, (4, 4), "stream"))


# --- bytes on a real activation -------------------------------------------------------------------


def _resnet20_stem(images: np.ndarray) -> np.ndarray:
    """ResNet-20's first conv + BN + ReLU on real CIFAR-10 images, in NumPy (the map the
    cut after ``relu`` sends): real weights, real pixels, no compiler in the way."""
    w = np.load(shared_data("cifar10", "resnet20.npz"))
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    x = (images.transpose(0, 3, 1, 2).astype(np.float32) / 255 - mean) / std
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(pad, (3, 3), axis=(2, 3))  # N C H W 3 3
    y = np.einsum("nchwij,ocij->nohw", windows, w["conv1.weight"].astype(np.float32))
    scale = w["bn1.weight"] / np.sqrt(w["bn1.running_var"] + 1e-5)
    y = y * scale[:, None, None] + (w["bn1.bias"] - w["bn1.running_mean"] * scale)[:, None, None]
    return np.maximum(y, 0).astype(np.float32)


def test_loco_beats_zstd_on_real_post_relu_maps():
    images = np.load(shared_data("cifar10", "test_932.npz"))["x"][:4]
    maps = _resnet20_stem(images)
    assert maps.shape == (4, 16, 32, 32) and 0.2 < np.mean(maps == 0) < 0.9  # post-ReLU: sparse
    for bits in (4, 8):
        sizes = {
            (codec, layout): sum(
                len(encode([m[None]], PackConfig(bits=bits, layout=layout, codec=codec), cut_id=2, request_id=0))
                for m in maps
            )
            for codec, layout in (("loco", "stream"), ("zstd", "stream"), ("zstd", "bitplane"))
        }
        print(f"\nResNet-20 stem, {bits} bits, 4 CIFAR-10 images, frame bytes: {sizes}")
        assert sizes["loco", "stream"] < 0.85 * min(sizes["zstd", "stream"], sizes["zstd", "bitplane"]), sizes


# --- the fuzz harness ---------------------------------------------------------------------------


def _valid_frames() -> list[bytes]:
    rng = np.random.default_rng(1)
    x = post_relu(rng, (1, 3, 6, 8))
    configs = [
        PackConfig(bits=4, codec="loco"),
        PackConfig(bits=2, granularity="channel", layout="bitplane", codec="loco"),
        PackConfig(bits=8, codec="loco"),
        PackConfig(bits=12, layout="bitplane", codec="loco"),
        PackConfig(bits=1, codec="loco"),  # tiny: likely stored
        PackConfig(bits="float16", codec="loco"),  # a passthrough: stored
    ]
    frames = [encode([x, x[0, 0]], cfg, cut_id=i, request_id=i) for i, cfg in enumerate(configs)]
    assert {f[22 + 2 + 16 + 4] for f in frames} == {LOCO_WIRE_ID}
    return frames


VALID_FRAMES = _valid_frames()
FUZZ = settings(
    max_examples=400,
    deadline=None,  # the bound is checked per decode by _bounded, which tells a hang from a busy host
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
#: Outcomes of the fuzzed decodes, for the report printed by the last test: decoded, or a
#: PackError from the checks before the codec, or from the codec itself (CharLS reached).
OUTCOMES: dict[str, int] = {"decoded": 0, "PackError before the codec": 0, "PackError from the codec": 0}


def _count(err: PackError | None) -> None:
    if err is None:
        OUTCOMES["decoded"] += 1
    elif "JPEG-LS" in str(err) or "loco" in str(err):
        OUTCOMES["PackError from the codec"] += 1
    else:
        OUTCOMES["PackError before the codec"] += 1


def _bounded(run: Callable[[], object], again: Callable[[], object]) -> None:
    """Run ``run``; if it took ``DECODE_BOUND_S`` or more, time ``again`` (the same decode)
    and fail if it does too: a hang repeats, a decode preempted on a busy shared host
    (measured up to 0.3 s here) does not."""
    for call in (run, again):
        start = time.perf_counter()
        call()
        if time.perf_counter() - start < DECODE_BOUND_S:
            return
    pytest.fail(f"a decode took over {DECODE_BOUND_S} s twice: a hang")


def _decode_only_pack_errors(buf: bytes) -> None:
    def run() -> None:
        try:
            frame = decode(buf, max_bytes=1 << 20)
        except PackError as err:
            _count(err)
        else:
            _count(None)
            assert all(t.dtype == np.float32 for t in frame.tensors)

    _bounded(run, lambda: _decode_quietly(buf))


def _decode_quietly(buf: bytes) -> None:
    try:
        decode(buf, max_bytes=1 << 20)
    except PackError:
        pass


@FUZZ
@given(frame=st.sampled_from(VALID_FRAMES), data=st.data(), fix_crc=st.sampled_from([True, True, True, False]))
def test_mutated_loco_frames_only_raise_pack_error(frame, data, fix_crc):
    """Overwrites, insertions and cuts of valid loco frames, mostly with the CRC recomputed
    so the mutations reach the header checks and the codec behind them."""
    _decode_only_pack_errors(mutate(frame, data, fix_crc))


def _payload_offset(frame: bytes) -> int:
    """Where the first payload starts in a frame of :func:`_valid_frames` (one lo/scale pair
    or three: tensor 0 is rank 4, tensor 1 rank 2)."""
    decoded = decode(frame)
    head = 22
    for h in decoded.headers:
        head += 15 + 4 * len(h.shape) + 8 * h.params.lo.size
    return head


@FUZZ
@given(
    frame=st.sampled_from([f for f in VALID_FRAMES if decode(f).headers[0].compressed_nbytes > 12]),
    body=st.binary(min_size=1, max_size=96),
    tag=st.sampled_from([SCAN, SCAN, SCAN, STORED]),
)
def test_random_scans_behind_valid_headers_only_raise_pack_error(frame, body, tag):
    """A valid header whose first payload is replaced by a tag and random bytes of a length
    the header then declares, CRC recomputed: random bytes straight into CharLS."""
    start = _payload_offset(frame)
    decoded = decode(frame)
    old = decoded.headers[0].compressed_nbytes
    payload = bytes([tag]) + body
    buf = bytearray(frame[:start] + payload + frame[start + old :])
    # the first tensor header's compressed length: the 4 bytes before its end
    rank0, pairs0 = len(decoded.headers[0].shape), decoded.headers[0].params.lo.size
    length_at = 22 + 15 + 4 * rank0 + 8 * pairs0 - 4
    buf[length_at : length_at + 4] = struct.pack("<I", len(payload))
    _decode_only_pack_errors(refresh_crc(bytes(buf)))


@FUZZ
@given(
    shape=st.sampled_from([(1, 3, 6, 8), (5,), (2, 2, 33), (1, 1, 1, 1)]),
    bits=st.sampled_from([1, 2, 4, 8, 9, 16]),
    layout=st.sampled_from(LAYOUTS),
    body=st.binary(max_size=200),
)
def test_random_payloads_only_raise_pack_error(shape, bits, layout, body):
    """Any payload bytes for any header-given image: decoded to exactly the raw length, or a
    PackError."""
    info = PayloadInfo(bits, shape, layout)
    raw = packed_nbytes(info.count, bits)

    def run() -> None:
        try:
            out = decompress(bytes([SCAN]) + body, "loco", raw, info)
        except PackError as err:
            _count(err)
        else:
            _count(None)
            assert len(out) == raw

    _bounded(run, run)


def _mutate(rng: np.random.Generator, frame: bytes) -> bytes:
    """One to four byte overwrites, insertions or deletions, the CRC recomputed 3 times in 4."""
    buf = bytearray(frame)
    for _ in range(rng.integers(1, 5)):
        i = int(rng.integers(0, len(buf) + 1))
        kind = rng.integers(3)
        if kind == 0 and i < len(buf):
            buf[i] = int(rng.integers(256))
        elif kind == 1:
            buf[i:i] = rng.bytes(int(rng.integers(1, 9)))
        else:
            del buf[i : i + int(rng.integers(1, 9))]
    return refresh_crc(bytes(buf)) if rng.random() < 0.75 and len(buf) >= 4 else bytes(buf)


@pytest.mark.slow
def test_long_fuzz_of_loco_frames():
    """The same mutations, 30,000 of them, over frames of real-looking maps at several widths
    (larger payloads than the quick fuzz's, so CharLS sees long corrupt scans)."""
    rng = np.random.default_rng(18)
    x = post_relu(rng, (1, 8, 16, 16))
    frames = VALID_FRAMES + [
        encode([x], PackConfig(bits=b, layout=layout, codec="loco"), cut_id=0, request_id=0)
        for b in (2, 4, 8, 16)
        for layout in LAYOUTS
    ]
    slowest, before = 0.0, dict(OUTCOMES)
    for k in range(30_000):
        start = time.perf_counter()
        _decode_only_pack_errors(_mutate(rng, frames[k % len(frames)]))
        slowest = max(slowest, time.perf_counter() - start)
    counts = {k: OUTCOMES[k] - before[k] for k in OUTCOMES}
    print(f"\nlong loco fuzz: 30000 decodes, {counts}, 0 other exceptions, slowest {1e3 * slowest:.2f} ms")
    assert counts["PackError from the codec"] > 0


def test_zz_fuzz_report():
    """Printed with -s: how many fuzzed decodes ran and how they ended (a crash would have
    killed the run, a hang failed a deadline; any other exception failed its test)."""
    total = sum(OUTCOMES.values())
    print(f"\nloco fuzz: {total} decodes, {OUTCOMES}, 0 other exceptions, 0 over {DECODE_BOUND_S}s")
    assert total == 0 or OUTCOMES["PackError from the codec"] > 0  # the fuzz reached CharLS


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_codecs_own_bit_packing_matches_bitpack(bits, layout, rng):
    """entropy_codec packs and unpacks codes itself (it cannot import bitpack without an
    import cycle); both must write the documented layouts byte for byte."""
    for count in (1, 7, 13, 1001):
        codes = rng.integers(0, 1 << bits, count).astype(np.uint16)
        data = pack(codes, bits, layout)
        assert _pack_codes(codes, bits, layout) == data
        assert np.array_equal(_unpack_codes(data, bits, count, layout), codes)


def test_a_scan_with_non_zero_codes_in_the_padding_is_refused():
    image = np.zeros((18, 4096), np.uint8)
    image[-1, -1] = 1  # past the 70001 codes of the tensor
    stream = bytes(imagecodecs.jpegls_encode(image))
    scan = stream[stream.index(b"\xff\xda") + 10 : -2]
    with pytest.raises(PackError, match="padding of its last row"):
        decompress(bytes([SCAN]) + scan, "loco", packed_nbytes(70001, 2), PayloadInfo(2, (70001,), "stream"))


# --- the benchmark's weighing of bytes against time (benchmarks/cut_coding.py) ------------------


def test_net_gain_weighs_upload_time_against_device_and_cloud_time():
    from cut_coding import detail, net_gain_ms, summarize

    base = {"bytes": 10_000.0, "encode_ms": 1.0, "decode_ms": 1.0}
    coder = {"bytes": 8_550.0, "encode_ms": 2.0, "decode_ms": 1.5}
    # 1450 bytes at 1.45 Mbit/s = 8 ms saved; 1 ms more on a 5x device = 5 ms; 0.5 ms more decode
    assert net_gain_ms(coder, base, uplink_bps=1.45e6, device_factor=5) == pytest.approx(2.5)
    assert net_gain_ms(coder, base, uplink_bps=1.45e6, device_factor=10) == pytest.approx(-2.5)
    row = {
        "model": "m",
        "cut": 3,
        "shape": [1, 2, 4, 4],
        "bits": 4,
        "granularity": "tensor",
        "coders": {"zstd(table)": base, "zstd(table)/bp": {**base, "bytes": 12_000.0}, "loco(table)": coder},
    }
    table = summarize([row], uplink_bps=1.45e6, factors=(5.0, 10.0))
    assert "| loco(table) | 0.855 | 0.855 | 2.00 | 1.50 | 100% | +2.5 | 0% | -2.5 |" in table
    assert "| 3 | 1x2x4x4 | 4 | tensor | 10000 (stream) | 8550 | 0.855 |" in detail([row], "loco(table)", {4})
