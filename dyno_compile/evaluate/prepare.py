"""What the evaluation replays: per model, every configuration a policy may pick, measured.

For each model we build an artifact for the host (both sides), profile both libraries,
and evaluate with the search's own evaluator (real frames for bytes, simulated accuracy):

* our Pareto set, from the Optuna search (:func:`dyno_compile.search.pipeline.search`);
* Neurosurgeon's candidates: every cut at float32 (no quantisation, no codec);
* JALAD's: 8 bits with an entropy coder (zstd: FSE + Huffman) at every cut some uplink
  makes its fastest (:func:`fastest_somewhere`);
* cloud-only: the raw float32 input; and, for an image input, the input through an image
  codec at the fewest bytes within the accuracy budget (:func:`measure_image_uploads`).

Times are measured on the host; the named targets (the boards of
:data:`DEVICES`, a CUDA cloud) are estimated (:func:`dyno_compile.search.estimate.estimate_library`:
boards anchored on published latencies, the cloud by roofline from the host measurement)
and :meth:`PreparedModel.evaluations` re-times every configuration for the pair of
targets asked for, keeping each figure's source label. The codec stages (the lossless
codecs' and image codecs' encode on the device) are Python and C library code no
published row covers; on a board they are scaled by :func:`codec_scale`, labelled.
Bytes and accuracy do not depend on the target. The measurements are cached beside the
artifact (``evaluate.json``), keyed by the model hash, so a second report costs only the
estimates and the replays.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dyno_compile.artifact.build import build_artifact
from dyno_compile.artifact.load import Artifact, load_artifact
from dyno_compile.artifact.plan import candidate_cuts, plan_build
from dyno_compile.artifact.store import ArtifactError
from dyno_compile.configs import Config, Evaluation
from dyno_compile.datasets.location import data_root
from dyno_compile.errors import InputError
from dyno_compile.frontend.resolve import load_model
from dyno_compile.passes import run_passes
from dyno_compile.progress import Progress, prefixed, silent
from dyno_compile.search.calibration import CalibrationSet, default_calibration
from dyno_compile.search.estimate import estimate_library
from dyno_compile.search.pareto import CLOUD_ONLY_CUT, IMAGE_BITS, SearchSpace
from dyno_compile.search.pipeline import ArtifactEvaluator, SearchOptions, search, simulator_for, space_of
from dyno_compile.search.profile import LibraryProfile, config_times
from dyno_compile.search.wire_bytes import WireBytes
from dyno_compile.targets import get_target

#: The models: real CIFAR-10 ResNets, the real SqueezeNet ONNX and EfficientNet-Lite2 (real
#: ImageNet weights), and two zoo models with random weights, for timing (accuracy there is
#: agreement with the float model).
MODELS = ("resnet20", "resnet56", "squeezenet", "efficientnet_lite2", "resnet50", "mobilenet_v2")
#: The zoo's ImageNet models have random weights: they are timing models, whose accuracy is
#: only agreement with the float model, so the first 100 of the 200 ImageNet samples
#: measure it (a whole-model pass of resnet50 over 200 images takes a minute here, and the
#: baselines need several). Labelled in the calibration's source.
TIMING_MODEL_SAMPLES = {"resnet50": 100, "mobilenet_v2": 100}
#: Device classes: the low- and mid-tier boards DynO is for (a Raspberry Pi 4, a Jetson
#: Nano's CPU, a phone's big cores), and two references: a Raspberry Pi 5 and this host.
DEVICES = ("rpi4", "jetson-nano", "phone", "rpi5", "host")
#: The cloud: an A100 (a roofline estimate from the host's measurement unless a GPU times it).
CLOUD = "cuda-sm80"
#: Widths built: float32 (Neurosurgeon, cloud-only), 8 (JALAD), and narrow ones for ours.
BITS = ("float32", 8, 4, 2)
#: The image-coded upload baseline's codecs (those the input admits) and qualities, lowest
#: first: WebP, which sent the fewest bytes within a point on three of the four models of
#: docs/rate-accuracy (at q95, so the ladder goes past the search's qualities). Each
#: quality of an ImageNet model is a whole-model pass over the 200 images (30-40 s here),
#: so one codec, and the ladder starts where losses near a point begin.
UPLOAD_CODECS = ("webp",)
UPLOAD_QUALITIES = (75, 90, 95)
CACHE_FILE = "evaluate.json"
CACHE_VERSION = 2


def model_spec(name: str) -> str:
    """What ``load_model`` takes for an evaluation model name."""
    if name == "squeezenet":
        return str(data_root() / "imagenet" / "squeezenet1.1_fp16.onnx")
    return name


@dataclass
class PreparedModel:
    """One model's measured configurations and the profiles that time them."""

    name: str
    artifact: Artifact
    measured: list[Evaluation]  # host device, host cloud
    profiles: dict[str, LibraryProfile]  # "device/host", "device/rpi4", ..., "cloud/host", "cloud/cuda-sm80"
    baseline_accuracy: float
    accuracy_budget: float
    metric: str
    calibration: str

    @property
    def device_only_cut(self) -> int:
        return max(c["position"] for c in self.artifact.cuts)

    def evaluations(self, device: str = "host", cloud: str = "host") -> list[Evaluation]:
        """Every measured configuration, timed for ``device`` and ``cloud``: the profiled
        functions of the target pair replace the host's; the device's codec stage is
        scaled by :func:`codec_scale` (labelled so), the cloud's stays as measured on the
        host (a server CPU)."""
        host_d, host_c = self.profile("device", "host"), self.profile("cloud", "host")
        dev, cld = self.profile("device", device), self.profile("cloud", cloud)
        scale = codec_scale(dev.target)
        codec = {} if scale == 1.0 else {"codec_s": f"estimated:per-core-peak:{dev.target} (host x{scale:.2f})"}
        out = []
        for e in self.measured:
            d_host, c_host, _ = config_times(self.artifact, host_d, host_c, e.config)
            d, c, sources = config_times(self.artifact, dev, cld, e.config)
            out.append(
                replace(
                    e,
                    device_s=d + scale * (e.device_s - d_host),
                    cloud_s=c + (e.cloud_s - c_host),
                    sources={**e.sources, **sources, **codec},
                )
            )
        return out

    def profile(self, side: str, target: str) -> LibraryProfile:
        key = f"{side}/{target}"
        if key not in self.profiles:
            raise InputError(f"{self.name}: no {side} profile for {target!r}; have {sorted(self.profiles)}")
        return self.profiles[key]


