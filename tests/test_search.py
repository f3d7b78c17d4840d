"""The multi-objective search: Pareto filtering, hypervolume, the space, Optuna studies
(sample efficiency, resuming, many worker processes on a real PostgreSQL server), storage
and budget errors, plots. Evaluators are tables of synthetic ResNet-20-shaped measures
(``synthetic_evaluations``), so nothing here measures a model."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import postgres
import pytest
from matplotlib.image import imread

from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.search.pareto import (
    HypervolumeScale,
    Objectives,
    SearchSpace,
    hypervolume,
    hypervolume_ratio,
    non_dominated,
)
from dyno_compile.search.plots import plot_pareto, plot_per_cut
from dyno_compile.search.study import (
    SYNTHETIC_BASELINE,
    SearchError,
    TableEvaluator,
    exhaustive,
    load_results,
    open_storage,
    run_search,
    storage_url,
    synthetic_evaluations,
    synthetic_space,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: 397 configurations: six sending cuts, 7 widths, device-only.
CUTS = (0, 2, 4, 7, 10, 11, 12)
BITS = ("float32", "float16", "8", "6", "4", "3", "2")
BUDGET = 1.0
OBJECTIVES = Objectives(SYNTHETIC_BASELINE, BUDGET)
#: What every search here runs with unless a test says otherwise: the synthetic table's
#: baseline, the budget the objectives above judge by, and a study that lives in memory.
SEARCH_DEFAULTS = {"accuracy_budget": BUDGET, "baseline_accuracy": SYNTHETIC_BASELINE, "storage": ":memory:"}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return synthetic_space(CUTS, BITS)


@pytest.fixture(scope="module")
def table(space: SearchSpace) -> list[Evaluation]:
    return synthetic_evaluations(space)


class CountingTable:
    """A table evaluator that appends one line per measurement to a file (shared by worker
    processes: O_APPEND writes of one short line do not interleave)."""

    def __init__(self, table: list[Evaluation], log: Path, delay_s: float = 0.0) -> None:
        self.lookup = TableEvaluator.of(table)
        self.log = log
        self.delay_s = delay_s

    def __call__(self, config: Config) -> Evaluation:
        time.sleep(self.delay_s)
        with open(self.log, "a") as f:
            f.write(config.label + "\n")
        return self.lookup(config)

    def measured(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def ev(cut: int, device_s: float, cloud_s: float, nbytes: float, accuracy: float, bits: str = "8") -> Evaluation:
    return Evaluation(Config(cut, bits), device_s, cloud_s, nbytes, accuracy, accuracy)


# --- Pareto filtering and hypervolume ---------------------------------------------------------


def test_pareto_removes_dominated_and_over_budget():
    a = ev(1, 1.0, 1.0, 100, 0.92)
    dominated = ev(2, 2.0, 2.0, 200, 0.91)
    trade_off = ev(3, 0.5, 3.0, 100, 0.92)
    same_as_a = ev(4, 1.0, 1.0, 100, 0.92)
    over_budget = ev(5, 0.1, 0.1, 10, 0.80)  # best everywhere but 12 points of accuracy
    at_budget = ev(6, 0.9, 1.0, 100, 0.91)  # exactly 1.0 point below (0.92-0.91 is not 0.01 in floats)
    found = OBJECTIVES.pareto([a, dominated, trade_off, same_as_a, over_budget, at_budget])
    assert found == [a, trade_off, same_as_a, at_budget]
    assert OBJECTIVES.loss(at_budget) == 1.0
    no_budget = Objectives(SYNTHETIC_BASELINE).pareto([a, dominated, over_budget])
    assert no_budget == [a, over_budget]


def test_non_dominated_matches_the_definition(rng):
    points = rng.integers(0, 4, size=(60, 4)).astype(float)  # small integers: many ties
    mask = non_dominated(points)
    for i, p in enumerate(points):
        dominated = any(np.all(q <= p) and np.any(q < p) for q in points)
        assert mask[i] == (not dominated)


def test_objectives_refuse_percent_and_negative_budget():
    with pytest.raises(InputError, match="fraction"):
        Objectives(92.0, 1.0)
    with pytest.raises(InputError, match="accuracy_budget"):
        Objectives(0.92, -1.0)


def test_hypervolume_subset_front_and_scale(table, rng):
    scale = HypervolumeScale.fit(table, OBJECTIVES)
    full = hypervolume(table, OBJECTIVES, scale)
    front = OBJECTIVES.pareto(table)
    assert 0 < full <= 1.1**4
    assert hypervolume(front, OBJECTIVES, scale) == pytest.approx(full)
    assert hypervolume_ratio(table, table, OBJECTIVES) == pytest.approx(1.0)
    assert hypervolume([], OBJECTIVES, scale) == 0.0
    subset = [table[i] for i in rng.choice(len(table), size=len(table) // 3, replace=False)]
    assert hypervolume(subset, OBJECTIVES, scale) < full
    smaller = front[: len(front) // 2]
    assert hypervolume(smaller, OBJECTIVES, scale) <= hypervolume(smaller + subset, OBJECTIVES, scale) <= full


# --- the space --------------------------------------------------------------------------------


def test_space_enumerates_canonical_configs(space):
    configs = space.configs()
    assert len(configs) == len(set(configs)) == 6 * (5 * 2 * 2 + 2) * 3 + 1
    assert [c for c in configs if c.cut == 12] == [Config(12)]
    floats = [c for c in configs if c.bits in ("float32", "float16")]
    assert {(c.granularity, c.layout) for c in floats} == {("tensor", "stream")}
    assert space.canonical(Config(4, "float16", "channel", "bitplane", "zstd")) == Config(4, "float16", codec="zstd")
    assert space.canonical(Config(12, "2", "channel", "bitplane", "lz4")) == Config(12)
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cuts": ()}, "cuts is empty"),
        ({"cuts": (1, 1)}, "repeated"),
        ({"cuts": (1.5,)}, "integer"),
        ({"cuts": (1,), "bits": ("17",)}, "bits"),
        ({"cuts": (1,), "layouts": ("zigzag",)}, "layouts"),
        ({"cuts": (1, 2), "device_only_cut": 3}, "device_only_cut"),
    ],
)
def test_space_refuses_bad_axes(kwargs, message):
    with pytest.raises(InputError, match=message):
        SearchSpace(**kwargs)


# --- the search -------------------------------------------------------------------------------


def test_search_finds_95_percent_of_the_hypervolume_with_a_quarter_of_the_space(space, table, tmp_path):
    budget = len(table) // 4
    ratios = []
    for seed in (0, 1, 2):
        evaluator = CountingTable(table, tmp_path / f"measured-{seed}.txt")
        result = run_search(space, evaluator, n_trials=4 * budget, max_evaluations=budget, seed=seed, **SEARCH_DEFAULTS)
        assert result.n_evaluated <= budget
        assert result.n_measured == result.n_evaluated == len(evaluator.measured())  # repeats were reused
        assert result.n_trials >= result.n_evaluated
        assert list(result.pareto) == OBJECTIVES.pareto(result.evaluations)
        assert all(OBJECTIVES.loss(e) <= BUDGET for e in result.pareto)
        ratios.append(hypervolume_ratio(result.evaluations, table, OBJECTIVES))
    # seeds 0..9 on this space (a quarter of 397 configurations) measured 0.979..0.993, mean 0.988
    assert np.mean(ratios) >= 0.95 and min(ratios) >= 0.93, ratios


def test_a_new_study_starts_with_the_widest_and_narrowest_width_per_cut(space, table):
    anchors = space.anchors()
    result = run_search(space, TableEvaluator.of(table), n_trials=len(anchors), seed=0, **SEARCH_DEFAULTS)
    expected = sorted(space.canonical(Config(**point)) for point in anchors)
    assert [e.config for e in result.evaluations] == expected
    assert {c.cut for c in expected} == set(space.cuts) and Config(12) in expected
    narrowest = min((b for b in space.bits if b.isdigit()), key=int)
    for cut in set(space.cuts) - {12}:
        assert {c.bits for c in expected if c.cut == cut} == {"float32", narrowest}


def test_exhaustive_evaluates_each_config_once(space, table, tmp_path):
    evaluator = CountingTable(table, tmp_path / "measured.txt")
    assert exhaustive(space, evaluator) == table
    assert len(evaluator.measured()) == len(space.configs())


def test_a_second_run_continues_the_study(space, table, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    evaluator = CountingTable(table, tmp_path / "measured.txt")
    common = {**SEARCH_DEFAULTS, "storage": storage, "study_name": "resume"}
    first = run_search(space, evaluator, n_trials=20, seed=1, **common)
    second = run_search(space, evaluator, n_trials=15, seed=2, **common)
    assert (first.n_trials, second.n_trials) == (20, 35)
    assert {e.config for e in first.evaluations} <= {e.config for e in second.evaluations}
    assert len(evaluator.measured()) == second.n_measured == second.n_evaluated  # nothing measured twice
    assert load_results(storage, "resume") == second
    with pytest.raises(SearchError, match="accuracy_budget=1.0, not 2.0"):
        run_search(space, evaluator, n_trials=1, **{**common, "accuracy_budget": 2.0})
    with pytest.raises(SearchError, match="already exists"):
        run_search(space, evaluator, n_trials=1, load_if_exists=False, **common)
    with pytest.raises(SearchError, match=r"no study 'other'.*\['resume'\]"):
        load_results(storage, "other")


def test_a_budget_nothing_meets_names_the_best_loss(table):
    lossy = synthetic_space((0, 2, 4), ("2",))
    evaluations = [e for e in table if e.config in set(lossy.configs())]
    best = min(OBJECTIVES.loss(e) for e in evaluations)
    with pytest.raises(SearchError, match=f"smallest accuracy loss found is {best:.3f} points"):
        run_search(lossy, TableEvaluator.of(evaluations), n_trials=len(evaluations), seed=0, **SEARCH_DEFAULTS)


@pytest.mark.parametrize(
    "answer, message",
    [
        (lambda c: Evaluation(Config(c.cut + 1), 0.0, 0.0, 0.0, 0.9, 0.9), "returned an evaluation of"),
        (lambda c: Evaluation(c, math.nan, 0.0, 0.0, 0.9, 0.9), "device_s=nan"),
        (lambda c: Evaluation(c, 0.0, 0.0, 0.0, 91.0, 0.9), "fraction"),
        (lambda c: None, "not an Evaluation"),
    ],
)
def test_nonsense_from_the_evaluator_is_refused(space, answer, message):
    with pytest.raises(SearchError, match=message):
        run_search(space, answer, n_trials=1, **SEARCH_DEFAULTS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_trials": 0}, "n_trials"),
        ({"max_evaluations": 0}, "max_evaluations"),
        ({"sampler": "annealing"}, "sampler"),
        ({"accuracy_budget": None}, "accuracy_budget"),
        ({"baseline_accuracy": 92.0}, "fraction"),
    ],
)
def test_bad_arguments_are_refused(space, table, kwargs, message):
    args = {"n_trials": 1, **SEARCH_DEFAULTS, **kwargs}
    with pytest.raises(InputError, match=message):
        run_search(space, TableEvaluator.of(table), **args)


# --- storage errors ---------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "url, message",
    [
        ("not a url", "not a database URL"),
        ("redis://localhost/0", "unsupported database 'redis'"),
        ("postgres://u@localhost/db", "postgresql://"),
        ("sqlite://", "give a file"),
        ("sqlite:////nonexistent/folder/study.db", "folder /nonexistent/folder does not exist"),
        ("mysql://u@127.0.0.1/db", "driver is not installed"),
        (
            "postgresql://u:secret@nonexistent.invalid/db",
            r"storage postgresql\+psycopg2://u:\*\*\*@nonexistent.*host name",
        ),
        (f"postgresql://u@127.0.0.1:{_closed_port()}/db", "cannot open storage"),
    ],
)
def test_bad_storage_fails_fast_with_a_clear_error(url, message):
    start = time.monotonic()
    with pytest.raises(SearchError, match=message):
        open_storage(url)
    assert time.monotonic() - start < 5


def test_a_silent_server_times_out_instead_of_hanging():
    """A port that accepts connections but never speaks (a firewall, a wedged server)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"postgresql://u@127.0.0.1:{server.getsockname()[1]}/db"
        start = time.monotonic()
        with pytest.raises(SearchError, match="cannot open storage"):
            open_storage(url, connect_timeout_s=2)
        assert time.monotonic() - start < 10


