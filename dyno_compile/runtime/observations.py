"""What a client's observations mean for its link and load estimates: one set of rules,
followed by the live :class:`~dyno_compile.runtime.client.DeviceClient` with measured
times and by the trace replay (:mod:`dyno_compile.evaluate.replay`) with simulated ones.

A replay says something about the live system only if its selector sees what the live
client's would, so neither keeps a rule of its own: both report what happened — a
request's device time, an offload's wait and the server's reply, a busy reply, the
prober's pings — to one :class:`LinkObserver`, which turns it into
:class:`~dyno_compile.runtime.link.LinkEstimator` samples and decides when the uplink
needs a padded ping and how big. Times are the caller's clock (``time.monotonic`` live,
simulated time in a replay); the observer is not thread-safe, the client serialises it.

It also holds what neither the estimator nor the cost model can see: the frames sent
and not yet answered. A hedged request (the device finishes it locally while the cloud
has it) can leave its frame on the uplink when the next request is chosen, and a
pipelined client always has some there; :meth:`LinkObserver.conditions` prices a new
frame behind them (``Conditions.uplink_backlog_s``), and, once the oldest is overdue,
reads the stall it betrays into the estimates (:meth:`LinkObserver.conditions`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, replace

from dyno_compile.runtime.link import BANDWIDTH_LIMITS, Conditions, LinkEstimator

#: Frames smaller than this do not sample the uplink: their transfer time is below the
#: noise of the round trip that is subtracted from it.
MIN_SAMPLE_BYTES = 1500
#: A padded probe is sized to take about this long at the estimated bandwidth, within
#: the client's ``probe_bytes`` .. MAX_PROBE_BYTES.
PROBE_SECONDS = 0.01
MAX_PROBE_BYTES = 1 << 20
#: Growth of the padding after a padded ping that could not be told from the round trip.
PROBE_GROWTH = 4
#: The bandwidth a hedged client assumes until its first sample of the uplink (100
#: Mbit/s, a good 5G uplink), instead of the estimator's 1 Mbit/s prior: hedging caps
#: what an optimistic guess costs at the packing of the few frames sent before the first
#: reply, while a pessimistic one forgoes the whole gain of offloading until then
#: (squeezenet on a Pi-4-class device over 5G lost 13 % of its throughput in a 200-request
#: replay to three device-only requests at the start).
OPTIMISTIC_BANDWIDTH = 12.5e6
#: Pings wait at most this long (less when requests wait less): a ping is answered at
#: once, so a longer wait only delays noticing a dead endpoint.
MAX_PING_TIMEOUT_S = 1.0


def ping_timeout_s(request_timeout_s: float) -> float:
    """How long a ping waits, for a client whose requests wait ``request_timeout_s``."""
    return min(request_timeout_s, MAX_PING_TIMEOUT_S)


@dataclass
class UplinkProbe:
    """The prober's padded pings: sized to take about ``PROBE_SECONDS`` at the current
    estimate (``min_bytes`` .. ``MAX_PROBE_BYTES``), and, when one took no longer than the
    round trip (a link faster than the padding can show: 16 KB cross a 700 Mbit/s 5G
    uplink in 0.2 ms), grown ``PROBE_GROWTH``-fold and sent again at once rather than
    after ``probe_every_s`` — meanwhile the selector chooses from the prior, and a 5G
    client kept resnet50 on the device for 2 s."""

    min_bytes: int
    scale: int = 1

    def size(self, bandwidth: float) -> int:
        return int(min(max(self.min_bytes, PROBE_SECONDS * bandwidth) * self.scale, MAX_PROBE_BYTES))

    def again(self, sampled: bool, size: int) -> bool:
        """After a padded ping of ``size`` bytes: whether to send a bigger one at once."""
        if sampled or size >= MAX_PROBE_BYTES:
            self.scale = 1
            return False
        self.scale *= PROBE_GROWTH
        return True


@dataclass(frozen=True)
class _Frame:
    """A frame handed to the network and not yet answered."""

    nbytes: float
    sent_s: float


class LinkObserver:
    """Feeds ``link`` from a client's observations. ``probe_every_s``: how long the uplink
    may go unsampled before the prober pads its ping; ``probe_bytes``: the smallest padding
    (0: never pad); ``ping_timeout_s``: what a ping waits (:func:`ping_timeout_s`)."""

    def __init__(self, link: LinkEstimator, *, probe_every_s: float, probe_bytes: int, ping_timeout_s: float) -> None:
        self.link = link
        self.probe_every_s = probe_every_s
        self.ping_timeout_s = ping_timeout_s
        self.probe = UplinkProbe(probe_bytes)
        #: When a frame or a padded ping last sampled the uplink: never yet, so the first probe is padded.
        self.last_uplink_sample_s = -math.inf
        #: Frames sent and not answered, oldest first (dicts keep insertion order).
        self._outstanding: dict[Hashable, _Frame] = {}
        #: When, by the replies, the uplink last finished delivering a frame.
        self._delivered_s = -math.inf

    # --- frames in flight -------------------------------------------------------------

    def sent(self, key: Hashable, nbytes: float, now_s: float) -> None:
        """A frame of ``nbytes`` (``key``: the caller's name for it) went to the network."""
        self._outstanding[key] = _Frame(nbytes, now_s)

    def settled(self, key: Hashable) -> None:
        """The frame ``key`` needs the uplink no more: answered (after :meth:`offload`),
        failed or refused. A frame whose request the device finished first stays until
        then: it still occupies the link."""
        self._outstanding.pop(key, None)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def conditions(self, now_s: float) -> Conditions:
        """The estimator's conditions at ``now_s`` with what the frames in flight say.

        * The backlog: the frames not answered, queued first come first served at the
          estimated bandwidth, the oldest from when the link was last seen free (the
          later of its sending and the last delivery the replies imply); the time until
          the last clears. A frame unanswered a round trip after its predicted delivery
          is *overdue*: the link stalls, and a stall that has lasted ``o`` is taken to
          last ``o`` more (the longer a link has been silent, the longer it is likely to
          stay so), so the backlog grows with it until a reply arrives.
        * Stall-aware bandwidth: the oldest frame's ``nbytes`` have not all arrived after
          ``age - rtt`` seconds on the link, so the link carried less than ``nbytes / (age
          - rtt)`` meanwhile; the bandwidth is at most that. It equals the estimate until
          the frame is late, and falls as it stays so: a policy checking a bound
          (``Onloading``) sees the stall before any sample of it exists.
        * Until the uplink's first sample, the bandwidth is at least
          :data:`OPTIMISTIC_BANDWIDTH` (see there).
        """
        base = self.link.conditions()
        if self.last_uplink_sample_s == -math.inf:
            base = replace(base, bandwidth=max(base.bandwidth, OPTIMISTIC_BANDWIDTH))
        if not self._outstanding:
            return base
        frames = iter(self._outstanding.values())
        head = next(frames)
        start = max(head.sent_s, self._delivered_s)
        age = now_s - start
        bandwidth = base.bandwidth
        if age > base.rtt_s:
            bandwidth = min(bandwidth, max(head.nbytes / (age - base.rtt_s), BANDWIDTH_LIMITS[0]))
        end = start + head.nbytes / base.bandwidth
        overdue = now_s - (end + base.rtt_s)
        if overdue > 0:
            end = now_s + overdue
        for frame in frames:
            end = max(end, frame.sent_s) + frame.nbytes / bandwidth
        return replace(base, bandwidth=bandwidth, uplink_backlog_s=max(end - now_s, 0.0))

    def device(self, observed_s: float, profiled_s: float) -> None:
        """The device's part of a request took ``observed_s`` where its profile says
        ``profiled_s`` (0 for a configuration with no device part: nothing to learn)."""
        if profiled_s > 0 and observed_s > 0:
            self.link.observe_device(observed_s, profiled_s)

    def offload(
        self,
        nbytes: float,
        network_s: float,
        *,
        server_s: float,
        compute_s: float,
        profiled_cloud_s: float,
        now_s: float,
    ) -> None:
        """A frame of ``nbytes`` was answered ``network_s`` after it was handed to the
        network, the server reporting ``server_s`` (queue and ``compute_s``) for work
        profiled at ``profiled_cloud_s``: the cloud load from the server's own time, the
        uplink from what is left of the wait once the *estimated* round trip is taken off
        (so waiting behind a probe reads as a slower link). Frames under
        ``MIN_SAMPLE_BYTES`` and waits the round trip explains leave the uplink alone."""
        if compute_s > 0 and profiled_cloud_s > 0:
            self.link.observe_cloud(server_s, profiled_cloud_s)
        rtt_s = self.link.conditions().rtt_s
        self._delivered_s = max(self._delivered_s, now_s - server_s - rtt_s / 2)
        transfer_s = network_s - server_s - rtt_s
        if nbytes >= MIN_SAMPLE_BYTES and transfer_s > 0:
            self.link.observe_transfer(nbytes, transfer_s)
            self.last_uplink_sample_s = now_s

    def busy(self, profiled_cloud_s: float, *, in_flight: int, workers: int) -> None:
        """A busy reply: the queue ahead holds ``in_flight`` requests over ``workers`` VMs,
        so this one would have waited about that many service times."""
        if profiled_cloud_s > 0:
            load = (in_flight + 1) / max(workers, 1)
            self.link.observe_cloud(load * profiled_cloud_s, profiled_cloud_s)

    def round_trip(self, rtt_s: float) -> None:
        """An empty ping's round trip, with no padded ping after it."""
        self.link.observe_rtt(rtt_s)

    def padding(self, now_s: float) -> int:
        """The padding for the prober's ping at ``now_s``: none (0) while a frame or padded
        ping sampled the uplink within ``probe_every_s``, else sized by :class:`UplinkProbe`."""
        if not self.probe.min_bytes or now_s - self.last_uplink_sample_s < self.probe_every_s:
            return 0
        return self.probe.size(self.link.conditions().bandwidth)

    def padded_ping(self, rtt_s: float, size: int, padded_s: float | None, now_s: float) -> bool:
        """An empty ping's round trip ``rtt_s``, then a ping padded with ``size`` bytes that
        took ``padded_s``, or timed out (None): the server had just answered the empty
        ping, so the link is slow, not down, and the padding took at least the whole
        ping timeout (:meth:`LinkEstimator.observe_padded_ping`). True when the padding
        could not be told from the round trip and a bigger one should go at once."""
        if padded_s is None:
            padded_s = self.ping_timeout_s + self.link.conditions().rtt_s
        sampled = self.link.observe_padded_ping(rtt_s, size, padded_s)
        if sampled:
            self.last_uplink_sample_s = now_s
        return self.probe.again(sampled, size)