def baseline_configs(artifact: Artifact) -> tuple[list[Config], list[Config]]:
    """Neurosurgeon's and cloud-only's configurations (every cut at float32: cut 0 is
    cloud-only, the last device-only) and JALAD's (every offloading cut at 8-bit zstd)."""
    cuts = sorted(c["position"] for c in artifact.cuts)
    return [Config(c, "float32") for c in cuts], [Config(c, "8", codec="zstd") for c in cuts[:-1]]


#: Seconds per byte at which :func:`fastest_somewhere` compares configurations: uplinks
#: from 1 GB/s down to 10 kB/s, 20 steps a decade; the traces' mean rates span 0.1 to
#: 92 MB/s, and each cut it keeps costs a pass over the calibration set.
SECONDS_PER_BYTE = np.logspace(-9, -4, 101)


def fastest_somewhere(prepared: PreparedModel, wire: WireBytes, configs: list[Config]) -> list[Config]:
    """Those of ``configs`` that some uplink makes faster than the others and device-only
    on some pair of the profiled targets. A baseline that takes the lowest-latency
    configuration of a fixed kind (JALAD) never chooses another, so only these need their
    accuracy simulated — bytes and times are cheap, a simulation is a pass over the
    calibration set."""
    costs = [wire.measure(c) for c in configs]
    nbytes = np.array([w.bytes for w in costs])
    device_only = Config(prepared.device_only_cut)
    keep: set[int] = set()
    for device in (p for p in prepared.profiles.values() if p.side == "device"):
        for cloud in (p for p in prepared.profiles.values() if p.side == "cloud"):
            compute = np.array(
                [
                    sum(config_times(prepared.artifact, device, cloud, c)[:2]) + w.encode_s + w.decode_s
                    for c, w in zip(configs, costs)
                ]
            )
            total = compute[None, :] + SECONDS_PER_BYTE[:, None] * nbytes[None, :]
            best = total.argmin(axis=1)
            faster = total[np.arange(len(best)), best] < config_times(prepared.artifact, device, cloud, device_only)[0]
            keep.update(int(i) for i in best[faster])
    return [configs[i] for i in sorted(keep)]


