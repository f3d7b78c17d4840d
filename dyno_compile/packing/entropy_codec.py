"""Context-modelling entropy coding of the cut's codes: ``loco``, lossless JPEG-LS over them.

Measured on real activations (``benchmarks/cut_coding.py``, ``docs/cut-coding.md``), an
order-0 entropy coder with per-tensor or per-channel statistics (rANS, the ``constriction``
bound) codes a post-ReLU map in *more* bytes than zstd: a map's zeros come in spatial runs
and its values follow their neighbours, which zstd's matches exploit and a histogram does
not. What wins is modelling each code from its neighbours. LOCO-I, the lossless mode of
JPEG-LS (ISO/IEC 14495-1, CharLS through ``imagecodecs``, which has aarch64 wheels),
predicts every code from its left, upper and upper-left neighbours (the median edge
detector), codes the residual with Golomb codes adapted over 365 local-gradient contexts,
and codes flat stretches (runs of zeros) in a run mode: a few bits per run. It needs no
statistics in the payload, since it adapts as it goes, and it is fast (a fraction of a
millisecond per frame on this host).

The codes are coded as one grey image: ``rows = prod(shape[:-1])`` rows of ``shape[-1]``
codes (an NCHW map is its channels stacked vertically, so each code's upper neighbour is
the one above it in the same channel), with 8-bit samples for widths up to 8 and 16-bit
samples above. The JPEG-LS marker segments (start of image, frame header, scan header, end
of image: 27 bytes, plus 44 of SPIFF header that ``imagecodecs`` adds) hold nothing the frame
header does not already say, so the payload carries only the entropy-coded scan and the
decoder rebuilds the headers from the frame's dims and width. That also bounds decoding:
CharLS is only ever asked for the image the frame header declares, which the frame's
``max_bytes`` budget has already admitted, so a hostile payload cannot make it allocate
more.

Payload (``docs/wire-format.md``, codec 8)::

    tag     u8    0 = stored: the packed codes as they are (raw length + 1 bytes)
                  1 = JPEG-LS scan of the codes' image
    body    the packed bytes (tag 0) or the scan (tag 1), to the end of the payload

The encoder stores the packed bytes when the scan is not shorter, so a payload is never
longer than the raw bytes plus one. A float passthrough payload (no codes) is always
stored: the search crosses every lossless codec with every width, floats included, so
``loco`` must take them, and there it is ``none`` plus a byte.
"""

from __future__ import annotations

import math
import struct

import imagecodecs
import numpy as np

from dyno_compile.packing import PackError
from dyno_compile.packing.codec_types import Codec, PayloadInfo

__all__ = ["ENTROPY_CODECS", "LOCO_WIRE_ID", "image_dims"]

#: The wire id of ``loco``; the entropy codecs take 8 upward (3..6 are the image codecs').
LOCO_WIRE_ID = 8
#: Payload tags (the first byte).
STORED, SCAN = 0, 1
#: JPEG-LS frame dims are u16 (larger ones need an LSE dimension segment, not used here).
_MAX_DIM = 0xFFFF
#: Row length of the image when the natural fold exceeds ``_MAX_DIM``.
_FOLD_COLS = 4096
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_SOF55, _SOS, _LSE, _APP8 = 0xF7, 0xDA, 0xF8, 0xE8
#: The preset-parameters segment CharLS writes for 16-bit samples: MAXVAL 65535 and the
#: thresholds T1 = 18, T2 = 67, T3 = 276, RESET = 64 (ISO 14495-1 C.2.4.1.1 at that MAXVAL).
_LSE16 = struct.pack(">BBHBHHHHH", 0xFF, _LSE, 13, 1, 0xFFFF, 18, 67, 276, 64)


