"""The multi-objective search over configurations: an Optuna study, resumable and shareable.

:func:`run_search` runs an Optuna study that minimises device time, cloud time, bytes and
accuracy loss (:data:`~dyno_compile.search.pareto.OBJECTIVES`), with the accuracy budget
as a constraint (``Trial.set_constraint``, Optuna 5's replacement for the deprecated
``constraints_func``; the value is ``loss − budget`` points, feasible when ``<= 0``).
Everything needed to rebuild the result lives in the storage: each trial's full
:class:`Evaluation` is a user attribute (``evaluation``), and the study's space, baseline
accuracy and budget are a study user attribute, so :func:`load_results` needs nothing else.

Encoding: one categorical parameter per grid axis (cut, bits, granularity, layout, codec,
and ``level``, the image codecs' quality, when the space has image codecs), always all
of them, even where an axis is irrelevant (granularity and layout for float widths;
everything but the cut for device-only; the quality for lossless codecs; everything but
codec, quality and granularity for an image upload, which is always cut 0 at 8 bits).
Conditional parameters would drop out of NSGA-II's intersection search space (it only
crosses over parameters every trial has) and send multivariate TPE back to sampling each
parameter independently; a single "config index" parameter would give crossover nothing
to recombine and TPE no axis to model.
The redundancy costs nothing: grid points are mapped to their canonical :class:`Config`
and a configuration already measured is never measured again.

Measuring is the expensive part, so a trial whose configuration the study already has
reuses the stored evaluation, and concurrent workers never measure one configuration
twice: each trial records its configuration (user attribute ``config``) before measuring,
and waits while an *earlier* trial (lower number) is running with the same configuration
or has not yet recorded one (it is still sampling, a matter of milliseconds). Trial
numbers are allocated under a lock on the study, so of two trials after one
configuration the later one always sees the earlier one and waits; the earlier one never
waits for the later. A worker that dies is found by Optuna's heartbeat (every
:data:`HEARTBEAT_S` s; stale after :data:`GRACE_S` s): its trial is failed and the waiters
go on.

Storage: a SQLite file by default (:data:`DEFAULT_STORAGE`), any Optuna RDB URL for many
workers (``postgresql://user@host/db``: start the same ``run_search`` call in as many
processes as wanted, each with its own ``seed``), or ``":memory:"`` for a throw-away study
in one process. Running again with the same ``study_name`` continues the study. Watch a
study live, or look at it afterwards, with::

    optuna-dashboard sqlite:///dyno-search.db      # or SearchResult.storage, e.g. postgresql+psycopg2://...

(``pip install 'dyno-compile[dashboard]'``); it reads the same storage.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.pool
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.engine import make_url

from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import DynoError, InputError
from dyno_compile.packing.vocab import FLOAT_MODES, mode_width
from dyno_compile.search.pareto import DEFAULT_BITS, OBJECTIVES, Objectives, SearchSpace

DEFAULT_STORAGE = "sqlite:///dyno-search.db"
IN_MEMORY = ":memory:"
DEFAULT_STUDY = "dyno-search"
SAMPLERS = ("tpe", "nsga2", "random")
#: Multivariate TPE: the most hypervolume for a given number of evaluations, and the best
#: worst case over seeds, at 10 % and 25 % of a 1081-configuration CNN-shaped space
#: (benchmarks/search_samplers.py, 10 seeds: 0.958 and 0.990 of the exhaustive set's,
#: against 0.943 and 0.983 for NSGA-II and 0.943 and 0.968 for random). Its sampling
#: costs ~0.1 s per trial at a few hundred trials, nothing next to one measurement.
DEFAULT_SAMPLER = "tpe"
#: NSGA-II population: small, so the first generation (pure random sampling) is a small
#: part of budgets of a few hundred evaluations (Optuna's 50 measured no better).
NSGA2_POPULATION = 16
#: Seconds to wait for a database server to answer before giving up (libpq's minimum is 2).
CONNECT_TIMEOUT_S = 10
HEARTBEAT_S = 5
GRACE_S = 30
POLL_S = 0.05
SUPPORTED_DATABASES = ("sqlite", "postgresql", "mysql")
#: PostgreSQL advisory lock serialising table creation (b"dyno" as an integer), and how
#: long a worker waits for it.
SCHEMA_LOCK_KEY = 0x64796E6F
SCHEMA_LOCK_TIMEOUT_S = 60

CONFIG_ATTR = "config"
EVALUATION_ATTR = "evaluation"
MEASURED_ATTR = "measured"
SEARCH_ATTR = "dyno.search"
CONSTRAINT = "accuracy_budget"

Evaluator = Callable[[Config], Evaluation]


class SearchError(DynoError):
    """The search cannot run or its result cannot be built: bad storage, a study that does
    not match the request, an evaluator returning nonsense, an accuracy budget nothing meets."""


@dataclass(frozen=True)
class SearchResult:
    """What a study found. ``evaluations``: each distinct configuration evaluated, sorted;
    ``pareto``: the non-dominated ones within the accuracy budget; ``n_trials``: completed
    trials (a trial repeating a configuration counts, its measure is reused);
    ``n_measured``: completed trials that called the evaluator (equal to ``n_evaluated``;
    more only if a live trial took longer than :data:`GRACE_S` to record its configuration
    and was taken for dead)."""

    study_name: str
    storage: str
    evaluations: tuple[Evaluation, ...]
    pareto: tuple[Evaluation, ...]
    n_trials: int
    n_measured: int
    baseline_accuracy: float
    accuracy_budget: float

    @property
    def n_evaluated(self) -> int:
        return len(self.evaluations)

    @property
    def objectives(self) -> Objectives:
        return Objectives(self.baseline_accuracy, self.accuracy_budget)


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """Silence Optuna's experimental-feature warnings for the features used on purpose
    (heartbeat, stale-trial checks, metric names); they would repeat on every run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _describe(url: str) -> str:
    """The URL with any password hidden, for error messages."""
    with contextlib.suppress(sqlalchemy.exc.ArgumentError):
        return make_url(url).render_as_string(hide_password=True)
    return url


