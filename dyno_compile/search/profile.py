"""Time every function of an artifact's library, and add up what one configuration runs.

The search ranks configurations by device time and cloud time, and a configuration only
chooses *which* functions run (the segments before/after the cut and one pack/unpack
kernel per crossing tensor), so each function is timed once and every configuration's
times are sums of those (:func:`config_times`) — no configuration is ever run end to end.

A :class:`LibraryProfile` always carries where its figures came from (``source``):
``"measured:host"`` (timed here), ``"measured:rpc:<key>"`` (timed on a remote device,
:mod:`dyno_compile.search.rpc`), ``"emulated:rpc:<key>"`` (timed on an emulated board:
correct code, meaningless times), ``"estimated:roofline:<target>"`` or, for the named
boards, ``"estimated:anchored:<target>"`` (anchored on published latencies)
(:mod:`dyno_compile.search.estimate`). The label is required to build one, is part of
its ``str``/``repr`` and of its stored dict, so no figure can be shown or saved unlabelled.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dyno_compile.configs import Config
from dyno_compile.errors import DynoError, DynoWarning

if TYPE_CHECKING:
    from dyno_compile.artifact.load import Artifact
    from dyno_compile.targets.module import TensorSpec
    from dyno_compile.targets.runner import ModuleRunner

SIDES = ("device", "cloud")
_SOURCE = re.compile(r"^(measured:(rpc:\S+|[\w.-]+)|emulated:rpc:\S+|estimated:(roofline|anchored):[\w.-]+)$")

#: Defaults sized so one pass over the ~47 functions of a resnet20 library takes 5-10 s on 2 cores: each
#: function runs for ``repeat`` windows of at least ``min_repeat_ms`` plus a warm-up call.
#: A 10 ms window still holds 15+ calls of resnet20's largest segment; what moves the
#: figures on a shared machine is other load, which the median of 5 windows resists and
#: longer windows do not (measured here, 3 alternating rounds of the device library under
#: load: 25 ms windows doubled the cost and left the round-to-round spread no smaller).
REPEAT = 5
MIN_REPEAT_MS = 10
#: Other load that comes and goes (a compile, a test run) can slow a whole pass over the
#: functions, and TVM's spinning thread pool makes it far worse than the load itself (a
#: device profile taken beside another TVM process read ~400x slow here). So the library
#: is timed in passes until two in a row agree on the total within ``AGREE``, at most
#: ``MAX_PASSES``, and each function keeps its fastest pass — load only ever slows a call.
#: Passes that never agree still give a profile (a build must not throw its compiled work
#: away because a neighbour was busy), marked unsteady with the passes' spread, in its
#: label and stored dict, with a :class:`UnsteadyProfile` warning.
AGREE = 1.25
MAX_PASSES = 6


class ProfileError(DynoError):
    """A profile is missing a function, mislabelled, or does not fit the artifact or configuration."""


class UnsteadyProfile(DynoWarning):
    """A library's timing passes never agreed: its figures were taken under other load."""


def check_side(side: str) -> None:
    if side not in SIDES:
        raise ProfileError(f"side must be one of {SIDES}, got {side!r}")


