"""The lossless stage after bit packing: a table of codecs, ``"none"``, ``"lz4"`` and ``"zstd"``.

Every codec is one :class:`Codec` entry of :data:`CODEC_TABLE`: its name, the byte a frame
header stores for it, its levels and its two functions. Adding a codec is one entry (with a
wire id never used before) plus its tests; the frame, :class:`~.frame.PackConfig`, the
search space and the command line all read their codec names from this table.

A codec sees the payload's bytes *and* a :class:`PayloadInfo` (code width, tensor shape,
layout, channel axis), all of which the frame header already carries: a general-purpose
compressor ignores it, while a coder that models the codes themselves (an entropy coder
over symbols, an image codec over a ``C x H x W`` plane) needs it to know what the bytes
mean. A codec may take only some payloads (``accepts``) and may be ``lossy``: the frame
then still declares the raw length, and the decoded codes approximate the sent ones.

Decompression is always bounded by the size the frame header declares, so a hostile or
corrupt payload cannot make the cloud server allocate more than the decoder has already
agreed to (no decompression bombs):

* ``lz4`` uses raw LZ4 *blocks* (``lz4.block``, no size prefix): the frame header already
  carries both lengths and a CRC, so the 15-odd bytes of an LZ4 frame would be pure
  overhead. ``lz4.block.decompress`` is told the expected size, allocates exactly that and
  fails on anything longer (it uses ``LZ4_decompress_safe``).
* ``zstd`` frames carry their own content size, and python-zstandard trusts it over any
  ``max_output_size``; so the declared content size is read from the zstd frame header
  and compared with the expected size *before* decompressing, and trailing data after the
  zstd frame is refused.

An empty payload compresses to zero bytes whatever the codec, so an empty tensor costs no
codec framing. Levels: lz4 0 = fast mode, 1..12 = LZ4-HC at that level; zstd 1..22; none
takes no level (0).
"""

from __future__ import annotations

import operator

import lz4.block
import numpy as np
import zstandard

from dyno_compile.packing import PackError
from dyno_compile.packing.codec_types import Codec, PayloadInfo
from dyno_compile.packing.entropy_codec import ENTROPY_CODECS
from dyno_compile.packing.image_codec import IMAGE_CODECS


def _stored(data: bytes, level: int, info: PayloadInfo) -> bytes:
    return bytes(data)


def _unstored(data: bytes | memoryview, expected_nbytes: int, info: PayloadInfo) -> bytes:
    if len(data) != expected_nbytes:
        raise PackError(f"{len(data)} bytes stored, {expected_nbytes} expected (uncompressed)", field="payload length")
    return bytes(data)


def _exactly_raw(raw_nbytes: int, info: PayloadInfo) -> tuple[int, int]:
    return raw_nbytes, raw_nbytes


def _compressed_bound(raw_nbytes: int, info: PayloadInfo) -> tuple[int, int]:
    """Up to LZ4's ``raw + raw/255 + 16`` and zstd's ``ZSTD_COMPRESSBOUND`` (which includes its
    frame header), with room to spare: a longer payload cannot be genuine."""
    return 0, raw_nbytes + raw_nbytes // 64 + 256


def _lz4_compress(data: bytes, level: int, info: PayloadInfo) -> bytes:
    if level == 0:
        return lz4.block.compress(data, mode="default", store_size=False)
    return lz4.block.compress(data, mode="high_compression", compression=level, store_size=False)


def _lz4_decompress(data: bytes | memoryview, expected_nbytes: int, info: PayloadInfo) -> bytes:
    try:
        return lz4.block.decompress(data, uncompressed_size=expected_nbytes)
    except lz4.block.LZ4BlockError as err:
        raise PackError(
            f"corrupt lz4 block or larger than the declared {expected_nbytes} bytes ({err})", field="payload"
        ) from None


def _zstd_compress(data: bytes, level: int, info: PayloadInfo) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False).compress(data)


def _zstd_decompress(data: bytes | memoryview, expected_nbytes: int, info: PayloadInfo) -> bytes:
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as err:
        raise PackError(f"not a zstd frame ({err})", field="payload") from None
    if params.content_size != expected_nbytes or params.dict_id != 0:
        raise PackError(
            f"zstd frame declares {params.content_size} bytes (dictionary {params.dict_id}), "
            f"header says {expected_nbytes} (no dictionary)",
            field="payload",
        )
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=expected_nbytes, allow_extra_data=False)
    except zstandard.ZstdError as err:
        raise PackError(f"corrupt zstd frame ({err})", field="payload") from None


