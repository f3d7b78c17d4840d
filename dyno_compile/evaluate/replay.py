"""Replaying a stream of requests over a recorded uplink, choosing configurations as the
live client would: the policy comparisons of the evaluation (issue 6) without a network.

A live run over the link shaper takes as long as the trace and varies with the host; a
discrete-event replay takes milliseconds, is deterministic and can run every policy on
every trace. For it to say anything about the live system, the selector must see only
what the live :class:`~dyno_compile.runtime.client.DeviceClient` sees: a
:class:`~dyno_compile.runtime.link.LinkEstimator` fed by the simulated observations of
the frames actually sent, never the trace itself. So the replay reports what it
simulates to the client's own :class:`~dyno_compile.runtime.observations.LinkObserver`,
which holds the rules:

* each request asks the selector under the estimator's current conditions;
* the device's time samples the device load, the server's reported time (its queue
  included) the cloud load;
* a frame of at least ``MIN_SAMPLE_BYTES`` samples the uplink with the time from handing
  it to the network to the reply, less the server's time and the *estimated* round trip
  (so waiting behind a probe reads as a slower link, as it would live). Pipelined, a
  frame is timed from when the previous frame was delivered if that is later: a client
  with several frames outstanding knows they queue behind each other, and counting that
  wait as slowness would make the estimate track the queue rather than the link (with
  it, highest throughput over 103 synthetic candidates on the four mahimahi uplinks
  reached 1.3-3.2x fewer requests per second);
* round trips come only from the prober's empty pings, every ``probe_every_s`` (a ping is
  a packet on the uplink too, so a busy or gappy link reads as a longer round trip, as
  live), and,
  while no frame has sampled the uplink for ``probe_every_s``, a padded ping of
  ``max(probe_bytes, PROBE_SECONDS x estimated bandwidth)`` (at most ``MAX_PROBE_BYTES``)
  samples it; a padded ping slower than the ping timeout reads as the timeout, as live.

A request's stages: device ``device_s x device_load``; for an offloaded one, the uplink
(:meth:`UplinkTrace.transfer_seconds` from when the link is free: frames and probes
share it first come, first served), half the round trip, the cloud ``cloud_s x
cloud_load``, the other half (replies are small and not rate-limited). Frames are never
abandoned: a replay measures the policies, not the client's time-outs and fallback.

``mode="sequential"`` is the live client (one request at a time, the next when the
previous returns): its latencies are the ones to report. ``mode="pipelined"`` keeps the
device busy (the next request starts as soon as the device is free, at most
``max_in_flight`` outstanding) with device, uplink and cloud each serving one request at
a time in order: its throughput is the one to report.

``hedge=True`` replays the client with ``ClientOptions.hedge``: what the selector cannot
foresee (a link that stalls after a frame is sent) costs at most the device's own time.

* **The device never idles while an offloaded request is unanswered.** Both sides hold
  the whole model, so when the device has nothing else to do (sequential: always, once
  the frame is sent; pipelined: when no new request may start, ``max_in_flight`` being
  outstanding or the stream over) it finishes the oldest such request from the
  activations it holds, taking ``Decision.remainder_s`` (:func:`local_remainders`) times
  the device load; the request completes at the earlier of that and the reply, and the
  device stops as soon as the reply is in. Sequential latency is so never above
  device-only's by more than the packing, and a pipelined window full of stalled frames
  is emptied by the device at its own pace rather than waited out.
* A reply that comes after the request finished locally is still observed: it is a real
  sample of the uplink.
* The selector is given :meth:`LinkObserver.conditions`: the frames still unanswered as
  the uplink's backlog, and the stall an overdue one betrays, so a new frame is priced
  behind them (and ``HighestThroughput`` runs the request on the device instead).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.runtime.client import ClientOptions
from dyno_compile.runtime.link import PACKET_BYTES, Conditions, LinkEstimator, UplinkTrace
from dyno_compile.runtime.observations import LinkObserver, ping_timeout_s
from dyno_compile.runtime.protocol import REQUEST_HEADER_BYTES
from dyno_compile.runtime.selector import DEFAULT_MAX_IN_FLIGHT, Prediction, Selector, is_device_only

MODES = ("sequential", "pipelined")
#: The client's ping timeout with its default options.
DEFAULT_PING_TIMEOUT_S = ping_timeout_s(ClientOptions.timeout_s)
#: Arrivals this close after a delivery opportunity still catch it: simulated times are
#: sums of floats, and one ulp past a millisecond must not cost a whole opportunity.
_EPSILON_S = 1e-9


def _number(name: str, value: Any, *, low: float = 0.0, strict: bool = False) -> float:
    """``value`` as a finite float above ``low`` (``strict``) or at least it, else InputError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise InputError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, *, low: int) -> int:
    """``value`` as an int of at least ``low`` (bools are not counts), else InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ReplaySettings:
    """How to replay: the trace set's fixed propagation round trip ``rtt_s``; how many
    ``requests``, or for how long (``duration_s``: requests start until then), exactly
    one of the two; where in the trace to begin (``start_s``); ``mode`` (see the module);
    the prober's ``probe_every_s`` and ``probe_bytes`` (the client's defaults); the
    sides' true loads (the estimator must discover them); ``noise``: the sigma of a
    lognormal factor on each request's device and cloud times, drawn from ``seed``, for
    jitter a profile does not show (0: none, everything as profiled); ``hedge``: the
    client's hedged offload and backlog-aware conditions (see the module; off: the
    published baselines as published)."""

    rtt_s: float
    requests: int | None = None
    duration_s: float | None = None
    start_s: float = 0.0
    mode: str = "sequential"
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    probe_every_s: float = ClientOptions.probe_every_s
    probe_bytes: int = ClientOptions.probe_bytes
    ping_timeout_s: float = DEFAULT_PING_TIMEOUT_S
    device_load: float = 1.0
    cloud_load: float = 1.0
    noise: float = 0.0
    seed: int = 0
    hedge: bool = False

    def __post_init__(self) -> None:
        _number("ReplaySettings.rtt_s", self.rtt_s)
        _number("ReplaySettings.ping_timeout_s", self.ping_timeout_s, strict=True)
        if self.rtt_s >= self.ping_timeout_s:
            raise InputError(
                f"ReplaySettings.rtt_s ({self.rtt_s} s) must be below ping_timeout_s "
                f"({self.ping_timeout_s} s), or every ping the prober sends times out"
            )
        if (self.requests is None) == (self.duration_s is None):
            raise InputError("ReplaySettings: give exactly one of requests (a count) and duration_s (seconds)")
        if self.requests is not None:
            _integer("ReplaySettings.requests", self.requests, low=1)
        else:
            _number("ReplaySettings.duration_s", self.duration_s, strict=True)
        if self.mode not in MODES:
            raise InputError(f"ReplaySettings.mode must be one of {MODES}, got {self.mode!r}")
        for name in ("start_s", "noise"):
            _number(f"ReplaySettings.{name}", getattr(self, name))
        for name in ("probe_every_s", "device_load", "cloud_load"):
            _number(f"ReplaySettings.{name}", getattr(self, name), strict=True)
        _integer("ReplaySettings.max_in_flight", self.max_in_flight, low=1)
        _integer("ReplaySettings.probe_bytes", self.probe_bytes, low=0)
        _integer("ReplaySettings.seed", self.seed, low=0)
        if not isinstance(self.hedge, bool):
            raise InputError(f"ReplaySettings.hedge must be True or False, got {self.hedge!r}")


@dataclass(frozen=True)
class RequestRecord:
    """One replayed request. ``start_s``: when it was chosen (trace time, ``start_s``
    included, so it lines up with the trace); ``where``: ``"cloud"``, ``"device"``, or
    ``"local"`` (offloaded, and finished on the device before the reply came: hedged);
    ``device_s``/``cloud_s``: the time it spent computing on each side (queues excluded;
    the cloud's for a frame it answered after the device finished included);
    ``predicted_s``: the latency the selector expected under its estimates."""

    start_s: float
    config: Config
    where: str
    latency_s: float
    bytes: float
    device_s: float
    cloud_s: float
    accuracy: float
    predicted_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.latency_s


@dataclass(frozen=True)
class ProbeRecord:
    """One padded ping: when the prober sent it and its padding."""

    start_s: float
    bytes: int


@dataclass
class ReplayResult:
    """What a replay measured: every request and padded probe, and the figures the
    evaluation reports."""

    policy: str
    trace: str
    settings: ReplaySettings
    requests: list[RequestRecord]
    probes: list[ProbeRecord] = field(default_factory=list)

    @property
    def makespan_s(self) -> float:
        """From the first request's start to the last one's return."""
        return max(r.end_s for r in self.requests) - self.requests[0].start_s

    @property
    def throughput_rps(self) -> float:
        return len(self.requests) / self.makespan_s

    @property
    def latencies_s(self) -> np.ndarray:
        return np.array([r.latency_s for r in self.requests])

    @property
    def mean_latency_s(self) -> float:
        return float(self.latencies_s.mean())

    @property
    def p95_latency_s(self) -> float:
        return float(np.percentile(self.latencies_s, 95))

    @property
    def bytes_per_inference(self) -> float:
        """Frame bytes per request; the probes' are :attr:`probe_bytes_total`."""
        return sum(r.bytes for r in self.requests) / len(self.requests)

    @property
    def bytes_per_offload(self) -> float:
        """Frame bytes per request that went to the cloud (NaN if none did): what a
        policy's packing costs when it does send, whatever share of requests it sends."""
        sent = [r.bytes for r in self.requests if r.where != "device"]
        return sum(sent) / len(sent) if sent else math.nan

    @property
    def probe_bytes_total(self) -> int:
        return sum(p.bytes for p in self.probes)

    @property
    def cloud_s_per_inference(self) -> float:
        return sum(r.cloud_s for r in self.requests) / len(self.requests)

    @property
    def accuracy(self) -> float:
        """Mean over requests of the chosen configuration's accuracy."""
        return sum(r.accuracy for r in self.requests) / len(self.requests)

    @property
    def offloaded_fraction(self) -> float:
        return sum(r.where == "cloud" for r in self.requests) / len(self.requests)

    @property
    def switches(self) -> int:
        """Requests whose configuration differs from the previous request's."""
        return sum(a.config != b.config for a, b in zip(self.requests, self.requests[1:]))

    def cut_over_time(self, *, changes_only: bool = False) -> list[tuple[float, int]]:
        """``(start_s, cut)`` per request, for a plot of the chosen cut against the trace;
        ``changes_only``: the first request and each one whose cut differs from the one
        before (enough for a step plot)."""
        points = [(r.start_s, r.config.cut) for r in self.requests]
        if not changes_only:
            return points
        return [p for i, p in enumerate(points) if i == 0 or p[1] != points[i - 1][1]]

    def summary(self) -> dict[str, Any]:
        """The reported figures as plain numbers (for a JSON table)."""
        return {
            "policy": self.policy,
            "trace": self.trace,
            "mode": self.settings.mode,
            "requests": len(self.requests),
            "throughput_rps": self.throughput_rps,
            "mean_latency_s": self.mean_latency_s,
            "p95_latency_s": self.p95_latency_s,
            "bytes_per_inference": self.bytes_per_inference,
            "bytes_per_offload": self.bytes_per_offload,
            "probe_bytes_total": self.probe_bytes_total,
            "cloud_s_per_inference": self.cloud_s_per_inference,
            "accuracy": self.accuracy,
            "offloaded_fraction": self.offloaded_fraction,
            "switches": self.switches,
        }


class _Uplink:
    """The shared uplink: one transfer at a time, first come first served, each taking
    the trace's delivery opportunities from when the link is free. Arrivals must come in
    time order (the event loop's)."""

    def __init__(self, trace: UplinkTrace) -> None:
        self.trace = trace
        self.free_s = 0.0

    def send(self, arrival_s: float, nbytes: float) -> float:
        """When a transfer of ``nbytes`` handed over at ``arrival_s`` is delivered."""
        start = max(arrival_s, self.free_s) - _EPSILON_S
        start = max(start, 0.0)
        self.free_s = start + float(self.trace.transfer_seconds(start, nbytes))
        return self.free_s


@dataclass
class _Request:
    """A request in flight: its decision and the times the client would measure."""

    index: int
    start_s: float
    evaluation: Evaluation
    predicted_s: float
    remainder_s: float = math.inf
    device_s: float = 0.0
    cloud_s: float = 0.0
    sent_s: float = 0.0
    server_s: float = 0.0
    finished: bool = False
    #: Bumped to cancel the local remainder running for it (the reply came, or it was set aside).
    local_run: int = 0
    #: Device seconds left of its remainder, once started.
    local_left_s: float | None = None


class _Replay:
    """The event loop: requests and the prober, in simulated time."""

    def __init__(
        self, selector: Selector, trace: UplinkTrace, settings: ReplaySettings, estimator: LinkEstimator
    ) -> None:
        self.selector, self.settings, self.link = selector, settings, estimator
        self.observer = LinkObserver(
            estimator,
            probe_every_s=settings.probe_every_s,
            probe_bytes=settings.probe_bytes,
            ping_timeout_s=settings.ping_timeout_s,
        )
        self.uplink = _Uplink(trace)
        self.frame_delivered_s = 0.0
        self.cloud_free_s = 0.0
        self.rng = np.random.default_rng(settings.seed)
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.sequence = 0
        self.now = settings.start_s
        self.records: list[tuple[int, RequestRecord]] = []
        self.probes: list[ProbeRecord] = []
        self.started = 0
        self.in_flight = 0
        self.device_busy = False
        #: Offloaded requests not yet answered nor finished, oldest first (hedge only).
        self.unanswered: list[_Request] = []
        #: The request whose remainder the device is running, if any, and since when.
        self.local: _Request | None = None
        self.local_started_s = 0.0
        self.next_probe = settings.start_s  # when the scheduled probe is due (a retry brings it forward)
        self.stopped = False

    # --- the loop ------------------------------------------------------------------------

    def at(self, time_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (time_s, self.sequence, action))
        self.sequence += 1

    def run(self) -> None:
        self.at(self.now, self.probe)
        self.at(self.now, self.start_request)
        while self.events and not self.done:
            self.now, _, action = heapq.heappop(self.events)
            action()

    @property
    def done(self) -> bool:
        return self.stopped and self.in_flight == 0

    def may_start(self) -> bool:
        s = self.settings
        if s.requests is not None:
            return self.started < s.requests
        assert s.duration_s is not None, "ReplaySettings holds exactly one of requests and duration_s"
        return self.now < s.start_s + s.duration_s

    def jitter(self) -> float:
        return float(self.rng.lognormal(0.0, self.settings.noise)) if self.settings.noise else 1.0

    # --- a request -----------------------------------------------------------------------

    def start_request(self) -> None:
        if self.stopped or not self.may_start():
            self.stopped = True
            return
        conditions = self.observer.conditions(self.now) if self.settings.hedge else self.link.conditions()
        decision = self.selector.select(conditions)
        e = decision.evaluation
        request = _Request(self.started, self.now, e, decision.latency_s, decision.remainder_s)
        self.started += 1
        self.in_flight += 1
        self.device_busy = True
        request.device_s = e.device_s * self.settings.device_load * self.jitter()
        self.at(self.now + request.device_s, lambda: self.device_done(request))

    def device_done(self, request: _Request) -> None:
        e = request.evaluation
        self.observer.device(request.device_s, e.device_s)
        self.device_busy = False
        if is_device_only(e):
            self.finish(request, "device")
        else:
            request.sent_s = max(self.now, self.frame_delivered_s)
            self.observer.sent(request.index, e.bytes, self.now)
            delivered = self.uplink.send(self.now, e.bytes) if e.bytes > 0 else self.now
            self.frame_delivered_s = max(self.frame_delivered_s, delivered)
            self.at(delivered + self.settings.rtt_s / 2, lambda: self.cloud_arrival(request))
            if self.settings.hedge and math.isfinite(request.remainder_s):
                self.unanswered.append(request)
        self.device_free()

    def cloud_arrival(self, request: _Request) -> None:
        request.cloud_s = request.evaluation.cloud_s * self.settings.cloud_load * self.jitter()
        self.cloud_free_s = max(self.now, self.cloud_free_s) + request.cloud_s
        request.server_s = self.cloud_free_s - self.now
        self.at(self.cloud_free_s + self.settings.rtt_s / 2, lambda: self.reply(request))

    def reply(self, request: _Request) -> None:
        """The answer is back: observed as the client observes its replies
        (:meth:`LinkObserver.offload`), even when the device finished the request first.
        A remainder running for it stops."""
        e = request.evaluation
        self.observer.offload(
            e.bytes,
            self.now - request.sent_s,
            server_s=request.server_s,
            compute_s=request.cloud_s,
            profiled_cloud_s=e.cloud_s,
            now_s=self.now,
        )
        self.observer.settled(request.index)
        if request.finished:
            return
        if request in self.unanswered:
            self.unanswered.remove(request)
        if self.local is request:
            self.stop_remainder(request)
        self.finish(request, "cloud")

    def finish(self, request: _Request, where: str) -> None:
        e = request.evaluation
        cloud_s = request.cloud_s
        if where == "local":  # the frame was sent: the cloud computes it all the same
            cloud_s = cloud_s or e.cloud_s * self.settings.cloud_load
        record = RequestRecord(
            request.start_s,
            e.config,
            where,
            self.now - request.start_s,
            e.bytes,
            request.device_s,
            cloud_s,
            e.accuracy,
            request.predicted_s,
        )
        request.finished = True
        self.records.append((request.index, record))
        self.in_flight -= 1
        if self.settings.mode == "sequential":
            if not self.device_busy:
                self.start_request()
        else:
            self.device_free()

    def device_free(self) -> None:
        """The device may take other work: pipelined, it takes the next request if fewer
        than ``max_in_flight`` are outstanding, setting aside a remainder it was running
        (kept where it stopped: segments are not redone); otherwise (sequential: once the
        frame is sent), with ``hedge``, it runs the oldest unanswered offloaded request's
        remainder. A remainder is only ever what the device does when it has nothing
        else to do: a slow device (resnet50 on a Pi 4 class board: 263 ms) tied up in one
        while requests could start would forgo a dozen offloads."""
        s = self.settings
        can_start = s.mode == "pipelined" and self.in_flight < s.max_in_flight and not self.stopped
        if self.device_busy:
            if not (can_start and self.local is not None):
                return
            self.set_aside(self.local)
        if can_start:
            self.start_request()
            if self.device_busy:
                return
        if self.unanswered:
            self.run_remainder(self.unanswered.pop(0))

    def run_remainder(self, request: _Request) -> None:
        """The device finishes ``request`` from the activations it holds (from where it
        stopped, if it was set aside), unless the reply comes first (:meth:`reply`)."""
        if request.local_left_s is None:
            request.local_left_s = request.remainder_s * self.settings.device_load * self.jitter()
        self.device_busy = True
        self.local = request
        self.local_started_s = self.now
        run = request.local_run
        self.at(self.now + request.local_left_s, lambda: self.remainder_done(request, run))

    def stop_remainder(self, request: _Request) -> None:
        """The device stops ``request``'s remainder now, counting the time it spent."""
        spent = self.now - self.local_started_s
        request.device_s += spent
        if request.local_left_s is not None:
            request.local_left_s -= spent
        request.local_run += 1
        self.local = None
        self.device_busy = False

    def set_aside(self, request: _Request) -> None:
        """A remainder yields to a new request: it goes back to the front of the queue."""
        self.stop_remainder(request)
        self.unanswered.insert(0, request)

    def remainder_done(self, request: _Request, run: int) -> None:
        if request.local_run != run:
            return  # stopped meanwhile: the reply came, or a new request took the device
        self.stop_remainder(request)
        self.finish(request, "local")

    # --- the prober ----------------------------------------------------------------------

    def probe(self) -> None:
        """The client's ``_measure_link``: an empty ping, then a padded one when the
        observer wants the uplink sampled (:meth:`LinkObserver.padding`)."""
        s = self.settings
        if self.done:
            return
        self.next_probe = self.now + s.probe_every_s
        self.at(self.next_probe, self.probe_when_due)
        size = self.observer.padding(self.now)
        rtt = self.uplink.send(self.now, REQUEST_HEADER_BYTES) - self.now + s.rtt_s  # a ping is a packet too
        if size:
            self.probes.append(ProbeRecord(self.now, size))
        self.at(self.now + rtt, lambda: self.ping_reply(size, rtt))

    def ping_reply(self, size: int, rtt: float) -> None:
        """The empty ping is back after ``rtt``: the round trip is the sample, or the padded
        ping of ``size`` bytes goes next, answered when the uplink has carried it or timed
        out at the ping timeout."""
        s = self.settings
        if not size:
            self.observer.round_trip(rtt)
            return
        sent = self.now
        returned = self.uplink.send(sent, size) + s.rtt_s
        timed_out = returned - sent > s.ping_timeout_s
        self.at(
            sent + s.ping_timeout_s if timed_out else returned, lambda: self.padded_reply(size, sent, timed_out, rtt)
        )

    def padded_reply(self, size: int, sent_s: float, timed_out: bool, rtt: float) -> None:
        """The padded ping is back, or timed out: observed as the client observes it
        (:meth:`LinkObserver.padded_ping`)."""
        padded = None if timed_out else self.now - sent_s
        if self.observer.padded_ping(rtt, size, padded, self.now):  # the client's next tick probes again
            self.next_probe = self.now
            self.at(self.now, self.probe_when_due)

    def probe_when_due(self) -> None:
        """Probe unless a newer schedule replaced this one (a retry after a padded ping
        the round trip hid)."""
        if self.now >= self.next_probe:
            self.probe()


def replay(
    selector: Selector, trace: UplinkTrace, settings: ReplaySettings, *, estimator: LinkEstimator | None = None
) -> ReplayResult:
    """Replay ``settings``' requests over ``trace`` with ``selector`` choosing each one
    under ``estimator``'s estimates (a fresh :class:`LinkEstimator` with its priors unless
    given). The selector and the estimator keep their state: give fresh ones per replay."""
    if not isinstance(selector, Selector):
        raise InputError(f"replay needs a Selector, got {selector!r}")
    if not isinstance(trace, UplinkTrace):
        raise InputError(f"replay needs an UplinkTrace (UplinkTrace.read), got {trace!r}")
    if not isinstance(settings, ReplaySettings):
        raise InputError(f"replay needs ReplaySettings, got {settings!r}")
    run = _Replay(selector, trace, settings, estimator if estimator is not None else LinkEstimator())
    run.run()
    records = [record for _, record in sorted(run.records, key=lambda pair: pair[0])]
    return ReplayResult(selector.policy.name, trace.name, settings, records, run.probes)


@dataclass(frozen=True)
class OracleChoice:
    """What the policy chooses for one second knowing its true throughput (``bandwidth``,
    bytes/s, floored at one packet a second), and the cost model's figures for it."""

    start_s: float
    bandwidth: float
    evaluation: Evaluation
    latency_s: float
    throughput_rps: float


def delivered_bytes(trace: UplinkTrace, start_s: float, end_s: float) -> float:
    """Bytes the trace can deliver in ``[start_s, end_s)``, across its loops."""
    return float(PACKET_BYTES * (trace.first_opportunity(1000.0 * end_s) - trace.first_opportunity(1000.0 * start_s)))


def oracle(
    selector: Selector, trace: UplinkTrace, settings: ReplaySettings, *, seconds: int | None = None
) -> list[OracleChoice]:
    """Per second from ``settings.start_s``, the choice of ``selector``'s policy among its
    candidates under perfect knowledge: that second's true throughput, the true round trip
    and loads, and no hysteresis (nothing noisy to guard against). ``seconds``: how many
    (default ``duration_s`` rounded up, else one period of the trace). The selector itself
    is not used, so its state is untouched."""
    if seconds is None:
        span = settings.duration_s if settings.duration_s is not None else trace.period_ms / 1000.0
        seconds = math.ceil(span)
    seconds = _integer("oracle: seconds", seconds, low=1)
    candidates, policy = selector.candidates, selector.policy
    choices = []
    for k in range(seconds):
        t = settings.start_s + k
        bandwidth = max(delivered_bytes(trace, t, t + 1.0), float(PACKET_BYTES))
        prediction = Prediction(
            candidates, Conditions(bandwidth, settings.rtt_s, settings.device_load, settings.cloud_load)
        )
        scores, _ = policy.scores(prediction)
        index = int(np.argmin(scores))
        choices.append(OracleChoice(t, bandwidth, candidates.evaluations[index], *prediction.of(index)))
    return choices
