"""How a device client reaches a cloud endpoint: one request's bytes out, the reply's back.

An endpoint is a URL: ``grpc://host:port`` (the ``serve`` command; ``grpcs://`` with TLS)
or ``http://host:port/route`` (the Ray Serve deployment; ``https://`` with TLS). Every
failure to get a reply — refused, reset, timed out, a gRPC status — is one
:class:`TransportError`, which the client answers by finishing the request on the device.
The shared token travels as ``authorization: Bearer <token>`` in both.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlsplit

from dyno_compile.errors import DynoError, InputError

#: The gRPC method that carries a request envelope and returns a reply envelope, both as
#: raw bytes (no protobuf: the envelopes are the documented binary format).
INFER_METHOD = "/dyno.Cloud/Infer"
SERVICE_NAME = "dyno.Cloud"
#: gRPC's own bound on message size, raised to the server's request limit.
GRPC_MAX_MESSAGE = 64 << 20


class TransportError(DynoError):
    """No reply came back from ``endpoint``; ``code`` is the transport's reason (a gRPC
    status name, an HTTP status, ``"timeout"``)."""

    def __init__(self, endpoint: str, code: str, detail: str) -> None:
        self.endpoint, self.code = endpoint, code
        super().__init__(f"{endpoint}: {code}: {detail}")


class Transport(ABC):
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    @abstractmethod
    def call(self, request: bytes, timeout_s: float) -> bytes:
        """The reply's bytes, or :class:`TransportError`."""

    def close(self) -> None:
        """Release connections (a closed transport may not be used again)."""


class GrpcTransport(Transport):
    """One HTTP/2 channel to a ``serve`` endpoint; gRPC reconnects it after a failure."""

    def __init__(self, endpoint: str, address: str, *, tls_ca: bytes | None, use_tls: bool,
                 token: str | None) -> None:
        import grpc

        super().__init__(endpoint)
        options = [("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                   ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
                   # Retry a broken connection quickly: the client probes a server that came back.
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
        if use_tls:
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=tls_ca),
                                                options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._infer = self._channel.unary_unary(INFER_METHOD)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._rpc_error = grpc.RpcError

    def call(self, request: bytes, timeout_s: float) -> bytes:
        try:
            return self._infer(request, timeout=timeout_s, metadata=self._metadata)
        except self._rpc_error as e:
            code = e.code().name if hasattr(e, "code") else "UNKNOWN"
            detail = e.details() if hasattr(e, "details") else str(e)
            raise TransportError(self.endpoint, code, detail or "") from None

    def close(self) -> None:
        self._channel.close()


def connect(endpoint: str, *, token: str | None = None, tls_ca: str | Path | None = None) -> Transport:
    """A transport for ``endpoint`` (see the module docstring); ``tls_ca``: a PEM file of
    the CA that signed the server's certificate (system roots when omitted)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("grpc", "grpcs", "http", "https") or not parts.hostname or parts.port is None:
        raise InputError(f"endpoint {endpoint!r}: expected grpc://host:port, grpcs://host:port or "
                         "http(s)://host:port/route")
    ca = _read_ca(tls_ca) if tls_ca is not None else None
    if parts.scheme in ("grpc", "grpcs"):
        return GrpcTransport(endpoint, f"{parts.hostname}:{parts.port}", tls_ca=ca, use_tls=parts.scheme == "grpcs",
                             token=token)
    from dyno_compile.runtime.http_transport import HttpTransport

    return HttpTransport(endpoint, tls_ca=ca, token=token)


def _read_ca(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"TLS CA file {path}: {e.strerror}") from None
