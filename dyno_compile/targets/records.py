"""MetaSchedule tuning records: the directory :func:`dyno_compile.targets.tune.tune`
writes, read, checked and applied to a build (:func:`apply_records`).

A records directory holds MetaSchedule's JSON database (``database_workload.json``,
``database_tuning_record.json``), ``dyno_tuning.json`` (the target the records were
measured on, the TVM version, the tuning-free and best-record times per function that
decide which records apply, and a history of runs) and MetaSchedule's logs (``logs/``).
An artifact ships :data:`RECORD_FILES`; :func:`records_fingerprint` digests them and
lists the workload hashes, and :func:`match_records` tells, function by function, which
functions of a module have records.

Records are keyed by the structural hash of a fused ``PrimFunc`` (its *workload*) and
apply only to functions that hash the same: records tuned with ``bind_weights=True`` do
not match a ``bind_weights=False`` build (its weight-layout functions differ), and a
changed lowering leaves the changed functions untuned. A record applies only where it
beat the tuning-free schedule when it was tuned (:func:`winners`), so a small tuning
budget does not make a build slower than the tuning-free one.

The build (:mod:`dyno_compile.targets.compile`) and the tuner both import this module;
it imports neither.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyno_compile.targets.errors import TargetError
from dyno_compile.targets.schedule_common import is_scheduled
from dyno_compile.targets.spec import TargetSpec, get_target

__all__ = [
    "DATABASE_FILES",
    "META_FILE",
    "MODULE_EQUALITY",
    "RECORD_FILE",
    "RECORD_FILES",
    "RecordsMatch",
    "TUNED_ATTR",
    "TuneError",
    "WORKLOAD_FILE",
    "apply_records",
    "best_per_workload",
    "check_target",
    "has_tables",
    "match_records",
    "module_workload_hash",
    "open_database",
    "read_meta",
    "read_tables",
    "record_us",
    "records_fingerprint",
    "target_dict",
    "tuned_functions",
    "winners",
    "write_meta",
]

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
#: The two files of MetaSchedule's JSON database.
DATABASE_FILES = (WORKLOAD_FILE, RECORD_FILE)
#: Target, TVM version, tuning-free times and tuning history of a records directory.
META_FILE = "dyno_tuning.json"
#: What an artifact ships (``logs/`` is not needed to apply records).
RECORD_FILES = (*DATABASE_FILES, META_FILE)
#: PrimFunc attribute set on the functions whose schedule ``apply_records`` took from a record.
TUNED_ATTR = "dyno.tuned"

#: How MetaSchedule compares workloads (the database's key).
MODULE_EQUALITY = "structural"
#: Target fields that do not change generated code (ignored when matching targets).
_IGNORED_TARGET_KEYS = {"host", "tag"}


class TuneError(TargetError):
    """Tuning records are missing, corrupt, or were measured on another target."""


@dataclass
class RecordsMatch:
    """Which fused functions of a module have records (:func:`match_records`)."""

    #: Functions with a record that beat the tuning-free schedule (``apply_records`` applies those).
    tuned: list[str]
    #: Functions with records no faster than the tuning-free schedule.
    slower: list[str]
    #: Functions with no record at all.
    untuned: list[str]
    #: Workloads in the database that no function of the module matches.
    unused_workloads: int

    @property
    def complete(self) -> bool:
        """Every function was tuned (whether or not its record won)."""
        return not self.untuned


def _better(best: float | None, baseline: float | None) -> bool:
    return best is not None and (baseline is None or best < baseline)


def winners(best: dict[str, float], meta: dict[str, Any]) -> dict[str, bool]:
    """Workload hash -> whether its best record beats the tuning-free schedule.

    Decided by the paired measurement ``tune`` makes at the end of a run (tuning-free
    schedule and best record timed side by side, warm) while the database's best is still
    the record then measured; otherwise by the best record's time against the tuning-free
    time measured before tuning (noisier: they were timed minutes apart)."""
    paired = meta.get("paired", {})
    baseline = meta.get("baseline_us", {})
    out = {}
    for h, us in best.items():
        p = paired.get(h)
        if p and p.get("db_best_us") is not None and abs(p["db_best_us"] - us) <= 1e-9 * max(us, 1.0):
            out[h] = p["record_us"] is not None and (
                p["tuning_free_us"] is None or p["record_us"] < p["tuning_free_us"]
            )
        else:
            out[h] = _better(us, baseline.get(h))
    return out


def _prim_funcs(mod) -> list[tuple[Any, Any]]:
    from tvm import tirx

    return [(gv, f) for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]


def module_workload_hash(wmod) -> str:
    """The structural hash MetaSchedule's database keys a one-function module by."""
    from tvm.s_tir import meta_schedule as ms

    return str(ms.database.Workload(wmod).as_json()[0])


def _workload_hash(func) -> str:
    """The workload hash of a fused function (normalised as ``extract_tasks`` does)."""
    import tvm

    return module_workload_hash(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))


