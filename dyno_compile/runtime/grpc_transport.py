"""The client's transport to a ``grpc://`` / ``grpcs://`` endpoint (the ``serve`` command),
and the gRPC wire both sides share: one unary method carrying the envelopes as raw bytes.

gRPC's status codes are mapped to the transports' :class:`Reason` here, so the client
never sees them: ``RESOURCE_EXHAUSTED`` (the server's concurrency limit) is busy,
``DEADLINE_EXCEEDED`` a time-out, ``UNAVAILABLE`` no connection. The status name stays in
the error's detail.
"""

from __future__ import annotations

from dyno_compile.runtime.transport import Reason, Transport, TransportError

#: The gRPC method that carries a request envelope and returns a reply envelope, both as
#: raw bytes (no protobuf: the envelopes are the documented binary format).
INFER_METHOD = "/dyno.Cloud/Infer"
SERVICE_NAME = "dyno.Cloud"
#: gRPC's own bound on message size, raised to the server's request limit.
GRPC_MAX_MESSAGE = 64 << 20

#: gRPC status names and what they mean to the client; any other status (``INTERNAL``,
#: ``UNKNOWN``, ``DATA_LOSS``, ``CANCELLED``...) is a broken exchange, :attr:`Reason.PROTOCOL`.
STATUS_REASONS = {
    "DEADLINE_EXCEEDED": Reason.TIMEOUT,
    "RESOURCE_EXHAUSTED": Reason.BUSY,
    "UNAVAILABLE": Reason.UNREACHABLE,
    **dict.fromkeys(
        (
            "UNAUTHENTICATED",
            "PERMISSION_DENIED",
            "UNIMPLEMENTED",
            "NOT_FOUND",
            "INVALID_ARGUMENT",
            "FAILED_PRECONDITION",
            "OUT_OF_RANGE",
        ),
        Reason.REJECTED,
    ),
}


def status_reason(name: str) -> Reason:
    """The :class:`Reason` for a gRPC status code's name."""
    return STATUS_REASONS.get(name, Reason.PROTOCOL)


class GrpcTransport(Transport):
    """One HTTP/2 channel to a ``serve`` endpoint; gRPC reconnects it after a failure.
    ``address``: ``host:port``; ``tls_ca``: PEM bytes of the CA that signed the server's
    certificate (system roots when None; only with ``use_tls``)."""

    def __init__(self, endpoint: str, address: str, *, tls_ca: bytes | None, use_tls: bool, token: str | None) -> None:
        import grpc  # only a gRPC endpoint needs it loaded

        super().__init__(endpoint)
        options = [
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
            # Retry a broken connection quickly: the client probes a server that came back.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if use_tls:
            self._channel = grpc.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=tls_ca), options
            )
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._infer = self._channel.unary_unary(INFER_METHOD)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._rpc_error = grpc.RpcError
        self._closed = False

    def call(self, request: bytes, timeout_s: float) -> bytes:
        if self._closed:
            raise TransportError(self.endpoint, Reason.CLOSED, "the transport was closed")
        try:
            return self._infer(request, timeout=timeout_s, metadata=self._metadata)
        except self._rpc_error as e:
            name = e.code().name if hasattr(e, "code") else "UNKNOWN"
            detail = e.details() if hasattr(e, "details") else str(e)
            raise TransportError(self.endpoint, status_reason(name), f"gRPC {name}: {detail or ''}") from None

    def close(self) -> None:
        self._closed = True
        self._channel.close()
