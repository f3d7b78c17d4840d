"""Wall time of a full ``build`` with search — compile for arm64 + CUDA + host, profile,
simulate accuracy, measure frames, run the study, write the Pareto set — for SqueezeNet
(the real float16 ONNX, real ImageNet samples) and mobilenet_v2 (zoo, random weights).

The goal (issue 4): each finishes in under 15 minutes on the 2-core CI machine. Each build
runs as its own ``python -m dyno_compile build`` process, exactly as a user runs it, with
the defaults unless flags are passed through after ``--``::

    python benchmarks/build_with_search.py
    python benchmarks/build_with_search.py --models mobilenet_v2 -- --evaluations 40
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dyno_compile.artifact.load import load_artifact
from dyno_compile.datasets import data_root

GOAL_S = 15 * 60
MODELS = {"squeezenet": str(data_root() / "imagenet" / "squeezenet1.1_fp16.onnx"), "mobilenet_v2": "mobilenet_v2"}


def build(model: str, out: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dyno_compile", "build", model, "--out", str(out), *extra],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"build of {model} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    print(f"{'model':<14}{'wall s':>8}{'goal':>7}  {'space':>6}{'measured':>9}{'Pareto':>7}  times")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out = Path(tmp) / name
            seconds = build(MODELS[name], out, extra)
            s = load_artifact(out).manifest["search"]
            verdict = "met" if seconds < GOAL_S else "MISSED"
            print(
                f"{name:<14}{seconds:>8.0f}{verdict:>7}  {s['space_size']:>6}{s['evaluated']:>9}"
                f"{len(s['pareto']):>7}  {s['profiles']['device']}, {s['profiles']['cloud']}; "
                f"{s['calibration']['samples']} calibration samples, {s['metric']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
