"""Build an artifact: plan the segments and cut kernels, compile each side for its targets,
and write the libraries, the model and the cut table into one checksummed directory.

Layout of ``OUT``::

    manifest.json            format, model hash, inputs/outputs, segments, cut table,
                             libraries (side, target, function signatures), file checksums
    model.json, model.npz    the optimised IR graph and its weights (for JAX simulation)
    device/<target>.so       segment_* and pack_* functions, weights bound in
    cloud/<target>.so        segment_* and unpack_* functions, weights bound in
    search/                  profiles, Pareto set and plots, when built with a search

The host CPU target is always built for both sides, so every artifact runs locally.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from dyno_compile.artifact.plan import BuildPlan, batched_name
from dyno_compile.artifact.store import ArtifactError, amend, staging, write_manifest
from dyno_compile.errors import DynoError
from dyno_compile.ir import Graph, save
from dyno_compile.ir.serialize import graph_to_dict
from dyno_compile.progress import Progress, Step, silent
from dyno_compile.targets import get_target
from dyno_compile.targets.libraries import LibraryJob, compile_libraries
from dyno_compile.targets.records import records_fingerprint

Finish = Callable[[Path], dict]


class SearchIncomplete(ArtifactError):
    """The artifact compiled and was written, but its ``finish`` step (the search) failed
    or was interrupted; the cause is ``__cause__``."""


class Interrupts:
    """What :func:`sigterm_interrupts` saw. A signal's ``KeyboardInterrupt`` can land in a
    callback that swallows it (a garbage-collection hook: "Exception ignored in ..."), so
    a long job also calls :meth:`check` between its steps, which raises it again."""

    def __init__(self) -> None:
        self.signalled: str | None = None

    def check(self) -> None:
        if self.signalled is not None:
            raise KeyboardInterrupt(self.signalled)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[Interrupts]:
    """SIGTERM (``kill``, a scheduler's stop) raises ``KeyboardInterrupt("SIGTERM")`` here,
    as Ctrl-C raises ``KeyboardInterrupt("SIGINT")``, instead of ending the process on the
    spot: so either way a half-written staging folder is removed, Optuna records the trial
    in progress as failed, and what was already done is kept and said so. Only the main
    thread receives signals; elsewhere this changes nothing. A SIGINT that is ignored (a
    background job) stays ignored."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return

    def interrupt(signum: int, _frame: object) -> None:
        interrupts.signalled = signal.Signals(signum).name
        raise KeyboardInterrupt(interrupts.signalled)

    caught = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        caught.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, interrupt) for signum in caught}
    try:
        yield interrupts
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass(frozen=True)
class LibraryBuild:
    side: str
    target: str
    path: str
    seconds: float
    functions: int


def model_hash(graph: Graph) -> str:
    """Identity of the model a client and a server must agree on: structure and weights."""
    digest = hashlib.sha256(json.dumps(graph_to_dict(graph), sort_keys=True, default=str).encode())
    for name in sorted(graph.params):
        digest.update(name.encode())
        digest.update(graph.params[name].tobytes())
    return digest.hexdigest()


