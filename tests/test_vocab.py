"""The cut vocabulary (``dyno_compile.packing.vocab``): one definition of every width,
granularity, layout and codec, one codec table that numbers the wire, frames written
before it decode as they did, and each layer reporting a bad word in its own error class.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dyno_compile.configs import Config
from dyno_compile.errors import DynoError, GraphError, InputError
from dyno_compile.packing import (
    CODEC_TABLE,
    CODECS,
    GRANULARITIES,
    LAYOUTS,
    MIN_SCALE,
    PackConfig,
    PackError,
    bits_key,
    bits_value,
    code_dtype,
    decode,
    dequantize,
    encode,
    mode_width,
    quantize,
)
from dyno_compile.passes.insert_pack import check_bits
from dyno_compile.search.pareto import SearchSpace

X = np.array([[[0.0, 1.5, 3.0], [0.25, 0.0, 2.0]]], np.float32)
H = np.array([[-1.0, 0.5], [65504.0, 2.0]], np.float16)
#: Frames encoded by the release before the vocabulary was gathered into one module
#: (commit b0d77b3): (tensors, config, frame as hex); cut_id 7, request_id 2**40 + 3.
GOLDEN = {
    "tensor8": (
        [X],
        PackConfig(bits=8),
        "44594e4f0100000007000000030000000001000001000003010000000200000003000000080000000000000000c2c0"
        "403c0600000006000000007fff1500aa0d7ee131",
    ),
    "channel5_lz4": (
        [X, X[:, :1]],
        PackConfig(bits=5, granularity="channel", axis=2, codec="lz4"),
        "44594e4f01000000070000000300000000010000020000030100000002000000030000000501020001000000"
        "0000000000000000400821043c8c31463d0821043d0400000005000000000301000000010000000300000005"
        "01020001000000000000c03f000040400000803f0000803f0000803f020000000300000040e0ff0f00200000"
        "2db86da8",
    ),
    "channel3_last_bitplane_zstd": (
        [X],
        PackConfig(bits=3, granularity="channel", axis=-1, layout="bitplane", codec="zstd", level=1),
        "44594e4f010000000700000003000000000100000100000301000000020000000300000003010201020000000000000000"
        "000000402549123db86d5b3e2549123e030000000c00000028b52ffd20031900008ee300c56de487",
    ),
    "float16": (
        [X, H],
        PackConfig(bits="float16"),
        "44594e4f01000000070000000300000000010000020000030100000002000000030000009000000000"
        "0c0000000c00000001020200000002000000900000000008000000080000000000003e004200340000"
        "004000bc0038ff7b00404067caab",
    ),
    "float32_lz4": (
        [H],
        PackConfig(bits="float32", codec="lz4", level=9),
        "44594e4f01000000070000000300000000010000010001020200000002000000a00000000110000000"
        "12000000f001000080bf0000003f00e07f47000000409a75c174",
    ),
    "bits12_bitplane": (
        [X],
        PackConfig(bits=12, layout="bitplane"),
        "44594e4f01000000070000000300000000010000010000030100000002000000030000000c0000010000"
        "000000020c403a09000000090000008ee9988ee9988e6990851e7104",
    ),
}


def test_the_codec_table_keeps_the_documented_wire_numbering():
    """docs/wire-format.md: codec byte 0 = none, 1 = lz4, 2 = zstd (later codecs only ever
    come after them); names and ids unique."""
    assert CODECS[:3] == ("none", "lz4", "zstd")
    assert [(c.name, c.wire_id, c.levels, c.default_level) for c in CODEC_TABLE[:3]] == [
        ("none", 0, (0, 0), 0),
        ("lz4", 1, (0, 12), 0),
        ("zstd", 2, (1, 22), 3),
    ]
    assert len({c.wire_id for c in CODEC_TABLE}) == len(CODEC_TABLE) and all(0 <= c.wire_id < 256 for c in CODEC_TABLE)
    assert len(set(CODECS)) == len(CODECS)
    assert GRANULARITIES == ("tensor", "channel") and LAYOUTS == ("stream", "bitplane")  # wire codes = positions


@pytest.mark.parametrize("codec", [c for c in CODEC_TABLE if not c.lossy], ids=lambda c: c.name)
def test_every_codec_of_the_table_frames_and_decodes_at_each_level(codec, rng):
    """What a new lossless codec entry must pass: every level round-trips through a frame
    whose codec byte is the entry's wire id, and an empty tensor costs no payload. (A lossy
    codec, which approximates the codes, is tested with its family.)"""
    x = np.abs(rng.normal(size=(1, 8, 16, 16))).astype(np.float32) * (rng.random((1, 8, 16, 16)) > 0.6)
    low, high = codec.levels
    for level in sorted({low, codec.default_level, high}):
        frame = encode(
            [x, np.zeros((0, 3), np.float32)], PackConfig(bits=4, codec=codec.name, level=level), cut_id=1, request_id=2
        )
        assert frame[22 + 2 + 16 + 4] == codec.wire_id  # dtype, rank, 4 dims, then mode..codec
        decoded = decode(frame)
        assert [h.codec for h in decoded.headers] == [codec.name] * 2
        assert np.array_equal(decoded.tensors[0], dequantize(*quantize(x, 4)))
        assert decoded.headers[1].compressed_nbytes == 0


@pytest.mark.parametrize("name", GOLDEN)
def test_frames_written_before_decode_identically(name):
    tensors, config, hex_frame = GOLDEN[name]
    frame = decode(bytes.fromhex(hex_frame))
    for x, got in zip(tensors, frame.tensors):
        if config.is_passthrough:
            want = x.astype(config.bits).astype(np.float32)
        else:
            want = dequantize(*quantize(x, config.bits, granularity=config.granularity, axis=config.axis))
        assert got.tobytes() == want.tobytes()
    if config.codec != "zstd":  # zstd's bytes may change with the library; its decoding may not
        assert encode(tensors, config, cut_id=7, request_id=2**40 + 3).hex() == hex_frame


def test_widths_have_one_spelling_rule():
    assert [bits_value(b) for b in (8, "8", np.int64(8), "float16")] == [8, 8, 8, "float16"]
    assert [bits_key(b) for b in (1, "16", "float32")] == ["1", "16", "float32"]
    assert [mode_width(b) for b in ("float32", "float16", "6", 1)] == [32, 16, 6, 1]
    for bad in (0, 17, "17", "int8", True, 8.0, None):
        with pytest.raises(PackError, match=r"1\.\.16 or one of \('float32', 'float16'\)") as err:
            bits_value(bad)
        assert err.value.field == "bits"


def test_code_dtype_is_uint8_up_to_8_bits_and_uint16_above():
    from dyno_compile.ir.ops.quant import quantize as jax_quantize

    assert [code_dtype(b) for b in (1, 8, 9, 16)] == [np.uint8, np.uint8, np.uint16, np.uint16]
    for bad in (0, 17, True, "8"):
        with pytest.raises(PackError, match=r"1\.\.16"):
            code_dtype(bad)
    x = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 2, 2)
    for bits in (8, 9):  # the JAX cut op's codes take the same dtype
        assert np.asarray(
            jax_quantize(x, np.array([0, 1], np.float32), bits=bits, granularity="tensor", axis=1)
        ).dtype == code_dtype(bits)


def test_min_scale_is_the_smallest_normal_float32():
    assert MIN_SCALE == np.finfo(np.float32).smallest_normal and MIN_SCALE.dtype == np.float32
    _, params = quantize(np.full((2, 3), 7.0, np.float32), 4)
    assert params.scale.tolist() == [1.0]  # below MIN_SCALE: no usable range


def test_each_layer_reports_a_bad_word_in_its_own_error_class():
    from conftest import conv_bn_relu_graph
    from dyno_compile.artifact.plan import plan_build

    cases = [
        (lambda: Config(0, "17"), InputError, "bits must be an int in 1..16"),
        (lambda: Config(0, "8", "row"), InputError, "granularity must be one of ('tensor', 'channel')"),
        (lambda: Config(0, "8", layout="planes"), InputError, "layout must be one of ('stream', 'bitplane')"),
        (lambda: Config(0, "8", codec="gzip"), InputError, "codec must be one of ('none', 'lz4', 'zstd'"),
        (lambda: SearchSpace((1,), bits=("0",)), InputError, "bits must be"),
        (lambda: check_bits(17), GraphError, "bits must be"),
        (
            lambda: plan_build(conv_bn_relu_graph(np.random.default_rng(0)), [], granularity="row"),
            DynoError,
            "granularity must be one of",
        ),
        (lambda: PackConfig(codec="gzip"), PackError, "PackConfig.codec: must be one of ('none', 'lz4', 'zstd'"),
    ]
    for call, error, message in cases:
        with pytest.raises(error) as err:
            call()
        assert message in str(err.value), err.value


def test_the_build_command_offers_the_vocabulary():
    from dyno_compile.cli import _parse_bits

    assert _parse_bits("float32, 8,2") == ["float32", 8, 2]
    with pytest.raises(InputError, match="--bits must be"):
        _parse_bits("8,int4")
    done = subprocess.run(
        [sys.executable, "-m", "dyno_compile", "build", "--granularity", "row"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "'tensor', 'channel'" in done.stderr


def test_configs_and_the_runtime_import_no_search():
    """``Config``/``Evaluation`` sit beside errors.py (importing only it and packing), so the
    runtime reads a Pareto set without importing the search."""
    code = (
        "import json, sys, pkgutil, importlib, dyno_compile.configs\n"
        "configs = sorted(m for m in sys.modules if m.startswith('dyno_compile'))\n"
        "import dyno_compile.runtime as rt\n"
        "for m in pkgutil.iter_modules(rt.__path__):\n"
        "    importlib.import_module('dyno_compile.runtime.' + m.name)\n"
        "print(json.dumps([configs, sorted(m for m in sys.modules if m.startswith('dyno_compile.search'))]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    configs, search = json.loads(done.stdout.splitlines()[-1])
    assert all(
        m in ("dyno_compile", "dyno_compile.configs", "dyno_compile.errors") or m.startswith("dyno_compile.packing")
        for m in configs
    ), configs
    assert search == []
