"""The messages a device and a cloud server exchange: a request envelope around one cut
frame, and a reply envelope around the output (or an error).

Both are plain binary with fixed little-endian headers, decoded field by field with
bounds checks and never by an object deserialiser (no pickle, no code from the network).
The cut frame inside a request is :mod:`dyno_compile.packing`'s self-describing format;
an answer's output travels in the same format as a float32 passthrough frame, so one
strict decoder guards both directions. Layout (``docs/serving.md`` has the table)::

    request  "DYRQ" version:u16 kind:u16 model:u64 sent_at_us:u64 | cut frame  (INFER)
                                                               | padding    (PING)
    reply    "DYRP" version:u16 status:u16 request_id:u64 queue_us:u32 compute_us:u32
             in_flight:u16 workers:u16 | output frame (OK) or UTF-8 message (error)

``model`` is the first 8 bytes of the artifact's model hash, so a client never gets an
answer computed by a different build; ``sent_at_us`` (the client's clock) and the
frame's request id let a server refuse replayed requests.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from dyno_compile.errors import DynoError
from dyno_compile.packing import DEFAULT_MAX_BYTES, PackConfig, PackError, decode, encode

VERSION = 1
REQUEST_MAGIC = b"DYRQ"
REPLY_MAGIC = b"DYRP"
_REQUEST = struct.Struct("<4sHHQQ")  # magic, version, kind, model, sent_at_us
#: What the request envelope adds to the frame it carries.
REQUEST_HEADER_BYTES = _REQUEST.size
_REPLY = struct.Struct("<4sHHQIIHH")  # magic, version, status, request_id, queue_us, compute_us, in_flight, workers
#: Longest error message a reply carries (longer ones are cut): a client logs it, no more.
MAX_MESSAGE_BYTES = 1024
_U16, _U32 = (1 << 16) - 1, (1 << 32) - 1


class Kind(IntEnum):
    INFER = 1
    #: No work: the server answers at once, so the client measures the round trip (empty)
    #: or the uplink (padded) without running the model.
    PING = 2


class Status(IntEnum):
    """Why a server refused a request. A client falls back to the device on any of them;
    ``OVERLOADED`` and ``SHUTTING_DOWN`` also tell it to try this server later."""

    OK = 0
    BAD_REQUEST = 1  # malformed envelope or cut frame
    WRONG_MODEL = 2  # built from a different model than the server's
    REPLAYED = 3  # request id seen before, or timestamp outside the replay window
    UNAUTHENTICATED = 4  # missing or wrong shared token
    OVERLOADED = 5  # bounded queue full: back-pressure
    UNSUPPORTED = 6  # cut or width the artifact was not built for
    SHUTTING_DOWN = 7
    INTERNAL = 8


class ProtocolError(DynoError):
    """A message could not be decoded or was refused; ``status`` says which way."""

    def __init__(self, status: Status, message: str, reply: Reply | None = None) -> None:
        self.status = Status(status)
        super().__init__(f"{self.status.name}: {message}")
        self.detail = message
        #: The refusing reply, when a server sent one (its load figures inform the client).
        self.reply = reply


@dataclass(frozen=True)
class Request:
    kind: Kind
    model: int
    sent_at_us: int
    body: memoryview


@dataclass(frozen=True)
class Reply:
    status: Status
    request_id: int
    queue_s: float
    compute_s: float
    in_flight: int
    workers: int
    output: np.ndarray | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def server_s(self) -> float:
        """Time the request spent in the server: queueing plus compute."""
        return self.queue_s + self.compute_s


def model_id(model_hash: str) -> int:
    """The u64 a request names its model by: the hash's first 16 hex digits."""
    return int(model_hash[:16], 16)


def now_us() -> int:
    return time.time_ns() // 1000


def encode_request(body: bytes, *, model: int, kind: Kind = Kind.INFER, sent_at_us: int | None = None) -> bytes:
    sent = now_us() if sent_at_us is None else sent_at_us
    return _REQUEST.pack(REQUEST_MAGIC, VERSION, int(kind), model, sent) + body


