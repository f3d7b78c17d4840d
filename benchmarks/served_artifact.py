"""The artifact the serving benchmarks run: resnet20 (real weights) for the host on both
sides, with batched cloud segments and a 10-evaluation search, built with the CLI as a user
would (about 40 s on 2 cores); and the ``build`` words for such a host artifact, which the
tests' artifacts use too (``tests/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def host_build_args(out: str | Path, *options: str | int | Path, bits: str) -> list[str]:
    """The CLI words of ``build resnet20`` for the host device and cloud into ``out`` with the
    widths ``bits``, then the caller's ``options`` (``--no-search``, or the search's): the
    small artifact the benchmarks and the tests build, stated once so that they build alike."""
    return ["build", "resnet20", "--device", "host", "--cloud", "host", "--bits", bits, "--out", str(out)] + [
        str(o) for o in options
    ]


def build_served_resnet20(out: Path) -> Path:
    for command in (
        host_build_args(out, "--no-search", bits="float32,8,4,2"),
        ["search", str(out), "--evaluations", "10"],
    ):
        proc = subprocess.run([sys.executable, "-m", "dyno_compile", *command], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(command[:2])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return out


def add_artifact_option(parser: argparse.ArgumentParser) -> None:
    """``--artifact``: what a serving benchmark serves; without it, :func:`served_artifact` builds one."""
    parser.add_argument(
        "--artifact",
        type=Path,
        help="an artifact with a Pareto set (default: build resnet20 for the host and search it, as the README does)",
    )


def served_artifact(artifact: Path | None, tmp: str | Path) -> Path:
    """The ``--artifact`` given, or resnet20 built and searched in ``tmp``, said first since
    it takes most of a minute."""
    if artifact is not None:
        return artifact
    print(
        "building resnet20 (host device and cloud, widths float32,8,4,2) and searching 10 configurations ...",
        flush=True,
    )
    return build_served_resnet20(Path(tmp) / "resnet20")