def image_dims(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(rows, cols)`` of the grey image the codes of a tensor of ``shape`` are coded as:
    every dim but the last folded into rows (so a scalar or a vector is one row). Where that
    exceeds JPEG-LS's 65535 x 65535 (a long vector, a tall stack of maps), the codes in C
    order fill rows of 4096 instead, the last row padded with zero codes."""
    rows, cols = (math.prod(shape[:-1]), shape[-1]) if shape else (1, 1)
    if rows <= _MAX_DIM and cols <= _MAX_DIM:
        return rows, cols
    return -(-math.prod(shape) // _FOLD_COLS), _FOLD_COLS


def _precision(bits: int) -> int:
    """Sample precision of the JPEG-LS image: ``imagecodecs`` codes uint8 images as 8-bit
    and uint16 as 16-bit samples."""
    return 8 if bits <= 8 else 16


def _unpack_codes(data: bytes | memoryview, bits: int, count: int, layout: str) -> np.ndarray:
    """The ``count`` codes of ``bits`` bits packed in ``layout`` (``docs/wire-format.md``),
    as uint16; PackError if the unused bits of the last byte are not zero.

    The same layouts as :func:`~.bitpack.unpack`, written again here because this module
    cannot import :mod:`.bitpack` (which imports the vocabulary, which imports the codec
    table, which imports this module); ``tests/test_entropy_codec.py`` checks the two agree.
    The loops run over bit positions, never over codes.
    """
    buf = np.frombuffer(data, np.uint8)
    nbits = count * bits
    if buf.size != (nbits + 7) // 8:
        raise PackError(f"{buf.size} packed bytes for {count} {bits}-bit codes", field="payload")
    if layout == "stream" and bits == 8:
        return buf.astype(np.uint16)
    if layout == "stream" and bits == 16:
        return buf.view("<u2").astype(np.uint16)
    if layout == "stream" and bits in (1, 2, 4):  # whole codes per byte: shifts, not bits
        per, mask = 8 // bits, (1 << bits) - 1
        codes = np.empty(buf.size * per, np.uint16)
        for k in range(per):
            codes[k::per] = (buf >> (k * bits)) & mask
        if codes[count:].any():
            raise PackError("the unused padding bits of the last byte must be zero", field="payload")
        return codes[:count]
    flat = np.unpackbits(buf, bitorder="little")
    if flat[nbits:].any():
        raise PackError("the unused padding bits of the last byte must be zero", field="payload")
    matrix = flat[:nbits].reshape(count, bits) if layout == "stream" else flat[:nbits].reshape(bits, count).T
    codes = np.zeros(count, np.uint16)
    for j in range(bits):
        codes |= matrix[:, j].astype(np.uint16) << np.uint16(j)
    return codes


def _pack_codes(codes: np.ndarray, bits: int, layout: str) -> bytes:
    """Inverse of :func:`_unpack_codes` (the codes are known to fit ``bits``)."""
    if layout == "stream" and bits == 8:
        return codes.astype(np.uint8).tobytes()
    if layout == "stream" and bits == 16:
        return codes.astype("<u2").tobytes()
    if layout == "stream" and bits in (1, 2, 4):
        per = 8 // bits
        padded = np.zeros(-(-codes.size // per) * per, np.uint8)
        padded[: codes.size] = codes
        groups = padded.reshape(-1, per)
        out = groups[:, 0].copy()
        for k in range(1, per):
            out |= groups[:, k] << np.uint8(k * bits)
        return out.tobytes()
    planes = np.empty((bits, codes.size), np.uint8)
    for j in range(bits):
        planes[j] = (codes >> np.uint16(j)) & np.uint16(1)
    flat = planes.T.reshape(-1) if layout == "stream" else planes.reshape(-1)
    return np.packbits(flat, bitorder="little").tobytes()


def _accepts(info: PayloadInfo) -> str | None:
    if not imagecodecs.JPEGLS.available:  # a build of imagecodecs without CharLS: say so, on both ends
        return "this imagecodecs was built without JPEG-LS (CharLS)"
    if info.bits is None:
        return None  # stored: the search crosses every lossless codec with the float widths too
    rows, cols = image_dims(info.shape)
    if info.count and rows > _MAX_DIM:
        return f"its {info.count} codes fill {rows} rows of {cols}, over JPEG-LS's {_MAX_DIM}"
    return None


def _bounds(raw_nbytes: int, info: PayloadInfo) -> tuple[int, int]:
    """At least the tag; at most the stored form, which the encoder falls back to whenever
    the scan would not be shorter."""
    return 1, raw_nbytes + 1


def _headers(bits: int, rows: int, cols: int) -> bytes:
    """The marker segments CharLS writes before a lossless single-component scan, without
    the SPIFF header: start of image, frame header (SOF55), for 16-bit samples the preset
    parameters (LSE), and the scan header (SOS)."""
    precision = _precision(bits)
    sof = struct.pack(">BBHBHHBBBB", 0xFF, _SOF55, 11, precision, rows, cols, 1, 1, 0x11, 0)
    sos = struct.pack(">BBHBBBBBB", 0xFF, _SOS, 8, 1, 1, 0, 0, 0, 0)
    return _SOI + sof + (_LSE16 if precision == 16 else b"") + sos


def _scan_of(stream: bytes, expected_headers: bytes) -> bytes:
    """The entropy-coded scan of a JPEG-LS stream from ``imagecodecs``, after checking that
    its frame and scan headers are exactly what the decoder will rebuild (so a change in
    what the library writes fails here, loudly, rather than producing frames that decode
    wrong)."""
    if stream[:2] != _SOI or stream[-2:] != _EOI:
        raise PackError("the JPEG-LS encoder wrote no start or end of image marker", field="payload")
    pos, kept = 2, [_SOI]
    while True:
        if len(stream) < pos + 4 or stream[pos] != 0xFF:
            raise PackError(f"unexpected JPEG-LS stream at byte {pos}", field="payload")
        marker = stream[pos + 1]
        if marker == _SOI[1]:  # SPIFF: its directory is followed by a second start of image
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", stream, pos + 2)
        segment = stream[pos : pos + 2 + length]
        if marker in (_SOF55, _LSE, _SOS):
            kept.append(segment)
        elif marker != _APP8:  # SPIFF header and directory entries carry nothing we need
            raise PackError(f"the JPEG-LS encoder wrote marker 0xff{marker:02x}, not supported", field="payload")
        pos += 2 + length
        if marker == _SOS:
            break
    if b"".join(kept) != expected_headers:
        raise PackError("the JPEG-LS encoder wrote headers other than the ones decoding rebuilds", field="payload")
    return stream[pos:-2]


def _loco_compress(data: bytes, level: int, info: PayloadInfo) -> bytes:
    bits = info.bits
    if bits is None:  # a float passthrough has no codes to model
        return bytes([STORED]) + bytes(data)
    rows, cols = image_dims(info.shape)
    codes = _unpack_codes(data, bits, info.count, info.layout)
    samples = np.zeros(rows * cols, np.uint8 if _precision(bits) == 8 else np.uint16)
    samples[: codes.size] = codes  # then zero codes up to the end of the last row
    stream = bytes(imagecodecs.jpegls_encode(samples.reshape(rows, cols)))
    scan = _scan_of(stream, _headers(bits, rows, cols))
    if len(scan) >= len(data):
        return bytes([STORED]) + bytes(data)
    return bytes([SCAN]) + scan


def _loco_decompress(data: bytes | memoryview, expected_nbytes: int, info: PayloadInfo) -> bytes:
    bits = info.bits
    view = memoryview(data)
    if not len(view):
        raise PackError("a loco payload holds at least its tag byte, got none", field="payload")
    tag = view[0]
    if tag == STORED:
        if len(view) - 1 != expected_nbytes:
            raise PackError(
                f"stored loco payload holds {len(view) - 1} bytes, header says {expected_nbytes}", field="payload"
            )
        if bits is not None:
            _unpack_codes(view[1:], bits, info.count, info.layout)  # checks the padding bits are zero
        return bytes(view[1:])
    if bits is None:
        raise PackError(f"a float passthrough's loco payload is stored (tag {STORED}), got tag {tag}", field="payload")
    if tag != SCAN:
        raise PackError(f"loco payload tag must be {STORED} (stored) or {SCAN} (scan), got {tag}", field="payload")
    rows, cols = image_dims(info.shape)
    stream = b"".join([_headers(bits, rows, cols), view[1:], _EOI])
    dtype = np.uint8 if _precision(bits) == 8 else np.uint16
    try:  # CharLS allocates the image the rebuilt header declares: rows x cols, admitted already
        image = imagecodecs.jpegls_decode(stream)
    except Exception as err:  # CharLS reports corrupt scans as its own error class
        raise PackError(f"corrupt JPEG-LS scan ({type(err).__name__}: {err})", field="payload") from None
    image = np.asarray(image)
    if image.shape != (rows, cols) or image.dtype != dtype:
        raise PackError(
            f"JPEG-LS scan decodes to {image.shape} {image.dtype}, expected {(rows, cols)} {np.dtype(dtype)}",
            field="payload",
        )
    if bits < 16 and image.size and int(image.max()) >> bits:
        raise PackError(f"JPEG-LS scan decodes to a code over {bits} bits", field="payload")
    flat = image.reshape(-1)
    if flat[info.count :].any():
        raise PackError("JPEG-LS scan decodes to non-zero codes in the padding of its last row", field="payload")
    return _pack_codes(flat[: info.count], bits, info.layout)


#: The entropy codecs, in wire-id order (appended to :data:`~.codec.CODEC_TABLE`).
ENTROPY_CODECS: tuple[Codec, ...] = (
    Codec("loco", LOCO_WIRE_ID, (0, 0), 0, _loco_compress, _loco_decompress, _bounds, _accepts),
)