def tvm_message(exc: BaseException) -> str:
    """The line of a TVM error that says what failed (its text ends with it, after a traceback)."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


@dataclass(frozen=True)
class LibraryProfile:
    """Seconds per call of each function of one side's library for one target (the
    fastest pass of each function, each pass the median of its windows).

    ``source`` says how the figures were obtained (see the module docstring) and is
    checked on construction. Measurements record the timing parameters (``repeat``
    medians of runs lasting at least ``min_repeat_ms``); estimates record instead the
    source of the measurement they were calibrated with (``calibration``).
    """

    side: str
    target: str
    source: str
    seconds: dict[str, float]
    repeat: int | None = None
    min_repeat_ms: int | None = None
    calibration: str | None = None
    #: Slowest over fastest total of the timing passes (1.0 when there was one).
    spread: float | None = None
    #: False when no two passes in a row agreed within ``AGREE``: taken under other load.
    steady: bool = True

    def __post_init__(self) -> None:
        check_side(self.side)
        if not _SOURCE.match(self.source):
            raise ProfileError(
                f"profile source {self.source!r} is not 'measured:<target>', 'measured:rpc:<key>', "
                "'emulated:rpc:<key>' or 'estimated:roofline|anchored:<target>'; every figure must say "
                "where it came from"
            )
        bad = {f: s for f, s in self.seconds.items() if not (np.isfinite(s) and s > 0)}
        if bad:
            raise ProfileError(f"{self.label}: non-positive or non-finite times {bad}")
        object.__setattr__(self, "seconds", {f: float(s) for f, s in self.seconds.items()})

    @property
    def label(self) -> str:
        unsteady = "" if self.steady else f", unsteady: timing passes spread {self.spread or 0:.2f}x"
        return f"{self.side}/{self.target} [{self.source}{unsteady}]"

    @property
    def estimated(self) -> bool:
        return self.source.startswith("estimated:")

    @property
    def emulated(self) -> bool:
        return self.source.startswith("emulated:")

    def time(self, function: str) -> float:
        """Seconds per call of ``function``; a clear error when it was not profiled."""
        try:
            return self.seconds[function]
        except KeyError:
            raise ProfileError(
                f"{self.label} has no time for {function!r}; it has {len(self.seconds)} "
                f"functions ({', '.join(sorted(self.seconds)[:5])}, ...)"
            ) from None

    def total(self, functions: Iterable[str]) -> float:
        return sum(self.time(f) for f in functions)

    def __str__(self) -> str:
        return f"{self.label}: {len(self.seconds)} functions, {self.total(self.seconds) * 1e3:.3f} ms in all"

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "target": self.target,
            "source": self.source,
            "seconds": dict(self.seconds),
            "repeat": self.repeat,
            "min_repeat_ms": self.min_repeat_ms,
            "calibration": self.calibration,
            "spread": self.spread,
            "steady": self.steady,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LibraryProfile:
        missing = [k for k in ("side", "target", "source", "seconds") if k not in d]
        if missing:
            raise ProfileError(f"stored profile lacks {', '.join(missing)}")
        return cls(
            str(d["side"]),
            str(d["target"]),
            str(d["source"]),
            dict(d["seconds"]),
            d.get("repeat"),
            d.get("min_repeat_ms"),
            d.get("calibration"),
            d.get("spread"),
            bool(d.get("steady", True)),
        )


def input_value(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """A valid input for ``spec``, so timed kernels do their real work.

    Integer inputs are packed bit streams: every byte value decodes to valid codes at any
    width. A ``*.range`` input (from the pack pass) holds ``lo`` in row 0 and the scale in
    row 1; a positive scale makes dequantisation produce ordinary finite values. Anything
    else is activations: standard normal values.
    """
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=spec.shape, dtype=dtype)
    if spec.name.endswith(".range"):
        rows = np.empty(spec.shape, dtype)
        rows[0], rows[1] = -1.0, 2.0**-8
        return rows
    return rng.standard_normal(spec.shape).astype(dtype)


def profile_runner(
    runner: ModuleRunner,
    side: str,
    source: str,
    *,
    repeat: int = REPEAT,
    min_repeat_ms: int = MIN_REPEAT_MS,
    seed: int = 0,
    skip: frozenset[str] = frozenset(),
) -> LibraryProfile:
    """Profile every function of the runner's module (segments, pack_*, unpack_*) but those
    in ``skip`` with TVM's time evaluator on the runner's device — local or remote alike, so
    that a local and an RPC profile are timed the same way."""
    check_side(side)
    if repeat < 1 or min_repeat_ms < 0:
        raise ProfileError(f"repeat must be >= 1 and min_repeat_ms >= 0, got {repeat} and {min_repeat_ms}")
    rng = np.random.default_rng(seed)
    functions = [f for f in runner.module.functions.values() if f.name not in skip]
    inputs = {f.name: [input_value(s, rng) for s in f.inputs] for f in functions}
    passes: list[dict[str, float]] = []
    while len(passes) < MAX_PASSES and (len(passes) < 2 or not _agree(passes[-2], passes[-1])):
        passes.append(
            {
                name: float(np.median(runner.time(name, args, repeat=repeat, min_repeat_ms=min_repeat_ms)))
                for name, args in inputs.items()
            }
        )
    totals = [sum(p.values()) for p in passes]
    spread = max(totals) / min(totals) if min(totals) > 0 else float("inf")
    steady = len(passes) < 2 or _agree(passes[-2], passes[-1])
    profile = LibraryProfile(
        side,
        runner.module.target.name,
        source,
        {name: min(p[name] for p in passes) for name in inputs},
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
        spread=spread,
        steady=steady,
    )
    if not steady:
        warnings.warn(
            UnsteadyProfile(
                f"{profile.label}: {len(passes)} timing passes never agreed within {AGREE}x (totals "
                f"{', '.join(f'{t * 1e3:.3f}' for t in totals)} ms); each function keeps its fastest "
                "pass, but other load moved the figures: profile again when the machine is quiet"
            ),
            stacklevel=2,
        )
    return profile


def _agree(a: dict[str, float], b: dict[str, float]) -> bool:
    ta, tb = sum(a.values()), sum(b.values())
    return max(ta, tb) <= AGREE * min(ta, tb)


def profile_library(
    artifact: Artifact, side: str, target: str = "host", *, repeat: int = REPEAT, min_repeat_ms: int = MIN_REPEAT_MS
) -> LibraryProfile:
    """Time every function of the artifact's ``side`` library for ``target`` on this machine
    (``target`` must run here: the host, or a GPU target where a GPU is present)."""
    check_side(side)
    try:
        runner = artifact.runner(side, target)
    except DynoError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM's loader: a cross build, or no GPU driver here
        raise ProfileError(
            f"{artifact.root}: the {side} library for {target!r} does not load on this machine "
            f"({tvm_message(exc)}); time it on the device with "
            "search.rpc.profile_library_rpc, or estimate it with search.estimate.estimate_library"
        ) from None
    # The batched cloud segments serve requests that arrive together; a configuration's
    # per-request times never use them, so the search does not pay to time them.
    batched = frozenset(s["batched_function"] for s in artifact.segments if "batched_function" in s)
    return profile_runner(
        runner, side, f"measured:{runner.module.target.name}", repeat=repeat, min_repeat_ms=min_repeat_ms, skip=batched
    )


def config_functions(artifact: Artifact, config: Config) -> tuple[list[str], list[str]]:
    """The functions the device and the cloud run for ``config``, in order.

    Device: the segments before the cut, then the pack kernel of each crossing tensor;
    cloud: the matching unpack kernels, then the segments after the cut. ``float32``
    sends the tensors as they are (no kernels); the device-only cut sends nothing.
    """
    cut = artifact.cut(config.cut)
    segments = artifact.segments
    device = [segments[i]["function"] for i in cut["device_segments"]]
    cloud = [segments[i]["function"] for i in cut["cloud_segments"]]
    if cut["kind"] == "device-only" or config.bits == "float32":
        return device, cloud
    try:
        kernels = cut["kernels"][config.bits]
    except KeyError:
        raise ProfileError(
            f"{artifact.root}: cut {config.cut} has no kernels for bits {config.bits!r}; built: "
            f"float32, {', '.join(cut['kernels'])}"
        ) from None
    return device + [k["pack"] for k in kernels], [k["unpack"] for k in kernels] + cloud


def config_times(
    artifact: Artifact, device_profile: LibraryProfile, cloud_profile: LibraryProfile, config: Config
) -> tuple[float, float, dict[str, str]]:
    """``(device_s, cloud_s, sources)`` of ``config``: sums of the profiled functions it runs
    (:func:`config_functions`); ``sources`` labels each figure as ``Evaluation`` expects."""
    for profile, side in ((device_profile, "device"), (cloud_profile, "cloud")):
        if profile.side != side:
            raise ProfileError(f"expected a {side} profile, got {profile.label}")
    device, cloud = config_functions(artifact, config)
    return (
        device_profile.total(device),
        cloud_profile.total(cloud),
        {"device_s": device_profile.source, "cloud_s": cloud_profile.source},
    )
