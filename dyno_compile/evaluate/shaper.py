"""A user-space link shaper: a TCP proxy that replays an uplink between a device and a cloud.

Why user space: mahimahi, ``tc netem`` and network namespaces all need root (or a
privileged container), which CI runners and most laptops do not grant. A proxy on loopback
needs nothing: the device client connects to the shaper instead of the server, and every
byte it sends is held back until the emulated link would have delivered it. Any TCP
protocol passes through unchanged (gRPC over HTTP/2, plain HTTP/1.1), byte for byte.

How pacing maps to mahimahi: a mahimahi uplink trace lists one millisecond timestamp per
1500-byte delivery opportunity and loops every ``period_ms``. The shaper plays the trace
from its start time on one link shared by all connections (one real radio link): a chunk
of ``n`` bytes read at time ``t`` takes the next ``ceil(n / 1500)`` free opportunities at or
after ``t`` (filling first what a previous chunk left free in its last packet, if that
opportunity is still to come), and each packet reaches the server at the end of its
opportunity's millisecond. On an idle link that is exactly
:meth:`~dyno_compile.runtime.link.UplinkTrace.transfer_seconds`. A constant rate is a FIFO
link serialising ``n`` bytes in ``n / rate`` seconds. Both directions add
``one_way_delay_s`` of propagation delay (mahimahi's ``mm-delay``); the downlink is only
delayed, never rate-limited, since the results the cloud returns are small.

The proxy bounds what it holds per direction (:data:`HIGH_WATER` bytes): a sender faster
than the link feels backpressure, as it would behind a real link, instead of growing the
shaper's memory without limit. Timers run on asyncio's clock, good to about a
millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.runtime.link import PACKET_BYTES, UplinkTrace

#: Bytes read from a socket at once.
READ_BYTES = 64 * 1024
#: Bytes a direction may hold undelivered before it stops reading from its sender.
HIGH_WATER = 1024 * 1024
#: Seconds to reach the target before the client's connection is closed.
CONNECT_TIMEOUT_S = 5.0
#: Seconds start() and stop() wait for the shaper's thread.
THREAD_TIMEOUT_S = 5.0

_log = logging.getLogger(__name__)

Uplink = UplinkTrace | float | None
#: A direction's schedule: (due time on the loop's clock, bytes) for a chunk read now.
Segments = list[tuple[float, int]]


def _check_uplink(uplink: object) -> Uplink:
    """``uplink`` if it is a trace, a finite rate > 0 in bytes/s, or None; else InputError."""
    if uplink is None or isinstance(uplink, UplinkTrace):
        return uplink
    if isinstance(uplink, bool) or not isinstance(uplink, (int, float)):
        raise InputError(f"uplink must be an UplinkTrace, a rate in bytes/s or None, got {uplink!r}")
    if not math.isfinite(uplink) or uplink <= 0:
        raise InputError(f"uplink rate must be a finite number of bytes/s > 0, got {uplink!r}")
    return float(uplink)


def _check_port(name: str, port: object, *, allow_zero: bool) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not (0 if allow_zero else 1) <= port <= 65535:
        raise InputError(f"{name} must be a TCP port ({'0' if allow_zero else '1'}..65535), got {port!r}")
    return port


def _check_target(target: object) -> tuple[str, int]:
    if not isinstance(target, tuple) or len(target) != 2 or not isinstance(target[0], str) or not target[0]:
        raise InputError(f"target must be a (host, port) tuple, got {target!r}")
    return target[0], _check_port("target port", target[1], allow_zero=False)


def _check_delay(delay: object) -> float:
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
        raise InputError(f"one_way_delay_s must be a finite number of seconds >= 0, got {delay!r}")
    return float(delay)


class _Unshaped:
    """No rate limit: a chunk is delivered as soon as it is read."""

    def __init__(self, free_at: float) -> None:
        self.origin = self.busy_until = free_at

    def schedule(self, now: float, nbytes: int) -> Segments:
        self.busy_until = max(self.busy_until, now)
        return [(self.busy_until, nbytes)]


class _RatePacer:
    """A FIFO link of constant ``rate`` bytes/s: ``n`` bytes occupy it for ``n / rate`` s.

    A chunk is released in pieces of at least one packet and one millisecond's worth, so
    the receiver sees a stream rather than the whole chunk at its last byte's time."""

    def __init__(self, rate: float, free_at: float) -> None:
        self._rate = rate
        self._step = max(PACKET_BYTES, math.ceil(rate * 1e-3))
        self.origin = self.busy_until = free_at

    def schedule(self, now: float, nbytes: int) -> Segments:
        start = max(self.busy_until, now)
        ends = list(range(self._step, nbytes, self._step)) + [nbytes]
        self.busy_until = start + nbytes / self._rate
        return [(start + end / self._rate, end - begin) for begin, end in zip([0, *ends[:-1]], ends)]


