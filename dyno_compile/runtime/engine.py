"""The cloud server's work, apart from any network: request bytes in, reply bytes out.

:class:`CloudEngine` checks a request (size, envelope, shared token, model, replay), decodes
its cut frame, runs the cloud half of the artifact and encodes the reply. It never raises
for anything a client sent: every refusal is an error reply with a :class:`Status`, so a
transport (the gRPC server, the Ray Serve deployment) only moves bytes, and one bad frame
cannot disturb the requests around it. It keeps no state between requests beyond the
replay guard, so replicas can run side by side behind any load balancer.

Requests arriving together are run as one batch by :meth:`CloudEngine.handle_batch`,
grouped by cut. Each request is unpacked alone (its range is its own); a group is then
stacked ``cloud_batch`` at a time through the artifact's batched cloud segments when the
build made them (``--cloud-batch``; a last partial batch is padded), so the GPU runs one
kernel per segment for several requests. Without batched segments a group runs request
by request, and what batching saves is the per-request hand-off between threads.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from dyno_compile.artifact.load import Artifact
from dyno_compile.artifact.store import ArtifactError
from dyno_compile.errors import DynoError, InputError
from dyno_compile.packing import DEFAULT_MAX_BYTES, PackedFrame, PackError, decode_packed
from dyno_compile.runtime.protocol import (
    Kind,
    ProtocolError,
    Request,
    Status,
    decode_request,
    encode_reply,
    model_id,
    now_us,
)
from dyno_compile.runtime.sides import CloudSide

#: Requests whose client timestamp is further than this from the server's clock are
#: refused, and request ids are remembered this long, so a captured request cannot be
#: replayed. Generous, because phone clocks drift.
DEFAULT_REPLAY_WINDOW_S = 300.0
#: Request ids remembered at most; past this the oldest are forgotten and requests older
#: than the oldest remembered one are refused as stale, so memory stays bounded.
MAX_REMEMBERED = 1 << 20
#: Default bound on a request's size: ample for a float32 224x224 image (600 kB).
DEFAULT_MAX_REQUEST_BYTES = 64 << 20
#: A ping's answer: no output.
_EMPTY = np.zeros((0,), np.float32)


class ReplayGuard:
    """Remembers recent request ids; refuses a repeat, or a timestamp outside the window."""

    def __init__(self, window_s: float = DEFAULT_REPLAY_WINDOW_S, capacity: int = MAX_REMEMBERED) -> None:
        if not window_s > 0:
            raise InputError(f"the replay window must be > 0 seconds, got {window_s!r}")
        self.window_us = int(window_s * 1e6)
        self.capacity = capacity
        self._seen: OrderedDict[int, int] = OrderedDict()  # request id -> sent_at_us, oldest first
        self._floor_us = 0  # requests no newer than this are stale
        self._lock = threading.Lock()

    def admit(self, request_id: int, sent_at_us: int) -> None:
        now = now_us()
        with self._lock:
            self._forget(now)
            if abs(sent_at_us - now) > self.window_us or sent_at_us <= self._floor_us:
                raise ProtocolError(
                    Status.REPLAYED,
                    f"timestamp {(sent_at_us - now) / 1e6:+.1f} s from the server's "
                    f"clock is outside the replay window; check the device clock",
                )
            if request_id in self._seen:
                raise ProtocolError(Status.REPLAYED, f"request id {request_id:#x} was already served")
            self._seen[request_id] = sent_at_us
            if len(self._seen) > self.capacity:
                _, oldest = self._seen.popitem(last=False)
                self._floor_us = max(self._floor_us, oldest)

    def _forget(self, now: int) -> None:
        while self._seen:
            request_id, sent = next(iter(self._seen.items()))
            if now - sent <= self.window_us:
                break
            self._seen.popitem(last=False)


@dataclass
class EngineOptions:
    """``token``: a shared secret clients must present (None: no check); ``workers``: VMs
    that run requests at once; ``max_request_bytes``: the largest request accepted."""

    target: str | None = None
    token: str | None = None
    workers: int = 1
    replay_window_s: float = DEFAULT_REPLAY_WINDOW_S
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise InputError(f"workers must be a positive integer, got {self.workers!r}")
        if not isinstance(self.max_request_bytes, int) or not 64 <= self.max_request_bytes <= DEFAULT_MAX_BYTES:
            raise InputError(f"max_request_bytes must be 64..{DEFAULT_MAX_BYTES}, got {self.max_request_bytes!r}")
        if self.token is not None and not (isinstance(self.token, str) and self.token):
            raise InputError("the shared token must be a non-empty string")


class CloudEngine:
    """The cloud half of one artifact as a function from request bytes to reply bytes."""

    def __init__(self, artifact: Artifact, options: EngineOptions | None = None) -> None:
        self.artifact = artifact
        self.options = options or EngineOptions()
        self.target = self.options.target or cloud_target(artifact)
        self.model = model_id(artifact.model_hash)
        self._sides = [CloudSide(artifact, self.target) for _ in range(self.options.workers)]
        self._free = list(self._sides)
        self._free_lock = threading.Condition()
        self._replay = ReplayGuard(self.options.replay_window_s)
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self.accepting = True

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def handle(self, request: bytes | memoryview, *, token: str | None = None, queue_s: float = 0.0) -> bytes:
        """Serve one request; an error reply, never an exception, for anything it holds."""
        return self.handle_batch([(request, token, queue_s)])[0]

    def handle_batch(self, requests: Sequence[tuple[bytes | memoryview, str | None, float]]) -> list[bytes]:
        """Serve requests that arrived together, each ``(bytes, token, seconds queued)``, on
        one worker VM: those at the same cut run as one batch (:meth:`CloudSide.run_many`).
        Replies come in the order given; each reports the whole batch's compute time, the
        time its request actually spent on it."""
        parsed = [self._admit(body, token) for body, token, _ in requests]
        replies: list[bytes] = [b""] * len(parsed)
        groups: dict[int, list[tuple[int, PackedFrame]]] = {}
        for i, item in enumerate(parsed):
            if isinstance(item, ProtocolError):
                replies[i] = self._reply(item.status, queue_s=requests[i][2], message=item.detail)
            elif item[1] is None:  # PING
                replies[i] = self._reply(Status.OK, queue_s=requests[i][2], output=_EMPTY)
            else:
                groups.setdefault(item[1].cut_id, []).append((i, item[1]))
        if not groups:
            return replies
        self._count(len(parsed))
        try:
            with self._side() as side:
                for cut_id, members in groups.items():
                    frames = [frame for _, frame in members]
                    start = time.perf_counter()
                    outputs = _run_group(side, cut_id, frames)
                    compute_s = time.perf_counter() - start
                    for (i, frame), out in zip(members, outputs):
                        replies[i] = self._answer(frame, out, queue_s=requests[i][2], compute_s=compute_s)
        finally:
            self._count(-len(parsed))
        return replies

    def _reply(self, status: Status, **fields) -> bytes:
        return encode_reply(status, in_flight=self._in_flight, workers=len(self._sides), **fields)

    def _answer(self, frame: PackedFrame, out: np.ndarray | Exception, *, queue_s: float, compute_s: float) -> bytes:
        if isinstance(out, np.ndarray):
            return self._reply(
                Status.OK,
                request_id=frame.request_id,
                output=out,
                cut_id=frame.cut_id,
                queue_s=queue_s,
                compute_s=compute_s,
            )
        if isinstance(out, ArtifactError):  # a cut or width the artifact was not built for
            status = Status.UNSUPPORTED
        elif isinstance(out, InputError):  # a frame that does not fit its cut
            status = Status.BAD_REQUEST
        elif isinstance(out, DynoError):
            status = Status.UNSUPPORTED
        else:
            status = Status.INTERNAL
        message = str(out) if isinstance(out, DynoError) else f"{type(out).__name__}: {out}"
        return self._reply(status, request_id=frame.request_id, message=message, queue_s=queue_s)

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self._in_flight += delta

    def _admit(self, body: bytes | memoryview, token: str | None) -> tuple[Request, PackedFrame | None] | ProtocolError:
        """Everything checked before any compute: ``(request, frame)`` or the refusal."""
        try:
            if self.options.token is not None and not (
                token is not None and hmac.compare_digest(token.encode(), self.options.token.encode())
            ):
                raise ProtocolError(Status.UNAUTHENTICATED, "missing or wrong token")
            if not self.accepting:
                raise ProtocolError(Status.SHUTTING_DOWN, "the server is shutting down; try another endpoint")
            request = decode_request(body, max_bytes=self.options.max_request_bytes)
            if request.kind is Kind.PING:
                return request, None
            if request.model != self.model:
                raise ProtocolError(
                    Status.WRONG_MODEL,
                    f"request for model {request.model:016x}, this server runs "
                    f"{self.model:016x}: deploy the same build on both sides",
                )
            frame = decode_packed(request.body, max_bytes=self.options.max_request_bytes)
            self._replay.admit(frame.request_id, request.sent_at_us)
            return request, frame
        except ProtocolError as e:
            return e
        except PackError as e:
            return ProtocolError(Status.BAD_REQUEST, f"cut frame: {e}")

    @contextmanager
    def _side(self) -> Iterator[CloudSide]:
        with self._free_lock:
            while not self._free:
                self._free_lock.wait()
            side = self._free.pop()
        try:
            yield side
        finally:
            with self._free_lock:
                self._free.append(side)
                self._free_lock.notify()


def cloud_target(artifact: Artifact) -> str:
    """The cloud library to load here: a CUDA build where a GPU is present, else the host's.
    ``DYNO_CLOUD_TARGET`` overrides the choice."""
    from dyno_compile.targets import get_target
    from dyno_compile.targets.runner import gpu_available

    forced = os.environ.get("DYNO_CLOUD_TARGET")
    if forced:
        return forced
    built = [
        rel.split("/", 1)[1].removesuffix(".so") for rel in artifact.manifest["libraries"] if rel.startswith("cloud/")
    ]
    for name in built:
        if name != "host" and gpu_available(get_target(name)):
            return name
    if "host" not in built:
        raise InputError(f"{artifact.root}: no cloud library runs here (built: {built}); build with the host target")
    return "host"


def _run_group(side: CloudSide, cut_id: int, frames: list[PackedFrame]) -> Sequence[np.ndarray | Exception]:
    """Outputs (or the error each request gets) of frames at one cut; a failure of the
    whole group (an unknown cut, a TVM error) is every member's error, never the server's."""
    try:
        return side.run_many(cut_id, [f.tensors for f in frames])
    except Exception as e:  # noqa: BLE001 - nothing a client sends may take the server down
        return [e] * len(frames)