def prepare_model(
    name: str,
    cache: Path,
    *,
    minutes: float = 1.5,
    devices: tuple[str, ...] = DEVICES,
    cloud: str = CLOUD,
    progress: Progress = silent,
) -> PreparedModel:
    """Build, profile, search and evaluate ``name`` under ``cache/name`` (reused when the
    cached evaluation matches the artifact; baselines it lacks are measured and added),
    with profiles for every device of ``devices`` and for ``cloud``."""
    root = cache / name
    cached = _read_cache(root)
    evaluator: ArtifactEvaluator | None = None
    if cached is not None:
        progress(f"{name}: using the cached evaluation in {root}")
        prepared, timed_for = cached
    else:
        prepared, evaluator = _build_and_search(name, root, cache, minutes, progress)
        timed_for = ()
    prepared = _with_estimates(prepared, devices, cloud)
    seen = {e.config: e for e in prepared.measured}

    def measure(config: Config) -> Evaluation:
        """One baseline configuration, measured and at once cached: an interrupted run
        loses at most the measurement in progress."""
        nonlocal evaluator
        evaluator = evaluator or _evaluator(prepared)
        progress(f"{name}: measuring {config.label}")
        seen[config] = evaluator(config)
        _write_cache(root, replace(prepared, measured=list(seen.values())), timed_for)
        return seen[config]

    space = space_of(prepared.artifact)
    targets = (*devices, cloud)
    if cached is None:
        _write_cache(root, prepared, timed_for)  # the search's measurements, before any baseline
    if not set(targets) <= set(timed_for):  # the baselines' cuts depend on the targets timed
        configs = set(space.configs())
        neurosurgeon, jalad = ([c for c in cs if c in configs] for cs in baseline_configs(prepared.artifact))
        evaluator = evaluator or _evaluator(prepared)
        jalad_kept = fastest_somewhere(prepared, evaluator.wire, jalad)
        progress(
            f"{name}: baselines: float32 at {len(neurosurgeon)} cuts; JALAD's 8-bit zstd at the {len(jalad_kept)} "
            f"of {len(jalad)} cuts some uplink makes its fastest"
        )
        for config in neurosurgeon + jalad_kept:
            if config not in seen:
                measure(config)
        timed_for = tuple(sorted(set(timed_for) | set(targets)))
        _write_cache(root, replace(prepared, measured=list(seen.values())), timed_for)
    image_uploads(space, seen, prepared.baseline_accuracy, prepared.accuracy_budget, measure)
    return replace(prepared, measured=list(seen.values()))


def _build_and_search(
    name: str, root: Path, cache: Path, minutes: float, progress: Progress
) -> tuple[PreparedModel, ArtifactEvaluator]:
    """Build ``name`` for the host (both sides), search it there; the search's evaluator."""
    progress(f"{name}: importing and building for the host")
    graph = run_passes(load_model(model_spec(name)))
    plan = plan_build(graph, candidate_cuts(graph), bits=BITS)
    build_artifact(
        plan, root, device_targets=["host"], cloud_targets=["host"], overwrite=True, progress=prefixed(progress, name)
    )
    artifact = load_artifact(root)
    calibration = calibration_for(name, graph.inputs[0].shape)
    options = SearchOptions(calibration, minutes=minutes, storage=f"sqlite:///{cache / (name + '.study.db')}")
    result, profiles, evaluator = search(artifact, options, progress=prefixed(progress, name))
    prepared = PreparedModel(
        name,
        artifact,
        list(result.evaluations),
        {f"{p.side}/{p.target}": p for p in profiles},
        result.baseline_accuracy,
        result.accuracy_budget,
        evaluator.metric,
        calibration.source,
    )
    return prepared, evaluator


def calibration_for(name: str, input_shape: Sequence[int]) -> CalibrationSet:
    """The model's default calibration data (:func:`default_calibration`), cut to
    :data:`TIMING_MODEL_SAMPLES` for the timing models."""
    calibration = default_calibration(model_spec(name), input_shape)
    keep = TIMING_MODEL_SAMPLES.get(name)
    if keep is None or keep >= len(calibration):
        return calibration
    y = None if calibration.labels is None else calibration.labels[:keep]
    return CalibrationSet(calibration.x[:keep], y, f"{calibration.source} (first {keep} of {len(calibration)})")


