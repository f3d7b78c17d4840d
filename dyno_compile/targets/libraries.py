"""Compile several libraries at once: worker processes, one library each, so an artifact's
device and cloud libraries (each for its targets) can build side by side.

A library is one executable (:func:`~dyno_compile.targets.compile.compile_functions`),
and TVM's compile of one module runs on one core: its passes, our schedules and dlight
are Python (the GIL serialises threads), and LLVM code generation is one job per module.
What parallelises is compiling *different* libraries: an artifact has at least four
(device and cloud, each for its targets and the host), independent of each other.
Workers are separate processes started with ``spawn`` (a forked TVM, with its thread pool
and LLVM state, is not safe), each compiles and exports its library and returns only the
JSON description and timings, so nothing but graphs and plain data crosses processes.

``DYNO_COMPILE_JOBS`` sets the number of workers (1: compile here, one library after
another); by default there are as many as the load leaves cores free
(:func:`compile_workers`). Measured back to back on the 2-core development machine,
``build densenet121 --no-search`` (1810 functions in four libraries): 202 s in one
process, 128 s with 2 workers when the other core was free (177 % CPU; each worker's start,
importing TVM and JAX, adds about 10 % CPU); but 245 s with 2 workers vs 220 s in one
process while another job kept a core busy, hence no second worker on a loaded machine.
Each worker runs TVM with ``TVM_NUM_THREADS`` = cores / workers, so the constant folding
that executes kernels at compile time does not oversubscribe them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import time
import traceback
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dyno_compile.errors import InputError
from dyno_compile.targets.errors import TargetError
from dyno_compile.targets.spec import host_cpu_count

if TYPE_CHECKING:
    from dyno_compile.ir import Graph

__all__ = ["JOBS_ENV", "LibraryJob", "LibraryResult", "compile_libraries", "compile_workers"]

_log = logging.getLogger(__name__)

#: Environment variable: how many libraries compile at once (1: sequentially, in this process).
JOBS_ENV = "DYNO_COMPILE_JOBS"


@dataclass(frozen=True)
class LibraryJob:
    """One library to compile and write: ``functions`` for ``target``, exported to ``path``;
    ``records``: tuning records for it (host only), as :func:`compile_functions` takes."""

    functions: Mapping[str, Graph]
    target: str
    path: Path
    records: str | os.PathLike | None = None


@dataclass(frozen=True)
class LibraryResult:
    """A written library: its module description (``CompiledModule.describe()``), the compile
    steps' timings, and the seconds from start to written (in its worker)."""

    job: LibraryJob
    description: dict
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def compile_workers(jobs: Sequence[LibraryJob]) -> int:
    """Worker processes for ``jobs``: ``DYNO_COMPILE_JOBS`` if set, else the cores other
    processes leave free (the cores this process may use less the 1-minute load average,
    plus one for this process's own share of it), so a busy machine compiles here, one
    library at a time (module docstring); never more than there are libraries."""
    raw = os.environ.get(JOBS_ENV, "").strip()
    if not raw:
        free = int(host_cpu_count() - os.getloadavg()[0] + 1)
        return max(1, min(free, len(jobs)))
    try:
        wanted = int(raw)
    except ValueError:
        wanted = 0
    if wanted < 1:
        raise InputError(f"{JOBS_ENV} must be a positive integer (1: compile one library at a time), got {raw!r}")
    return min(wanted, max(1, len(jobs)))


def _compile_one(job: LibraryJob) -> tuple[dict, dict[str, float], float]:
    """Compile and export ``job``: (module description, timings, seconds)."""
    from dyno_compile.targets.compile import compile_functions, export

    t = time.perf_counter()
    module = compile_functions(job.functions, job.target, records=job.records)
    export(module, job.path)
    return module.describe(), dict(module.timings), time.perf_counter() - t


def _worker_init(threads: int) -> None:
    """Before TVM starts in the worker: its share of the cores."""
    os.environ["TVM_NUM_THREADS"] = str(threads)


def _in_worker(job: LibraryJob) -> tuple[dict, dict[str, float], float]:
    """:func:`_compile_one` in a worker; an error that would not survive the trip back
    (an exception class with its own constructor arguments) comes back as TargetError with
    its type, message and where it was raised."""
    try:
        return _compile_one(job)
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - any failure to pickle: send it as text
            where = "".join(traceback.format_exception(exc)[-3:]).strip()
            raise TargetError(
                f"compiling {job.path.name} for {job.target}: {type(exc).__name__}: {exc}\n{where}"
            ) from None
        raise


def compile_libraries(
    jobs: Sequence[LibraryJob], *, on_start: Callable[[LibraryJob], None] | None = None
) -> Generator[LibraryResult, None, None]:
    """Compile and write every library of ``jobs``, yielding each result as it is written
    (in completion order); with several workers (module docstring) the largest libraries
    start first. ``on_start(job)`` is called as a library starts (for progress). An error
    of any library stops the others and is raised as the compile raised it."""
    workers = compile_workers(jobs)
    if workers == 1:
        for job in jobs:
            if on_start is not None:
                on_start(job)
            yield LibraryResult(job, *_compile_one(job))
        return
    yield from _in_pool(jobs, workers, on_start)


def _in_pool(
    jobs: Sequence[LibraryJob], workers: int, on_start: Callable[[LibraryJob], None] | None
) -> Generator[LibraryResult, None, None]:
    """The libraries compiled by ``workers`` processes; should a worker die (killed for
    memory, or a script that starts a build at import time, which ``spawn`` re-runs in the
    worker), the ones not written yet are compiled here, one at a time, with a warning."""
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, host_cpu_count() // workers)
    order = sorted(jobs, key=lambda j: len(j.functions), reverse=True)  # the longest first: less idle at the end
    remaining = list(order)
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
    )
    pending: dict[Future[tuple[dict, dict[str, float], float]], LibraryJob] = {}
    broken: BrokenProcessPool | None = None
    try:
        for job in order:
            if on_start is not None and len(pending) < workers:
                on_start(job)
            pending[pool.submit(_in_worker, job)] = job
        started = min(workers, len(order))
        while pending and broken is None:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    description, timings, seconds = future.result()
                except BrokenProcessPool as exc:
                    broken = exc
                    break
                remaining.remove(job)
                if on_start is not None and started < len(order):
                    on_start(order[started])
                    started += 1
                yield LibraryResult(job, description, timings, seconds)
    except BaseException:
        _stop(pool)
        raise
    if broken is None:
        pool.shutdown()
        return
    _stop(pool)
    _log.warning(
        "a compile worker died (%s); compiling the %d libraries left here, one at a time (%s=1 does so from the start)",
        broken,
        len(remaining),
        JOBS_ENV,
    )
    for job in remaining:
        if on_start is not None:
            on_start(job)
        yield LibraryResult(job, *_compile_one(job))


def _stop(pool) -> None:
    """Stop ``pool`` now: queued libraries are dropped and the running ones end, rather
    than finishing minutes of work (and writing files) after the build has failed."""
    # CPython keeps its workers in _processes, and shutdown() sets that to None: take them
    # first, and end them before the pool closes its pipes (a worker still starting up would
    # print an EOFError traceback reading its closed pipe); a worker whose start the
    # interrupt cut short is not listed there yet, but is a child of this process
    processes = {*(getattr(pool, "_processes", None) or {}).values(), *multiprocessing.active_children()}
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()
    pool.shutdown(wait=False, cancel_futures=True)