def is_ping(buf: bytes | memoryview) -> bool:
    """Whether a request is a well-formed PING (checked without decoding the rest)."""
    if len(buf) < _REQUEST.size:
        return False
    magic, version, kind, _, _ = _REQUEST.unpack_from(buf)
    return magic == REQUEST_MAGIC and version == VERSION and kind == Kind.PING


def decode_request(buf: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Request:
    """The envelope, checked; the body is left for the frame decoder (INFER) or ignored (PING)."""
    view = memoryview(buf).cast("B")
    if len(view) > max_bytes:
        raise ProtocolError(Status.BAD_REQUEST, f"request of {len(view)} bytes exceeds the limit of {max_bytes}")
    if len(view) < _REQUEST.size:
        raise ProtocolError(
            Status.BAD_REQUEST, f"request of {len(view)} bytes is shorter than its {_REQUEST.size}-byte header"
        )
    magic, version, kind, model, sent_at_us = _REQUEST.unpack_from(view)
    if magic != REQUEST_MAGIC:
        raise ProtocolError(Status.BAD_REQUEST, f"expected magic {REQUEST_MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise ProtocolError(
            Status.BAD_REQUEST,
            f"protocol version {version} is not supported (this server speaks "
            f"{VERSION}); run the same dyno-compile release on both sides",
        )
    if kind not in Kind._value2member_map_:
        raise ProtocolError(Status.BAD_REQUEST, f"unknown request kind {kind}")
    return Request(Kind(kind), model, sent_at_us, view[_REQUEST.size :])


def encode_reply(
    status: Status,
    *,
    request_id: int = 0,
    output: np.ndarray | None = None,
    message: str = "",
    cut_id: int = 0,
    queue_s: float = 0.0,
    compute_s: float = 0.0,
    in_flight: int = 0,
    workers: int = 0,
) -> bytes:
    head = _REPLY.pack(
        REPLY_MAGIC,
        VERSION,
        int(status),
        request_id,
        _micros(queue_s),
        _micros(compute_s),
        min(in_flight, _U16),
        min(workers, _U16),
    )
    if status is Status.OK:
        body = encode(
            [np.asarray(output, np.float32)], PackConfig(bits="float32"), cut_id=cut_id, request_id=request_id
        )
    else:
        body = message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
    return head + body


def decode_reply(buf: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Reply:
    """A reply, checked as strictly as a request: a client trusts a server no more than
    the network between them."""
    view = memoryview(buf).cast("B")
    if len(view) < _REPLY.size:
        raise ProtocolError(Status.BAD_REQUEST, f"reply of {len(view)} bytes is shorter than its header")
    magic, version, status, request_id, queue_us, compute_us, in_flight, workers = _REPLY.unpack_from(view)
    if magic != REPLY_MAGIC or version != VERSION:
        raise ProtocolError(Status.BAD_REQUEST, f"not a version-{VERSION} reply (magic {magic!r}, version {version})")
    if status not in Status._value2member_map_:
        raise ProtocolError(Status.BAD_REQUEST, f"unknown reply status {status}")
    status, body = Status(status), view[_REPLY.size :]
    times = dict(
        request_id=request_id,
        queue_s=queue_us * 1e-6,
        compute_s=compute_us * 1e-6,
        in_flight=in_flight,
        workers=workers,
    )
    if status is not Status.OK:
        return Reply(status, message=bytes(body[:MAX_MESSAGE_BYTES]).decode("utf-8", "replace"), **times)
    try:
        frame = decode(body, max_bytes=max_bytes)
    except PackError as e:
        raise ProtocolError(Status.BAD_REQUEST, f"reply output: {e}") from None
    if frame.request_id != request_id or len(frame.tensors) != 1:
        raise ProtocolError(Status.BAD_REQUEST, "reply output frame does not match its envelope")
    return Reply(status, output=frame.tensors[0], **times)


def _micros(seconds: float) -> int:
    return min(max(int(round(seconds * 1e6)), 0), _U32)