class _TracePacer:
    """A mahimahi trace played from ``origin`` (loop clock, s) on one shared link.

    ``_next`` is the global index (counting loops) of the next free opportunity and
    ``_spare`` the bytes left free in the packet before it, delivered at ``_spare_ms``."""

    def __init__(self, trace: UplinkTrace, origin: float) -> None:
        self._trace = trace
        self._opps = trace.opportunities_ms
        self._period = trace.period_ms
        self.origin = origin
        self._next = 0
        self._spare = 0
        self._spare_ms = -math.inf

    @property
    def busy_until(self) -> float:
        """When the last packet handed out is delivered (loop clock, s)."""
        return self.origin + (self._spare_ms / 1000.0 if self._next else 0.0)

    def _end_ms(self, index: np.ndarray) -> np.ndarray:
        """Millisecond (trace time) by which opportunity ``index`` has delivered its packet."""
        loops, i = np.divmod(index, self._opps.size)
        return loops * self._period + self._opps[i] + 1

    def schedule(self, now: float, nbytes: int) -> Segments:
        t_ms = max(now - self.origin, 0.0) * 1000.0  # the trace may start after a backlog
        segments: list[tuple[float, int]] = []
        if self._spare and self._spare_ms - 1 >= t_ms:  # the part-used packet is still to go
            take = min(self._spare, nbytes)
            segments.append((self._spare_ms, take))
            self._spare -= take
            nbytes -= take
        if nbytes:
            segments += self._take_packets(max(self._next, self._trace.first_opportunity(t_ms)), nbytes)
        return [(self.origin + end_ms / 1000.0, n) for end_ms, n in segments]

    def _take_packets(self, first: int, nbytes: int) -> list[tuple[float, int]]:
        """Hand out ``ceil(nbytes / 1500)`` opportunities from ``first``, one segment per
        distinct delivery millisecond."""
        packets = math.ceil(nbytes / PACKET_BYTES)
        ends = self._end_ms(np.arange(first, first + packets, dtype=np.int64))
        sizes = np.full(packets, PACKET_BYTES, dtype=np.int64)
        sizes[-1] = nbytes - PACKET_BYTES * (packets - 1)
        self._next = first + packets
        self._spare = PACKET_BYTES - int(sizes[-1])
        self._spare_ms = float(ends[-1])
        unique, starts = np.unique(ends, return_index=True)
        return list(zip(unique.astype(float).tolist(), np.add.reduceat(sizes, starts).tolist()))


_Pacer = _Unshaped | _RatePacer | _TracePacer


def _make_pacer(uplink: Uplink, free_at: float) -> _Pacer:
    """A pacer for ``uplink`` whose link is free from ``free_at`` (a trace starts there)."""
    if uplink is None:
        return _Unshaped(free_at)
    if isinstance(uplink, UplinkTrace):
        return _TracePacer(uplink, free_at)
    return _RatePacer(uplink, free_at)


class _Direction:
    """One direction of one connection: read chunks, hold each piece until its due time,
    write pieces in order, pass on a half-close once everything before it is delivered."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        schedule: Callable[[float, int], Segments],
        count: Callable[[int], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._schedule = schedule
        self._count = count
        self._queue: deque[tuple[float, bytes]] = deque()
        self._pending = 0
        self._eof = False
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def tasks(self) -> list[Awaitable[None]]:
        return [self._pump_in(), self._pump_out()]

    async def _pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room.wait()
            data = await self._reader.read(READ_BYTES)
            if not data:
                self._eof = True
                self._wake.set()
                return
            offset = 0
            for due, n in self._schedule(loop.time(), len(data)):
                self._queue.append((due, data[offset : offset + n]))
                offset += n
            self._pending += len(data)
            if self._pending > HIGH_WATER:
                self._room.clear()
            self._wake.set()

    async def _pump_out(self) -> None:
        while True:
            if not self._queue:
                if self._eof:
                    self._half_close()
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            data = await self._next_due()
            self._writer.write(data)
            self._count(len(data))
            self._pending -= len(data)
            if self._pending <= HIGH_WATER:
                self._room.set()
            await self._writer.drain()

    async def _next_due(self) -> bytes:
        """Wait for the head piece's due time; return it with every later piece already due."""
        loop = asyncio.get_running_loop()
        due = self._queue[0][0]
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        limit = max(due, loop.time())
        parts = []
        while self._queue and self._queue[0][0] <= limit:
            parts.append(self._queue.popleft()[1])
        return b"".join(parts)

    def _half_close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if self._writer.can_write_eof():
                self._writer.write_eof()


