"""The app's side: load an artifact, call :meth:`DeviceClient.infer`, get the answer.

Per request the client asks the :class:`~dyno_compile.runtime.selector.Selector` for a
configuration under the live conditions, runs the device segments up to its cut, packs
the crossing tensors into a frame and sends it to a cloud endpoint, which answers with
the output. Every observation feeds the :class:`LinkEstimator`, by the rules of
:class:`~dyno_compile.runtime.observations.LinkObserver` (the trace replay's too): the
device's own time, the server's reported queue and compute time (cloud load), and the
time the frame spent on the network (uplink bandwidth, once the round trip measured by
pings is taken off).

No request is lost to the network. Both sides hold the whole model, so when a transfer
fails — refused, reset, timed out, an error reply, a reply that does not decode — the
device runs the remaining segments from the activations it already has. The endpoint
is then skipped until a background prober's ping gets through (retry interval doubling
from ``retry_after_s`` to ``max_retry_after_s``). While every endpoint is down the
client runs device-only, and with no endpoints at all it never needs a server. Busy is
not down: a transport's back-pressure (:attr:`Reason.BUSY`: gRPC's concurrency limit, an
HTTP 429 or 503) or an ``OVERLOADED`` reply finishes the request on the device and keeps
the endpoint. The client decides on a failure's :class:`Reason` only, so it behaves the
same over gRPC and HTTP.

The prober also keeps the link estimates fresh when requests do not: an empty ping now
and then for the round trip, and, while the selector keeps everything on the device (so
no frame measures the uplink), a padded ping to notice that the uplink has recovered.

With ``hedge`` (:class:`ClientOptions`) an offload cannot cost much more than running
alone, whatever the link does after the frame is sent: the transport call runs in a
worker thread while the device, otherwise idle, finishes the request from the
activations it holds, one segment at a time, stopping as soon as the reply is in; the
request completes at the earlier of the two. The worker observes the reply even when
it comes after the device finished (a real sample of the uplink), and the selector is
given :meth:`LinkObserver.conditions`, which prices a new frame behind those still on
the link. The trace replay (``ReplaySettings.hedge``) follows the same rules.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dyno_compile.artifact.load import Artifact, load_artifact
from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.runtime.endpoint import connect
from dyno_compile.runtime.link import Conditions, LinkEstimator
from dyno_compile.runtime.observations import LinkObserver, ping_timeout_s
from dyno_compile.runtime.protocol import (
    Kind,
    ProtocolError,
    Reply,
    Status,
    decode_reply,
    encode_request,
    model_id,
)
from dyno_compile.runtime.selector import Decision, Policy, Selector, is_device_only, make_policy, predict
from dyno_compile.runtime.sides import DeviceLike, DeviceSide, Env
from dyno_compile.runtime.transport import Reason, Transport, TransportError


@dataclass
class ClientOptions:
    """How a client behaves. ``policy``: a :class:`Policy` or a name from
    ``selector.POLICIES`` (with ``policy_options``); ``timeout_s``: the longest a request
    waits for the cloud before finishing on the device; ``probe_every_s``: how often the
    prober measures the round trip, and the uplink while nothing else does; ``selector``:
    a ready :class:`Selector` to use instead of one over the artifact's search results (an
    evaluation comparing policies over configurations it measured itself), whose policy
    replaces ``policy``; ``hedge``: finish each offloaded request on the device meanwhile
    and take whichever answer comes first (see the module; off by default: the published
    baselines wait for the cloud)."""

    policy: str | Policy = "lowest-latency"
    policy_options: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    tls_ca: str | Path | None = None
    timeout_s: float = 2.0
    retry_after_s: float = 0.25
    max_retry_after_s: float = 10.0
    probe_every_s: float = 2.0
    probe_bytes: int = 16384
    device_target: str = "host"
    link: LinkEstimator | None = None
    selector: Selector | None = None
    hedge: bool = False

    def __post_init__(self) -> None:
        for name in ("timeout_s", "retry_after_s", "max_retry_after_s", "probe_every_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise InputError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(self.probe_bytes, bool) or not isinstance(self.probe_bytes, int) or self.probe_bytes < 0:
            raise InputError(f"probe_bytes must be an integer >= 0, got {self.probe_bytes!r}")


@dataclass(frozen=True)
class Result:
    """One request: its output, the decision behind it, and where it ended.

    ``where``: ``"cloud"`` (answered by ``endpoint``), ``"device"`` (device-only by
    choice or because no endpoint was up), ``"fallback"`` (offloaded, failed, finished
    on the device; ``error`` says why) or ``"local"`` (offloaded with ``hedge``, and the
    device finished before the reply came)."""

    output: np.ndarray
    decision: Decision
    where: str
    latency_s: float
    bytes_sent: int = 0
    endpoint: str | None = None
    error: str | None = None
    reply: Reply | None = None


class _Endpoint:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.up = True
        self.connected = False  # has a ping gone through since the endpoint was (re)connected
        self.retry_after_s = 0.0
        self.next_probe = 0.0


class DeviceClient:
    """One device's view of an artifact and its cloud endpoints. Calls are serialised
    (one Relax VM); use one client per thread for parallel requests."""

    def __init__(
        self,
        artifact: Artifact | str | Path,
        endpoints: Sequence[str] = (),
        options: ClientOptions | None = None,
        **option_fields: Any,
    ) -> None:
        if options is not None and option_fields:
            raise InputError("give either options or option keywords, not both")
        self.options = o = options or ClientOptions(**option_fields)
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self.device: DeviceLike = DeviceSide(self.artifact, o.device_target)
        self.device.warm_up()  # the first VM calls pay one-off set-up that is not device load
        self.link = o.link or LinkEstimator()
        self._observer = LinkObserver(
            self.link,
            probe_every_s=o.probe_every_s,
            probe_bytes=o.probe_bytes,
            ping_timeout_s=ping_timeout_s(o.timeout_s),
        )
        # None only for an artifact without search results and no endpoint (see _selector)
        self.selector: Selector | None
        if o.selector is not None:
            self.selector = o.selector
        else:
            policy = o.policy if isinstance(o.policy, Policy) else make_policy(o.policy, **o.policy_options)
            self.selector = _selector(self.artifact, policy, needed=bool(endpoints))
        self.local = _device_only(self.artifact, self.selector)
        self.model = model_id(self.artifact.model_hash)
        self._endpoints = [_Endpoint(connect(e, token=o.token, tls_ca=o.tls_ca)) for e in endpoints]
        self._next = 0
        self._lock = threading.Lock()  # one request at a time (the VM)
        self._state = threading.Lock()  # estimator and endpoint state, shared with the prober
        self._last_rtt_probe = -float("inf")
        self._closed = threading.Event()
        self._prober = threading.Thread(target=self._probe_loop, name="dyno-prober", daemon=True)
        if self._endpoints:
            self._prober.start()

    # --- the app API -----------------------------------------------------------------

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The model's output for ``x`` (the artifact's input shape)."""
        return self.run(x).output

    def run(self, x: np.ndarray) -> Result:
        """:meth:`infer`, with the decision and how the request went."""
        with self._lock:
            start = time.perf_counter()
            with self._state:
                endpoint = self._pick()
                decision = self.local
                if endpoint:
                    assert self.selector is not None, "a client given endpoints always has a selector"
                    hedged = self.options.hedge
                    conditions = self._observer.conditions(time.monotonic()) if hedged else self.link.conditions()
                    decision = self.selector.select(conditions)
            config, evaluation = decision.evaluation.config, decision.evaluation
            env = self.device.start(x, config.cut)
            if endpoint is None or is_device_only(evaluation):
                output = self.device.finish(env, config.cut)
                self._observe_device(time.perf_counter() - start, evaluation)
                return Result(output, decision, "device", time.perf_counter() - start)
            request_id = secrets.randbits(64)
            request = encode_request(self.device.frame(env, config, request_id), model=self.model)
            device_s = time.perf_counter() - start
            self._observe_device(device_s, evaluation)
            if self.options.hedge:
                return self._hedged(endpoint, request, request_id, env, decision, start)
            sent = time.perf_counter()
            try:
                reply = self._call(endpoint, request, request_id)
            except (TransportError, ProtocolError) as e:
                self._failed(endpoint, e, evaluation)
                output = self.device.finish(env, config.cut)
                return Result(
                    output,
                    decision,
                    "fallback",
                    time.perf_counter() - start,
                    len(request),
                    endpoint.transport.endpoint,
                    str(e),
                )
            assert reply.output is not None, "_call refuses a reply without an output"
            with self._state:
                self._observe_reply(len(request), time.perf_counter() - sent, reply, evaluation)
            return Result(
                reply.output.reshape(self.device.output_shape),
                decision,
                "cloud",
                time.perf_counter() - start,
                len(request),
                endpoint.transport.endpoint,
                reply=reply,
            )

    def _observe_reply(self, nbytes: int, network_s: float, reply: Reply, evaluation: Evaluation) -> None:
        """A frame of ``nbytes`` answered ``network_s`` after it was handed to the network:
        an uplink sample and the cloud's load (call with ``_state`` held)."""
        self._observer.offload(
            nbytes,
            network_s,
            server_s=reply.server_s,
            compute_s=reply.compute_s,
            profiled_cloud_s=evaluation.cloud_s,
            now_s=time.monotonic(),
        )

    def _hedged(
        self, endpoint: _Endpoint, request: bytes, request_id: int, env: Env, decision: Decision, start: float
    ) -> Result:
        """The frame goes out from a worker thread while the device finishes the request
        itself; the earlier answer is the result. The worker observes what the call gives
        (reply, failure, busy) before it says the call is over, so a request the reply
        decides is never chosen after ahead of its observation."""
        evaluation, cut = decision.evaluation, decision.evaluation.config.cut
        answered = threading.Event()  # a good reply is in: the device stops
        outcome: dict[str, Any] = {}
        with self._state:
            self._observer.sent(request_id, len(request), time.monotonic())

        def call() -> None:
            sent = time.perf_counter()
            try:
                reply = self._call(endpoint, request, request_id)
            except (TransportError, ProtocolError) as e:
                self._failed(endpoint, e, evaluation)
                with self._state:
                    self._observer.settled(request_id)
                outcome["error"] = e
                return
            with self._state:
                self._observe_reply(len(request), time.perf_counter() - sent, reply, evaluation)
                self._observer.settled(request_id)
            outcome["reply"] = reply
            answered.set()

        worker = threading.Thread(target=call, name="dyno-offload", daemon=True)
        worker.start()
        output = _finish_until(self.device, env, cut, answered)
        where, reply, error = "local", None, None
        if output is None:  # stopped: the reply is in
            reply = outcome["reply"]
            assert reply.output is not None, "_call refuses a reply without an output"
            where, output = "cloud", reply.output.reshape(self.device.output_shape)
        elif "error" in outcome:
            where, error = "fallback", str(outcome["error"])
        return Result(
            output,
            decision,
            where,
            time.perf_counter() - start,
            len(request),
            endpoint.transport.endpoint,
            error,
            reply,
        )

    def close(self) -> None:
        self._closed.set()
        if self._prober.is_alive():
            self._prober.join()
        for e in self._endpoints:
            e.transport.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoints_up(self) -> list[str]:
        return [e.transport.endpoint for e in self._endpoints if e.up]

    # --- one request ----------------------------------------------------------------------

    def _pick(self) -> _Endpoint | None:
        """The next endpoint that is up, round robin; None when all are down (or none given)."""
        for k in range(len(self._endpoints)):
            endpoint = self._endpoints[(self._next + k) % len(self._endpoints)]
            if endpoint.up:
                self._next = (self._next + k + 1) % len(self._endpoints)
                return endpoint
        return None

    def _call(self, endpoint: _Endpoint, request: bytes, request_id: int) -> Reply:
        reply = decode_reply(endpoint.transport.call(request, self.options.timeout_s))
        if not reply.ok:
            raise ProtocolError(reply.status, f"{endpoint.transport.endpoint}: {reply.message}", reply)
        expected = int(np.prod(self.device.output_shape))
        if reply.request_id != request_id or reply.output is None or reply.output.size != expected:
            raise ProtocolError(reply.status, f"{endpoint.transport.endpoint}: the reply does not answer this request")
        return reply

    def _failed(self, endpoint: _Endpoint, e: TransportError | ProtocolError, evaluation: Evaluation) -> None:
        """A failed offload: the endpoint is down unless it only said it is busy
        (``OVERLOADED`` brings the load figures, observed)."""
        if not _busy(e):
            self._mark_down(endpoint)
        elif isinstance(e, ProtocolError) and e.reply is not None:
            with self._state:
                self._observer.busy(evaluation.cloud_s, in_flight=e.reply.in_flight, workers=e.reply.workers)

    def _observe_device(self, seconds: float, evaluation: Evaluation) -> None:
        with self._state:
            self._observer.device(seconds, evaluation.device_s)

    def _mark_down(self, endpoint: _Endpoint) -> None:
        with self._state:
            endpoint.up = False
            endpoint.connected = False
            endpoint.retry_after_s = self.options.retry_after_s
            endpoint.next_probe = time.monotonic() + endpoint.retry_after_s

    # --- the prober -----------------------------------------------------------------------

    def _probe_loop(self) -> None:
        tick = min(0.05, self.options.retry_after_s, self.options.probe_every_s)
        while True:
            now = time.monotonic()
            for endpoint in self._endpoints:
                if not endpoint.up and now >= endpoint.next_probe:
                    self._revive(endpoint)
            up = [e for e in self._endpoints if e.up]
            if up and now - self._last_rtt_probe >= self.options.probe_every_s:
                self._last_rtt_probe = now
                self._measure_link(up[0], now)
            if self._closed.wait(tick):
                return

    def _ping(self, endpoint: _Endpoint, padding: int = 0) -> float:
        """Seconds for one ping carrying ``padding`` bytes; raises on any failure."""
        request = encode_request(b"\0" * padding, model=self.model, kind=Kind.PING)
        start = time.perf_counter()
        reply = decode_reply(endpoint.transport.call(request, self._observer.ping_timeout_s))
        if not reply.ok:
            raise ProtocolError(reply.status, reply.message)
        return time.perf_counter() - start - reply.server_s

    def _round_trip(self, endpoint: _Endpoint) -> float:
        """A ping's round trip. The first ping on a new connection also carries the HTTP/2
        handshake (one more round trip, measured at 90 ms on a 50 ms link), so it is sent
        and not counted."""
        if not endpoint.connected:
            self._ping(endpoint)
            endpoint.connected = True
        return self._ping(endpoint)

    def _revive(self, endpoint: _Endpoint) -> None:
        """A down endpoint is up again once a ping gets through; until then (a busy answer
        included) the retry interval doubles."""
        try:
            rtt = self._round_trip(endpoint)
        except (TransportError, ProtocolError):
            with self._state:
                endpoint.retry_after_s = min(2 * endpoint.retry_after_s, self.options.max_retry_after_s)
                endpoint.next_probe = time.monotonic() + endpoint.retry_after_s
            return
        with self._state:
            self._observer.round_trip(rtt)
            endpoint.up = True

    def _measure_link(self, endpoint: _Endpoint, now: float) -> None:
        """An empty ping for the round trip, then, when the observer wants the uplink
        sampled (:meth:`LinkObserver.padding`), a padded one. A padded ping that times out
        is a slow link, not a dead one (:meth:`LinkObserver.padded_ping`); a busy answer
        keeps the endpoint with nothing learnt; any other failure marks it down."""
        with self._state:
            size = self._observer.padding(now)
        padded: float | None = None
        try:
            rtt = self._round_trip(endpoint)
            if size:
                try:
                    padded = self._ping(endpoint, size)
                except TransportError as e:
                    if e.reason is not Reason.TIMEOUT:
                        raise
        except (TransportError, ProtocolError) as e:
            if not _busy(e):
                self._mark_down(endpoint)
            return
        with self._state:
            if not size:
                self._observer.round_trip(rtt)
            elif self._observer.padded_ping(rtt, size, padded, time.monotonic()):
                self._last_rtt_probe = -float("inf")  # the next tick probes again, with more padding