def storage_url(storage: str | None) -> str:
    """The URL a storage argument means: :data:`DEFAULT_STORAGE` for ``None``, and
    ``postgresql://`` spelled with the psycopg2 driver, because SQLAlchemy 2.1 takes a bare
    ``postgresql://`` to mean psycopg 3 while the ``postgres`` extra installs psycopg2.
    This is the URL to give ``optuna-dashboard`` too."""
    url = DEFAULT_STORAGE if storage is None else storage
    with contextlib.suppress(sqlalchemy.exc.ArgumentError):
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def _database(url: str) -> str:
    """The database kind of a storage URL, checked before anything connects."""
    try:
        backend = make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        raise SearchError(
            f"storage {url!r} is not a database URL; use e.g. {DEFAULT_STORAGE!r}, "
            f"'postgresql://user@host/db' or {IN_MEMORY!r}"
        ) from None
    if backend == "postgres":
        raise SearchError(f"storage {_describe(url)}: write 'postgresql://', not 'postgres://'")
    if backend not in SUPPORTED_DATABASES:
        raise SearchError(
            f"storage {_describe(url)}: unsupported database {backend!r}; use one of {SUPPORTED_DATABASES}"
        )
    return backend


def _check_sqlite_path(url: str) -> None:
    """SQLite would create a missing file but fails late and vaguely on a missing folder."""
    database = make_url(url).database
    if not database or database == IN_MEMORY:
        raise SearchError(
            f"storage {url}: give a file (sqlite:///path/to/study.db); for a throw-away "
            f"in-memory study use {IN_MEMORY!r}"
        )
    path = Path(database)
    if not path.parent.is_dir():
        raise SearchError(f"storage {url}: folder {path.parent} does not exist")
    if path.exists() and not path.is_file():
        raise SearchError(f"storage {url}: {path} is not a file")


