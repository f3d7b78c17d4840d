"""From an endpoint URL to the transport that reaches it.

An endpoint is ``grpc://host:port`` (the ``serve`` command; ``grpcs://`` with TLS) or
``http://host:port/route`` (the Ray Serve deployment; ``https://`` with TLS). The shared
token travels as ``authorization: Bearer <token>`` in both. This is the one module that
knows both concrete transports, so the vocabulary they share (:mod:`.transport`) imports
neither and no transport imports another.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from dyno_compile.errors import InputError
from dyno_compile.runtime.grpc_transport import GrpcTransport
from dyno_compile.runtime.http_transport import HttpTransport
from dyno_compile.runtime.transport import Transport


def _grpc(endpoint: str, parts: SplitResult, ca: bytes | None, token: str | None) -> Transport:
    return GrpcTransport(
        endpoint, f"{parts.hostname}:{parts.port}", tls_ca=ca, use_tls=parts.scheme == "grpcs", token=token
    )


def _http(endpoint: str, parts: SplitResult, ca: bytes | None, token: str | None) -> Transport:
    return HttpTransport(endpoint, tls_ca=ca, token=token)


#: URL scheme -> the transport for it, given (endpoint, its parts, CA PEM bytes, token).
SCHEMES: dict[str, Callable[[str, SplitResult, bytes | None, str | None], Transport]] = {
    "grpc": _grpc,
    "grpcs": _grpc,
    "http": _http,
    "https": _http,
}


def connect(endpoint: str, *, token: str | None = None, tls_ca: str | Path | None = None) -> Transport:
    """A transport for ``endpoint`` (see the module docstring); ``tls_ca``: a PEM file of
    the CA that signed the server's certificate (system roots when omitted)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in SCHEMES or not parts.hostname or parts.port is None:
        raise InputError(
            f"endpoint {endpoint!r}: expected grpc://host:port, grpcs://host:port or http(s)://host:port/route"
        )
    ca = _read_ca(tls_ca) if tls_ca is not None else None
    return SCHEMES[parts.scheme](endpoint, parts, ca, token)


def _read_ca(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"TLS CA file {path}: {e.strerror}") from None