def _finish_until(device: DeviceLike, env: Env, position: int, stop: threading.Event) -> np.ndarray | None:
    """The device's output from the activations at cut ``position``, or None if ``stop``
    was set first. A :class:`DeviceSide` checks between segments (a segment under way
    is not interrupted); a stand-in with a ``finish_until`` of its own (the evaluation's
    emulated device) is asked; any other runs to the end."""
    own = getattr(device, "finish_until", None)
    if callable(own):
        result: np.ndarray | None = own(env, position, stop)
        return result
    if not isinstance(device, DeviceSide):
        return device.finish(env, position)
    for index in device.cut(position)["cloud_segments"]:
        if stop.is_set():
            return None
        device.run_segments([index], env)
    value = env[device.output_name]
    return value if isinstance(value, np.ndarray) else value.numpy()


def _busy(e: TransportError | ProtocolError) -> bool:
    """Whether a failure means the endpoint is there but loaded: the transport's
    back-pressure or an ``OVERLOADED`` reply. Busy is not down."""
    if isinstance(e, TransportError):
        return e.reason is Reason.BUSY
    return e.status is Status.OVERLOADED


def _selector(artifact: Artifact, policy: Policy, needed: bool) -> Selector | None:
    """A selector over the Pareto set, or over every evaluation for the fixed baselines
    (whose configurations the Pareto set may not hold); None for an artifact without
    search results when no endpoint needs one."""
    if "search" not in artifact.manifest and not needed:
        return None
    try:
        return Selector.from_manifest(artifact.manifest, policy)
    except InputError as narrow:
        evaluations = _search_evaluations(artifact)
        if not evaluations:
            raise narrow
        search = artifact.manifest["search"]
        return Selector(
            evaluations,
            policy,
            accuracy_baseline=search["baseline_accuracy"],
            accuracy_budget=search["accuracy_budget"],
        )


def _device_only(artifact: Artifact, selector: Selector | None) -> Decision:
    """What runs when no endpoint is up: the device-only configuration, with its measures
    when the search recorded them (without search results nothing can be predicted)."""
    last = max(c["position"] for c in artifact.cuts)
    known = selector.candidates.evaluations if selector is not None else ()
    evaluation = next((e for e in known if e.config.cut == last), None) or _search_evaluation(artifact, last)
    if evaluation is None:
        unknown = Evaluation(Config(last), math.nan, 0.0, 0.0, math.nan, 1.0, {"device_s": "not profiled"})
        return Decision(unknown, math.nan, math.nan, "device-only")
    return Decision(evaluation, *predict(evaluation, Conditions(1.0, 0.0)), "device-only")


def _search_evaluation(artifact: Artifact, cut: int) -> Evaluation | None:
    return next((e for e in _search_evaluations(artifact) if e.config.cut == cut), None)


def _search_evaluations(artifact: Artifact) -> list[Evaluation]:
    """Every configuration the search measured (``search/evaluations.json``), or none."""
    path = artifact.root / "search" / "evaluations.json"
    if not path.is_file():
        return []
    return [Evaluation.from_dict(d) for d in json.loads(path.read_text())]
