"""The client's transport to an ``http://`` / ``https://`` endpoint: the Ray Serve deployment
(:mod:`dyno_compile.runtime.ray_serve`), or any HTTP front (load balancer, ingress) put
before it.

A request is one ``POST`` of the request envelope's bytes; the answer is the reply
envelope, always with HTTP 200 — the deployment's refusals are inside the envelope, so the
client decodes them exactly as it does a gRPC reply. Any other outcome (another HTTP
status, refused, reset, timed out, a reply too large) is a :class:`TransportError` whose
:class:`Reason` says what it means to the client: Ray Serve's back-pressure (429, 503) is
busy, its request time-out (408) and a gateway's (504) a time-out, like a socket time-out
here, so a slow or loaded deployment is not taken for a dead one.

Only the standard library: keep-alive connections from a small pool, one per concurrent
caller, so the transport is thread-safe without serialising callers. A connection that
failed is dropped and a fresh one is made on the next call; one left idle longer than a
typical server keep-alive (Ray Serve's proxy closes after 5 s) is not reused, and a reused
connection the server had already closed is retried once on a fresh one.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from urllib.parse import urlsplit

from dyno_compile.errors import InputError
from dyno_compile.runtime.transport import Reason, Transport, TransportError

#: The largest reply accepted (the same bound as gRPC's message limit): a server — or a
#: proxy in between — cannot make the client buffer without limit.
MAX_REPLY_BYTES = 64 << 20
#: Pooled connections idle longer than this are closed rather than reused: below the
#: 5 s keep-alive of Ray Serve's proxy (uvicorn), so a reuse rarely meets a closed socket.
IDLE_S = 4.0
#: How much of an error response's body goes into the :class:`TransportError`.
_DETAIL_BYTES = 512
_CHUNK = 1 << 20
#: Failures of a reused keep-alive connection that mean the server closed it before
#: reading the request: worth one retry on a fresh connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
#: HTTP statuses with a meaning of their own to the client; any other 4xx is
#: :attr:`Reason.REJECTED`, anything else :attr:`Reason.PROTOCOL`.
STATUS_REASONS = {408: Reason.TIMEOUT, 504: Reason.TIMEOUT, 429: Reason.BUSY, 503: Reason.BUSY, 502: Reason.UNREACHABLE}


class HttpTransport(Transport):
    """``POST`` to ``endpoint`` (``http(s)://host:port/route``); ``tls_ca``: PEM bytes of the
    CA that signed the server's certificate (system roots when None); ``token`` travels as
    ``Authorization: Bearer <token>``."""

    def __init__(self, endpoint: str, *, tls_ca: bytes | None = None, token: str | None = None) -> None:
        super().__init__(endpoint)
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"endpoint {endpoint!r}: expected http(s)://host:port/route")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            try:
                self._ssl = ssl.create_default_context(cadata=tls_ca.decode("ascii") if tls_ca else None)
            except (ssl.SSLError, ValueError) as e:
                raise InputError(f"TLS CA for {endpoint}: not a PEM certificate ({e})") from None
        self._headers = {
            "Content-Type": "application/octet-stream",
            "Accept": "application/octet-stream",
            "Connection": "keep-alive",
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # (connection, when returned)
        self._lock = threading.Lock()
        self._closed = False

    def call(self, request: bytes, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        fresh = False
        while True:
            conn, reused = self._take(timeout_s, fresh=fresh)
            try:
                reply = self._exchange(conn, request, deadline)
            except _STALE as e:
                conn.close()
                if reused and not fresh and time.monotonic() < deadline:
                    fresh = True
                    continue  # the server had closed this idle connection: once more, on a fresh one
                raise self._error(e) from None
            except TransportError:
                conn.close()
                raise
            except (OSError, http.client.HTTPException, ValueError) as e:
                conn.close()
                raise self._error(e) from None
            self._give(conn)
            return reply

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def _take(self, timeout_s: float, *, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """A pooled connection still fresh enough to reuse (True), or a new one (False;
        always when ``fresh``)."""
        now = time.monotonic()
        stale = []
        with self._lock:
            if self._closed:
                raise TransportError(self.endpoint, Reason.CLOSED, "the transport was closed")
            conn = None
            while self._idle and not fresh:
                candidate, since = self._idle.pop()
                if now - since <= IDLE_S:
                    conn = candidate
                    break
                stale.append(candidate)
        for c in stale:
            c.close()
        if conn is not None:
            return conn, True
        if self._ssl is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout_s, context=self._ssl), False
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout_s), False

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _exchange(self, conn: http.client.HTTPConnection, request: bytes, deadline: float) -> bytes:
        _set_timeout(conn, deadline)
        conn.request("POST", self._path, body=request, headers=self._headers)
        _set_timeout(conn, deadline)
        response = conn.getresponse()
        if response.status != 200:
            detail = response.read(_DETAIL_BYTES).decode("utf-8", "replace").strip()
            raise TransportError(
                self.endpoint,
                status_reason(response.status),
                f"HTTP {response.status} {response.reason}" + (f": {detail}" if detail else ""),
            )
        length = response.getheader("Content-Length")
        if length is not None:
            if not length.isdigit():
                raise TransportError(self.endpoint, Reason.PROTOCOL, f"Content-Length {length!r}")
            if int(length) > MAX_REPLY_BYTES:
                raise TransportError(
                    self.endpoint,
                    Reason.PROTOCOL,
                    f"a reply of {int(length)} bytes exceeds the limit of {MAX_REPLY_BYTES}",
                )
        chunks, size = [], 0
        while True:
            _set_timeout(conn, deadline)
            chunk = response.read(_CHUNK)  # read, not read1: it marks the response done at its end
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise TransportError(
                    self.endpoint, Reason.PROTOCOL, f"a reply over the limit of {MAX_REPLY_BYTES} bytes"
                )
            chunks.append(chunk)
        if response.will_close:
            conn.close()  # http.client reconnects it on the next request
        return b"".join(chunks)

    def _error(self, e: BaseException) -> TransportError:
        """A failed exchange as its reason: a time-out, a socket that failed (refused, reset,
        unresolvable, TLS), or an answer that was not HTTP."""
        if isinstance(e, TimeoutError):  # socket.timeout too
            reason = Reason.TIMEOUT
        elif isinstance(e, OSError):
            reason = Reason.UNREACHABLE
        else:
            reason = Reason.PROTOCOL
        return TransportError(self.endpoint, reason, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)


def status_reason(status: int) -> Reason:
    """The :class:`Reason` for an HTTP status other than 200."""
    return STATUS_REASONS.get(status, Reason.REJECTED if 400 <= status < 500 else Reason.PROTOCOL)


def _set_timeout(conn: http.client.HTTPConnection, deadline: float) -> None:
    """Bound the next socket operation by what is left of the call's time."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the call's time ran out")
    conn.timeout = remaining
    if conn.sock is not None:
        conn.sock.settimeout(remaining)