def _fast_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Write-ahead log, no fsync per commit: a trial commits about 25 times, and a sync per
    commit made SQLite studies ~10x slower than the search itself. A study survives a
    crash of the process; only a power cut can lose its last trials."""

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened while creating the tables predate the pragmas


def _connect_args(database: str, timeout_s: float) -> dict[str, Any]:
    if database == "sqlite":
        return {}
    return {"connect_timeout": max(2, math.ceil(timeout_s))}


def open_storage(
    storage: str | None = None, *, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> optuna.storages.BaseStorage:
    """The Optuna storage for a URL (``None``: :data:`DEFAULT_STORAGE`). Fails fast with a
    :class:`SearchError` on an unknown scheme, a missing folder, a missing driver or a
    server that does not answer within ``connect_timeout_s``."""
    url = storage_url(storage)
    if url == IN_MEMORY:
        return optuna.storages.InMemoryStorage()
    database = _database(url)
    if database == "sqlite":
        _check_sqlite_path(url)
    connect_args = _connect_args(database, connect_timeout_s)
    engine_kwargs = {"connect_args": connect_args, "pool_pre_ping": True}
    try:
        with _schema_lock(url, database, connect_args), _quietly():
            opened = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
        if database == "sqlite":
            _fast_sqlite(opened.engine)
        return opened
    except ImportError as e:
        raise SearchError(
            f"storage {_describe(url)}: the database driver is not installed ({e}); for "
            "PostgreSQL: pip install 'dyno-compile[postgres]'"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise SearchError(f"cannot open storage {_describe(url)}: {reason}") from None


@contextlib.contextmanager
def _schema_lock(url: str, database: str, connect_args: dict[str, Any]) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates its tables: it checks and then
    creates them with no lock, so workers opening a fresh database together fail with
    'relation "studies" already exists'. Other databases pass through (SQLite locks the
    file; MySQL workers should let one worker open the database first)."""
    if database != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"SET lock_timeout = '{SCHEMA_LOCK_TIMEOUT_S}s'"))
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            yield  # the lock goes with the connection
    finally:
        engine.dispose()


def _make_sampler(sampler: str | optuna.samplers.BaseSampler, seed: int | None) -> optuna.samplers.BaseSampler:
    """A sampler by name; TPE uses the constant liar so parallel workers spread out."""
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    if sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=NSGA2_POPULATION, seed=seed)
    if sampler == "tpe":
        with _quietly():
            return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise InputError(f"sampler must be one of {SAMPLERS} or an optuna sampler, got {sampler!r}")


def _search_attrs(space: SearchSpace, objectives: Objectives) -> dict[str, Any]:
    return {
        "space": space.to_dict(),
        "baseline_accuracy": objectives.baseline_accuracy,
        "accuracy_budget": objectives.accuracy_budget,
    }


def _open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    url: str,
    sampler: optuna.samplers.BaseSampler,
    load_if_exists: bool,
) -> optuna.Study:
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            directions=["minimize"] * len(OBJECTIVES),
            load_if_exists=load_if_exists,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise SearchError(
            f"study {name!r} already exists in {_describe(url)}; pass load_if_exists=True to "
            "continue it, or choose another study_name"
        ) from None
    except ValueError as e:
        raise SearchError(f"study {name!r} in {_describe(url)} cannot be continued: {e}") from None
    with _quietly():
        study.set_metric_names([*OBJECTIVES[:3], "accuracy_loss_points"])
    return study


def _claim_study(study: optuna.Study, url: str, space: SearchSpace, objectives: Objectives) -> None:
    """Record what a new study searches and queue the space's anchors as its first trials;
    or check that a continued study searches the same: trials measured for another space,
    baseline or budget cannot be mixed with new ones."""
    attrs = _search_attrs(space, objectives)
    existing = study.user_attrs.get(SEARCH_ATTR)
    if existing is None:
        if study.trials:
            raise SearchError(
                f"study {study.study_name!r} in {_describe(url)} was not created by run_search; "
                "choose another study_name"
            )
        study.set_user_attr(SEARCH_ATTR, attrs)
        for point in space.anchors():
            study.enqueue_trial(point, skip_if_exists=True)
        return
    for key, value in attrs.items():
        if existing.get(key) != value:
            raise SearchError(
                f"study {study.study_name!r} in {_describe(url)} was created with {key}="
                f"{existing.get(key)!r}, not {value!r}; use another study_name for a new search"
            )


