"""The artifact the serving benchmarks run: resnet20 (real weights) for the host on both
sides, with batched cloud segments and a 10-evaluation search, built with the CLI as a user
would (about 40 s on 2 cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def build_served_resnet20(out: Path) -> Path:
    for command in (
        [
            "build",
            "resnet20",
            "--device",
            "host",
            "--cloud",
            "host",
            "--bits",
            "float32,8,4,2",
            "--no-search",
            "--out",
            str(out),
        ],
        ["search", str(out), "--evaluations", "10"],
    ):
        proc = subprocess.run([sys.executable, "-m", "dyno_compile", *command], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(command[:2])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return out
