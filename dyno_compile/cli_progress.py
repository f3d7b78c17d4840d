"""The command line's view of a long job: the current phase on a status line, and a bar
for every counted phase (libraries compiled, configurations searched) with how many are
done, the best so far, the time spent and the time left.

It is the terminal end of :mod:`dyno_compile.progress`: the library reports phases and
steps, this draws them (on stderr, so stdout keeps only the results). Optuna's per-trial
INFO lines are switched off while it runs, unless ``verbose``: the bar says the same in
one line instead of 200. Where stderr is no terminal (a CI log, a pipe) nothing is
animated: each phase is one line, and each counted phase one line when it ends.
"""

from __future__ import annotations

import logging
from types import TracebackType

import optuna
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from dyno_compile.progress import Report, Step


class _Remaining(TimeRemainingColumn):
    """Time left for a counted phase; nothing for the phase line, which has no end in sight."""

    def render(self, task: Task) -> Text:
        return Text("") if task.total is None else super().render(task)


class _Count(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text("" if task.total is None else f"{task.completed:.0f}/{task.total:.0f}", style="progress.download")


def stderr_console() -> Console:
    """The console for messages: one line per message whatever the width (``soft_wrap``), so
    a script reading stderr from a pipe need not join lines."""
    return Console(stderr=True, soft_wrap=True, highlight=False)


class ProgressDisplay:
    """A context manager and a ``progress`` callable (see :mod:`dyno_compile.progress`)."""

    def __init__(self, first_phase: str, *, console: Console | None = None, verbose: bool = False) -> None:
        self.console = console or stderr_console()
        self._verbose = verbose
        self._live = self.console.is_terminal
        self._bars: dict[str, TaskID] = {}
        self._last: dict[str, Step] = {}  # unanimated: the latest step of each counted phase not yet printed
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(bar_width=24),
            _Count(),
            TimeElapsedColumn(),
            _Remaining(),
            TextColumn("{task.fields[best]}"),
            console=self.console,
        )
        self._phase = self._progress.add_task(first_phase, total=None, best="")
        self._first_phase = first_phase
        self._optuna_level = optuna.logging.get_verbosity()

    def __enter__(self) -> ProgressDisplay:
        if not self._verbose:
            optuna.logging.set_verbosity(logging.WARNING)
        if self._live:
            self._progress.start()
        else:
            self._line(self._first_phase)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live:
            self._progress.update(self._phase, visible=False)
            self._progress.stop()
        for step in self._last.values():  # counted phases that stopped short (a time limit, an error)
            self._line(str(step))
        optuna.logging.set_verbosity(self._optuna_level)

    def __call__(self, report: Report) -> None:
        if not isinstance(report, Step):
            if self._live:
                self._progress.update(self._phase, description=report)
            else:
                self._line(report)
            return
        if self._verbose and report.detail:
            self._line(str(report))
        if not self._live:
            self._last[report.task] = report
            if report.done >= report.total:
                self._line(str(self._last.pop(report.task)))
            return
        best = f"best: {report.best}" if report.best else ""
        if report.task not in self._bars:
            self._bars[report.task] = self._progress.add_task(report.task, total=report.total, best=best)
        self._progress.update(self._bars[report.task], completed=report.done, total=report.total, best=best)

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)