def build_artifact(
    plan: BuildPlan,
    out_dir: str | Path,
    *,
    device_targets: Sequence[str] = ("arm64",),
    cloud_targets: Sequence[str] = ("cuda",),
    overwrite: bool = False,
    records: str | Path | None = None,
    finish: Finish | None = None,
    progress: Progress = silent,
) -> tuple[Path, list[LibraryBuild]]:
    """Compile and write the artifact. ``records``: a MetaSchedule records directory (from
    ``targets.tune``) for the host target; its winning records are applied to the host
    libraries and the directory ships in the artifact under ``tuning/host``.

    ``finish(root)`` runs once the compiled artifact is published, on a copy (``amend``: it
    opens with ``load_artifact``, may add files and returns manifest entries to add): how
    ``build`` profiles and searches. Compiling is the long part, so a search that fails or
    is interrupted (Ctrl-C, or SIGTERM: :func:`sigterm_interrupts`) leaves the compiled
    artifact in place, and ``search`` completes it (its study resumes from the trials
    already stored): a :class:`SearchIncomplete` says so."""
    sides = {"device": _with_host(device_targets), "cloud": _with_host(cloud_targets)}
    functions = {"device": plan.device_functions, "cloud": plan.cloud_functions}
    built: list[LibraryBuild] = []
    libraries = {}
    total = sum(len(targets) for targets in sides.values())
    with sigterm_interrupts() as interrupts, staging(out_dir, overwrite=overwrite) as root:
        save(plan.graph, root / "model")
        progress(Step("libraries compiled", 0, total))
        jobs = {}  # path in the artifact -> (side, target, job), in manifest order
        for side, targets in sides.items():
            (root / side).mkdir()
            for name in targets:
                spec = get_target(name)
                rel = f"{side}/{spec.name}.so"
                jobs[rel] = (
                    side,
                    spec,
                    LibraryJob(functions[side], spec.name, root / rel, records if spec.is_host else None),
                )
        done = {}
        # closing: an interrupt between two results stops the compile workers here, before
        # the staging directory they write into is removed (not when the generator is collected)
        compiled = compile_libraries(
            [job for *_, job in jobs.values()], on_start=lambda j: progress(_compiling(root, j))
        )
        with closing(compiled):
            for result in compiled:
                interrupts.check()
                done[result.job.path.relative_to(root).as_posix()] = result
                progress(Step("libraries compiled", len(done), total, result.job.path.relative_to(root).as_posix()))
        for rel, (side, spec, job) in jobs.items():
            built.append(LibraryBuild(side, spec.name, rel, done[rel].seconds, len(job.functions)))
            libraries[rel] = {
                "side": side,
                "target": spec.name,
                "target_spec": _spec_dict(spec),
                "module": done[rel].description,
            }
        tuning = {}
        if records is not None:
            shutil.copytree(records, root / "tuning" / "host")
            tuning["host"] = records_fingerprint(records)
        manifest = {**_manifest(plan, libraries), "tuning": tuning}
        interrupts.check()  # the last moment before the artifact is published
        write_manifest(root, manifest)
    if finish is not None:
        try:
            with sigterm_interrupts():
                amend(out_dir, finish)
        except (DynoError, KeyboardInterrupt) as exc:
            why = str(exc) if isinstance(exc, DynoError) else f"the search was interrupted ({str(exc) or 'SIGINT'})"
            raise SearchIncomplete(
                f"{why} (the compiled artifact is kept at {out_dir}: "
                f"`python -m dyno_compile search {out_dir}` completes it)"
            ) from exc
    return Path(out_dir), built


def _compiling(root: Path, job: LibraryJob) -> str:
    return f"compiling {job.path.relative_to(root).as_posix()} ({len(job.functions)} functions)"


def _spec_dict(spec) -> dict:
    """The target facts a reader of the artifact needs (the roofline figures feed estimates)."""
    return {
        "name": spec.name,
        "target": json.loads(json.dumps(spec.target)),
        "threads": spec.threads,
        "peak_gflops": spec.peak_gflops,
        "mem_bandwidth_gbs": spec.mem_bandwidth_gbs,
        "description": spec.description,
    }


def _with_host(targets: Sequence[str]) -> list[str]:
    names = [get_target(t).name for t in targets]
    return names + ([] if "host" in names else ["host"])


def _manifest(plan: BuildPlan, libraries: dict) -> dict:
    g = plan.graph
    return {
        "model": g.name,
        "model_hash": model_hash(g),
        "inputs": [{"name": n.name, "shape": list(n.shape), "dtype": n.dtype} for n in g.inputs],
        "outputs": [{"name": o, "shape": list(g.node(o).shape), "dtype": g.node(o).dtype} for o in g.outputs],
        "bits": [str(b) for b in plan.bits],
        "granularity": plan.granularity,
        "segments": [
            {
                "index": s.index,
                "function": f"segment_{s.index}",
                "start": s.start.position,
                "end": s.end.position,
                "inputs": list(s.inputs),
                "outputs": list(s.outputs),
                **({"batched_function": batched_name(s.index, plan.cloud_batch)} if plan.cloud_batch > 1 else {}),
            }
            for s in plan.segments
        ],
        "cloud_batch": plan.cloud_batch,
        "cuts": plan.cut_table,
        "libraries": libraries,
    }
