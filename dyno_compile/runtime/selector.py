"""DynO's run-time selector: per request, the configuration a policy prefers under the
live bandwidth, round-trip time and loads.

The search leaves a set of :class:`~dyno_compile.configs.Evaluation` whose measures
do not depend on the network, so each request only has to weigh them by the current
:class:`~dyno_compile.runtime.link.Conditions`. A configuration's stages take

* device: ``device_s × device_load``,
* uplink: ``bytes / bandwidth``,
* round trip: ``rtt`` (offloaded configurations only; device-only sends nothing),
* cloud: ``cloud_s × cloud_load``;

its latency is their sum and, with requests pipelined, its throughput is one over the
slowest of device, uplink and cloud (the round trip delays a request but does not
occupy a stage). A frame sent while the uplink still carries earlier ones
(``Conditions.uplink_backlog_s``) waits for them: an offloaded configuration's latency
also holds whatever of the backlog its device part does not cover. Without a backlog
that is a product of a fixed ``n × 4`` matrix of measures with four weights, so the
matrix is built once and a request costs one matrix-vector product and an argmin: a
few microseconds for a hundred candidates, measured faster than a Python loop over them
(``benchmarks/selector_decision.py``).

Which candidate is best is a :class:`Policy`, pluggable like an Optuna sampler; every
policy chooses only among the candidates within the accuracy budget. To keep noise from
making the selector flip between configurations of nearly equal merit, it keeps its
previous choice unless the policy's best scores better by more than ``switch_margin``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.packing.vocab import get_codec
from dyno_compile.runtime.link import Conditions

#: Default hysteresis: switch only for a score more than 10 % better than the current
#: choice's. Replaying the four real uplink traces (``benchmarks/selector_decision.py
#: --replay``), 10 % made 1.2-4.4x fewer switches than none, and mean latency came closer
#: to an oracle's that knows each second's throughput (0.2-3.3 % above it, against
#: 0.2-3.9 %); 20 % halved switches again but lost latency on the 3G traces.
DEFAULT_SWITCH_MARGIN = 0.1
#: Columns of the measure matrix; the round-trip column is 1 for offloaded configurations.
_COLUMNS = ("device_s", "bytes", "offloaded", "cloud_s")
#: The columns that are pipeline stages (the round trip delays but occupies no stage).
_STAGES = (0, 1, 3)


def is_device_only(evaluation: Evaluation) -> bool:
    """Nothing is sent and nothing runs in the cloud."""
    return evaluation.bytes == 0 and evaluation.cloud_s == 0


@dataclass(frozen=True)
class Decision:
    """The configuration chosen for one request, what the cost model predicts for it
    under the conditions it was chosen for, and why (``note``: empty, or what the policy
    had to give up, e.g. a latency bound no configuration meets). ``remainder_s``: the
    device's profiled time to finish the request alone from the activations it holds at
    the cut (:func:`local_remainders`; 0 for device-only, ``inf`` when unknown)."""

    evaluation: Evaluation
    latency_s: float
    throughput_rps: float
    policy: str
    note: str = ""
    remainder_s: float = math.inf


#: Requests a pipelining client keeps outstanding unless told otherwise.
DEFAULT_MAX_IN_FLIGHT = 8


def local_remainders(evaluations: Sequence[Evaluation]) -> dict[int, float]:
    """Per cut, the device's time to run the segments after it: what finishing an
    offloaded request locally (a hedge, a deadline, a failed transfer) costs. The rule,
    the same as the emulated device's fallback (:mod:`dyno_compile.evaluate.emulate`):
    device-only's ``device_s`` less the smallest ``device_s`` of a configuration at that
    cut. That configuration's time is the segments before the cut plus its packing, the
    cheapest at the cut (float32 with no codec is a copy), so the remainder is short of the
    true one by at most that packing. Empty when no device-only configuration is given:
    nothing says how long the whole network takes on the device."""
    device_only = [e.device_s for e in evaluations if is_device_only(e)]
    if not device_only:
        return {}
    whole = min(device_only)
    prefix: dict[int, float] = {}
    for e in evaluations:
        prefix[e.config.cut] = min(prefix.get(e.config.cut, math.inf), e.device_s)
    return {cut: max(whole - p, 0.0) for cut, p in prefix.items()}


class Candidates:
    """The configurations one selector may choose from, as the matrix of their measures
    (``measures``, n x 4 in :data:`_COLUMNS` order), its stage columns transposed
    (``stages``, 3 x n: NumPy reduces across rows far faster than along short ones), and
    as Python tuples (``rows``) for arithmetic on one candidate without array overhead;
    ``remainder_s``: each one's local remainder (:func:`local_remainders`, ``inf`` without
    a device-only candidate); ``offloaded``: which send a frame."""

    def __init__(self, evaluations: Sequence[Evaluation]) -> None:
        self.evaluations = tuple(evaluations)
        self.rows = [(e.device_s, e.bytes, 0.0 if is_device_only(e) else 1.0, e.cloud_s) for e in self.evaluations]
        self.measures = np.array(self.rows, dtype=float).reshape(-1, len(_COLUMNS))
        self.stages = np.ascontiguousarray(self.measures[:, _STAGES].T)
        self.cloud_s = self.measures[:, _COLUMNS.index("cloud_s")].copy()
        self.offloaded = self.measures[:, _COLUMNS.index("offloaded")] > 0
        remainders = local_remainders(self.evaluations)
        self.remainder_s = [
            0.0 if is_device_only(e) else remainders.get(e.config.cut, math.inf) for e in self.evaluations
        ]
        #: The whole network on the device (``inf`` without a device-only candidate).
        self.device_only_s = min((e.device_s for e in self.evaluations if is_device_only(e)), default=math.inf)

    def __len__(self) -> int:
        return len(self.evaluations)


def _weights(conditions: Conditions) -> tuple[float, float, float, float]:
    """What each measure column is multiplied by under ``conditions``: a column times its
    weight is that stage's time, the round trip's included."""
    return conditions.device_load, 1.0 / conditions.bandwidth, conditions.rtt_s, conditions.cloud_load


class Prediction:
    """Predicted latency and bottleneck stage time of every candidate under one set of
    conditions, each computed on first use (a policy ranking by latency alone never pays
    for the bottleneck)."""

    def __init__(self, candidates: Candidates, conditions: Conditions) -> None:
        self.candidates = candidates
        self.conditions = conditions
        self._weights = _weights(conditions)

    @cached_property
    def latency(self) -> np.ndarray:
        """Each candidate's latency if chosen now: :attr:`unqueued_latency` plus the wait
        for the uplink's backlog."""
        if self.conditions.uplink_backlog_s > 0:
            return self.unqueued_latency + np.where(self.candidates.offloaded, self.backlog_wait, 0.0)
        return self.unqueued_latency

    @cached_property
    def unqueued_latency(self) -> np.ndarray:
        """Each candidate's latency on an uplink with nothing ahead of its frame."""
        return self.candidates.measures @ np.array(self._weights)

    @cached_property
    def backlog_wait(self) -> np.ndarray:
        """How long each candidate's frame would wait for the uplink to clear once packed:
        the backlog its device part does not cover (read only for offloaded ones)."""
        device = self.candidates.measures[:, 0] * self._weights[0]
        return np.maximum(self.conditions.uplink_backlog_s - device, 0.0)

    @cached_property
    def bottleneck(self) -> np.ndarray:
        stage_weights = np.array([self._weights[j] for j in _STAGES])[:, None]
        return (self.candidates.stages * stage_weights).max(axis=0)

    def of(self, index: int) -> tuple[float, float]:
        """``(latency_s, throughput_rps)`` of one candidate."""
        row = self.candidates.rows[index]
        times = [m * w for m, w in zip(row, self._weights)]
        slowest = max(times[j] for j in _STAGES)
        wait = max(self.conditions.uplink_backlog_s - times[0], 0.0) if row[2] else 0.0
        return sum(times) + wait, (1.0 / slowest if slowest > 0 else math.inf)


