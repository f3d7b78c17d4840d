"""Live estimates of the uplink and of the two sides' loads, from the requests themselves.

The run-time selector ranks configurations by predicted latency under the *current*
uplink bandwidth, round-trip time and load on each side. None of those is known in
advance and probing would cost the very bandwidth being measured, so each estimate is
updated from what every offloaded request observes anyway: how long its frame took on
the uplink, the round trip, and how long each side took compared with its profile.

Bandwidth and round-trip time use the median of the last few samples (default 5). That
was measured against EWMAs (of the rate and of its log) and a windowed bytes-over-seconds
ratio, replaying steps, noisy constants and the real uplink traces
(``benchmarks/selector_decision.py --replay``). Without noise the median follows a step
completely after ``window // 2 + 1`` samples (3) and ignores any blip shorter than that;
with noise (sigma 0.3 in log) it was within 25 % of the new rate after 4 samples either
way, where an EWMA about as steady (alpha 0.3: spread 0.17 in log, the median's 0.18)
needed 13 after a drop, and a log-EWMA as quick (alpha 0.5) spread nearly twice as much
(0.33), which is what makes a selector flip between configurations. A lone outlier (a stalled transfer)
moves an EWMA by a large factor and the median not at all. On the real traces the EWMAs
of alpha 0.3 track per-second throughput slightly better (median error 1.08-1.09x
against 1.10x) because they average more, at the cost of those slow steps. Before any
sample the estimate is a prior; the first sample replaces it.

Loads (observed time / profiled time) use an EWMA, since they drift rather than step
and every request samples the device. Samples outside physical limits are clamped so one
absurd reading (a clock jump, a profile taken on another machine) cannot swamp an
estimate; durations that are zero or negative are a caller's bug and raise
:class:`~dyno_compile.errors.InputError`.

:class:`UplinkTrace` replays a real mahimahi uplink trace (one line per 1500-byte
delivery opportunity, millisecond timestamps; the trace loops as mahimahi plays it), so
the estimator and the selector can be checked against measured cellular uplinks.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dyno_compile.errors import InputError

#: Bytes per delivery opportunity in a mahimahi trace (one MTU-sized packet).
PACKET_BYTES = 1500
#: Priors before any observation: 1 Mbit/s and 50 ms, a typical cellular uplink
#: (the mahimahi 3G uplinks average 0.8-0.9 Mbit/s, LTE 1.9-6), and profiled speed.
PRIOR_BANDWIDTH = 125_000.0
PRIOR_RTT_S = 0.05
PRIOR_LOAD = 1.0
#: Physical limits samples are clamped to: 1 kbit/s .. 1 Tbit/s, a 10 s round trip, and
#: a side running 20x faster or slower than profiled.
BANDWIDTH_LIMITS = (125.0, 1.25e11)
RTT_LIMITS = (0.0, 10.0)
LOAD_LIMITS = (0.05, 20.0)
DEFAULT_WINDOW = 5
DEFAULT_LOAD_ALPHA = 0.3


@dataclass(frozen=True)
class Conditions:
    """What the selector needs to predict a configuration's latency: uplink bandwidth in
    bytes/s, round-trip time in seconds, each side's load factor (observed time over
    profiled time; 1 runs as profiled, 2 takes twice as long), and ``uplink_backlog_s``:
    how long until the uplink is expected to have carried the frames already sent and not
    yet answered (0: it is free; :meth:`~dyno_compile.runtime.observations.LinkObserver.conditions`
    fills it), so that a new frame is priced behind them rather than on an idle link."""

    bandwidth: float
    rtt_s: float
    device_load: float = PRIOR_LOAD
    cloud_load: float = PRIOR_LOAD
    uplink_backlog_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("bandwidth", "device_load", "cloud_load"):
            _require(name, getattr(self, name), positive=True)
        _require("rtt_s", self.rtt_s, positive=False)
        _require("uplink_backlog_s", self.uplink_backlog_s, positive=False)


def _require(name: str, value: float, *, positive: bool) -> float:
    """``value`` as a float if finite and > 0 (``positive``) or >= 0, else InputError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v < 0.0 or (positive and v == 0.0):
        raise InputError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return v


def _clamp(value: float, limits: tuple[float, float]) -> float:
    return min(max(value, limits[0]), limits[1])


class WindowedMedian:
    """Median of the last ``window`` samples; ``prior`` until the first one."""

    def __init__(self, prior: float, window: int = DEFAULT_WINDOW) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InputError(f"window must be >= 1 sample, got {window!r}")
        self._samples: deque[float] = deque(maxlen=window)
        self.value = prior

    def update(self, sample: float) -> float:
        self._samples.append(sample)
        self.value = statistics.median(self._samples)
        return self.value


class EWMA:
    """Exponentially weighted moving average; ``prior`` until the first sample, which
    replaces it (a measurement beats a guess)."""

    def __init__(self, prior: float, alpha: float = DEFAULT_LOAD_ALPHA) -> None:
        if not 0.0 < alpha <= 1.0:
            raise InputError(f"alpha must be in (0, 1], got {alpha!r}")
        self._alpha = alpha
        self._seen = False
        self.value = prior

    def update(self, sample: float) -> float:
        self.value = sample if not self._seen else self.value + self._alpha * (sample - self.value)
        self._seen = True
        return self.value


