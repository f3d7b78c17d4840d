"""Which Optuna sampler finds the most of the Pareto set for a given number of measurements?

For a table of evaluations (every configuration of a space, measured once) each sampler
runs :func:`dyno_compile.search.study.run_search` against the table until it has evaluated
a budget of distinct configurations (10 % and 25 % of the space by default; repeated
configurations are free and capped at 4x the budget in trials), over several seeds, and
the hypervolume of what it found is printed as a fraction of the exhaustive set's
(:func:`~dyno_compile.search.pareto.hypervolume_ratio`, accuracy budget applied).

    python benchmarks/search_samplers.py                     # built-in synthetic ResNet-20-shaped table
    python benchmarks/search_samplers.py table.json --device-only-cut 19 --seeds 10

``table.json``: a list of ``Evaluation.to_dict()``; the space is every value seen per axis,
so the table must hold every configuration of that grid (the device-only cut, found as the
cut that sends 0 bytes, needs one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import optuna

from dyno_compile.configs import Evaluation
from dyno_compile.packing import CODECS, FLOAT_MODES, GRANULARITIES, LAYOUTS, mode_width
from dyno_compile.search.pareto import Objectives, SearchSpace, hypervolume_ratio
from dyno_compile.search.study import (
    SYNTHETIC_BASELINE,
    TableEvaluator,
    run_search,
    synthetic_evaluations,
    synthetic_space,
)

TRIAL_CAP = 4
#: NSGA-II at several population sizes (Optuna's default is 50, a large share of budgets of
#: a few hundred), multivariate TPE, and random sampling as the floor.
NSGA2_POPULATIONS = (8, 16, 32, 50)
CONTENDERS = (*(f"nsga2-pop{p}" for p in NSGA2_POPULATIONS), "tpe", "random")


def make_sampler(name: str, seed: int) -> str | optuna.samplers.BaseSampler:
    """A contender: run_search's own "tpe"/"random", or NSGA-II with the named population."""
    if name.startswith("nsga2-pop"):
        return optuna.samplers.NSGAIISampler(population_size=int(name.removeprefix("nsga2-pop")), seed=seed)
    return name


def load_table(path: Path, device_only_cut: int | None) -> tuple[SearchSpace, list[Evaluation]]:
    """The table's space (every value seen per axis) and its evaluation of each of the
    space's configurations. The device-only cut, unless given, is the cut whose
    evaluations all send 0 bytes."""
    evaluations = [Evaluation.from_dict(d) for d in json.loads(path.read_text())]
    order = {
        "cut": int,
        "bits": lambda b: (-mode_width(b), b not in FLOAT_MODES),
        "granularity": GRANULARITIES.index,
        "layout": LAYOUTS.index,
        "codec": CODECS.index,
    }  # the order SearchSpace's defaults use
    axes = {name: sorted({getattr(e.config, name) for e in evaluations}, key=key) for name, key in order.items()}
    silent = [c for c in axes["cut"] if all(e.bytes == 0 for e in evaluations if e.config.cut == c)]
    if device_only_cut is None and len(silent) == 1:
        device_only_cut = silent[0]
    space = SearchSpace(
        tuple(axes["cut"]),
        tuple(axes["bits"]),
        tuple(axes["granularity"]),
        tuple(axes["layout"]),
        tuple(axes["codec"]),
        device_only_cut,
    )
    configs = set(space.configs())
    missing = configs - {e.config for e in evaluations}
    if missing:
        sys.exit(f"error: {path} lacks {len(missing)} configurations of its own grid, e.g. {min(missing).label}")
    return space, [e for e in evaluations if e.config in configs]


def run_one(
    space: SearchSpace,
    table: list[Evaluation],
    objectives: Objectives,
    sampler: str | optuna.samplers.BaseSampler,
    seed: int,
    budget: int,
) -> tuple[float, int, float]:
    """Hypervolume ratio, trials used and seconds for one sampler, seed and budget."""
    start = time.perf_counter()
    result = run_search(
        space,
        TableEvaluator.of(table),
        n_trials=TRIAL_CAP * budget,
        max_evaluations=budget,
        accuracy_budget=objectives.accuracy_budget,
        baseline_accuracy=objectives.baseline_accuracy,
        storage=":memory:",
        sampler=sampler,
        seed=seed,
    )
    return hypervolume_ratio(result.evaluations, table, objectives), result.n_trials, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", nargs="?", type=Path, help="JSON list of Evaluation.to_dict() (default: synthetic)")
    parser.add_argument("--device-only-cut", type=int, help="the table's device-only cut")
    parser.add_argument("--baseline", type=float, help="float accuracy, fraction (default: best float32 accuracy)")
    parser.add_argument("--accuracy-budget", type=float, default=1.0, help="points (default 1.0)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.10, 0.25], help="fractions of the space")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, help="samplers to run (default: all)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if args.table is None:
        space = synthetic_space()
        table = synthetic_evaluations(space)
        baseline = SYNTHETIC_BASELINE
    else:
        space, table = load_table(args.table, args.device_only_cut)
        baseline = args.baseline or max(e.accuracy for e in table if e.config.bits == "float32")
    objectives = Objectives(baseline, args.accuracy_budget)
    print(
        f"{len(table)} configurations, {len(objectives.pareto(table))} on the exhaustive Pareto front "
        f"(budget {args.accuracy_budget} points below {baseline:.4f}); {args.seeds} seeds"
    )
    print(f"{'sampler':<14}{'budget':>8}{'evals':>7}{'HV ratio mean':>15}{'min':>8}{'max':>8}{'trials':>8}{'s/run':>8}")
    for fraction in args.budgets:
        budget = max(1, round(fraction * len(table)))
        for name in args.only or CONTENDERS:
            runs = [
                run_one(space, table, objectives, make_sampler(name, seed), seed, budget) for seed in range(args.seeds)
            ]
            ratios = [r[0] for r in runs]
            print(
                f"{name:<14}{fraction:>7.0%} {budget:>6}{statistics.mean(ratios):>15.4f}{min(ratios):>8.4f}"
                f"{max(ratios):>8.4f}{statistics.mean(r[1] for r in runs):>8.0f}"
                f"{statistics.mean(r[2] for r in runs):>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