def test_a_file_that_is_not_a_database(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(SearchError, match="cannot open storage"):
        open_storage(f"sqlite:///{tmp_path / 'junk.db'}")


# --- many workers on PostgreSQL ---------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server_url():
    """The CI's server (``DYNO_TEST_POSTGRES_URL``, from ``.ci/run``), or one of our own for
    this session; no PostgreSQL is a failure, not a skip."""
    if os.environ.get(postgres.URL_ENV):
        yield os.environ[postgres.URL_ENV]
        return
    try:
        server = postgres.start()
    except postgres.PostgresUnavailable as e:
        pytest.fail(f"the multi-worker search test needs PostgreSQL: {e}")
    try:
        yield server.url
    finally:
        postgres.stop(server.root)


#: A small space, so concurrent workers often want the same configuration at once.
CONTENDED_CUTS, CONTENDED_BITS = (0, 4, 12), ("float32", "8", "4")


def _worker(url: str, sampler: str, seed: int, n_trials: int, log: str) -> None:
    space = synthetic_space(CONTENDED_CUTS, CONTENDED_BITS)
    evaluator = CountingTable(synthetic_evaluations(space), Path(log), delay_s=0.05)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_search(
        space,
        evaluator,
        n_trials=n_trials,
        study_name="shared",
        sampler=sampler,
        seed=seed,
        **{**SEARCH_DEFAULTS, "storage": url},
    )


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_worker_processes_share_one_study_on_postgresql(postgres_server_url, tmp_path, sampler):
    """Three processes, one study. Two share a seed: with the random sampler they ask for
    the same configurations at the same moments, and without the claim-and-wait protocol
    measured 2-4 configurations twice per run; with it, none."""
    url = postgres.create_database(postgres_server_url)
    log = tmp_path / "measured.txt"
    seeds, n_trials = (7, 7, 8), 15
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(url, sampler, seed, n_trials, str(log))) for seed in seeds]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    hung = [w.pid for w in workers if w.is_alive()]
    for w in workers:
        if w.is_alive():
            w.kill()
    assert not hung, f"worker processes {hung} did not finish in 120 s"
    assert [w.exitcode for w in workers] == [0] * len(workers)

    states = [t.state for t in optuna.load_study(study_name="shared", storage=storage_url(url)).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * (len(seeds) * n_trials)
    result = load_results(url, "shared")
    measured = CountingTable([], log).measured()
    assert result.n_trials == len(seeds) * n_trials
    assert len(measured) == len(set(measured)) == result.n_measured == result.n_evaluated
    assert result.n_evaluated < result.n_trials  # repeats were reused, not measured


def test_workers_starting_together_on_an_empty_database(postgres_server_url):
    """Table creation races when workers open a fresh database at the same moment."""
    url = postgres.create_database(postgres_server_url)
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            open_storage(url)
        except BaseException as e:  # noqa: BLE001 - collected and reported below
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not [t for t in threads if t.is_alive()], "a worker is still opening the storage after 60 s"
    assert errors == []


# --- plots ------------------------------------------------------------------------------------


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(path).shape
    assert height > 100 and width > 100
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_plots_are_written_as_png(table, tmp_path):
    _assert_png(plot_pareto(table, OBJECTIVES, tmp_path / "pareto.png"))
    _assert_png(plot_per_cut(table, tmp_path / "per_cut.png"))
    _assert_png(plot_per_cut(table, tmp_path / "per_cut.png"))  # replaces the file in place
    with pytest.raises(InputError, match="does not exist"):
        plot_pareto(table, OBJECTIVES, tmp_path / "missing" / "pareto.png")
    with pytest.raises(InputError, match="no evaluations"):
        plot_per_cut([], tmp_path / "empty.png")


def test_a_time_limit_stops_the_search_after_the_running_measurement(space, table, tmp_path):
    evaluator = CountingTable(table, tmp_path / "measured.txt", delay_s=0.2)
    start = time.perf_counter()
    result = run_search(space, evaluator, n_trials=200, seed=0, timeout_s=1.0, **SEARCH_DEFAULTS)
    assert time.perf_counter() - start < 3.0
    assert 3 <= result.n_measured == len(evaluator.measured()) <= 7
