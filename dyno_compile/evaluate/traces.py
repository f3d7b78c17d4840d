"""The real network traces the evaluation replays, read as :class:`UplinkTrace` and grouped
into the issue's three sets (3G, LTE, 5G).

Two formats are read (``data_root()/traces``, described in the data README):

* mahimahi traces (``mahimahi_cellular/*.up``): one integer millisecond timestamp per line,
  one 1500-byte delivery opportunity each. Read as :meth:`UplinkTrace.read` reads them.
* throughput logs (``norway_hsdpa_3g/``, ``lumos5g_verizon/4G|5G/``): ``time_s rate_Mbit/s``
  per line, tab- or space-separated. Each sample's rate holds over the interval from the
  previous sample to its own timestamp (how the Norway logs were computed: bytes received
  since the previous sample over the time elapsed; the convention Pensieve replays them
  with). The first sample only marks time 0, since the interval before it is unknown;
  the period is the time from the first sample to the last, rounded up to whole
  milliseconds. Within an interval the rate's bytes arrive at a constant pace, and a
  1500-byte opportunity is placed in the millisecond in which the running total of bytes
  reaches each further 1500 bytes. So every interval carries ``rate x duration`` bytes to
  within one packet (the fraction of a packet carries on into the next interval), a rate
  of 0 gives no opportunities, and one period holds the log's total to within one packet.
  A timestamp repeated from the line before gives its sample no time and no bytes: the
  Lumos 4G logs repeat a second 31 times (in 30 logs, 20 of which also skip a second
  elsewhere: the logging clock's round-off), and the samples beside it cover that time.

Only the mahimahi ``.up`` files measure uplink capacity. The Norway and Lumos logs measure
downlink throughput; here they stand in as plausible uplink processes (each trace carries
its ``direction`` label so every result can say so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dyno_compile.datasets.location import data_root
from dyno_compile.errors import InputError
from dyno_compile.runtime.link import PACKET_BYTES, UplinkTrace

__all__ = [
    "DOWNLINK",
    "TRACE_SETS",
    "UPLINK",
    "LabelledTrace",
    "TraceSet",
    "TraceSource",
    "mean_rate",
    "read_trace",
    "trace_files",
    "trace_set",
    "traces_dir",
]

#: Direction labels of a trace.
UPLINK = "uplink (measured)"
DOWNLINK = "downlink used as uplink"
#: Bytes per millisecond in one Mbit/s.
_BYTES_PER_MS_PER_MBIT = 1e6 / 8 / 1000


# --- reading one trace -------------------------------------------------------------------


def read_trace(path: str | Path) -> UplinkTrace:
    """A mahimahi trace or a ``time_s rate_Mbit/s`` throughput log as an :class:`UplinkTrace`
    named ``folder/file``; unreadable, empty or malformed files raise InputError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"trace {path} cannot be read: {e}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"trace {path} is empty")
    name = f"{path.parent.name}/{path.name}"
    columns = len(lines[0].split())
    if columns == 1:
        if len(text.split()) != len(lines):
            raise InputError(
                f"trace {path}: a mahimahi trace has one integer millisecond timestamp per line; "
                "some lines hold more than one field"
            )
        return replace(UplinkTrace.read(path), name=name)
    if columns == 2:
        times, rates = _parse_log(path, lines)
        return log_to_trace(name, times, rates, source=str(path))
    raise InputError(
        f"trace {path}: line 1 has {columns} fields; expected one integer millisecond timestamp "
        "(mahimahi) or 'time_s rate_Mbit/s' (a throughput log)"
    )