def _checked(evaluation: Any, config: Config) -> Evaluation:
    """The evaluator's answer, refused if it is not a sane measure of ``config``."""
    if not isinstance(evaluation, Evaluation):
        raise SearchError(f"evaluator returned {type(evaluation).__name__} for {config.label}, not an Evaluation")
    if evaluation.config != config:
        raise SearchError(f"evaluator asked for {config.label} returned an evaluation of {evaluation.config.label}")
    for name in ("device_s", "cloud_s", "bytes"):
        value = getattr(evaluation, name)
        if not (math.isfinite(value) and value >= 0):
            raise SearchError(f"evaluator returned {name}={value!r} for {config.label}; must be finite and >= 0")
    if not 0.0 <= evaluation.accuracy <= 1.0:
        raise SearchError(
            f"evaluator returned accuracy={evaluation.accuracy!r} for {config.label}; accuracy is a fraction 0..1"
        )
    return evaluation


def _suggest(trial: Trial, space: SearchSpace) -> Config:
    point = {name: trial.suggest_categorical(name, values) for name, values in space.dimensions.items()}
    return space.config_of(point)


def _blocks(other: FrozenTrial, number: int, key: str, now: datetime) -> bool:
    """Whether trial ``number`` must wait for ``other`` before measuring ``key``: ``other``
    is earlier and running either the same configuration or a not yet recorded one (a
    trial that records nothing within the grace period is dead, not sampling)."""
    if other.state != TrialState.RUNNING or other.number >= number:
        return False
    claimed = other.user_attrs.get(CONFIG_ATTR)
    if claimed is None:
        started = other.datetime_start
        return started is None or (now - started).total_seconds() < GRACE_S
    return claimed == key


def _stored_or_wait(study: optuna.Study, number: int, key: str) -> Evaluation | None:
    """The study's evaluation of ``key`` once no earlier trial may still produce one;
    ``None`` when this trial is the one to measure it."""
    while True:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        for t in trials:
            if t.state == TrialState.COMPLETE and t.user_attrs.get(CONFIG_ATTR) == key:
                return Evaluation.from_dict(t.user_attrs[EVALUATION_ATTR])
        now = datetime.now()
        if not any(_blocks(t, number, key, now) for t in trials):
            return None
        time.sleep(POLL_S)
        with _quietly():
            optuna.storages.fail_stale_trials(study)


def _objective(
    space: SearchSpace, evaluator: Evaluator, objectives: Objectives, study: optuna.Study
) -> Callable[[Trial], tuple[float, ...]]:
    def objective(trial: Trial) -> tuple[float, ...]:
        config = _suggest(trial, space)
        trial.set_user_attr(CONFIG_ATTR, config.label)
        evaluation = _stored_or_wait(study, trial.number, config.label)
        trial.set_user_attr(MEASURED_ATTR, evaluation is None)
        if evaluation is None:
            evaluation = _checked(evaluator(config), config)
        trial.set_user_attr(EVALUATION_ATTR, evaluation.to_dict())
        trial.set_constraint(CONSTRAINT, objectives.violation(evaluation))
        return objectives.vector(evaluation)

    return objective