def tuned_functions(mod) -> list[str]:
    """Names of the functions of ``mod`` whose schedule :func:`apply_records` took from a record."""
    return [gv.name_hint for gv, f in _prim_funcs(mod) if f.attrs is not None and int(f.attrs.get(TUNED_ATTR, 0))]


# --------------------------------------------------------------------------- records directory
def _read_lines(path: Path) -> list[Any]:
    """One JSON-lines table of the database; errors name the file and line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TuneError(f"cannot read tuning records {path}: {exc}") from exc
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TuneError(
                f"tuning records {path} are corrupt (line {i}: {exc.msg}); "
                "restore the file, or delete the directory and tune again"
            ) from exc
    return rows


def read_tables(work_dir: Path) -> tuple[list, list]:
    """Both database tables, checked: they exist, parse, and records name existing workloads."""
    wl_path, rec_path = work_dir / WORKLOAD_FILE, work_dir / RECORD_FILE
    if not work_dir.is_dir():
        raise TuneError(f"no tuning records: {work_dir} is not a directory (run tune first)")
    missing = [p.name for p in (wl_path, rec_path) if not p.is_file()]
    if missing:
        raise TuneError(
            f"no tuning records in {work_dir}: {' and '.join(missing)} missing (run tune first, "
            f"or ship all of {', '.join(RECORD_FILES)})"
        )
    workloads, records = _read_lines(wl_path), _read_lines(rec_path)
    for i, w in enumerate(workloads, 1):
        if not (isinstance(w, list) and len(w) == 2 and isinstance(w[0], str) and isinstance(w[1], str)):
            raise TuneError(f"tuning records {wl_path} are corrupt (line {i} is not a workload)")
    for i, r in enumerate(records, 1):
        if not (
            isinstance(r, list) and len(r) == 2 and isinstance(r[0], int) and isinstance(r[1], list) and len(r[1]) >= 3
        ):
            raise TuneError(f"tuning records {rec_path} are corrupt (line {i} is not a tuning record)")
        if not 0 <= r[0] < len(workloads):
            raise TuneError(
                f"tuning records {rec_path} are corrupt (line {i} names workload {r[0]}; "
                f"{wl_path.name} has {len(workloads)})"
            )
    return workloads, records


def has_tables(work_dir: Path) -> bool:
    wl, rec = work_dir / WORKLOAD_FILE, work_dir / RECORD_FILE
    if wl.exists() != rec.exists():
        raise TuneError(
            f"tuning records in {work_dir} are incomplete: {(wl if wl.exists() else rec).name} "
            f"exists without {(rec if wl.exists() else wl).name}"
        )
    return wl.exists()


def open_database(work_dir: Path, *, create: bool):
    """MetaSchedule's JSON database of ``work_dir`` (checked first; created when ``create``)."""
    from tvm.s_tir import meta_schedule as ms

    if create:
        work_dir.mkdir(parents=True, exist_ok=True)
    if not create or has_tables(work_dir):
        read_tables(work_dir)
    try:
        return ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=create, module_equality=MODULE_EQUALITY)
    except Exception as exc:  # noqa: BLE001 - TVM's parser errors: say which directory
        lines = str(exc).strip().splitlines()
        raise TuneError(f"tuning records in {work_dir} cannot be loaded: {lines[-1] if lines else exc}") from exc


def record_us(run_secs) -> float | None:
    secs = [float(s) for s in (run_secs or [])]
    return 1e6 * sum(secs) / len(secs) if secs and min(secs) < 1e9 else None  # failures are stored as 1e10


def best_per_workload(workloads: list, records: list) -> dict[str, float]:
    """Best successful record per workload hash, microseconds (from the raw tables)."""
    best: dict[str, float] = {}
    for r in records:
        us = record_us(r[1][1])
        h = workloads[r[0]][0]
        if us is not None and (h not in best or us < best[h]):
            best[h] = us
    return best


def _plain(value: Any) -> Any:
    """TVM FFI containers (Map, Array, String) as plain JSON values."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "__len__"):
        return [_plain(v) for v in value]
    return str(value)


def target_dict(target) -> dict[str, Any]:
    """A TVM target as a plain dict, TVM's defaults filled in (so two can be compared)."""
    import tvm

    if not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    return _plain(target.export())