def _parse_log(path: Path, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            rows.append((float(fields[0]), float(fields[1])))
        except ValueError:
            raise InputError(
                f"trace {path}: line {lineno} {line.strip()!r} is not 'time_s rate_Mbit/s' "
                "(two numbers, tab- or space-separated)"
            ) from None
    table = np.array(rows, dtype=np.float64)
    return table[:, 0], table[:, 1]


def log_to_trace(name: str, times_s: np.ndarray, rates_mbit: np.ndarray, *, source: str = "") -> UplinkTrace:
    """A throughput log (sample times in s, rates in Mbit/s) as delivery opportunities; see
    the module docstring for the convention."""
    where = f"trace {source or name}"
    t = np.asarray(times_s, dtype=np.float64)
    r = np.asarray(rates_mbit, dtype=np.float64)
    if t.ndim != 1 or t.shape != r.shape:
        raise InputError(f"{where}: times and rates must be two 1-D arrays of one length, got {t.shape} and {r.shape}")
    if t.size < 2:
        raise InputError(f"{where}: a throughput log needs at least two samples (one interval), got {t.size}")
    if not (np.isfinite(t).all() and np.isfinite(r).all()):
        raise InputError(f"{where}: times and rates must be finite numbers")
    if (r < 0).any():
        raise InputError(f"{where}: rates must be >= 0 Mbit/s, found {r.min()}")
    steps = np.diff(t)
    if (steps < 0).any():
        i = int(np.argmax(steps < 0)) + 1
        raise InputError(f"{where}: sample times must not decrease; sample {i + 1} ({t[i]} s) comes after {t[i - 1]} s")
    t_ms = (t - t[0]) * 1000.0
    period = math.ceil(t_ms[-1] - 1e-6)  # a float a hair above a whole ms is that ms
    if period < 1:
        raise InputError(f"{where}: the samples span no time ({t[0]} s to {t[-1]} s)")
    # cumulative bytes at each sample time; sample i's rate holds over (t[i-1], t[i]]
    cum = np.concatenate([[0.0], np.cumsum(r[1:] * steps * 1000.0 * _BYTES_PER_MS_PER_MBIT)])
    at_ms = np.interp(np.arange(period + 1, dtype=np.float64), t_ms, cum)
    packets = np.floor(at_ms / PACKET_BYTES).astype(np.int64)
    per_ms = np.diff(packets)  # opportunities whose 1500th byte arrives within (m, m + 1] ms
    if per_ms.sum() == 0:
        raise InputError(
            f"{where}: the log carries less than one {PACKET_BYTES}-byte packet "
            f"({cum[-1]:.0f} bytes); an uplink needs some capacity"
        )
    stamps = np.repeat(np.arange(period, dtype=np.int64), per_ms)
    return UplinkTrace(name, stamps, period)


def mean_rate(trace: UplinkTrace) -> float:
    """Mean capacity over one period of ``trace``, in bytes/s."""
    return trace.opportunities_ms.size * float(PACKET_BYTES) / (trace.period_ms / 1000.0)


# --- the three sets ----------------------------------------------------------------------


@dataclass(frozen=True)
class TraceSource:
    """Files ``glob`` in ``folder`` (relative to :func:`traces_dir`), all of one direction."""

    folder: str
    glob: str
    direction: str


@dataclass(frozen=True)
class TraceSet:
    name: str
    description: str
    sources: tuple[TraceSource, ...]


_MAHIMAHI = "mahimahi_cellular"
_DOWNLINK_NOTE = "downlink throughput used as a plausible uplink process"

#: The issue's three trace sets. Measured uplinks come first in each.
# fmt: off
TRACE_SETS: dict[str, TraceSet] = {
    s.name: s for s in (
        TraceSet("3g", "3G: mahimahi T-Mobile UMTS and Verizon EV-DO uplinks (measured, US, driving); "
                       f"Norway HSDPA logs (buses, trams, ferries, metro, trains: {_DOWNLINK_NOTE})",
                 (TraceSource(_MAHIMAHI, "TMobile-UMTS-driving.up", UPLINK),
                  TraceSource(_MAHIMAHI, "Verizon-EVDO-driving.up", UPLINK),
                  TraceSource("norway_hsdpa_3g", "norway_*", DOWNLINK))),
        TraceSet("lte", "LTE: mahimahi AT&T and Verizon LTE uplinks (measured, US, driving); "
                        f"Lumos5G Verizon 4G logs (walking and driving: {_DOWNLINK_NOTE})",
                 (TraceSource(_MAHIMAHI, "ATT-LTE-driving-2016.up", UPLINK),
                  TraceSource(_MAHIMAHI, "Verizon-LTE-short.up", UPLINK),
                  TraceSource("lumos5g_verizon/4G", "4g_trace_*", DOWNLINK))),
        TraceSet("5g", f"5G: Lumos5G Verizon mmWave logs (walking and driving: {_DOWNLINK_NOTE}); "
                       "no measured 5G uplink is available",
                 (TraceSource("lumos5g_verizon/5G", "5g_trace_*", DOWNLINK),)),
    )
}
# fmt: on


@dataclass(frozen=True, eq=False)
class LabelledTrace:
    """A trace with the set it belongs to, its direction label and the file it came from."""

    trace: UplinkTrace
    set: str
    direction: str
    source: Path

    @property
    def name(self) -> str:
        return self.trace.name


def traces_dir() -> Path:
    folder = data_root() / "traces"
    if not folder.is_dir():
        raise InputError(f"trace folder {folder} does not exist; set DYNO_DATA to the folder holding traces/")
    return folder


def _set(name: str) -> TraceSet:
    try:
        return TRACE_SETS[name]
    except KeyError:
        raise InputError(f"unknown trace set {name!r}; known sets: {sorted(TRACE_SETS)}") from None


def trace_files(name: str) -> list[tuple[Path, str]]:
    """Every file of set ``name`` with its direction, measured uplinks first, each source in
    name order; a source that matches no file raises InputError (missing data)."""
    root = traces_dir()
    files: list[tuple[Path, str]] = []
    for source in _set(name).sources:
        matched = sorted(p for p in (root / source.folder).glob(source.glob) if p.is_file())
        if not matched:
            raise InputError(f"trace set {name!r}: no file matches {source.folder}/{source.glob} under {root}")
        files.extend((p, source.direction) for p in matched)
    files.sort(key=lambda f: f[1] != UPLINK)  # stable: uplinks first, order kept otherwise
    return files


def trace_set(name: str, *, limit: int | None = None, seed: int = 0) -> list[LabelledTrace]:
    """The traces of set ``name``, read: all of them, or ``limit`` of them chosen
    deterministically: the measured uplinks first (in order), then a sample drawn with
    ``seed`` from the downlink logs (in file-name order)."""
    files = trace_files(name)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InputError(f"limit must be a positive integer or None, got {limit!r}")
        uplinks = [f for f in files if f[1] == UPLINK][:limit]
        others = [f for f in files if f[1] != UPLINK]
        take = min(limit - len(uplinks), len(others))
        picked = sorted(np.random.default_rng(seed).choice(len(others), size=take, replace=False).tolist())
        files = uplinks + [others[i] for i in picked]
    return [LabelledTrace(read_trace(path), name, direction, path) for path, direction in files]