class LinkEstimator:
    """Bandwidth, round trip and both loads, updated from each request's observations.

    Device-only requests send nothing, so while the selector keeps choosing device-only
    the link estimates stay where they were; the runtime should send an occasional
    frame (or a probe) to learn that the uplink has recovered.
    """

    def __init__(
        self,
        *,
        prior_bandwidth: float = PRIOR_BANDWIDTH,
        prior_rtt_s: float = PRIOR_RTT_S,
        window: int = DEFAULT_WINDOW,
        load_alpha: float = DEFAULT_LOAD_ALPHA,
    ) -> None:
        prior = Conditions(prior_bandwidth, prior_rtt_s)
        self._bandwidth = WindowedMedian(prior.bandwidth, window)
        self._rtt = WindowedMedian(prior.rtt_s, window)
        self._device = EWMA(PRIOR_LOAD, load_alpha)
        self._cloud = EWMA(PRIOR_LOAD, load_alpha)

    def observe_transfer(self, bytes_sent: float, transfer_s: float, rtt_s: float | None = None) -> None:
        """One frame of ``bytes_sent`` took ``transfer_s`` seconds on the uplink: what the
        cost model's ``bytes / bandwidth`` stands for, i.e. the request's time less the
        device's, the round trip and the cloud's reported time. ``rtt_s``, if given, is
        the round trip measured alongside."""
        rate = _require("bytes_sent", bytes_sent, positive=True) / _require("transfer_s", transfer_s, positive=True)
        self._bandwidth.update(_clamp(rate, BANDWIDTH_LIMITS))
        if rtt_s is not None:
            self.observe_rtt(rtt_s)

    def observe_rtt(self, rtt_s: float) -> None:
        self._rtt.update(_clamp(_require("rtt_s", rtt_s, positive=False), RTT_LIMITS))

    def observe_padded_ping(self, rtt_s: float, padded_bytes: int, padded_s: float) -> bool:
        """A probe: an empty ping's round trip ``rtt_s``, then a ping padded with
        ``padded_bytes`` that took ``padded_s``, whose time over the round trip is the
        padding's transfer. The round trip subtracted is the lower of the estimate (a
        windowed median, steadier than one ping) and this probe's empty ping, which bounds
        the round trip right now from above: after a slow link turns fast the median still
        holds the slow link's queueing for a few samples, and subtracting it would discard
        the new link's transfers as negative. True when the transfer was a sample."""
        self.observe_rtt(rtt_s)
        transfer_s = padded_s - min(rtt_s, self._rtt.value)
        if transfer_s <= 0:
            return False
        self.observe_transfer(padded_bytes, transfer_s)
        return True

    def observe_device(self, observed_s: float, profiled_s: float) -> None:
        """The device side of a request took ``observed_s`` where its profile says ``profiled_s``."""
        self._device.update(_load_sample("device", observed_s, profiled_s))

    def observe_cloud(self, observed_s: float, profiled_s: float) -> None:
        """The cloud reported ``observed_s`` (queueing included) for work profiled at ``profiled_s``."""
        self._cloud.update(_load_sample("cloud", observed_s, profiled_s))

    def conditions(self) -> Conditions:
        return Conditions(self._bandwidth.value, self._rtt.value, self._device.value, self._cloud.value)


def _load_sample(side: str, observed_s: float, profiled_s: float) -> float:
    observed = _require(f"{side} observed_s", observed_s, positive=True)
    return _clamp(observed / _require(f"{side} profiled_s", profiled_s, positive=True), LOAD_LIMITS)


@dataclass(frozen=True, eq=False)
class UplinkTrace:
    """A mahimahi uplink trace: sorted millisecond timestamps, one per 1500-byte delivery
    opportunity (repeated when several packets fit in one millisecond), looping every
    ``period_ms`` (the last timestamp, as mahimahi plays it)."""

    name: str
    opportunities_ms: np.ndarray
    period_ms: int

    @classmethod
    def read(cls, path: str | Path) -> UplinkTrace:
        path = Path(path)
        try:
            stamps = np.array(path.read_text().split(), dtype=np.int64)
        except (OSError, ValueError) as e:
            raise InputError(
                f"{path}: not a mahimahi trace (one integer millisecond timestamp per line): {e}"
            ) from None
        if stamps.size == 0 or stamps[0] < 0 or np.any(np.diff(stamps) < 0) or stamps[-1] <= 0:
            raise InputError(
                f"{path}: a mahimahi trace needs non-negative, non-decreasing timestamps ending after 0 ms"
            )
        return cls(path.name, stamps, int(stamps[-1]))

    def throughput_per_second(self) -> np.ndarray:
        """Bytes deliverable in each whole second of one period (bytes/s); a final part
        second is left out, as it would read low."""
        seconds = self.period_ms // 1000
        return np.bincount(self.opportunities_ms // 1000, minlength=seconds)[:seconds] * float(PACKET_BYTES)

    def first_opportunity(self, t_ms: float) -> int:
        """The index, counted on across loops, of the first delivery opportunity at or after
        trace time ``t_ms``. The stamps are whole milliseconds, so the search key is
        ``ceil(offset)`` as an integer: a float key would make NumPy convert the whole
        array (millions of stamps for a fast 5G log) on every call."""
        loops, offset = divmod(t_ms, self.period_ms)
        key = np.int64(math.ceil(offset))
        return int(loops) * self.opportunities_ms.size + int(np.searchsorted(self.opportunities_ms, key, side="left"))

    def transfer_seconds(self, start_s: float, nbytes: float) -> float:
        """Seconds to deliver ``nbytes`` starting at ``start_s`` on an otherwise idle link:
        the frame takes the next ``ceil(nbytes / 1500)`` opportunities and is delivered at
        the end of the millisecond of the last one (so never in 0 s)."""
        start_ms = _require("start_s", start_s, positive=False) * 1000.0
        packets = math.ceil(_require("nbytes", nbytes, positive=True) / PACKET_BYTES)
        loops, index = divmod(self.first_opportunity(start_ms) + packets - 1, self.opportunities_ms.size)
        end_ms = loops * self.period_ms + self.opportunities_ms[index] + 1
        return (end_ms - start_ms) / 1000.0
