"""Roofline estimates of each function's time on a target with no hardware at hand.

The roofline time of a function on a target is ``max(flop / peak, bytes / bandwidth)``:
``2 * MACs`` of floating-point work against the target's FP32 peak, and bytes moved against
its memory bandwidth (:mod:`dyno_compile.targets.spec` gives both). For a segment the
MACs and bytes are summed over its operators' cost annotations
(:func:`dyno_compile.passes.annotate_costs`): each operator reads its activations and
weights and writes its output, as the compiled kernels do between fused groups. The
pack/unpack kernels do no MACs; they are memory-bound on their input and output bytes.

A roofline is a bound no real kernel reaches, so estimates are *calibrated* with a
measurement of the same functions on a target that was at hand (usually the host), per
function: ``estimate = measured * roofline(target) / roofline(measured target)``, that is,
each function is assumed to reach on the target the fraction of its roofline it reached
where it was measured. Per function rather than one overall efficiency because measured
efficiencies differ by orders of magnitude between functions (a large convolution
segment gets a good fraction of peak; a 2 µs kernel is mostly call overhead), and the
search compares cuts by exactly these differences; a single efficiency would rank a cut
of many tiny functions as cheap as its MACs say, which no measurement supports.

What it cannot know: fixed per-call costs (VM dispatch, thread-pool wake-up, and for
GPUs kernel launch, several µs) are scaled as if they were work, so estimates of tiny
functions on a much faster target are optimistic; schedules differ per target. Every
estimate is labelled ``estimated:roofline:<target>`` and names its calibration.

The named boards (:data:`~dyno_compile.targets.spec.BOARD_TARGETS`: ``rpi4``, ``rpi5``,
``jetson-nano``, ``phone``) are not scaled from the host at all: their functions are priced
node by node by :mod:`dyno_compile.search.device_model`, fitted to the latencies ncnn and
TFLite published for those boards (what a device running kernels as good as theirs takes),
labelled ``estimated:anchored:<target>``, their ``calibration`` naming the device profile
and the published rows it rests on. The host measurement then only says which functions
there are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from dyno_compile.search.device_features import CLASSES, Features, node_features
from dyno_compile.search.profile import LibraryProfile, ProfileError
from dyno_compile.targets.spec import BOARD_TARGETS, TargetSpec, get_target

if TYPE_CHECKING:
    from dyno_compile.artifact.load import Artifact


def function_costs(artifact: Artifact, side: str) -> dict[str, tuple[int, int]]:
    """``(MACs, bytes moved)`` of every function of the ``side`` library."""
    from dyno_compile.passes import annotate_costs

    libraries = [lib for lib in artifact.manifest["libraries"].values() if lib["side"] == side]
    if not libraries:
        raise ProfileError(f"{artifact.root}: no {side} library")
    nodes = annotate_costs(artifact.graph).compute_nodes
    costs = {}
    batch = artifact.manifest.get("cloud_batch", 1)
    for seg in artifact.segments:
        span = [n.meta for n in nodes[seg["start"] : seg["end"]]]
        macs, weights = sum(m["macs"] for m in span), sum(m["weight_bytes"] for m in span)
        activations = sum(m["in_bytes"] + m["out_bytes"] for m in span)
        costs[seg["function"]] = (macs, weights + activations)
        if "batched_function" in seg:  # B requests: B times the work and activations, the weights once
            costs[seg["batched_function"]] = (batch * macs, weights + batch * activations)
    for name, info in libraries[0]["module"]["functions"].items():  # the same functions for every target
        if name not in costs:  # a pack/unpack kernel: the bytes it reads and writes
            costs[name] = (0, sum(_nbytes(t) for t in (*info["inputs"], *info["outputs"])))
    return costs


def _nbytes(tensor: dict) -> int:
    from dyno_compile.targets.module import TensorSpec

    return TensorSpec.from_dict(tensor).nbytes


def roofline_seconds(macs: int, nbytes: int, spec: TargetSpec) -> float:
    """The roofline time of ``macs`` multiply-accumulates and ``nbytes`` of traffic on ``spec``."""
    if spec.peak_gflops <= 0 or spec.mem_bandwidth_gbs <= 0:
        raise ProfileError(
            f"target {spec.name!r} has no roofline figures (peak_gflops {spec.peak_gflops}, "
            f"mem_bandwidth_gbs {spec.mem_bandwidth_gbs})"
        )
    return max(2 * macs / (spec.peak_gflops * 1e9), nbytes / (spec.mem_bandwidth_gbs * 1e9))


def function_features(artifact: Artifact, side: str) -> dict[str, tuple[Features, int]]:
    """Per function of the ``side`` library: the device model's node features and how many
    requests one call serves (the batched cloud segments serve ``cloud_batch``).

    Segments are their IR nodes (as :func:`function_costs` finds them); a pack/unpack
    kernel is one memory-bound node of the bytes it reads and writes."""
    from dyno_compile.passes import annotate_costs

    libraries = [lib for lib in artifact.manifest["libraries"].values() if lib["side"] == side]
    if not libraries:
        raise ProfileError(f"{artifact.root}: no {side} library")
    graph = annotate_costs(artifact.graph)
    nodes = graph.compute_nodes
    batch = artifact.manifest.get("cloud_batch", 1)
    out: dict[str, tuple[Features, int]] = {}
    for seg in artifact.segments:
        feats = node_features(graph, nodes[seg["start"] : seg["end"]], one_function=True)
        out[seg["function"]] = (feats, 1)
        if "batched_function" in seg:
            out[seg["batched_function"]] = (feats, batch)
    other = CLASSES.index("other")
    for name, info in libraries[0]["module"]["functions"].items():
        if name not in out:
            nbytes = sum(_nbytes(t) for t in (*info["inputs"], *info["outputs"]))
            out[name] = (Features.of([(other, 0.0, float(nbytes))]), 1)
    return out


def anchored_library(artifact: Artifact, calibration: LibraryProfile, spec: TargetSpec) -> LibraryProfile:
    """Seconds per call of every function of ``calibration`` on the board ``spec``, from the
    device model fitted to published latencies (:mod:`dyno_compile.search.device_model`):
    the target's datasheet peak and bandwidth, its device's fitted scalars."""
    from dyno_compile.search.device_model import default_model, describe_anchor, device_profile

    profile = device_profile(spec.name)
    model = default_model()
    anchor = describe_anchor(spec.name, model)  # fails clearly when the device has no rows
    features = function_features(artifact, calibration.side)
    _check_same_functions(calibration, features)
    scale = model.scale(profile.hardware, profile.framework)
    peak, bandwidth = spec.peak_gflops * 1e9, spec.mem_bandwidth_gbs * 1e9
    seconds = {}
    for f in calibration.seconds:
        feats, batch = features[f]
        seconds[f] = batch * float(model.node_seconds(feats, peak, bandwidth, spec.threads, scale).sum())
    return LibraryProfile(
        calibration.side,
        spec.name,
        f"estimated:anchored:{spec.name}",
        seconds,
        calibration=f"{anchor}; functions of {calibration.source}",
    )


def _check_same_functions(calibration: LibraryProfile, known: Mapping[str, object]) -> None:
    """``calibration`` times only functions of the artifact's library (``known``)."""
    unknown = sorted(set(calibration.seconds) - set(known))
    if unknown:
        raise ProfileError(
            f"{calibration.label} times functions the artifact's {calibration.side} library lacks: "
            f"{', '.join(unknown[:5])}; was it measured on another artifact?"
        )


def estimate_library(artifact: Artifact, calibration: LibraryProfile, target: str | TargetSpec) -> LibraryProfile:
    """Estimated seconds per call of every function in ``calibration`` on ``target``, labelled
    ``estimated:roofline:<target>``. ``calibration`` must be a measurement (host or RPC) of
    the same side; for its own target the estimate equals it. A named board
    (``rpi4``, ``rpi5``, ``jetson-nano``, ``phone``) gets the anchored estimate instead
    (:func:`anchored_library`, ``estimated:anchored:<target>``)."""
    if calibration.estimated or calibration.emulated:
        raise ProfileError(f"calibrate with a measurement, not an estimate or an emulation ({calibration.label})")
    spec, measured_on = get_target(target), get_target(calibration.target)
    if spec.name in BOARD_TARGETS:
        return anchored_library(artifact, calibration, spec)
    costs = function_costs(artifact, calibration.side)
    _check_same_functions(calibration, costs)
    seconds = {
        f: s * roofline_seconds(*costs[f], spec) / roofline_seconds(*costs[f], measured_on)
        for f, s in calibration.seconds.items()
    }
    return LibraryProfile(
        calibration.side, spec.name, f"estimated:roofline:{spec.name}", seconds, calibration=calibration.source
    )