def _target_diff(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    keys = sorted((set(got) | set(want)) - _IGNORED_TARGET_KEYS)
    return [f"{k}: {got.get(k)!r} vs {want.get(k)!r}" for k in keys if got.get(k) != want.get(k)]


def check_target(work_dir: Path, spec: TargetSpec, records: list, meta: dict[str, Any]) -> None:
    """Every record (and the directory's metadata) names ``spec``'s target."""
    want = target_dict(spec.tvm_target())
    found: dict[str, dict] = {}
    if meta.get("target") is not None:
        found[json.dumps(meta["target"], sort_keys=True)] = meta["target"]
    for r in records:
        key = json.dumps(r[1][2], sort_keys=True)
        if key not in found:
            try:
                found[key] = target_dict(r[1][2])
            except Exception as exc:  # noqa: BLE001
                raise TuneError(
                    f"tuning records in {work_dir} are corrupt: a record's target {r[1][2]!r} "
                    f"is not a TVM target ({exc})"
                ) from exc
    for got in found.values():
        diff = _target_diff(got, want)
        if diff:
            made_for = meta.get("target_name")
            raise TuneError(
                f"tuning records in {work_dir} were measured for another target"
                f"{f' ({made_for!r})' if made_for else ''} than {spec.name!r}: {'; '.join(diff)}; "
                "tune for this target, or use records made for it"
            )


def read_meta(work_dir: Path) -> dict[str, Any]:
    path = work_dir / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TuneError(f"{path} is corrupt ({exc}); restore it, or delete it to apply every record") from exc
    if not isinstance(meta, dict):
        raise TuneError(f"{path} is corrupt (not a JSON object)")
    return meta


def write_meta(work_dir: Path, meta: dict[str, Any]) -> None:
    path = work_dir / META_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    tmp.replace(path)


def records_fingerprint(work_dir: str | os.PathLike) -> dict[str, Any]:
    """Digest of a records directory, for an artifact's manifest.

    ``sha256`` covers both database tables and what decides which records apply (the
    target and the tuning-free times of ``dyno_tuning.json``, not its run history);
    ``workloads`` lists the structural hashes of the tuned functions (sorted), which
    :func:`match_records` compares with a module's functions; ``records`` counts the
    tuning records; ``target`` is the target they were measured on.
    """
    work_dir = Path(work_dir)
    workloads, records = read_tables(work_dir)
    meta = read_meta(work_dir)
    target = meta.get("target")
    if target is None and records:
        target = target_dict(records[0][1][2])
    digest = hashlib.sha256()
    for name in DATABASE_FILES:
        data = (work_dir / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    decisive = {"target": target, "baseline_us": meta.get("baseline_us", {}), "paired": meta.get("paired", {})}
    digest.update(json.dumps(decisive, sort_keys=True).encode())
    return {
        "sha256": digest.hexdigest(),
        "workloads": sorted({w[0] for w in workloads}),
        "records": len(records),
        "target": target,
        "tvm_version": meta.get("tvm_version"),
    }


def match_records(mod, work_dir: str | os.PathLike) -> RecordsMatch:
    """Which fused functions of ``mod`` have records in ``work_dir``, and which of those win."""
    work_dir = Path(work_dir)
    workloads, records = read_tables(work_dir)
    best = best_per_workload(workloads, records)
    wins = winners(best, read_meta(work_dir))
    tuned: list[str] = []
    slower: list[str] = []
    untuned: list[str] = []
    used: set[str] = set()
    for gv, func in _prim_funcs(mod):
        h = _workload_hash(func)
        if h not in best:
            untuned.append(gv.name_hint)
            continue
        used.add(h)
        (tuned if wins[h] else slower).append(gv.name_hint)
    return RecordsMatch(tuned=tuned, slower=slower, untuned=untuned, unused_workloads=len(set(best) - used))


# --------------------------------------------------------------------------- apply
def apply_records(mod, target: TargetSpec | str, work_dir: str | os.PathLike, *, only_faster: bool = True):
    """``mod`` with the best record applied to every function that has a winning one.

    ``mod`` is the fused module (after the ``"zero"`` pipeline) of the build; the records
    apply to the functions that hash as the ones tuned. A function gets its best record
    (and the attributes ``tirx.is_scheduled`` and ``dyno.tuned``) when that record beat
    the tuning-free schedule when tuned; every other function is returned unchanged, so
    the tuning-free schedule (``schedule.schedule_module`` skips scheduled functions) or
    dlight still applies to it. Functions scheduled before the call are left alone.
    ``only_faster=False`` applies every function's best record, winning or not.

    Raises ``TuneError`` when ``work_dir`` holds no database, a corrupt one, or records
    measured for another target than ``target``.
    """
    import tvm
    from tvm import relax

    spec = get_target(target)
    work_dir = Path(work_dir)
    workloads, records = read_tables(work_dir)
    meta = read_meta(work_dir)
    check_target(work_dir, spec, records, meta)
    wins = winners(best_per_workload(workloads, records), meta)
    database = open_database(work_dir, create=False)
    with spec.tvm_target(), database, tvm.transform.PassContext(opt_level=3):
        applied = relax.transform.MetaScheduleApplyDatabase()(mod).clone()  # updated below, not ``mod``
    originals = dict(_prim_funcs(mod))
    updates = {}
    for gv, func in _prim_funcs(applied):
        orig = originals.get(gv)
        if orig is None or is_scheduled(orig) or not is_scheduled(func):
            continue  # scheduled before, or no record
        h = _workload_hash(orig)
        use = not only_faster or wins.get(h, False)
        updates[gv] = func.with_attr(TUNED_ATTR, True) if use else orig
    for gv, func in updates.items():
        applied[gv] = func
    return applied
