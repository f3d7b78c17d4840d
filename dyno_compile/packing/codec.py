"""The lossless stage after bit packing: ``"none"``, ``"lz4"`` or ``"zstd"``.

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

CODECS: tuple[str, ...] = ("none", "lz4", "zstd")
#: Inclusive level ranges per codec, and the level used when none is given.
LEVEL_RANGES: dict[str, tuple[int, int]] = {"none": (0, 0), "lz4": (0, 12), "zstd": (1, 22)}
DEFAULT_LEVELS: dict[str, int] = {"none": 0, "lz4": 0, "zstd": 3}


def default_level(codec: str) -> int:
    """The level a codec gets when the config leaves it out."""
    return DEFAULT_LEVELS[check_codec(codec)]


def check_codec(codec: object, field: str = "codec") -> str:
    if codec not in CODECS:
        raise PackError(f"must be one of {CODECS}, got {codec!r}", field=field)
    return codec  # type: ignore[return-value]


def check_level(codec: str, level: object, field: str = "level") -> int:
    """``level`` for ``codec``, or its default when ``None``; PackError outside the range."""
    if level is None:
        return default_level(codec)
    low, high = LEVEL_RANGES[check_codec(codec)]
    try:  # any integer (Python or NumPy), but not a bool: level=True is a bug
        value = None if isinstance(level, (bool, np.bool_)) else operator.index(level)  # type: ignore[arg-type]
    except TypeError:
        value = None
    if value is None or not low <= value <= high:
        raise PackError(f"must be an int in {low}..{high} (or None for {DEFAULT_LEVELS[codec]}) for codec "
                        f"{codec!r}, got {level!r}", field=field)
    return value


def compress_bound(codec: str, raw_nbytes: int) -> int:
    """An upper bound on the compressed size of ``raw_nbytes`` bytes, for header validation.

    It covers LZ4's ``raw + raw/255 + 16`` and zstd's ``ZSTD_COMPRESSBOUND`` (which includes
    its frame header) with room to spare; a payload longer than this cannot be genuine.
    """
    if codec == "none" or raw_nbytes == 0:
        return raw_nbytes
    return raw_nbytes + raw_nbytes // 64 + 256


def compress(data: bytes, codec: str, level: int | None = None) -> bytes:
    """Compress ``data`` with ``codec`` at ``level`` (its default when ``None``)."""
    level = check_level(codec, level)
    if codec == "none" or not data:
        return bytes(data)
    if codec == "lz4":
        if level == 0:
            return lz4.block.compress(data, mode="default", store_size=False)
        return lz4.block.compress(data, mode="high_compression", compression=level, store_size=False)
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False).compress(data)


def decompress(data: bytes, codec: str, expected_nbytes: int) -> bytes:
    """Decompress ``data``, which must expand to exactly ``expected_nbytes`` bytes.

    Never allocates more than ``expected_nbytes`` for the output; any codec error, a size
    other than expected, or trailing data raises PackError.
    """
    check_codec(codec)
    if codec == "none" or expected_nbytes == 0:
        if len(data) != expected_nbytes:
            raise PackError(f"{len(data)} bytes stored, {expected_nbytes} expected "
                            f"({'uncompressed' if codec == 'none' else 'an empty payload stores none'})",
                            field="payload length")
        return bytes(data)
    out = _lz4_decompress(data, expected_nbytes) if codec == "lz4" else _zstd_decompress(data, expected_nbytes)
    if len(out) != expected_nbytes:
        raise PackError(f"{codec} payload expands to {len(out)} bytes, header says {expected_nbytes}",
                        field="payload")
    return out


def _lz4_decompress(data: bytes, expected_nbytes: int) -> bytes:
    try:
        return lz4.block.decompress(data, uncompressed_size=expected_nbytes)
    except lz4.block.LZ4BlockError as err:
        raise PackError(f"corrupt lz4 block or larger than the declared {expected_nbytes} bytes ({err})",
                        field="payload") from None


def _zstd_decompress(data: bytes, expected_nbytes: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as err:
        raise PackError(f"not a zstd frame ({err})", field="payload") from None
    if params.content_size != expected_nbytes or params.dict_id != 0:
        raise PackError(f"zstd frame declares {params.content_size} bytes (dictionary {params.dict_id}), "
                        f"header says {expected_nbytes} (no dictionary)", field="payload")
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=expected_nbytes,
                                                       allow_extra_data=False)
    except zstandard.ZstdError as err:
        raise PackError(f"corrupt zstd frame ({err})", field="payload") from None
