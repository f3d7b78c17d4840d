"""The self-describing wire format for one packed cut: header, payloads, CRC32.

One frame carries every tensor crossing a cut (a cut inside a residual block crosses two),
each quantised, bit-packed and compressed as a :class:`PackConfig` says. The header alone
says how to undo all of it, so the cloud needs no side channel to decode a request; the
field-by-field layout is in ``docs/wire-format.md``::

    fixed header   magic "DYNO", version, flags, cut id, request id, tensor count  (22 B)
    per tensor     dtype, rank, dims, mode, granularity, axis, layout, codec,
                   lo[], scale[], raw length, compressed length
    payloads       one per tensor, in order
    crc32          zlib.crc32 of everything before it                              (4 B)

:func:`decode` is written for untrusted input: it parses and checks every header field,
every length and budget, the total size and the checksum before it reads a payload byte
through a codec, and every problem is a :class:`PackError` naming the field.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from dyno_compile.packing import PackError
from dyno_compile.packing.bitpack import pack, packed_nbytes, unpack
from dyno_compile.packing.codec import (
    PayloadInfo,
    check_accepts,
    check_codec,
    check_level,
    codec_from_wire,
    compress,
    decompress,
    get_codec,
    payload_bounds,
)
from dyno_compile.packing.quantize import QuantParams, as_input, dequantize, quantize
from dyno_compile.packing.vocab import (
    FLOAT_WIDTHS,
    GRANULARITIES,
    LAYOUTS,
    MAX_BITS,
    MIN_BITS,
    Mode,
    check_granularity,
    check_layout,
    check_mode,
)

MAGIC = b"DYNO"
FORMAT_VERSION = 1
#: Default bound on the frame's length and on the float32 bytes it decodes to (256 MiB).
DEFAULT_MAX_BYTES = 1 << 28
MAX_TENSORS = 256
MAX_RANK = 8
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1

#: Mode byte of the passthrough modes: high bit set, low bits the float width.
_PASSTHROUGH_CODES = {name: 0x80 | width for name, width in FLOAT_WIDTHS.items()}
_PASSTHROUGH_NAMES = {code: name for name, code in _PASSTHROUGH_CODES.items()}
#: Original dtype byte; the passthrough payload dtypes, little-endian.
_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_WIRE_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in FLOAT_WIDTHS}
#: A passthrough's values are written as they are: the layout byte of the canonical form.
_PASSTHROUGH_LAYOUT = LAYOUTS[0]

_FIXED = struct.Struct("<4sHHIQH")  # magic, version, flags, cut_id, request_id, n_tensors
_SHAPE = struct.Struct("<BB")  # dtype, rank
_CODING = struct.Struct("<BBBBB")  # mode, granularity, axis, layout, codec
_LENGTHS = struct.Struct("<II")  # raw payload length, compressed payload length
_CRC = struct.Struct("<I")


@dataclass(frozen=True, kw_only=True)
class PackConfig:
    """How to pack every tensor of a cut; validated on construction.

    * ``bits``: 1..16 for b-bit integer codes, or ``"float16"`` / ``"float32"`` to send
      floats (granularity, axis and layout are then ignored: nothing to quantise or pack).
    * ``granularity``: ``"tensor"`` (one lo/scale) or ``"channel"`` (one per slice along
      ``axis``; 1 is NCHW's channel axis, negative counts from the end).
    * ``layout``: ``"stream"`` or ``"bitplane"`` (see :mod:`.bitpack`).
    * ``codec``: ``"none"``, ``"lz4"`` or ``"zstd"``; ``level`` its level, ``None`` for the
      codec's default (lz4 0..12, default 0 = fast; zstd 1..22, default 3; none 0).
    """

    bits: Mode = 8
    granularity: str = "tensor"
    axis: int = 1
    layout: str = "stream"
    codec: str = "none"
    level: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_mode(self.bits, "PackConfig.bits"))
        check_granularity(self.granularity, "PackConfig.granularity")
        is_int = isinstance(self.axis, (int, np.integer)) and not isinstance(self.axis, (bool, np.bool_))
        if not (is_int and -MAX_RANK <= self.axis < MAX_RANK):
            raise PackError(
                f"must be an int in {-MAX_RANK}..{MAX_RANK - 1}, got {self.axis!r}", field="PackConfig.axis"
            )
        object.__setattr__(self, "axis", int(self.axis))
        check_layout(self.layout, "PackConfig.layout")
        check_codec(self.codec, "PackConfig.codec")
        object.__setattr__(self, "level", check_level(self.codec, self.level, "PackConfig.level"))

    @property
    def is_passthrough(self) -> bool:
        return isinstance(self.bits, str)


@dataclass(frozen=True)
class TensorHeader:
    """What the header says about one tensor: its original dtype and shape, how it was
    quantised, and how its payload was packed and compressed."""

    dtype: np.dtype
    shape: tuple[int, ...]
    params: QuantParams
    layout: str
    codec: str
    raw_nbytes: int
    compressed_nbytes: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PackedTensor:
    """One tensor as it crosses the cut, before the codec: what a compiled pack kernel
    produces (codes packed in ``layout``, or little-endian floats for a passthrough mode)
    and what an unpack kernel takes. ``dtype`` and ``shape`` are the original tensor's."""

    dtype: np.dtype
    shape: tuple[int, ...]
    params: QuantParams
    layout: str
    data: bytes

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def relayout(self, layout: str) -> PackedTensor:
        """The same codes in ``layout`` (a kernel packs ``"stream"``; the wire may want
        ``"bitplane"``, whose high planes a codec squeezes better)."""
        bits = self.params.bits
        if layout == self.layout or isinstance(bits, str):  # a passthrough mode has no codes to relayout
            return self
        codes = unpack(self.data, bits, self.count, self.layout)
        return replace(self, layout=layout, data=pack(codes, bits, layout))

    def values(self) -> np.ndarray:
        """The dequantised float32 tensor (NumPy; bit-identical to the kernels)."""
        bits = self.params.bits
        if isinstance(bits, str):
            codes = np.frombuffer(self.data, dtype=_WIRE_DTYPES[bits])
        else:
            codes = unpack(self.data, bits, self.count, self.layout)
        return dequantize(codes.reshape(self.shape), self.params)


@dataclass(frozen=True)
class PackedFrame:
    """A validated frame whose payloads are decompressed but not yet unpacked."""

    cut_id: int
    request_id: int
    tensors: list[PackedTensor]
    headers: list[TensorHeader]
    nbytes: int


@dataclass(frozen=True)
class Frame:
    """A decoded frame: ids, the dequantised float32 tensors, and each tensor's header."""

    cut_id: int
    request_id: int
    tensors: list[np.ndarray]
    headers: list[TensorHeader]
    #: Length of the encoded frame.
    nbytes: int = 0

    @property
    def params(self) -> list[QuantParams]:
        return [h.params for h in self.headers]

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """``(raw, compressed)`` payload bytes per tensor."""
        return [(h.raw_nbytes, h.compressed_nbytes) for h in self.headers]


@contextmanager
def _under(prefix: str) -> Iterator[None]:
    """Re-raise a PackError from inside with ``prefix`` on its field path."""
    try:
        yield
    except PackError as err:
        raise PackError(err.detail, field=f"{prefix}.{err.field}" if err.field else prefix) from None


def _check_uint(value: object, high: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= high:
        raise PackError(f"must be an int in 0..{high}, got {value!r}", field=field)
    return int(value)


# --- encoding ---------------------------------------------------------------------------


def encode(tensors: Sequence[np.ndarray], config: PackConfig, *, cut_id: int, request_id: int) -> bytes:
    """Quantise, pack and frame the tensors crossing cut ``cut_id`` for request ``request_id``.

    Each tensor must be float32 or float16, of rank 0..8. ``request_id`` is a u64 so the
    server can later refuse replays; ``cut_id`` a u32.
    """
    if isinstance(tensors, np.ndarray) or not isinstance(tensors, Sequence):
        raise PackError("pass a list of tensors (e.g. [x]), not a single array", field="tensors")
    if not isinstance(config, PackConfig):
        raise PackError(f"must be a PackConfig, got {type(config).__name__}", field="config")
    packed = []
    for i, tensor in enumerate(tensors):
        with _under(f"tensor[{i}]"):
            packed.append(pack_tensor(tensor, config))
    return encode_packed(packed, codec=config.codec, level=config.level, cut_id=cut_id, request_id=request_id)


def pack_tensor(tensor: np.ndarray, config: PackConfig) -> PackedTensor:
    """Quantise and bit-pack one tensor with NumPy (what the device's pack kernel computes)."""
    x = np.asarray(tensor)
    as_input(x, "dtype")
    if x.ndim > MAX_RANK or any(d > _U32_MAX for d in x.shape):
        raise PackError(f"shape {x.shape} exceeds rank {MAX_RANK} or u32 dims", field="dims")
    codes, params = quantize(x, config.bits, granularity=config.granularity, axis=config.axis)
    bits = params.bits
    if isinstance(bits, str):  # a passthrough mode: the values as float16/float32
        data = codes.astype(_WIRE_DTYPES[bits]).tobytes()
        return PackedTensor(x.dtype, x.shape, params, _PASSTHROUGH_LAYOUT, data)
    return PackedTensor(x.dtype, x.shape, params, config.layout, pack(codes, bits, config.layout))


def encode_packed(
    tensors: Sequence[PackedTensor], *, codec: str = "none", level: int | None = None, cut_id: int, request_id: int
) -> bytes:
    """Compress and frame tensors that are already quantised and packed (by a compiled
    kernel, or :func:`pack_tensor`)."""
    if not 1 <= len(tensors) <= MAX_TENSORS:
        raise PackError(f"a frame carries 1..{MAX_TENSORS} tensors, got {len(tensors)}", field="tensors")
    check_codec(codec, "codec")
    level = check_level(codec, level, "level")
    cut_id = _check_uint(cut_id, _U32_MAX, "cut_id")
    request_id = _check_uint(request_id, _U64_MAX, "request_id")
    descriptors, payloads = [], []
    for i, tensor in enumerate(tensors):
        with _under(f"tensor[{i}]"):
            descriptor, payload = _describe(tensor, codec, level)
        descriptors.append(descriptor)
        payloads.append(payload)
    fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, 0, cut_id, request_id, len(tensors))
    body = b"".join([fixed, *descriptors, *payloads])
    return body + _CRC.pack(zlib.crc32(body))


def _describe(tensor: PackedTensor, codec: str, level: int) -> tuple[bytes, bytes]:
    """One tensor's header bytes and compressed payload; checks the parts agree."""
    if not isinstance(tensor, PackedTensor):
        raise PackError(f"must be a PackedTensor, got {type(tensor).__name__}", field="tensor")
    params, raw, shape = tensor.params, bytes(tensor.data), tuple(tensor.shape)
    if np.dtype(tensor.dtype) not in _DTYPES:
        raise PackError(f"must be float32 or float16, got {tensor.dtype}", field="dtype")
    if len(shape) > MAX_RANK or any(d > _U32_MAX for d in shape):
        raise PackError(f"shape {shape} exceeds rank {MAX_RANK} or u32 dims", field="dims")
    bits = params.bits
    expected = _raw_nbytes(bits, tensor.count)
    if len(raw) != expected:
        raise PackError(
            f"{len(raw)} bytes for {tensor.count} elements in mode {bits!r}; expected {expected}", field="data"
        )
    layout = check_layout(_PASSTHROUGH_LAYOUT if params.is_passthrough else tensor.layout)
    if not params.is_passthrough and params.lo.size != _param_count(
        bits, params.granularity, params.axis, layout, shape
    ):
        raise PackError(
            f"{params.lo.size} lo/scale pairs do not fit shape {shape} {params.granularity}", field="params"
        )
    payload = compress(raw, codec, level, _payload_info(params, layout, shape))
    if max(len(raw), len(payload)) > _U32_MAX:
        raise PackError(
            f"payload of {len(raw)} bytes does not fit a u32 length; split the batch", field="payload length"
        )
    mode = _PASSTHROUGH_CODES[bits] if isinstance(bits, str) else bits
    descriptor = b"".join(
        [
            _SHAPE.pack(_DTYPES.index(np.dtype(tensor.dtype)), len(shape)),
            struct.pack(f"<{len(shape)}I", *shape),
            _CODING.pack(
                mode,
                GRANULARITIES.index(params.granularity),
                params.axis,
                LAYOUTS.index(layout),
                get_codec(codec).wire_id,
            ),
            params.lo.astype("<f4").tobytes(),
            params.scale.astype("<f4").tobytes(),
            _LENGTHS.pack(len(raw), len(payload)),
        ]
    )
    return descriptor, payload


# --- decoding ---------------------------------------------------------------------------


class _Reader:
    """A cursor over the frame that checks there are enough bytes before every read."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    def _need(self, nbytes: int, field: str) -> None:
        left = len(self.view) - self.pos
        if nbytes > left:
            raise PackError(
                f"frame truncated: {nbytes} bytes needed at offset {self.pos}, {left} left "
                f"(frame is {len(self.view)} bytes)",
                field=field,
            )

    def take(self, layout: struct.Struct, field: str) -> tuple:
        self._need(layout.size, field)
        values = layout.unpack_from(self.view, self.pos)
        self.pos += layout.size
        return values

    def u32s(self, count: int, field: str) -> tuple[int, ...]:
        return self.take(struct.Struct(f"<{count}I"), field)

    def f32s(self, count: int, field: str) -> np.ndarray:
        self._need(4 * count, field)
        values = np.frombuffer(self.view, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos += 4 * count
        return values


@dataclass
class _Budget:
    """Elements and decoded float32 bytes still allowed by ``max_bytes``."""

    bytes_left: int

    def spend(self, count: int, field: str) -> None:
        cost = 4 * count
        if cost > self.bytes_left:
            raise PackError(
                f"{count} elements would decode to {cost} float32 bytes, over the {self.bytes_left} "
                f"left of max_bytes; raise max_bytes if this frame is genuine",
                field=field,
            )
        self.bytes_left -= cost


def decode(buf: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Frame:
    """Parse, validate, decompress and dequantise one frame (see :func:`decode_packed`)."""
    frame = decode_packed(buf, max_bytes=max_bytes)
    tensors = []
    for i, tensor in enumerate(frame.tensors):
        with _under(f"tensor[{i}]"):
            tensors.append(tensor.values())
    return Frame(frame.cut_id, frame.request_id, tensors, frame.headers, nbytes=frame.nbytes)


def decode_packed(buf: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> PackedFrame:
    """Parse, validate and decompress one frame, leaving the codes packed for an unpack
    kernel; PackError naming the field on any problem.

    ``max_bytes`` bounds both the frame's length and the float32 bytes of all the tensors
    it decodes to (so, with the codec bounds, the memory a frame can make us allocate).
    Order: fixed header, each tensor header (each field checked as read), total length
    (truncated / trailing bytes), CRC32, and only then the payloads.
    """
    try:
        view = memoryview(buf).cast("B")
    except TypeError as err:
        raise PackError(
            f"a frame is bytes, bytearray or a contiguous buffer, got {type(buf).__name__} ({err})", field="buf"
        ) from None
    max_bytes = _check_uint(max_bytes, _U64_MAX, "max_bytes")
    if len(view) > max_bytes:
        raise PackError(f"frame of {len(view)} bytes exceeds max_bytes={max_bytes}", field="frame length")
    if bytes(view[: len(MAGIC)]) != MAGIC[: len(view)]:
        raise PackError(
            f"expected {MAGIC!r}, got {bytes(view[: len(MAGIC)])!r}: not a dyno-compile frame", field="magic"
        )
    reader = _Reader(view)
    _, version, flags, cut_id, request_id, n_tensors = reader.take(_FIXED, "header")
    if version != FORMAT_VERSION:
        raise PackError(
            f"format version {version} is not supported (this decoder reads {FORMAT_VERSION}); "
            f"use the same dyno-compile release on both sides",
            field="version",
        )
    if flags != 0:
        raise PackError(f"reserved flags must be 0 in version {FORMAT_VERSION}, got {flags:#06x}", field="flags")
    if not 1 <= n_tensors <= MAX_TENSORS:
        raise PackError(f"must be in 1..{MAX_TENSORS}, got {n_tensors}", field="n_tensors")
    budget = _Budget(max_bytes)
    headers = []
    for i in range(n_tensors):
        with _under(f"tensor[{i}]"):
            headers.append(_read_tensor_header(reader, budget))
    end = reader.pos + sum(h.compressed_nbytes for h in headers) + _CRC.size
    if len(view) != end:
        what = "truncated" if len(view) < end else f"{len(view) - end} trailing bytes"
        raise PackError(f"{what}: the header describes a {end}-byte frame, got {len(view)} bytes", field="frame length")
    (stored,) = _CRC.unpack_from(view, end - _CRC.size)
    if zlib.crc32(view[: end - _CRC.size]) != stored:
        raise PackError("CRC32 mismatch: the frame was corrupted in transit", field="checksum")
    tensors, pos = [], reader.pos
    for i, header in enumerate(headers):
        with _under(f"tensor[{i}]"):
            raw = decompress(
                view[pos : pos + header.compressed_nbytes],
                header.codec,
                header.raw_nbytes,
                _payload_info(header.params, header.layout, header.shape),
            )
        tensors.append(PackedTensor(header.dtype, header.shape, header.params, header.layout, raw))
        pos += header.compressed_nbytes
    return PackedFrame(cut_id, request_id, tensors, headers, nbytes=len(view))


def _read_tensor_header(reader: _Reader, budget: _Budget) -> TensorHeader:
    """Read and check one tensor's header; every field is validated as soon as it is read."""
    dtype_code, rank = reader.take(_SHAPE, "dtype")
    if dtype_code >= len(_DTYPES):
        raise PackError(f"must be 0 (float32) or 1 (float16), got {dtype_code}", field="dtype")
    if rank > MAX_RANK:
        raise PackError(f"must be in 0..{MAX_RANK}, got {rank}", field="rank")
    shape = reader.u32s(rank, "dims")
    count = math.prod(shape)
    budget.spend(count, "dims")
    mode_code, granularity_code, axis, layout_code, codec_code = reader.take(_CODING, "mode")
    bits = _read_mode(mode_code)
    granularity = _from_position(granularity_code, GRANULARITIES, "granularity")
    layout = _from_position(layout_code, LAYOUTS, "layout")
    codec = codec_from_wire(codec_code).name
    n_params = _param_count(bits, granularity, axis, layout, shape)
    lo = reader.f32s(n_params, "lo")
    scale = reader.f32s(n_params, "scale")
    if not np.isfinite(lo).all():
        raise PackError("lo must be finite", field="lo")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise PackError("scale must be finite and > 0", field="scale")
    raw_nbytes, compressed_nbytes = reader.take(_LENGTHS, "raw length")
    expected = _raw_nbytes(bits, count)
    if raw_nbytes != expected:
        raise PackError(
            f"{raw_nbytes} bytes declared, {expected} expected for {count} elements in mode {bits!r}",
            field="raw length",
        )
    params = QuantParams(bits, granularity, axis, lo, scale)
    info = _payload_info(params, layout, tuple(shape))
    check_accepts(codec, info)
    least, most = payload_bounds(codec, raw_nbytes, info)
    if not least <= compressed_nbytes <= most:
        raise PackError(
            f"{compressed_nbytes} bytes declared for {raw_nbytes} raw bytes under codec {codec!r} "
            f"(allowed {least}..{most})",
            field="compressed length",
        )
    return TensorHeader(_DTYPES[dtype_code], tuple(shape), params, layout, codec, raw_nbytes, compressed_nbytes)


def _payload_info(params: QuantParams, layout: str, shape: tuple[int, ...]) -> PayloadInfo:
    """What a codec is told of a tensor's payload: all of it from the header's fields."""
    bits = params.bits
    return PayloadInfo(
        None if isinstance(bits, str) else bits,
        shape,
        layout,
        params.axis if params.granularity == "channel" and not isinstance(bits, str) else None,
    )


def _raw_nbytes(bits: Mode, count: int) -> int:
    """Bytes of ``count`` elements before the codec: packed codes, or little-endian floats."""
    return count * _WIRE_DTYPES[bits].itemsize if isinstance(bits, str) else packed_nbytes(count, bits)


def _from_position(code: int, names: tuple[str, ...], field: str) -> str:
    """The name a header byte numbers by its position in ``names`` (granularity, layout)."""
    if code >= len(names):
        raise PackError(
            f"must be one of {', '.join(f'{i} ({n})' for i, n in enumerate(names))}, got {code}", field=field
        )
    return names[code]


def _read_mode(code: int) -> Mode:
    if MIN_BITS <= code <= MAX_BITS:
        return code
    if code in _PASSTHROUGH_NAMES:
        return _PASSTHROUGH_NAMES[code]
    floats = ", ".join(f"{code:#04x} ({name})" for name, code in _PASSTHROUGH_CODES.items())
    raise PackError(f"must be {MIN_BITS}..{MAX_BITS} (bits) or one of {floats}, got {code:#04x}", field="mode")


def _param_count(bits: Mode, granularity: str, axis: int, layout: str, shape: tuple[int, ...]) -> int:
    """How many lo/scale pairs follow; also checks the combination is the canonical one."""
    if isinstance(bits, str):
        if (granularity, axis, layout) != ("tensor", 0, _PASSTHROUGH_LAYOUT):
            raise PackError(
                f"a {bits} passthrough is written with granularity tensor, axis 0, layout "
                f"{_PASSTHROUGH_LAYOUT}; got {granularity}, {axis}, {layout}",
                field="mode",
            )
        return 0
    if granularity == "tensor":
        if axis != 0:
            raise PackError(f"must be 0 for per-tensor quantisation, got {axis}", field="axis")
        return 1
    if axis >= len(shape):
        raise PackError(f"channel axis {axis} is out of range for rank {len(shape)}", field="axis")
    return shape[axis]
