"""What the evaluation replays: per model, every configuration a policy may pick, measured.

For each model we build an artifact for the host (both sides), profile both libraries,
and evaluate with the search's own evaluator (real frames for bytes, simulated accuracy):

* our Pareto set, from the Optuna search (:func:`dyno_compile.search.pipeline.search`);
* Neurosurgeon's candidates: every cut at float32 (no quantisation, no codec);
* JALAD's: 8 bits with an entropy coder (zstd: FSE + Huffman) at every cut some uplink
  makes its fastest (:func:`fastest_somewhere`);
* cloud-only: the raw float32 input; and the input as a JPEG (:mod:`.jpeg`).

Times are measured on the host; the named targets (an ARM device, a CUDA cloud) are
estimated from those measurements (:func:`dyno_compile.search.estimate.estimate_library`)
and :meth:`PreparedModel.evaluations` re-times every configuration for the pair of
targets asked for, keeping each figure's source label. Bytes and accuracy do not depend
on the target. Everything is cached beside the artifact (``evaluate.json``), keyed by the
model hash, so a second report costs only the replays.
"""

from __future__ import annotations

import json
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
from dyno_compile.search.calibration import default_calibration
from dyno_compile.search.estimate import estimate_library
from dyno_compile.search.pipeline import SearchOptions, search, space_of
from dyno_compile.search.profile import LibraryProfile, config_times
from dyno_compile.search.wire_bytes import WireBytes

#: The issue's models: real CIFAR-10 ResNets, the real SqueezeNet ONNX, two zoo models.
MODELS = ("resnet20", "resnet56", "squeezenet", "resnet50", "mobilenet_v2")
#: Widths built: float32 (Neurosurgeon, cloud-only), 8 (JALAD), and narrow ones for ours.
BITS = ("float32", 8, 4, 2)
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
    profiles: dict[str, LibraryProfile]  # "device/host", "device/arm64", "cloud/host", "cloud/cuda-sm80"
    baseline_accuracy: float
    accuracy_budget: float
    metric: str
    calibration: str

    @property
    def device_only_cut(self) -> int:
        return max(c["position"] for c in self.artifact.cuts)

    def evaluations(self, device: str = "host", cloud: str = "host") -> list[Evaluation]:
        """Every measured configuration, timed for ``device`` and ``cloud``: the profiled
        functions of the target pair replace the host's; the codec stages stay as measured
        on the host (labelled so)."""
        host_d, host_c = self.profile("device", "host"), self.profile("cloud", "host")
        dev, cld = self.profile("device", device), self.profile("cloud", cloud)
        out = []
        for e in self.measured:
            d_host, c_host, _ = config_times(self.artifact, host_d, host_c, e.config)
            d, c, sources = config_times(self.artifact, dev, cld, e.config)
            out.append(
                replace(
                    e,
                    device_s=d + (e.device_s - d_host),
                    cloud_s=c + (e.cloud_s - c_host),
                    sources={**e.sources, **sources},
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
#: from 10 TB/s down to 10 B/s, 20 steps a decade.
SECONDS_PER_BYTE = np.logspace(-13, -1, 241)


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
    targets: tuple[str, str] = ("arm64", "cuda"),
    progress: Progress = silent,
) -> PreparedModel:
    """Build, profile, search and evaluate ``name`` under ``cache/name`` (reused when the
    cached evaluation matches the artifact)."""
    root = cache / name
    cached = _read_cache(root)
    if cached is not None:
        progress(f"{name}: using the cached evaluation in {root}")
        return _with_estimates(cached, targets)
    progress(f"{name}: importing and building for the host")
    graph = run_passes(load_model(model_spec(name)))
    plan = plan_build(graph, candidate_cuts(graph), bits=BITS)
    build_artifact(
        plan, root, device_targets=["host"], cloud_targets=["host"], overwrite=True, progress=prefixed(progress, name)
    )
    artifact = load_artifact(root)
    calibration = default_calibration(model_spec(name), graph.inputs[0].shape)
    options = SearchOptions(calibration, minutes=minutes, storage=f"sqlite:///{cache / (name + '.study.db')}")
    result, profiles, evaluator = search(artifact, options, progress=prefixed(progress, name))
    prepared = _with_estimates(
        PreparedModel(
            name,
            artifact,
            list(result.evaluations),
            {f"{p.side}/{p.target}": p for p in profiles},
            result.baseline_accuracy,
            result.accuracy_budget,
            evaluator.metric,
            calibration.source,
        ),
        targets,
    )
    space = set(space_of(artifact).configs())
    neurosurgeon, jalad = ([c for c in configs if c in space] for configs in baseline_configs(artifact))
    jalad_kept = fastest_somewhere(prepared, evaluator.wire, jalad)
    progress(
        f"{name}: baselines: float32 at {len(neurosurgeon)} cuts; JALAD's 8-bit zstd at the {len(jalad_kept)} "
        f"of {len(jalad)} cuts some uplink makes its fastest"
    )
    seen = {e.config: e for e in prepared.measured}
    for config in neurosurgeon + jalad_kept:
        if config not in seen:
            progress(f"{name}: measuring baseline {config.label}")
            seen[config] = evaluator(config)
    prepared = replace(prepared, measured=list(seen.values()))
    _write_cache(root, prepared)
    return prepared


def _with_estimates(prepared: PreparedModel, targets: tuple[str, str]) -> PreparedModel:
    """Add the named targets' profiles, estimated from the host measurement."""
    profiles = dict(prepared.profiles)
    for side, target in zip(("device", "cloud"), targets):
        estimate = estimate_library(prepared.artifact, prepared.profile(side, "host"), target)
        profiles[f"{side}/{estimate.target}"] = estimate
    return replace(prepared, profiles=profiles)


def _write_cache(root: Path, p: PreparedModel) -> None:
    data = {
        "version": CACHE_VERSION,
        "model_hash": p.artifact.model_hash,
        "name": p.name,
        "measured": [e.to_dict() for e in p.measured],
        "profiles": [prof.to_dict() for prof in p.profiles.values()],
        "baseline_accuracy": p.baseline_accuracy,
        "accuracy_budget": p.accuracy_budget,
        "metric": p.metric,
        "calibration": p.calibration,
    }
    tmp = root / (CACHE_FILE + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(root / CACHE_FILE)


def _read_cache(root: Path) -> PreparedModel | None:
    path = root / CACHE_FILE
    if not path.is_file():
        return None
    try:
        artifact = load_artifact(root)
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION or data.get("model_hash") != artifact.model_hash:
            return None
        profiles = [LibraryProfile.from_dict(d) for d in data["profiles"]]
        return PreparedModel(
            data["name"],
            artifact,
            [Evaluation.from_dict(d) for d in data["measured"]],
            {f"{p.side}/{p.target}": p for p in profiles},
            data["baseline_accuracy"],
            data["accuracy_budget"],
            data["metric"],
            data["calibration"],
        )
    except (ArtifactError, OSError, ValueError, KeyError):
        return None  # a damaged cache is rebuilt, not trusted