def predict(evaluation: Evaluation, conditions: Conditions) -> tuple[float, float]:
    """``(latency_s, throughput_rps)`` the cost model predicts for one configuration."""
    return Prediction(Candidates([evaluation]), conditions).of(0)


class Policy(ABC):
    """How a selector ranks candidates. :meth:`admits` says, once, at construction, which
    candidates the policy may ever choose (fixed baselines narrow the set); per request,
    :meth:`scores` gives each admitted candidate a score, lower is better, ``inf`` for
    "not now". At least one score must be finite."""

    def admits(self, evaluation: Evaluation) -> bool:
        return True

    @abstractmethod
    def scores(self, prediction: Prediction) -> tuple[np.ndarray, str]:
        """Scores of ``prediction.candidates`` and a note for the decision ("" if none)."""

    @property
    def name(self) -> str:
        return type(self).__name__


class LowestLatency(Policy):
    """Least predicted latency: DynO's default objective."""

    def scores(self, prediction: Prediction) -> tuple[np.ndarray, str]:
        return prediction.latency, ""


class HighestThroughput(Policy):
    """Most requests per second when pipelined: the fastest slowest stage, where at most
    ``max_in_flight`` requests are outstanding — so, by Little's law, no faster than
    ``max_in_flight`` per latency. Without that bound a long round trip looks free and
    offloading wins on paper what it loses when the window is full (replays of
    resnet50 and mobilenet_v2 over LTE reached 0.77x device-only's rate). Given the
    uplink's backlog (``Conditions.uplink_backlog_s``), it shares work with the device:
    see :meth:`scores`.

    ``hedged``: the client finishes unanswered requests on the device whenever it cannot
    start a new one (``ReplaySettings.hedge``, pipelined): that is work sharing already,
    and preemptible, so the backlog rule of :meth:`scores` is off. A device-only request
    holds the device for the whole network while nobody feeds the uplink; with the rule on,
    resnet50 on a Pi-4-class device over 3G and LTE reached 0.89-0.93x the throughput of a
    plain image upload. Device-only is still chosen where it scores best (a link too slow
    or too far to help)."""

    def __init__(self, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, *, hedged: bool = False) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise InputError(f"HighestThroughput: max_in_flight must be an integer >= 1, got {max_in_flight!r}")
        self.max_in_flight = max_in_flight
        self.hedged = bool(hedged)

    def scores(self, prediction: Prediction) -> tuple[np.ndarray, str]:
        # Little's law on the latency without the backlog: pipelined, the frames ahead are
        # this stream's own, which the bottleneck stage already counts; adding their wait
        # too would count them twice.
        scores = np.maximum(prediction.bottleneck, prediction.unqueued_latency / self.max_in_flight)
        conditions, candidates = prediction.conditions, prediction.candidates
        if not self.hedged and conditions.uplink_backlog_s > candidates.device_only_s * conditions.device_load:
            # Work sharing: the uplink will not clear before the device could run a whole
            # request itself, so another frame only lengthens the queue while the device
            # would have time to spare: every offload is "not now", the device takes the
            # request, and the link stays busy meanwhile. Below that backlog a frame is
            # worth queueing (running locally would leave the link idle). The device never
            # waits on the link: throughput at least device-only's, plus what the link carries.
            scores = np.where(candidates.offloaded, math.inf, scores)
        return scores, ""