def run_search(
    space: SearchSpace,
    evaluator: Evaluator,
    *,
    n_trials: int,
    accuracy_budget: float,
    baseline_accuracy: float,
    max_evaluations: int | None = None,
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY,
    sampler: str | optuna.samplers.BaseSampler = DEFAULT_SAMPLER,
    seed: int | None = None,
    load_if_exists: bool = True,
    timeout_s: float | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> SearchResult:
    """Run up to ``n_trials`` more trials of the study ``study_name`` and return everything
    it holds (this and earlier runs, all workers).

    ``accuracy_budget``: most accuracy loss allowed, in percentage points below
    ``baseline_accuracy`` (a fraction 0..1, the float model's accuracy on the same data as
    the evaluator's). ``max_evaluations``: stop early once the study holds this many
    distinct configurations: measuring is what costs, and a sampler that converges repeats
    configurations (free, reused), so a budget is best stated in evaluations with
    ``n_trials`` as the cap (concurrent workers may each finish one more). ``timeout_s``:
    start no trial after this many seconds (the one running finishes), so a search fits
    a build's time whatever a measurement costs.
    ``sampler``: ``"tpe"`` (default, see :data:`DEFAULT_SAMPLER`), ``"nsga2"``,
    ``"random"`` or an Optuna sampler.
    Many workers: call this with one ``storage`` URL and ``study_name`` from each process,
    each with its own ``seed`` (equal seeds sample equal configurations, which are then
    waited for rather than measured in parallel).

    Raises :class:`SearchError` for a bad storage, a study created for another space,
    baseline or budget, a bad evaluation, or when no evaluated configuration is within the
    budget (the message gives the smallest loss found; the trials stay in the study).
    """
    _check_count("n_trials", n_trials)
    if max_evaluations is not None:
        _check_count("max_evaluations", max_evaluations)
    if not callable(evaluator):
        raise InputError(f"evaluator must be callable (Config -> Evaluation), got {type(evaluator).__name__}")
    if accuracy_budget is None:
        raise InputError("accuracy_budget is required (points of accuracy loss allowed, e.g. 1.0)")
    objectives = Objectives(baseline_accuracy, accuracy_budget)
    url = storage_url(storage)
    study = _open_study(
        study_name,
        open_storage(url, connect_timeout_s=connect_timeout_s),
        url,
        _make_sampler(sampler, seed),
        load_if_exists,
    )
    _claim_study(study, url, space, objectives)
    limit = min(max_evaluations or math.inf, len(space.configs()))
    if _n_distinct(study) < limit:
        study.optimize(
            _objective(space, evaluator, objectives, study),
            n_trials=n_trials,
            timeout=timeout_s,
            callbacks=[_stop_at(limit)],
        )
    return _result(study, url)


def stored_evaluations(storage: str | None, study_name: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """Distinct configurations the study already holds (0 where it does not exist yet): what
    :func:`run_search` resumes from and will not measure again."""
    url = storage_url(storage)
    if url == IN_MEMORY:
        return 0
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url, connect_timeout_s=connect_timeout_s))
    except KeyError:
        return 0
    return _n_distinct(study)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def _n_distinct(study: optuna.Study) -> int:
    """Distinct configurations the study's completed trials evaluated."""
    return len({t.user_attrs.get(CONFIG_ATTR) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))})


def _stop_at(limit: float) -> Callable[[optuna.Study, FrozenTrial], None]:
    """An Optuna callback stopping this worker once the study holds ``limit`` distinct
    configurations (by default the whole space: nothing is left to find)."""

    def callback(study: optuna.Study, _trial: FrozenTrial) -> None:
        if _n_distinct(study) >= limit:
            study.stop()

    return callback


