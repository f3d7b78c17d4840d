"""What the model benchmarks do to their own process: pin it to the cores the runtimes they
compare share, and end with one line, not a traceback, on a user's mistake."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from dyno_compile.errors import DynoError


def pin_threads(threads: int) -> None:
    """Run on the first ``threads`` cores this process may use, TVM's pool that size, JAX on
    the CPU. XLA's and TVM's pools size themselves from the cores the process may use, so
    pinning puts both on the same cores; call it before importing either."""
    cores = sorted(os.sched_getaffinity(0))
    if threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def run_main(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s status; a :class:`DynoError` (an unknown model or target) exits
    2 with the script's name and the message on stderr, since it is the user's to fix."""
    try:
        status = main()
    except DynoError as exc:
        print(f"{Path(sys.argv[0]).name}: {exc}", file=sys.stderr)
        status = 2
    sys.exit(status)
