"""How long jobs say how far they are, one vocabulary for every layer and every front end.

A job (compiling the libraries, profiling, searching, the evaluation) reports to a
``progress`` callable: a ``str`` when it enters a new phase, a :class:`Step` each time a
counted unit of a phase is done. The library never prints: the CLI draws phases and steps
as a status line and progress bars (:mod:`dyno_compile.cli_progress`), the evaluation logs
them as lines, and tests collect them. A :class:`Step` formats as a line of text, so a
consumer that only knows strings (``print``, a prefixing wrapper) still reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """``done`` of ``total`` units of the phase ``task`` are finished. ``detail``: what the
    last one was (a library, a configuration); ``best``: the best result so far, where the
    phase has one (the search's Pareto set)."""

    task: str
    done: int
    total: int
    detail: str = ""
    best: str = ""

    def __str__(self) -> str:
        parts = [f"{self.task} {self.done}/{self.total}", self.detail, self.best and f"best: {self.best}"]
        return ": ".join(p for p in parts if p)


Report = str | Step
#: Where a job reports: a phase message or a step (see the module docstring).
Progress = Callable[[Report], None]


def silent(report: Report) -> None:
    """The default ``progress``: library calls report to nobody unless asked."""


def prefixed(progress: Progress, prefix: str) -> Progress:
    """Reports of a sub-job (one model of the evaluation) as lines starting ``prefix: ``."""
    return lambda report: progress(f"{prefix}: {report}")