#: Every codec, in wire-id order (the levels are in the module docstring).
CODEC_TABLE: tuple[Codec, ...] = (
    Codec("none", 0, (0, 0), 0, _stored, _unstored, _exactly_raw),
    Codec("lz4", 1, (0, 12), 0, _lz4_compress, _lz4_decompress, _compressed_bound),
    Codec("zstd", 2, (1, 22), 3, _zstd_compress, _zstd_decompress, _compressed_bound),
    *IMAGE_CODECS,
    *ENTROPY_CODECS,
)
#: Codec names, in wire-id order.
CODECS: tuple[str, ...] = tuple(c.name for c in CODEC_TABLE)
_BY_NAME = {c.name: c for c in CODEC_TABLE}
_BY_WIRE_ID = {c.wire_id: c for c in CODEC_TABLE}


def get_codec(codec: object, field: str = "codec") -> Codec:
    """The table entry named ``codec``; PackError listing the names otherwise."""
    if not isinstance(codec, str) or codec not in _BY_NAME:
        raise PackError(f"must be one of {CODECS}, got {codec!r}", field=field)
    return _BY_NAME[codec]


def check_codec(codec: object, field: str = "codec") -> str:
    """``codec`` if it names a codec of the table; PackError otherwise."""
    return get_codec(codec, field).name


def codec_from_wire(wire_id: int, field: str = "codec") -> Codec:
    """The entry a frame header's codec byte names; PackError listing the known ids otherwise."""
    if wire_id not in _BY_WIRE_ID:
        known = ", ".join(f"{c.wire_id} ({c.name})" for c in CODEC_TABLE)
        raise PackError(f"must be one of {known}, got {wire_id}", field=field)
    return _BY_WIRE_ID[wire_id]


def default_level(codec: str) -> int:
    """The level a codec gets when the config leaves it out."""
    return get_codec(codec).default_level


def check_level(codec: str, level: object, field: str = "level") -> int:
    """``level`` for ``codec``, or its default when ``None``; PackError outside the range."""
    entry = get_codec(codec)
    if level is None:
        return entry.default_level
    low, high = entry.levels
    try:  # any integer (Python or NumPy), but not a bool: level=True is a bug
        value = None if isinstance(level, (bool, np.bool_)) else operator.index(level)  # type: ignore[arg-type]
    except TypeError:
        value = None
    if value is None or not low <= value <= high:
        raise PackError(
            f"must be an int in {low}..{high} (or None for {entry.default_level}) for codec {codec!r}, got {level!r}",
            field=field,
        )
    return value


def _bytes_of(nbytes: int) -> PayloadInfo:
    """The info of a bare byte string: 8-bit codes, one dimension, for the codecs that are
    used on bytes alone (a codec that needs to know more refuses it by ``accepts``)."""
    return PayloadInfo(8, (nbytes,), "stream")


def check_accepts(codec: str, info: PayloadInfo, field: str = "codec") -> Codec:
    """The entry for ``codec`` if it can code a payload described by ``info``; PackError
    saying why not otherwise."""
    entry = get_codec(codec, field)
    reason = entry.accepts(info)
    if reason is not None:
        raise PackError(f"{codec!r} cannot code this tensor: {reason}", field=field)
    return entry


def payload_bounds(codec: str, raw_nbytes: int, info: PayloadInfo | None = None) -> tuple[int, int]:
    """``(least, most)`` bytes a genuine ``codec`` payload of ``raw_nbytes`` raw bytes takes."""
    info = _bytes_of(raw_nbytes) if info is None else info
    return (0, 0) if raw_nbytes == 0 else get_codec(codec).payload_bounds(raw_nbytes, info)


def compress(data: bytes, codec: str, level: int | None = None, info: PayloadInfo | None = None) -> bytes:
    """Compress ``data`` with ``codec`` at ``level`` (its default when ``None``); ``info``
    describes the codes (a plain byte string when ``None``)."""
    level = check_level(codec, level)
    info = _bytes_of(len(data)) if info is None else info
    entry = check_accepts(codec, info)
    return entry.compress(data, level, info) if data else b""


def decompress(data: bytes | memoryview, codec: str, expected_nbytes: int, info: PayloadInfo | None = None) -> bytes:
    """Decompress ``data``, which must expand to exactly ``expected_nbytes`` bytes.

    Never allocates more than ``expected_nbytes`` for the output; any codec error, a size
    other than expected, or trailing data raises PackError.
    """
    info = _bytes_of(expected_nbytes) if info is None else info
    entry = check_accepts(codec, info)
    if expected_nbytes == 0:
        if len(data):
            raise PackError(
                f"{len(data)} bytes stored, 0 expected (an empty payload stores none)", field="payload length"
            )
        return b""
    out = entry.decompress(data, expected_nbytes, info)
    if len(out) != expected_nbytes:
        raise PackError(f"{codec} payload expands to {len(out)} bytes, header says {expected_nbytes}", field="payload")
    return out