#: The share of an onloading bound kept free for what the estimates cannot foresee.
DEFAULT_HEADROOM = 0.3


class Onloading(Policy):
    """Least cloud compute whose predicted latency meets ``latency_bound_s``: as much of
    the network as the bound allows runs on the device, sparing the shared cloud. An SLO
    is met request by request, so the policy aims inside it: among the configurations
    predicted within ``(1 - headroom) x`` the bound when there are any (a configuration
    that only just meets its bound misses it whenever the uplink dips), else within the
    bound itself. When no configuration meets the bound it falls back to the lowest
    latency and says so.
    Given a hedged client's conditions (:meth:`~dyno_compile.runtime.observations.LinkObserver.conditions`)
    the check is stall-aware: a frame overdue lowers the bandwidth and lengthens the
    backlog the bound is checked against, until a reply comes."""

    def __init__(self, latency_bound_s: float, headroom: float = DEFAULT_HEADROOM) -> None:
        number = isinstance(latency_bound_s, (int, float)) and not isinstance(latency_bound_s, bool)
        bound = float(latency_bound_s) if number else math.nan
        if not (math.isfinite(bound) and bound > 0):
            raise InputError(f"Onloading: latency_bound_s must be a number of seconds > 0, got {latency_bound_s!r}")
        if isinstance(headroom, bool) or not isinstance(headroom, (int, float)) or not 0.0 <= headroom < 1.0:
            raise InputError(f"Onloading: headroom must be a fraction in [0, 1), got {headroom!r}")
        self.latency_bound_s = bound
        self.headroom = float(headroom)
        self._missed = f"no configuration meets the {1e3 * bound:.3g} ms bound; chose the lowest latency"

    def scores(self, prediction: Prediction) -> tuple[np.ndarray, str]:
        latency = prediction.latency
        meets = latency <= (1.0 - self.headroom) * self.latency_bound_s
        if not meets.any():
            meets = latency <= self.latency_bound_s
        if not meets.any():
            return latency, self._missed
        return np.where(meets, prediction.candidates.cloud_s, math.inf), ""

    @property
    def name(self) -> str:
        return f"Onloading({1e3 * self.latency_bound_s:.3g} ms)"


