"""Tune resnet20 on its own: build an artifact for the host, profile it, search it, and
print the Pareto set — the library calls behind ``python -m dyno_compile build``.

    python examples/search_resnet20.py [OUT_DIR] [--evaluations N] [--storage URL]

Run it again with the same ``--storage`` and the study resumes; start it on several
machines with one ``postgresql://`` storage (and different ``--seed``s) and they share it.
"""

from __future__ import annotations

import argparse
import tempfile

from dyno_compile.artifact.build import build_artifact
from dyno_compile.artifact.load import load_artifact
from dyno_compile.artifact.plan import candidate_cuts, plan_build
from dyno_compile.frontend.resolve import load_model
from dyno_compile.passes import run_passes
from dyno_compile.search.calibration import default_calibration
from dyno_compile.search.pipeline import SearchOptions, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", help="artifact directory (default: a temporary one)")
    parser.add_argument("--evaluations", type=int, default=120)
    parser.add_argument("--storage", default=":memory:", help="Optuna storage URL (default: in memory)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    graph = run_passes(load_model("resnet20"))
    out = args.out or tempfile.mkdtemp(prefix="resnet20-")
    root, _ = build_artifact(
        plan_build(graph, candidate_cuts(graph)), f"{out}/artifact", device_targets=["host"], cloud_targets=["host"]
    )
    artifact = load_artifact(root)
    options = SearchOptions(
        default_calibration("resnet20", graph.inputs[0].shape).head(256),
        evaluations=args.evaluations,
        storage=args.storage,
        seed=args.seed,
    )
    result, profiles, evaluator = search(artifact, options, progress=print)
    print(
        f"\n{result.n_evaluated} configurations measured, {len(result.pareto)} on the Pareto front "
        f"(float top-1 {100 * result.baseline_accuracy:.2f} %, budget {result.accuracy_budget} points)"
    )
    print(f"{'configuration':<42}{'device ms':>10}{'cloud ms':>10}{'bytes':>9}{'top-1':>8}")
    for e in sorted(result.pareto, key=lambda e: e.bytes):
        print(
            f"{e.config.label:<42}{e.device_s * 1e3:>10.3f}{e.cloud_s * 1e3:>10.3f}{e.bytes:>9.0f}"
            f"{100 * e.accuracy:>7.2f}%"
        )


if __name__ == "__main__":
    main()
