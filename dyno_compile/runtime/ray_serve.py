"""The cloud half as a Ray Serve deployment, for when one ``serve`` process is not enough.

:class:`~dyno_compile.runtime.engine.CloudEngine` keeps no state between requests that a
client depends on (the replay guard only refuses duplicates), so replicas are
interchangeable: each loads its own copy of the artifact and its own VMs, and Ray Serve
routes each request to any of them, adds or removes replicas, restarts failed ones and
spreads them over a cluster. Nothing here is specific to one node.

The deployment speaks HTTP because that is Ray Serve's native ingress (its proxy on every
node; TLS via ``HTTPOptions``); its gRPC ingress wants protobuf servicers, and the
envelopes are deliberately not protobuf. The body is the same request envelope the gRPC
server takes, and the answer — always HTTP 200 — the same reply envelope, refusals
included (``UNAUTHENTICATED``, ``BAD_REQUEST``, ...): a client decodes one format
whichever transport carried it, and ``connect("http://host:port/dyno")`` is all that
changes on the device.

Three ways in::

    url = run("/path/to/artifact", port=8000, num_replicas=2)   # local Ray + Serve, returns the URL
    serve.run(deployment("/path/to/artifact", num_replicas=4), route_prefix="/dyno")
    serve run dyno_compile.runtime.ray_serve:build_app artifact=/path/to/artifact num_replicas=4

Ray is imported only here and only when used: ``pip install 'dyno-compile[ray]'``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from dyno_compile.errors import InputError
from dyno_compile.runtime.engine import DEFAULT_MAX_REQUEST_BYTES, CloudEngine, EngineOptions
from dyno_compile.runtime.protocol import Status, encode_reply

#: The deployment's name in Ray Serve, and the route the HTTP proxy gives it by default.
DEPLOYMENT_NAME = "dyno"
ROUTE_PREFIX = "/dyno"
MEDIA_TYPE = "application/octet-stream"


class CloudReplica:
    """One Ray Serve replica: a :class:`CloudEngine` for ``artifact`` behind an HTTP handler.

    Constructed in the replica's process (Ray passes only the path and options), so each
    replica loads its own libraries and VMs; ``workers`` VMs per replica run requests at
    once, each request on a thread so the replica's event loop keeps accepting others.
    """

    def __init__(
        self,
        artifact: str,
        token: str | None = None,
        workers: int = 1,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        target: str | None = None,
    ) -> None:
        from dyno_compile.artifact.load import load_artifact

        options = EngineOptions(target=target, token=token, workers=workers, max_request_bytes=max_request_bytes)
        self.engine = CloudEngine(load_artifact(artifact), options)

    async def __call__(self, request: Any) -> Any:
        """``POST`` body: a request envelope; answer: a reply envelope, always HTTP 200."""
        from starlette.responses import Response

        arrived = time.perf_counter()
        body = await self._body(request)
        if isinstance(body, str):
            reply = self._refusal(Status.BAD_REQUEST, body)
        else:
            token = _bearer(request.headers.get("authorization"))

            def handle() -> bytes:
                return self.engine.handle(body, token=token, queue_s=time.perf_counter() - arrived)

            try:
                reply = await asyncio.to_thread(handle)
            except Exception as e:  # noqa: BLE001 - the engine answers every input; this is a bug, still a reply
                reply = self._refusal(Status.INTERNAL, f"{type(e).__name__}: {e}")
        return Response(content=reply, media_type=MEDIA_TYPE)

    async def _body(self, request: Any) -> bytes | str:
        """The body, or why it is refused: larger than the engine's request limit (checked
        on Content-Length before reading, and while reading when there is none)."""
        limit = self.engine.options.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return f"request of {int(length)} bytes exceeds the limit of {limit}"
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return f"request of over {limit} bytes exceeds the limit"
            chunks.append(chunk)
        return b"".join(chunks)

    def _refusal(self, status: Status, message: str) -> bytes:
        return encode_reply(
            status, message=message, in_flight=self.engine.in_flight, workers=self.engine.options.workers
        )


def deployment(
    artifact: str | Path,
    *,
    num_replicas: int = 1,
    token: str | None = None,
    workers: int = 1,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    num_cpus: float = 1.0,
    max_ongoing_requests: int | None = None,
    name: str = DEPLOYMENT_NAME,
) -> Any:
    """The bound Ray Serve application (pass it to ``serve.run(app, route_prefix=...)``).

    ``num_replicas``: replicas, each with ``workers`` VMs and ``num_cpus`` of Ray's CPUs
    (Ray sets OMP_NUM_THREADS from it, which TVM's thread pool follows); ``max_ongoing_requests``: requests a
    replica takes at once, default two per VM — one running, one ready — so the rest wait
    in Ray's router, which sends each to the least-loaded replica. Options are checked
    here, before anything is deployed; the artifact path is made absolute, because
    replicas do not share the caller's working directory.
    """
    _, serve = _ray()
    options = EngineOptions(token=token, workers=workers, max_request_bytes=max_request_bytes)  # checks them
    path = Path(artifact).expanduser().resolve()
    if not path.exists():
        raise InputError(f"{artifact}: no such artifact directory or archive")
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise InputError(f"num_replicas must be a positive integer, got {num_replicas!r}")
    ongoing = max_ongoing_requests if max_ongoing_requests is not None else 2 * options.workers
    dep = serve.deployment(
        CloudReplica,
        name=name,
        num_replicas=num_replicas,
        ray_actor_options={"num_cpus": num_cpus},
        max_ongoing_requests=ongoing,
    )
    return dep.bind(str(path), options.token, options.workers, options.max_request_bytes)


def build_app(args: dict[str, str]) -> Any:
    """An application builder for ``serve run`` and Serve config files: ``artifact=PATH``
    and optionally ``num_replicas``, ``workers``, ``token``, ``num_cpus``,
    ``max_ongoing_requests`` (strings, as ``serve run`` passes them)."""
    args = dict(args)
    try:
        artifact = args.pop("artifact")
    except KeyError:
        raise InputError("build_app needs artifact=PATH") from None
    kwargs: dict[str, Any] = {}
    for key, kind in (
        ("num_replicas", int),
        ("workers", int),
        ("max_ongoing_requests", int),
        ("num_cpus", float),
        ("max_request_bytes", int),
        ("token", str),
    ):
        if key in args:
            try:
                kwargs[key] = kind(args.pop(key))
            except ValueError:
                raise InputError(f"build_app: {key} must be {kind.__name__}") from None
    if args:
        raise InputError(f"build_app: unknown arguments {sorted(args)}")
    return deployment(artifact, **kwargs)


def run(
    artifact: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    route_prefix: str = ROUTE_PREFIX,
    num_replicas: int = 1,
    token: str | None = None,
    workers: int = 1,
    num_cpus: float = 1.0,
    max_ongoing_requests: int | None = None,
    app_name: str = DEPLOYMENT_NAME,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> str:
    """Deploy ``artifact`` on Ray Serve and return the endpoint URL clients ``connect`` to
    (``http://host:port/dyno``; ``https://`` with ``tls_cert``/``tls_key``).

    Uses the Ray instance this process is connected to, or starts a local single-node one
    (``ray.init``; ``RAY_ADDRESS`` picks an existing cluster instead). Serve's HTTP proxy
    listens on ``host:port`` — if Serve was already started, its existing HTTP options
    stand. Returns when every replica is up.
    """
    ray, serve = _ray()
    if (tls_cert is None) != (tls_key is None):
        raise InputError("TLS needs both tls_cert and tls_key")
    if not route_prefix.startswith("/"):
        raise InputError(f"route_prefix must start with '/', got {route_prefix!r}")
    app = deployment(
        artifact,
        num_replicas=num_replicas,
        token=token,
        workers=workers,
        num_cpus=num_cpus,
        max_ongoing_requests=max_ongoing_requests,
    )
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    http: dict[str, Any] = {"host": host, "port": port}
    if tls_cert is not None:
        http.update(ssl_certfile=str(tls_cert), ssl_keyfile=str(tls_key))
    serve.start(http_options=http)
    serve.run(app, name=app_name, route_prefix=route_prefix, blocking=False)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    return f"{'https' if tls_cert else 'http'}://{shown}:{port}{route_prefix}"


def _ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise InputError(f"the Ray Serve deployment needs Ray Serve ({e}); pip install 'dyno-compile[ray]'") from None
    return ray, serve


def _bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent or another scheme)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None