class _FixedBaseline(LowestLatency):
    """A comparison baseline: the lowest latency among a fixed kind of configuration."""


class DeviceOnly(_FixedBaseline):
    """Everything on the device; nothing is sent."""

    def admits(self, evaluation: Evaluation) -> bool:
        return is_device_only(evaluation)


class CloudOnly(_FixedBaseline):
    """Upload the input as it is (cut 0, float32, no codec); everything runs in the cloud."""

    def admits(self, evaluation: Evaluation) -> bool:
        c = evaluation.config
        return c.cut == 0 and c.bits == "float32" and c.codec == "none"


class Neurosurgeon(_FixedBaseline):
    """Neurosurgeon (Kang et al., ASPLOS 2017): the best cut for latency sending raw
    float32 tensors (no quantisation, no codec); device-only is one of its cuts."""

    def admits(self, evaluation: Evaluation) -> bool:
        c = evaluation.config
        return is_device_only(evaluation) or (c.bits == "float32" and c.codec == "none")


def is_lossy(evaluation: Evaluation) -> bool:
    """Sent through a lossy codec (an image codec's upload of the input): the baselines
    that quantise to a fixed width and code losslessly do not admit it."""
    return get_codec(evaluation.config.codec).lossy


class Fixed8Bit(_FixedBaseline):
    """The best cut for latency at a fixed 8-bit width (any granularity, layout and
    lossless codec), or device-only: what choosing the width per request adds over fixing it."""

    def admits(self, evaluation: Evaluation) -> bool:
        return is_device_only(evaluation) or (evaluation.config.bits == "8" and not is_lossy(evaluation))


class Jalad(_FixedBaseline):
    """JALAD (Li et al., ICPADS 2018): the best cut for latency with the tensor quantised
    to a fixed 8 bits and entropy-coded (a lossless codec), or device-only."""

    def admits(self, evaluation: Evaluation) -> bool:
        c = evaluation.config
        return is_device_only(evaluation) or (c.bits == "8" and c.codec != "none" and not is_lossy(evaluation))


class ImageUpload(_FixedBaseline):
    """What a phone app does: upload the input through an image codec (JPEG, WebP, AVIF,
    JPEG XL at a searched quality) and run everything in the cloud."""

    def admits(self, evaluation: Evaluation) -> bool:
        return evaluation.config.cut == 0 and is_lossy(evaluation)


class Pinned(_FixedBaseline):
    """One configuration, always: to measure it live (the evaluation's replay check, the
    loopback accuracy test) or to hold a choice made elsewhere."""

    def __init__(self, config: Config | Mapping[str, Any]) -> None:
        self.config = config if isinstance(config, Config) else Config.from_dict(dict(config))

    def admits(self, evaluation: Evaluation) -> bool:
        return evaluation.config == self.config

    @property
    def name(self) -> str:
        return f"Pinned({self.config.label})"


#: Policies by the names a command line or a configuration file uses.
POLICIES: dict[str, type[Policy]] = {
    "lowest-latency": LowestLatency,
    "highest-throughput": HighestThroughput,
    "onloading": Onloading,
    "device-only": DeviceOnly,
    "cloud-only": CloudOnly,
    "neurosurgeon": Neurosurgeon,
    "fixed-8bit": Fixed8Bit,
    "jalad": Jalad,
    "image-upload": ImageUpload,
    "pinned": Pinned,
}


def make_policy(name: str, **options: Any) -> Policy:
    """A policy by name (:data:`POLICIES`) with its options, e.g.
    ``make_policy("onloading", latency_bound_s=0.1)``."""
    if name not in POLICIES:
        raise InputError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    try:
        return POLICIES[name](**options)
    except TypeError as e:
        raise InputError(f"policy {name!r}: bad options {sorted(options)}: {e}") from None


