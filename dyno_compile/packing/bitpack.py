"""Dense packing of b-bit codes (b = 1..16) into bytes, in two layouts of the same size.

Both layouts fill exactly ``ceil(N * b / 8)`` bytes for N codes: no per-code or per-plane
padding, only the unused high bits of the last byte, which must be zero. Think of the
codes as an ``N x b`` bit matrix ``M[i, j] = bit j of code i``:

* ``"stream"``  sends ``M`` row by row: code i occupies bits ``[i*b, (i+1)*b)`` of a
  little-endian, LSB-first continuous bit stream (byte k holds stream bits ``8k..8k+7``,
  bit 0 the least significant). This is what the TVM device kernel writes: it needs no
  transpose, and at b = 8 or 16 it is just the codes' little-endian bytes.
* ``"bitplane"`` sends ``M`` column by column (bit-shuffled): plane j holds bit j of every
  code, plane after plane in the same LSB-first stream, so plane j occupies stream bits
  ``[j*N, (j+1)*N)``. When N is a multiple of 8 (any NCHW map with W a multiple of 8)
  this is each plane packed with ``np.packbits(bitorder="little")``, one after another,
  and plane j starts at byte ``j*N/8``. Post-ReLU maps are sparse with small values, so
  the high planes are nearly all zero and a lossless codec then shrinks them a lot. It
  pays at low widths; at 8 bits a zero code is already a zero byte in the stream layout,
  and stream + zstd measured smaller (docs/wire-format.md).

Empty inputs are handled: zero codes pack to zero bytes.
"""

from __future__ import annotations

import numpy as np

from dyno_compile.packing import PackError
from dyno_compile.packing.vocab import check_layout, check_width


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take in either layout: ``ceil(count*bits/8)``."""
    return (count * bits + 7) // 8


def _bit_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """``P[j, i] = bit j of code i`` as uint8 0/1, shape ``(bits, N)``: the transpose of ``M``.

    Built one plane at a time: each plane is one contiguous vector op, which measured ~10x
    faster than one broadcast ``codes >> arange(bits)[:, None]``. The Python loop runs over
    bit positions (at most 16), never over elements; so does :func:`_codes_from_planes`.
    """
    planes = np.empty((bits, codes.size), dtype=np.uint8)
    for j in range(bits):
        planes[j] = (codes >> np.uint16(j)) & np.uint16(1)
    return planes


def _codes_from_planes(planes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`_bit_planes`: OR plane j, shifted left by j, into uint16 codes."""
    codes = np.zeros(planes.shape[1], dtype=np.uint16)
    for j in range(bits):
        codes |= planes[j].astype(np.uint16) << np.uint16(j)
    return codes


def _stream_spans(bits: int) -> list[tuple[int, int, int]]:
    """``(code slot m, byte k, shift)`` for every byte each of 8 codes touches in a group.

    8 codes of b bits fill exactly b bytes, so the stream is a sequence of identical
    groups; code m starts at bit ``m*b`` of its group and touches bytes ``m*b // 8`` to
    ``(m*b + b - 1) // 8`` (at most 3). ``shift = m*b - 8*k`` moves it into byte k.
    """
    return [(m, k, m * bits - 8 * k) for m in range(8) for k in range(m * bits // 8, (m * bits + bits - 1) // 8 + 1)]


def _shift(values: np.ndarray, shift: int) -> np.ndarray:
    return values << np.uint32(shift) if shift >= 0 else values >> np.uint32(-shift)


def _stream_pack(flat: np.ndarray, bits: int) -> bytes:
    """Stream layout, one vector op per (code slot, byte) pair of a group: <= 24 ops."""
    groups = -(-flat.size // 8)
    padded = np.zeros(groups * 8, dtype=np.uint32)
    padded[: flat.size] = flat
    codes = padded.reshape(groups, 8)
    out = np.zeros((groups, bits), dtype=np.uint32)
    for m, k, shift in _stream_spans(bits):
        out[:, k] |= _shift(codes[:, m], shift)
    # zero codes padding the last group leave its unused bytes and bits zero: cut them off
    return (out & 0xFF).astype(np.uint8).reshape(-1)[: packed_nbytes(flat.size, bits)].tobytes()


def _stream_unpack(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`_stream_pack`: each code ORs together the bytes it spans."""
    groups = -(-count // 8)
    padded = np.zeros(groups * bits, dtype=np.uint32)
    padded[: data.size] = data
    buf = padded.reshape(groups, bits)
    codes = np.zeros((groups, 8), dtype=np.uint32)
    for m, k, shift in _stream_spans(bits):
        codes[:, m] |= _shift(buf[:, k], -shift)
    return (codes & np.uint32((1 << bits) - 1)).astype(np.uint16).reshape(-1)[:count]


def _as_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes flattened to uint16, refusing non-integers and values that do not fit in ``bits``."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "ui":
        raise PackError(f"codes must be an integer array, got dtype {codes.dtype}", field="codes")
    flat = codes.reshape(-1)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) > (1 << bits) - 1):
        raise PackError(
            f"codes must lie in 0..{(1 << bits) - 1} for {bits}-bit packing, got {int(flat.min())}..{int(flat.max())}",
            field="codes",
        )
    return flat.astype(np.uint16, copy=False)


def pack(codes: np.ndarray, bits: int, layout: str = "stream") -> bytes:
    """Pack ``codes`` (any shape, read in C order) into ``ceil(N*bits/8)`` bytes."""
    bits, layout = check_width(bits), check_layout(layout)
    flat = _as_codes(codes, bits)
    if layout == "stream" and bits == 8:
        return flat.astype(np.uint8).tobytes()
    if layout == "stream" and bits == 16:
        return flat.astype("<u2").tobytes()
    if layout == "stream":
        return _stream_pack(flat, bits)
    return np.packbits(_bit_planes(flat, bits).reshape(-1), bitorder="little").tobytes()


def unpack(buf: bytes, bits: int, count: int, layout: str = "stream") -> np.ndarray:
    """``count`` uint16 codes from a buffer made by :func:`pack`.

    The buffer must be exactly ``ceil(count*bits/8)`` bytes and its padding bits zero, so
    every valid packing has one encoding and a stray byte cannot go unnoticed.
    """
    bits, layout = check_width(bits), check_layout(layout)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise PackError(f"must be a non-negative int, got {count!r}", field="count")
    need = packed_nbytes(int(count), bits)
    if len(buf) != need:
        raise PackError(
            f"{len(buf)} bytes given, {need} expected for {count} codes of {bits} bits", field="payload length"
        )
    data = np.frombuffer(buf, dtype=np.uint8)
    used = int(count) * bits
    if used % 8 and data[-1] >> (used % 8):
        raise PackError(f"the {8 - used % 8} padding bits of the last byte are not zero", field="payload padding")
    if layout == "stream" and bits == 8:
        return data.astype(np.uint16)
    if layout == "stream" and bits == 16:
        return data.view("<u2").astype(np.uint16)
    if layout == "stream":
        return _stream_unpack(data, bits, int(count))
    planes = np.unpackbits(data, count=used, bitorder="little").reshape(bits, count)
    return _codes_from_planes(planes, bits)