def load_results(
    storage: str | None, study_name: str = DEFAULT_STUDY, *, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> SearchResult:
    """The result of a study from its storage alone (another process, a later day)."""
    url = storage_url(storage)
    opened = open_storage(url, connect_timeout_s=connect_timeout_s)
    try:
        study = optuna.load_study(study_name=study_name, storage=opened)
    except KeyError:
        names = optuna.get_all_study_names(opened)
        raise SearchError(f"no study {study_name!r} in {_describe(url)}; it has {names}") from None
    if SEARCH_ATTR not in study.user_attrs:
        raise SearchError(f"study {study_name!r} in {_describe(url)} was not created by run_search")
    return _result(study, url)


def _result(study: optuna.Study, url: str) -> SearchResult:
    attrs = study.user_attrs[SEARCH_ATTR]
    budget = attrs["accuracy_budget"]
    if budget is None:  # run_search always records one
        raise SearchError(f"study {study.study_name!r} in {_describe(url)} records no accuracy budget")
    objectives = Objectives(attrs["baseline_accuracy"], budget)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    by_config = {e.config: e for e in (Evaluation.from_dict(t.user_attrs[EVALUATION_ATTR]) for t in complete)}
    evaluations = tuple(by_config[c] for c in sorted(by_config))
    if not evaluations:
        raise SearchError(f"study {study.study_name!r} in {_describe(url)} has no completed trial")
    pareto = tuple(objectives.pareto(evaluations))
    if not pareto:
        best = min(evaluations, key=objectives.loss)
        raise SearchError(
            f"no configuration meets the accuracy budget of {objectives.accuracy_budget} points: the smallest "
            f"accuracy loss found is {objectives.loss(best):.3f} points ({best.config.label}, over "
            f"{len(evaluations)} configurations); the trials stay in study {study.study_name!r}"
        )
    measured = sum(1 for t in complete if t.user_attrs.get(MEASURED_ATTR))
    return SearchResult(
        study.study_name,
        url,
        evaluations,
        pareto,
        len(complete),
        measured,
        objectives.baseline_accuracy,
        budget,
    )


def exhaustive(space: SearchSpace, evaluator: Evaluator) -> list[Evaluation]:
    """Every configuration of ``space`` evaluated once: the reference a search is compared with."""
    return [_checked(evaluator(c), c) for c in space.configs()]


@dataclass(frozen=True)
class TableEvaluator:
    """An evaluator that looks configurations up in precomputed evaluations (an earlier
    sweep, or :func:`synthetic_evaluations`); a class, not a closure, so it can be sent to
    worker processes."""

    table: dict[Config, Evaluation]

    @classmethod
    def of(cls, evaluations: Iterable[Evaluation]) -> TableEvaluator:
        return cls({e.config: e for e in evaluations})

    def __call__(self, config: Config) -> Evaluation:
        try:
            return self.table[config]
        except KeyError:
            raise SearchError(f"the evaluation table has no entry for {config.label}") from None


#: A ResNet-20-shaped (CIFAR-10) split space: per cut, the elements and channels of the
#: crossing tensor, the share of the model's compute done before it, and how sensitive the
#: accuracy is to quantising it. Cut 0 is cloud-only (the input crosses), 12 device-only.
# fmt: off
SYNTHETIC_CUTS: dict[int, tuple[int, int, float, float]] = {
    0: (3072, 3, 0.0, 1.6), 1: (16384, 16, 0.03, 1.3), 2: (16384, 16, 0.12, 1.0), 3: (16384, 16, 0.21, 0.9),
    4: (16384, 16, 0.30, 0.8), 5: (8192, 32, 0.40, 0.8), 6: (8192, 32, 0.50, 0.7), 7: (8192, 32, 0.60, 0.6),
    8: (4096, 64, 0.70, 0.6), 9: (4096, 64, 0.80, 0.5), 10: (4096, 64, 0.90, 0.45), 11: (64, 64, 0.995, 0.3),
    12: (0, 0, 1.0, 0.0),
}
# fmt: on
SYNTHETIC_DEVICE_ONLY = 12
SYNTHETIC_BASELINE = 0.92
#: Whole model: 25 ms on the device (ARM CPU), 1.5 ms in the cloud (GPU).
_DEVICE_MODEL_S, _CLOUD_MODEL_S = 25e-3, 1.5e-3
#: Compressed/packed size ratios of ReLU activations per (codec, layout or float width).
_CODEC_RATIO = {
    ("none", "stream"): 1.0,
    ("none", "bitplane"): 1.0,
    ("lz4", "stream"): 0.85,
    ("lz4", "bitplane"): 0.65,
    ("zstd", "stream"): 0.7,
    ("zstd", "bitplane"): 0.5,
    ("none", "float"): 1.0,
    ("lz4", "float"): 0.9,
    ("zstd", "float"): 0.75,
}
#: Seconds per input byte to encode on the device and decode in the cloud.
_CODEC_S_PER_BYTE = {"none": (0.0, 0.0), "lz4": (2e-9, 0.3e-9), "zstd": (8e-9, 1e-9)}
#: The codecs the synthetic model has figures for. A codec added to the packing table stays
#: out of the synthetic space until it has its figures here.
SYNTHETIC_CODECS: tuple[str, ...] = tuple(_CODEC_S_PER_BYTE)


def synthetic_space(cuts: Sequence[int] = tuple(SYNTHETIC_CUTS), bits: Sequence[str] = DEFAULT_BITS) -> SearchSpace:
    """A :class:`SearchSpace` over (a subset of) the synthetic cuts, with the synthetic codecs."""
    return SearchSpace(tuple(cuts), tuple(bits), codecs=SYNTHETIC_CODECS, device_only_cut=_synthetic_device_only(cuts))


def _synthetic_device_only(cuts: Sequence[int]) -> int | None:
    return SYNTHETIC_DEVICE_ONLY if SYNTHETIC_DEVICE_ONLY in cuts else None


def _synthetic(config: Config, noise: np.ndarray) -> Evaluation:
    """One synthetic measure: device time grows with the cut, cloud time falls, bytes are
    elements × bits/8 × the codec's ratio (plus range parameters), accuracy drops fast
    below 4 bits, most at early cuts; ``noise`` (4 values near 1) breaks exact ties."""
    elements, channels, share, sensitivity = SYNTHETIC_CUTS[config.cut]
    if config.cut == SYNTHETIC_DEVICE_ONLY:
        return Evaluation(config, _DEVICE_MODEL_S * noise[0], 0.0, 0.0, SYNTHETIC_BASELINE, 1.0, {"*": "synthetic"})
    is_float = config.bits in FLOAT_MODES
    width = mode_width(config.bits)
    ranges = 0 if is_float else 8 * (channels if config.granularity == "channel" else 1)
    packed = elements * width / 8 + ranges
    wire = 16 + packed * _CODEC_RATIO[config.codec, "float" if is_float else config.layout] * noise[2]
    pack_s_per_element = (
        0.0 if config.bits == "float32" else 1e-9 if is_float else (4e-9 if config.layout == "stream" else 6e-9)
    )
    encode, decode = _CODEC_S_PER_BYTE[config.codec]
    device_s = (_DEVICE_MODEL_S * share + elements * pack_s_per_element + packed * encode) * noise[0]
    cloud_s = (_CLOUD_MODEL_S * (1 - share) + elements * 0.3e-9 + packed * decode + 5e-6) * noise[1]
    loss_points = (
        0.0
        if is_float
        else sensitivity * 30 * 2.0 ** (1 - width) * (0.6 if config.granularity == "channel" else 1.0) * noise[3]
    )
    accuracy = max(0.10, round(SYNTHETIC_BASELINE - float(loss_points) / 100, 4))
    agreement = max(0.10, round(1 - float(loss_points) / 90, 4))
    return Evaluation(
        config, float(device_s), float(cloud_s), float(round(wire)), accuracy, agreement, {"*": "synthetic"}
    )


def synthetic_evaluations(space: SearchSpace, *, seed: int = 0) -> list[Evaluation]:
    """Synthetic but realistically shaped evaluations of every configuration of ``space``
    (cuts from :data:`SYNTHETIC_CUTS`), to test and benchmark the search without measuring."""
    unknown = sorted(set(space.cuts) - set(SYNTHETIC_CUTS))
    if unknown or space.device_only_cut != _synthetic_device_only(space.cuts):
        raise InputError(
            f"synthetic evaluations cover cuts {sorted(SYNTHETIC_CUTS)} with device-only cut "
            f"{SYNTHETIC_DEVICE_ONLY}; got unknown cuts {unknown}, device-only {space.device_only_cut}"
        )
    if not set(space.codecs) <= set(SYNTHETIC_CODECS):
        raise InputError(f"synthetic evaluations cover codecs {SYNTHETIC_CODECS}, got {space.codecs}")
    rng = np.random.default_rng(seed)
    return [_synthetic(c, rng.uniform(0.97, 1.03, 4)) for c in space.configs()]