def _evaluator(prepared: PreparedModel) -> ArtifactEvaluator:
    """The search's evaluator for a cached model: host profiles, the default calibration."""
    artifact = prepared.artifact
    calibration = calibration_for(prepared.name, artifact.graph.inputs[0].shape)
    simulator, engine = simulator_for(artifact, calibration, "auto")
    return ArtifactEvaluator(
        artifact,
        prepared.profile("device", "host"),
        prepared.profile("cloud", "host"),
        simulator,
        WireBytes(simulator),
        engine,
    )


def within_budget(evaluation: Evaluation, baseline: float, budget: float) -> bool:
    """At most ``budget`` points below ``baseline``, rounded as the selector rounds."""
    return round((baseline - evaluation.accuracy) * 100.0, 9) <= budget


def image_uploads(
    space: SearchSpace,
    seen: dict[Config, Evaluation],
    baseline: float,
    budget: float,
    measure: Callable[[Config], Evaluation],
) -> list[Config]:
    """Per image codec of :data:`UPLOAD_CODECS` that ``space`` admits, measure the
    :data:`UPLOAD_QUALITIES` from the lowest up until one is within the accuracy budget
    (more quality costs more bytes, so that one is the codec's fewest bytes within budget:
    what the image-coded cloud-only baseline sends). Adds the measurements to ``seen``;
    returns the configurations it measured."""
    measured = []
    for codec in (c for c in UPLOAD_CODECS if c in space.image_codecs):
        for quality in UPLOAD_QUALITIES:
            config = space.canonical(Config(CLOUD_ONLY_CUT, IMAGE_BITS, codec=codec, level=quality))
            if config not in seen:
                seen[config] = measure(config)
                measured.append(config)
            if within_budget(seen[config], baseline, budget):
                break
    return measured


def codec_scale(target: str) -> float:
    """How much longer the device's codec stages take on ``target`` than on this host:
    the ratio of one core's FP32 peak (the codecs run on one core; no published row times
    them). 1 for the host."""
    spec, host = get_target(target), get_target("host")
    if spec.is_host:
        return 1.0
    return (host.peak_gflops / host.threads) / (spec.peak_gflops / spec.threads)


def _with_estimates(prepared: PreparedModel, devices: tuple[str, ...], cloud: str) -> PreparedModel:
    """Add the named targets' profiles, estimated from the host measurement."""
    profiles = dict(prepared.profiles)
    for side, target in [("device", d) for d in devices] + [("cloud", cloud)]:
        if get_target(target).is_host:
            continue
        estimate = estimate_library(prepared.artifact, prepared.profile(side, "host"), target)
        profiles[f"{side}/{estimate.target}"] = estimate
    return replace(prepared, profiles=profiles)


def _write_cache(root: Path, p: PreparedModel, timed_for: tuple[str, ...]) -> None:
    """Measurements only: estimates are made afresh from them on every read, so a better
    estimator never meets stale figures. ``timed_for``: the targets whose baselines were
    chosen and measured."""
    data = {
        "version": CACHE_VERSION,
        "model_hash": p.artifact.model_hash,
        "name": p.name,
        "measured": [e.to_dict() for e in p.measured],
        "profiles": [prof.to_dict() for prof in p.profiles.values() if not prof.estimated],
        "timed_for": list(timed_for),
        "baseline_accuracy": p.baseline_accuracy,
        "accuracy_budget": p.accuracy_budget,
        "metric": p.metric,
        "calibration": p.calibration,
    }
    tmp = root / (CACHE_FILE + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(root / CACHE_FILE)


def _read_cache(root: Path) -> tuple[PreparedModel, tuple[str, ...]] | None:
    """The cached model and the targets its baselines were chosen for; None when there is
    no cache or it does not match the artifact."""
    path = root / CACHE_FILE
    if not path.is_file():
        return None
    try:
        artifact = load_artifact(root)
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION or data.get("model_hash") != artifact.model_hash:
            return None
        profiles = [p for p in map(LibraryProfile.from_dict, data["profiles"]) if not p.estimated]
        prepared = PreparedModel(
            data["name"],
            artifact,
            [Evaluation.from_dict(d) for d in data["measured"]],
            {f"{p.side}/{p.target}": p for p in profiles},
            data["baseline_accuracy"],
            data["accuracy_budget"],
            data["metric"],
            data["calibration"],
        )
        return prepared, tuple(data.get("timed_for", ()))
    except (ArtifactError, OSError, ValueError, KeyError):
        return None  # a damaged cache is rebuilt, not trusted