class Selector:
    """Chooses a configuration per request from ``candidates`` under ``policy``.

    Only candidates within ``accuracy_budget`` points of ``accuracy_baseline`` (a
    fraction, as :class:`Evaluation` accuracies are) are considered, the same rule as the
    search's (``dyno_compile.search.pareto.Objectives``). The fixed baselines need
    configurations the Pareto set may lack (cut 0 at float32 is usually dominated): give
    them all the search's evaluations (``search/evaluations.json`` in the artifact).
    A selector remembers its last choice (see ``switch_margin``), so use one per stream
    of requests.
    """

    def __init__(
        self,
        candidates: Sequence[Evaluation],
        policy: Policy,
        *,
        accuracy_baseline: float,
        accuracy_budget: float,
        switch_margin: float = DEFAULT_SWITCH_MARGIN,
    ) -> None:
        if not isinstance(policy, Policy):
            raise InputError(f"policy must be a Policy (see make_policy), got {policy!r}")
        if not (isinstance(switch_margin, (int, float)) and 0.0 <= switch_margin < 1.0):
            raise InputError(f"switch_margin must be a fraction in [0, 1), got {switch_margin!r}")
        self.policy = policy
        self.switch_margin = float(switch_margin)
        within = _within_budget(candidates, accuracy_baseline, accuracy_budget)
        admitted = [e for e in within if policy.admits(e)]
        if not admitted:
            raise InputError(
                f"policy {policy.name} admits none of the {len(within)} configurations within the "
                "accuracy budget; fixed baselines need all the search's evaluations, not only the "
                "Pareto set"
            )
        self.candidates = Candidates(admitted)
        self._previous: int | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], policy: Policy, **options: Any) -> Selector:
        """A selector over an artifact's Pareto set, with its baseline and budget."""
        search = manifest.get("search")
        if not isinstance(search, Mapping):
            raise InputError(
                "the artifact has no search results (manifest['search']); run "
                "`python -m dyno_compile search` on it first"
            )
        try:
            pareto = [Evaluation.from_dict(d) for d in search["pareto"]]
            baseline, budget = search["baseline_accuracy"], search["accuracy_budget"]
        except (KeyError, TypeError) as e:
            raise InputError(f"the artifact's search results are incomplete or malformed: {e!r}") from None
        return cls(pareto, policy, accuracy_baseline=baseline, accuracy_budget=budget, **options)

    def select(self, conditions: Conditions) -> Decision:
        prediction = Prediction(self.candidates, conditions)
        scores, note = self.policy.scores(prediction)
        index = self._keep_or_switch(scores)
        return Decision(
            self.candidates.evaluations[index],
            *prediction.of(index),
            self.policy.name,
            note,
            self.candidates.remainder_s[index],
        )

    def _keep_or_switch(self, scores: np.ndarray) -> int:
        """The best-scoring candidate, unless the previous choice is still allowed and
        within ``switch_margin`` of it."""
        best = int(scores.argmin())
        if not math.isfinite(scores[best]):
            raise InputError(f"policy {self.policy.name} scored every candidate inf; a policy must leave one")
        previous = self._previous
        if previous is not None and scores[previous] <= scores[best] * (1.0 + self.switch_margin):
            best = previous
        self._previous = best
        return best


def _within_budget(candidates: Sequence[Evaluation], baseline: float, budget: float) -> list[Evaluation]:
    """Candidates losing at most ``budget`` points; the loss is rounded to 1e-9 as the
    search rounds it, so a loss of exactly the budget counts as within it."""
    if not candidates:
        raise InputError("the selector needs at least one candidate configuration")
    if not (isinstance(baseline, (int, float)) and 0.0 <= baseline <= 1.0):
        raise InputError(f"accuracy_baseline is a fraction 0..1, got {baseline!r}")
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0.0):
        raise InputError(f"accuracy_budget is a loss in percentage points >= 0, got {budget!r}")
    for e in candidates:
        _check_measures(e)
    within = [e for e in candidates if round((baseline - e.accuracy) * 100.0, 9) <= budget]
    if not within:
        best = max(e.accuracy for e in candidates)
        raise InputError(
            f"no candidate is within the accuracy budget of {budget} points: the best loses "
            f"{(baseline - best) * 100.0:.3g} points"
        )
    return within


def _check_measures(evaluation: Evaluation) -> None:
    """Measures a cost model can use: finite, non-negative, and some time spent somewhere."""
    if not isinstance(evaluation, Evaluation):
        raise InputError(f"candidates must be Evaluation objects (Evaluation.from_dict), got {evaluation!r}")
    values = (evaluation.device_s, evaluation.cloud_s, evaluation.bytes)
    if not all(math.isfinite(v) and v >= 0 for v in values) or evaluation.device_s + evaluation.cloud_s == 0:
        raise InputError(
            f"candidate {evaluation!r}: device_s, cloud_s and bytes must be finite and >= 0, with some time on one side"
        )
