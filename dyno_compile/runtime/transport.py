"""What every transport from a device client to a cloud endpoint shares: one request's
bytes out, the reply's back, and one vocabulary for failing to get them.

The concrete transports are :mod:`.grpc_transport` (the ``serve`` command) and
:mod:`.http_transport` (the Ray Serve deployment, or any HTTP front before it);
:func:`dyno_compile.runtime.endpoint.connect` picks one from an endpoint URL. This module
imports neither, so each can import it and nothing here depends on a wire.

Every failure to get a reply is one :class:`TransportError` whose :class:`Reason` comes
from a closed set, mapped by each transport from its own codes (gRPC status codes; HTTP
statuses and socket errors). The client decides on the reason alone — busy is not down, a
padded ping that timed out is a slow link — so it behaves the same whichever wire carried
the call; the transport's own code stays in the message for people.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum

from dyno_compile.errors import DynoError


class Reason(Enum):
    """Why no reply came back, in the terms the client acts on."""

    #: No answer within the call's time: the link or the server is slow (or gone).
    TIMEOUT = "timeout"
    #: The endpoint is up but turned the call away for load (back-pressure): try it again,
    #: do not mark it down.
    BUSY = "busy"
    #: No connection: refused, reset, unresolvable, a TLS handshake that failed, or a proxy
    #: that could not reach the server behind it.
    UNREACHABLE = "unreachable"
    #: The endpoint answered but will not serve this call: authentication, a wrong route or
    #: method, a request it cannot take.
    REJECTED = "rejected"
    #: The exchange broke: a malformed or oversized reply, or an error inside the server.
    PROTOCOL = "protocol"
    #: This transport was closed; it takes no more calls.
    CLOSED = "closed"


class TransportError(DynoError):
    """No reply came back from ``endpoint``, for ``reason``; ``detail`` keeps the transport's
    own words (a gRPC status name, an HTTP status, a socket error) for the message."""

    def __init__(self, endpoint: str, reason: Reason, detail: str) -> None:
        self.endpoint, self.reason, self.detail = endpoint, reason, detail
        super().__init__(f"{endpoint}: {reason.value}: {detail}")


class Transport(ABC):
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    @abstractmethod
    def call(self, request: bytes, timeout_s: float) -> bytes:
        """The reply's bytes, or :class:`TransportError`."""

    def close(self) -> None:  # noqa: B027 - a no-op default: a transport without connections keeps it
        """Release connections (a closed transport may not be used again)."""
