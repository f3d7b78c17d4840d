"""Profile, measure and search one artifact, and store the Pareto set inside it.

This is where the search's parts meet: the libraries' times (measured on this host, over
TVM RPC on a real board, or estimated for a named target and labelled so), the bytes of
real frames, and accuracy simulated in JAX on calibration data, combined into one
:class:`Evaluation` per configuration; an Optuna study then finds the Pareto set. The
result goes under ``search/`` in the artifact and into its manifest (``"search"``), where
the run-time selector reads it.

Device time is the device segments and pack kernels plus the codec's encode; cloud time
the codec's decode, the unpack kernels and the cloud segments. The codec runs on a host
CPU at each end and is always measured on this machine (labelled ``measured:host``).

A model whose input is an image (``[1, C, H, W]``, C = 1 or 3, that every image codec
accepts) also gets the image uploads by default: cut 0 at 8 bits through each image codec
at each quality (:class:`~dyno_compile.search.pareto.SearchSpace`), measured like every
configuration: bytes and both ends' codec time from real frames, accuracy on the inputs
the cloud decodes. So the Pareto set holds a JPEG or WebP upload wherever one is best.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dyno_compile.artifact.build import sigterm_interrupts
from dyno_compile.artifact.load import Artifact, load_artifact
from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.packing import PayloadInfo
from dyno_compile.packing.vocab import get_codec
from dyno_compile.passes import annotate_costs
from dyno_compile.progress import Progress, Step, silent
from dyno_compile.search.accuracy import AccuracySimulator
from dyno_compile.search.calibration import CalibrationSet
from dyno_compile.search.estimate import estimate_library
from dyno_compile.search.pareto import (
    CLOUD_ONLY_CUT,
    DEFAULT_QUALITIES,
    IMAGE_BITS,
    IMAGE_CODEC_NAMES,
    Objectives,
    SearchSpace,
)
from dyno_compile.search.plots import plot_pareto, plot_per_cut
from dyno_compile.search.profile import LibraryProfile, config_times, profile_library
from dyno_compile.search.rpc import RPCError, profile_library_rpc, tracker_keys
from dyno_compile.search.study import (
    DEFAULT_SAMPLER,
    SearchError,
    SearchResult,
    open_storage,
    run_search,
    storage_url,
    stored_evaluations,
)
from dyno_compile.search.wire_bytes import DEFAULT_SAMPLES, WireBytes
from dyno_compile.targets import get_target
from dyno_compile.targets.runner import gpu_available

SEARCH_DIR = "search"
#: Share of the configuration space the search evaluates unless told otherwise: the
#: issue's bar (>= 95 % of the exhaustive hypervolume) is met at this share on resnet20.
DEFAULT_SHARE = 0.25
#: Minutes the study may run unless told otherwise: a 224x224 model's accuracy simulation
#: costs seconds per configuration on a 2-core CPU, and a build must end in minutes.
DEFAULT_MINUTES = 8.0
SIMULATORS = ("auto", "jax", "tvm")
#: Above this many MACs per image ``"auto"`` simulates a float32 model with the compiled
#: host library: resnet20 (41 M) runs fast in JAX; mobilenet_v2 (0.3 G) does not. A
#: float16 model stays in JAX at any size: TVM's x86 code converts every float16 value
#: on its own (SqueezeNet's fp16 ONNX took 48 s per configuration on 200 images in the
#: host library against 7 s in JAX, measured here).
JAX_MAX_MACS = 100_000_000


@dataclass(frozen=True)
class SearchOptions:
    """How to search an artifact. ``device_target``/``cloud_target``: whose times the
    search optimises (default: the first non-host target built for that side, else the
    host); a target that does not run here is estimated from the host measurement, unless
    ``rpc_tracker`` and ``rpc_key`` name a server to measure the device side on. An emulated
    board's times (``emulated:rpc:<key>``) are recorded but the search ranks by the host-based
    estimate instead, unless ``emulated_times`` asks for them explicitly.
    ``evaluations``: distinct configurations to measure (default a quarter of the space);
    ``minutes``: no new measurement starts after this long (``None``: no limit).
    ``simulate``: what runs the model's segments in the accuracy simulation
    (:func:`simulator_for`). ``storage``: an Optuna storage URL (default: a SQLite file beside the artifact).
    ``image_codecs``: the image codecs whose cut-0 uploads are searched, at
    ``image_qualities``; ``None`` (default): every one for a model with an image input
    (:func:`space_of`), none otherwise; ``()``: none."""

    calibration: CalibrationSet
    accuracy_budget: float = 1.0
    device_target: str | None = None
    cloud_target: str | None = None
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    evaluations: int | None = None
    minutes: float | None = DEFAULT_MINUTES
    storage: str | None = None
    study_name: str | None = None
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    byte_samples: int = DEFAULT_SAMPLES
    simulate: str = "auto"
    emulated_times: bool = False
    image_codecs: tuple[str, ...] | None = None
    image_qualities: tuple[int, ...] = DEFAULT_QUALITIES

    def __post_init__(self) -> None:
        if (self.rpc_tracker is None) != (self.rpc_key is None):
            raise InputError("RPC profiling needs both a tracker address and a key (--rpc-tracker, --rpc-key)")
        if self.minutes is not None and not self.minutes > 0:
            raise InputError(f"the search time limit must be positive minutes, got {self.minutes!r}")
        if not self.accuracy_budget >= 0:
            raise InputError(f"the accuracy budget is points of top-1 loss >= 0, got {self.accuracy_budget!r}")


class SearchInterrupted(SearchError):
    """Ctrl-C or SIGTERM stopped the study; the configurations it measured stay in its storage."""


class ArtifactEvaluator:
    """Evaluates configurations of one artifact from its profiles, real frames and JAX."""

    def __init__(
        self,
        artifact: Artifact,
        device: LibraryProfile,
        cloud: LibraryProfile,
        simulator: AccuracySimulator,
        wire: WireBytes,
        engine: str = "jax",
    ) -> None:
        self.artifact, self.device, self.cloud, self.simulator, self.wire = artifact, device, cloud, simulator, wire
        self.metric = "top-1" if simulator.calibration.labels is not None else "agreement with float"
        self.engine = engine

    def __call__(self, config: Config) -> Evaluation:
        device_s, cloud_s, sources = config_times(self.artifact, self.device, self.cloud, config)
        cost = self.wire.measure(config)
        accuracy, agreement = self.simulator.evaluate(
            config.cut, config.bits, config.granularity, config.codec, config.level
        )
        sources = {
            **sources,
            "codec_s": "measured:host",
            "bytes": f"measured:frames:{cost.samples}",
            "accuracy": f"simulated:{self.engine}:{self.metric}",
        }
        return Evaluation(
            config, device_s + cost.encode_s, cloud_s + cost.decode_s, cost.bytes, accuracy, agreement, sources
        )


def host_segments(artifact: Artifact) -> Callable[[int, tuple], tuple]:
    """Segment ``k`` of the artifact's chain run by its compiled cloud library for the host,
    sample by sample (the library is built for batch 1): an accuracy simulator's
    ``segments``, running exactly the code the cloud runs."""
    runner = artifact.runner("cloud", "host")

    def run(k: int, inputs: tuple) -> tuple:
        arrays = [np.asarray(x) for x in inputs]
        function = artifact.segments[k]["function"]
        outputs = [runner.run(function, [a[i] for a in arrays]) for i in range(len(arrays[0]))]
        return tuple(np.stack(column) for column in zip(*outputs))

    return run


def simulator_for(artifact: Artifact, calibration: CalibrationSet, simulate: str) -> tuple[AccuracySimulator, str]:
    """The accuracy simulator: segments in JAX (``"jax"``), in the artifact's host library
    (``"tvm"``), or ``"auto"``: JAX up to :data:`JAX_MAX_MACS` per image or for a float16
    model, TVM for larger float32 ones.
    Returns the simulator and the engine chosen (it labels every accuracy figure)."""
    if simulate not in SIMULATORS:
        raise InputError(f"simulate must be one of {SIMULATORS}, got {simulate!r}")
    if simulate == "auto":
        macs = sum(n.meta["macs"] for n in annotate_costs(artifact.graph).compute_nodes)
        half = str(artifact.graph.inputs[0].dtype) == "float16"
        simulate = "jax" if macs <= JAX_MAX_MACS or half else "tvm"
    positions = [c["position"] for c in artifact.cuts]
    segments = host_segments(artifact) if simulate == "tvm" else None
    return AccuracySimulator(artifact.graph, calibration, positions, segments=segments), simulate


def space_of(
    artifact: Artifact,
    image_codecs: tuple[str, ...] | None = None,
    qualities: tuple[int, ...] = DEFAULT_QUALITIES,
) -> SearchSpace:
    """Every configuration the artifact can run: its cuts, the widths it has kernels for,
    its granularity, both bit layouts and every lossless codec; and the image uploads
    (``image_codecs`` at ``qualities`` at cut 0). ``image_codecs=None``: every image codec
    that accepts the model's input, when it is an image, the artifact has its 8-bit cut-0
    kernel, and cut 0 is not device-only; none otherwise. Codecs named explicitly must
    all apply, or the InputError says why not."""
    cuts = [c["position"] for c in artifact.cuts]
    device_only = next(c["position"] for c in artifact.cuts if c["kind"] == "device-only")
    bits = tuple(artifact.manifest["bits"])
    reasons = {c: _image_refusal(artifact, c, bits, cuts, device_only) for c in IMAGE_CODEC_NAMES}
    if image_codecs is None:
        image_codecs = tuple(c for c, why in reasons.items() if why is None)
    for codec in image_codecs:
        why = reasons.get(codec, f"not an image codec (image codecs: {IMAGE_CODEC_NAMES})")
        if why is not None:
            raise InputError(f"image codec {codec!r} cannot upload {artifact.manifest['model']}'s input: {why}")
    return SearchSpace(
        tuple(cuts),
        bits,
        (artifact.manifest["granularity"],),
        device_only_cut=device_only,
        image_codecs=tuple(image_codecs),
        qualities=tuple(qualities) if image_codecs else (),
    )


def _image_refusal(
    artifact: Artifact, codec: str, bits: tuple[str, ...], cuts: list[int], device_only: int
) -> str | None:
    """Why ``codec`` cannot upload this artifact's input (``None`` if it can): the codec's
    own rule on the input tensor, then the 8-bit cut-0 kernel the device packs it with."""
    shape = tuple(artifact.manifest["inputs"][0]["shape"])
    reason = get_codec(codec).accepts(PayloadInfo(8, shape, "stream"))
    if reason is not None:
        return reason
    if CLOUD_ONLY_CUT not in cuts or CLOUD_ONLY_CUT == device_only:
        return f"the artifact has no cloud-only cut {CLOUD_ONLY_CUT}"
    if IMAGE_BITS not in bits:
        return f"the artifact has no {IMAGE_BITS}-bit kernels (built widths {list(bits)})"
    return None


def _default_target(artifact: Artifact, side: str) -> str:
    built = [lib["target"] for lib in artifact.manifest["libraries"].values() if lib["side"] == side]
    return next((t for t in built if t != "host"), "host")


def side_profiles(
    artifact: Artifact, side: str, target: str, options: SearchOptions, progress: Progress
) -> list[LibraryProfile]:
    """The profiles of one side: the host measurement always, then the chosen target's
    (measured over RPC, measured here where it runs, or estimated from the host); the
    search ranks by the last (an emulated board's times come before an estimate)."""
    progress(f"profiling the {side} library on this host")
    host = profile_library(artifact, side, "host")
    spec = get_target(target)
    if side == "device" and options.rpc_tracker:
        assert options.rpc_key is not None, "SearchOptions holds both rpc_tracker and rpc_key, or neither"
        progress(f"profiling the {side} library for {spec.name} over RPC ({options.rpc_key}@{options.rpc_tracker})")
        remote = profile_library_rpc(artifact, side, spec.name, tracker=options.rpc_tracker, key=options.rpc_key)
        if not remote.emulated or options.emulated_times:
            return [host, remote]
        # An emulator runs the board's code ~400x slow: times that pull every Pareto point
        # to cut 0. Keep them on record; rank by the labelled estimate from the host.
        progress(f"{remote.label}: emulated times are not a board's; the search uses the host-based estimate")
        return [host, remote, estimate_library(artifact, host, spec)]
    if spec.is_host:
        return [host]
    if gpu_available(spec):
        progress(f"profiling the {side} library on this machine's GPU ({spec.name})")
        return [host, profile_library(artifact, side, spec.name)]
    return [host, estimate_library(artifact, host, spec)]


def search(
    artifact: Artifact, options: SearchOptions, *, default_storage: str | None = None, progress: Progress = silent
) -> tuple[SearchResult, list[LibraryProfile], ArtifactEvaluator]:
    """Profile both sides, then run the study; the result and every profile taken."""
    device_target = options.device_target or _default_target(artifact, "device")
    cloud_target = options.cloud_target or _default_target(artifact, "cloud")
    device = side_profiles(artifact, "device", device_target, options, progress)
    cloud = side_profiles(artifact, "cloud", cloud_target, options, progress)
    progress(f"simulating accuracy on {len(options.calibration)} calibration samples ({options.simulate})")
    simulator, engine = simulator_for(artifact, options.calibration, options.simulate)
    evaluator = ArtifactEvaluator(
        artifact, device[-1], cloud[-1], simulator, WireBytes(simulator, samples=options.byte_samples), engine
    )
    space = space_of(artifact, options.image_codecs, options.image_qualities)
    size = len(space.configs())
    budget = options.evaluations or max(1, math.ceil(DEFAULT_SHARE * size))
    name = options.study_name or (
        f"{artifact.manifest['model']}-{artifact.model_hash[:12]}-{device[-1].target}-"
        f"{cloud[-1].target}-{artifact.manifest['granularity']}"
    )
    storage = options.storage or default_storage
    stored = stored_evaluations(storage, name)
    resumed = f"; resuming: {stored} already measured" if stored else ""
    progress(f"searching {budget} of {size} configurations (study {name}{resumed})")
    objectives = Objectives(simulator.float_accuracy, options.accuracy_budget)
    progress(Step("configurations measured", min(stored, budget), budget))
    try:
        result = run_search(
            space,
            _reporting(evaluator, progress, budget, objectives, stored),
            n_trials=4 * budget,
            max_evaluations=budget,
            accuracy_budget=options.accuracy_budget,
            baseline_accuracy=simulator.float_accuracy,
            storage=storage,
            study_name=name,
            sampler=options.sampler,
            seed=options.seed,
            timeout_s=options.minutes and 60 * options.minutes,
        )
    except KeyboardInterrupt as exc:
        raise SearchInterrupted(
            f"the search was interrupted ({str(exc) or 'SIGINT'}); the configurations it measured stay in study "
            f"{name!r} at {_redacted(storage_url(storage))}, and a search with the same options resumes it"
        ) from exc
    return result, device + cloud, evaluator


def _reporting(
    evaluator: ArtifactEvaluator, progress: Progress, budget: int, objectives: Objectives, stored: int
) -> Callable[[Config], Evaluation]:
    """The evaluator, reporting a :class:`Step` per configuration measured (counting on from
    the ``stored`` ones a resumed study already holds), with the Pareto set found by this
    run so far (within the accuracy budget) as the best."""
    measured: list[Evaluation] = []

    def evaluate(config: Config) -> Evaluation:
        evaluation = evaluator(config)
        measured.append(evaluation)
        pareto = objectives.pareto(measured)
        best = f"{len(pareto)} on the Pareto set" if pareto else "none within the accuracy budget yet"
        progress(Step("configurations measured", stored + len(measured), budget, config.label, best))
        return evaluation

    return evaluate


def write_search(
    root: Path, result: SearchResult, profiles: list[LibraryProfile], evaluator: ArtifactEvaluator, space: SearchSpace
) -> dict[str, Any]:
    """Write ``search/`` under ``root``; the manifest's ``"search"`` entry."""
    folder = root / SEARCH_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    objectives = result.objectives
    (folder / "evaluations.json").write_text(json.dumps([e.to_dict() for e in result.evaluations], indent=1))
    (folder / "profiles.json").write_text(json.dumps([p.to_dict() for p in profiles], indent=1))
    plot_pareto(result.evaluations, objectives, folder / "pareto.png")
    plot_per_cut(result.evaluations, folder / "per_cut.png")
    calibration = evaluator.simulator.calibration
    return {
        "search": {
            "pareto": [e.to_dict() for e in result.pareto],
            "baseline_accuracy": result.baseline_accuracy,
            "accuracy_budget": result.accuracy_budget,
            "metric": evaluator.metric,
            "simulated_with": evaluator.engine,
            "calibration": {"source": calibration.source, "samples": len(calibration)},
            "profiles": {
                side: _shown(ranked, profiles)
                for side, ranked in (("device", evaluator.device), ("cloud", evaluator.cloud))
            },
            "space": space.to_dict(),
            "space_size": len(space.configs()),
            "evaluated": result.n_evaluated,
            "study": {"name": result.study_name, "storage": _redacted(result.storage)},
        }
    }


def _shown(ranked: LibraryProfile, profiles: list[LibraryProfile]) -> str:
    """The label of the profile a side is ranked by, and of any unsteady measurement of that
    side it was estimated from: an estimate scales the host's figures, so a host timed under
    load must show through it wherever the search's times are printed."""
    unsteady = [p.label for p in profiles if p.side == ranked.side and not p.steady and p is not ranked]
    return ranked.label + "".join(f" (from {label})" for label in unsteady)


def _redacted(url: str) -> str:
    """A storage URL without its password: the manifest travels with the artifact."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL (":memory:")
        return url


def preflight(options: SearchOptions, default_storage: str | None) -> None:
    """Fail in seconds, before minutes of compiling, on a storage that cannot be opened or
    an RPC tracker that cannot be reached or has no server with the key."""
    open_storage(options.storage or default_storage)
    if options.rpc_tracker:
        keys = tracker_keys(options.rpc_tracker)
        if options.rpc_key not in keys:
            raise RPCError(
                f"TVM RPC tracker {options.rpc_tracker} has no server with key {options.rpc_key!r}; "
                f"registered keys: {sorted(keys) or 'none'}"
            )


def finish_with_search(
    options: SearchOptions, *, default_storage: str | None = None, progress: Progress = silent
) -> Callable[[Path], dict[str, Any]]:
    """A ``finish`` step for :func:`~dyno_compile.artifact.build.build_artifact` and
    :func:`~dyno_compile.artifact.store.amend`: search the artifact at ``root`` and add the
    result. Checks storage and RPC first (:func:`preflight`). SIGTERM stops it as Ctrl-C
    does (:func:`~dyno_compile.artifact.build.sigterm_interrupts`): a
    :class:`SearchInterrupted` once the study has begun."""
    preflight(options, default_storage)

    def finish(root: Path) -> dict[str, Any]:
        with sigterm_interrupts():
            artifact = load_artifact(root)
            result, profiles, evaluator = search(artifact, options, default_storage=default_storage, progress=progress)
            space = space_of(artifact, options.image_codecs, options.image_qualities)
            return write_search(root, result, profiles, evaluator, space)

    return finish