class LinkShaper:
    """A TCP proxy on loopback that replays an uplink between a client and ``target``.

    ``uplink`` is an :class:`UplinkTrace` (played from :meth:`start`, looping), a constant
    rate in bytes/s, or None for no rate limit; client-to-target bytes go through it, shared
    by all connections. Both directions get ``one_way_delay_s`` (so the round trip is
    twice that). The proxy runs its own asyncio loop in a background thread; use it as a
    context manager or call :meth:`start` / :meth:`stop`. If the target cannot be reached,
    the client's connection is simply closed.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        uplink: Uplink,
        one_way_delay_s: float = 0.0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._target = _check_target(target)
        self._uplink = _check_uplink(uplink)
        self._delay = _check_delay(one_way_delay_s)
        if not isinstance(listen_host, str) or not listen_host:
            raise InputError(f"listen_host must be a host name or address, got {listen_host!r}")
        self._listen = (listen_host, _check_port("listen_port", listen_port, allow_zero=True))
        self._bytes_up = 0
        self._bytes_down = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None
        self._pacer: _Pacer | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the shaper listens on; clients connect here instead of the target."""
        if self._address is None:
            raise RuntimeError("LinkShaper is not running; call start() first")
        return self._address

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded client -> target so far."""
        return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded target -> client so far."""
        return self._bytes_down

    @property
    def uplink_origin(self) -> float:
        """``time.monotonic()`` at which the current uplink's trace time 0 lies (the start,
        or the moment of the last :meth:`set_uplink`), to line expectations up with it."""
        if self._pacer is None:
            raise RuntimeError("LinkShaper is not running; call start() first")
        return self._pacer.origin  # asyncio's default loop clock is time.monotonic()

    def start(self) -> tuple[str, int]:
        """Listen and start forwarding; returns the (host, port) to connect to."""
        if self._thread is not None:
            return self.address
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="LinkShaper", daemon=True)
        self._thread.start()
        if not ready.wait(THREAD_TIMEOUT_S) or failure:
            self._thread.join(THREAD_TIMEOUT_S)
            self._thread = None
            host, port = self._listen
            why = failure[0] if failure else "timed out"
            raise InputError(f"LinkShaper cannot listen on {host}:{port}: {why}")
        return self.address

    def stop(self) -> None:
        """Close the listener and every open connection, and end the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(THREAD_TIMEOUT_S)
        self._thread = self._loop = None
        self._address = None

    def set_uplink(self, uplink: Uplink) -> None:
        """Switch the uplink to ``uplink`` (a step change). Bytes already scheduled keep
        their times; later ones use the new link once the old one has drained, a trace
        playing from its start at that moment."""
        uplink = _check_uplink(uplink)
        loop = self._loop
        if loop is None:
            self._uplink = uplink
            return
        done = threading.Event()

        def switch() -> None:
            self._switch(uplink, loop.time())
            done.set()

        loop.call_soon_threadsafe(switch)
        if not done.wait(THREAD_TIMEOUT_S):
            raise RuntimeError("LinkShaper's thread did not respond to set_uplink")

    def __enter__(self) -> LinkShaper:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the shaper's thread --------------------------------------------------------------

    def _switch(self, uplink: Uplink, now: float) -> None:
        busy = self._pacer.busy_until if self._pacer is not None else now
        self._uplink = uplink
        self._pacer = _make_pacer(uplink, max(now, busy))

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        try:
            server = loop.run_until_complete(asyncio.start_server(self._handle, *self._listen))
        except OSError as e:
            failure.append(e)
            loop.close()
            ready.set()
            return
        self._pacer = _make_pacer(self._uplink, loop.time())
        self._address = server.sockets[0].getsockname()[:2]
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
            loop.run_until_complete(_shutdown(server))
        finally:
            loop.close()
            self._pacer = None

    def _schedule_up(self, now: float, nbytes: int) -> Segments:
        assert self._pacer is not None
        return [(due + self._delay, n) for due, n in self._pacer.schedule(now, nbytes)]

    def _schedule_down(self, now: float, nbytes: int) -> Segments:
        return [(now + self._delay, nbytes)]

    def _count_up(self, nbytes: int) -> None:
        self._bytes_up += nbytes

    def _count_down(self, nbytes: int) -> None:
        self._bytes_down += nbytes

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_writer: asyncio.StreamWriter | None = None
        finished = False
        try:
            server_reader, opened_writer = await asyncio.wait_for(
                asyncio.open_connection(*self._target), CONNECT_TIMEOUT_S
            )
            server_writer = opened_writer  # for the finally clause, which must close it
            up = _Direction(client_reader, opened_writer, self._schedule_up, self._count_up)
            down = _Direction(server_reader, client_writer, self._schedule_down, self._count_down)
            await _run_all(up.tasks() + down.tasks())
            finished = True
        except asyncio.CancelledError:
            pass  # stop(): end quietly, as Python 3.11's stream callback logs a cancelled handler
        except Exception as e:  # noqa: BLE001 - unreachable target, a reset: close both ends
            _log.debug("LinkShaper connection to %s:%s ended: %r", *self._target, e)
        finally:
            for writer in (client_writer, server_writer):
                if writer is None:
                    continue
                if finished:
                    writer.close()  # flushes what is still buffered
                else:
                    writer.transport.abort()  # drops it: the connection failed or is stopped


async def _shutdown(server: asyncio.AbstractServer) -> None:
    """Stop listening and cancel every task left (each connection's handler aborts its
    sockets as it is cancelled)."""
    server.close()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _run_all(coroutines: list[Awaitable[None]]) -> None:
    """Run ``coroutines`` together; the first failure cancels the rest and is re-raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["HIGH_WATER", "LinkShaper", "Uplink"]
