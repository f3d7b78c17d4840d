"""The cloud server: a :class:`CloudEngine` behind gRPC.

Why gRPC: it is HTTP/2 (one multiplexed connection per device, header compression, flow
control), every serving stack and load balancer speaks it, it brings TLS, deadlines,
message-size limits and the standard ``grpc.health.v1`` health service, and its Python
server is a maintained C core. The service has one method, ``/dyno.Cloud/Infer``, whose
request and reply are the raw envelopes of :mod:`.protocol` — no protobuf schema and no
object deserialisation: the bytes go straight to the strict binary decoder.

Flow: a gRPC handler thread puts the request on a bounded queue and waits; ``workers``
threads, each with its own VM, take what is queued (up to ``max_batch`` requests that
arrived together) and run them as one batch. Pings skip the queue (they measure the network,
not the load). A full queue is answered at once with an
``OVERLOADED`` reply (back-pressure: the client runs the request on the device instead of
waiting), and gRPC itself refuses connections beyond the queue and workers. ``stop``
turns the health status to NOT_SERVING, refuses new calls, lets the ones in flight finish
within a grace period, then stops the workers.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dyno_compile.errors import InputError
from dyno_compile.runtime.engine import CloudEngine
from dyno_compile.runtime.grpc_transport import GRPC_MAX_MESSAGE, INFER_METHOD, SERVICE_NAME
from dyno_compile.runtime.protocol import Status, encode_reply, is_ping

if TYPE_CHECKING:
    import grpc
    from grpc_health.v1 import health

#: Calls gRPC lets in beyond twice the queue and workers, each answered OVERLOADED at once.
OVERLOAD_HEADROOM = 32


@dataclass
class ServerOptions:
    """``max_queue``: requests waiting for a worker before the server answers OVERLOADED;
    ``max_batch``: requests one worker takes at once; ``tls_cert``/``tls_key``: PEM files
    (both or neither); ``grace_s``: how long ``stop`` lets calls in flight finish."""

    host: str = "127.0.0.1"
    port: int = 0
    max_queue: int = 64
    max_batch: int = 8
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    grace_s: float = 5.0

    def __post_init__(self) -> None:
        for name, low in (("max_queue", 1), ("max_batch", 1), ("port", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or value > 65535:
                raise InputError(f"{name} must be an integer {low}..65535, got {value!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InputError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
        if not self.grace_s >= 0:
            raise InputError(f"grace_s must be >= 0 seconds, got {self.grace_s!r}")


class _Batcher:
    """The bounded queue between gRPC handler threads and the engine's worker VMs."""

    def __init__(self, engine: CloudEngine, max_queue: int, max_batch: int) -> None:
        self.engine, self.max_batch = engine, max_batch
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._threads = [
            threading.Thread(target=self._work, name=f"dyno-worker-{i}", daemon=True)
            for i in range(engine.options.workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, body: bytes, token: str | None) -> futures.Future:
        """A future of the reply; raises ``queue.Full`` when the queue is full."""
        done: futures.Future = futures.Future()
        self._queue.put_nowait((body, token, time.perf_counter(), done))
        return done

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:  # what arrived together; never wait for more
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # leave the stop marker for the next loop
                    break
                batch.append(more)
            now = time.perf_counter()
            try:
                replies = self.engine.handle_batch([(body, token, now - queued) for body, token, queued, _ in batch])
            except BaseException as e:  # noqa: BLE001 - the engine answers errors itself; never lose the worker
                replies = [encode_reply(Status.INTERNAL, message=f"{type(e).__name__}: {e}")] * len(batch)
            for (_, _, _, done), reply in zip(batch, replies):
                done.set_result(reply)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()


class CloudServer:
    """Serves one engine over gRPC until :meth:`stop`; a context manager."""

    def __init__(self, engine: CloudEngine, options: ServerOptions | None = None) -> None:
        self.engine = engine
        self.options = options or ServerOptions()
        self.port: int | None = None
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._batcher: _Batcher | None = None
        self._stopped = threading.Event()

    @property
    def endpoint(self) -> str:
        scheme = "grpcs" if self.options.tls_cert else "grpc"
        return f"{scheme}://{self.options.host}:{self.port}"

    def start(self) -> str:
        """Bind, start serving, and return the endpoint URL clients connect to."""
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        o = self.options
        self._batcher = batcher = _Batcher(self.engine, o.max_queue, o.max_batch)
        # gRPC's own limit is a safety net behind the queue's: above it, calls are refused
        # (RESOURCE_EXHAUSTED) before they reach a handler thread, so it must leave room for
        # a burst of OVERLOADED replies, which carry the load figures a client learns from.
        concurrent = 2 * (o.max_queue + self.engine.options.workers) + OVERLOAD_HEADROOM
        self._server = server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="dyno-grpc"),
            maximum_concurrent_rpcs=concurrent,
            options=[
                ("grpc.max_receive_message_length", min(self.engine.options.max_request_bytes, GRPC_MAX_MESSAGE)),
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ],
        )
        handler = grpc.unary_unary_rpc_method_handler(self._infer)
        method = INFER_METHOD.rsplit("/", 1)[1]
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, {method: handler})])
        self._health = health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        address = f"{o.host}:{o.port}"
        try:
            if o.tls_cert:
                if o.tls_key is None:  # checked in __post_init__, but the options are mutable
                    raise InputError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
                credentials = grpc.ssl_server_credentials([(_read(o.tls_key), _read(o.tls_cert))])
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except (RuntimeError, InputError) as e:  # grpc raises RuntimeError when it cannot bind
            batcher.stop()
            if isinstance(e, InputError):
                raise
            raise InputError(f"cannot listen on {address}: the port is taken or the address is not local") from None
        server.start()
        for service in ("", SERVICE_NAME):
            health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.endpoint

    def _infer(self, request: bytes, context) -> bytes:
        token = None
        for key, value in context.invocation_metadata():
            if key == "authorization" and value.startswith("Bearer "):
                token = value[len("Bearer ") :]
        if is_ping(request):  # answered at once: a ping measures the network, not the queue
            return self.engine.handle(request, token=token)
        assert self._batcher is not None, "start() creates the batcher before registering this handler"
        try:
            done = self._batcher.submit(request, token)
        except queue.Full:
            return encode_reply(
                Status.OVERLOADED,
                message="request queue full; run this one on the device",
                in_flight=self.engine.in_flight,
                workers=self.engine.options.workers,
            )
        return done.result()

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful: NOT_SERVING, refuse new calls, finish those in flight (up to the grace
        period), stop the workers. Safe to call twice."""
        if self._server is None or self._stopped.is_set():
            return
        self._stopped.set()
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        self._server.stop(self.options.grace_s if grace_s is None else grace_s).wait()
        if self._batcher is not None:
            self._batcher.stop()

    def __enter__(self) -> CloudServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"TLS file {path}: {e.strerror}") from None
