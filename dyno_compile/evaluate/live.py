"""The replay checked against the live system: the same policies, configurations and
trace, once through the real server on loopback behind the link shaper and once replayed.

The evaluation's figures come from :func:`~dyno_compile.evaluate.replay.replay`; this
shows they are the live system's. For each policy a real :class:`DeviceClient` (the
policy's selector over the model's measured configurations, on an emulated phone-class
device, :mod:`.emulate`) sends real calibration images, one request at a time, to a
real server process (``python -m dyno_compile serve``) through a :class:`LinkShaper`
playing the trace from the first request; then the replay runs the same selector over
the same trace with the same prober settings, and with the client's hedged offload
where the evaluation replays it (:data:`~dyno_compile.evaluate.compare.HEDGED`: ours).
Agreement means:

* **bytes exactly**: every frame the client sent is, byte for byte in length, the frame
  the evaluation's wire measurement builds for that image and configuration, and the
  live mean per inference equals the replay's when both chose the same configurations
  (a fixed policy; requests a multiple of the images measured, so the evaluation's mean
  frame is over the same images);
* **latency within noise**: the live mean latency over the replay's, reported per policy,
  the replay being given the round trip and the server load the live run measured.

Both sides run on the host CPU here: the cloud's times are the host profile's (what the
loopback server computes with), the device's are the host's times a factor slower.
"""

from __future__ import annotations

import secrets
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import numpy as np

from dyno_compile.artifact.load import Artifact
from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.evaluate.compare import HEDGED, OURS, policies
from dyno_compile.evaluate.emulate import emulate_device, slower_device
from dyno_compile.evaluate.prepare import PreparedModel, model_spec
from dyno_compile.evaluate.replay import ReplayResult, ReplaySettings, replay
from dyno_compile.evaluate.shaper import LinkShaper
from dyno_compile.evaluate.traces import LabelledTrace
from dyno_compile.packing import encode_packed
from dyno_compile.progress import Progress, silent
from dyno_compile.runtime.client import ClientOptions, DeviceClient
from dyno_compile.runtime.endpoint import connect
from dyno_compile.runtime.link import LinkEstimator
from dyno_compile.runtime.protocol import REQUEST_HEADER_BYTES, decode_reply, encode_request, model_id
from dyno_compile.runtime.selector import Selector, is_device_only
from dyno_compile.runtime.sides import DeviceSide
from dyno_compile.search.accuracy import AccuracySimulator
from dyno_compile.search.calibration import CalibrationSet, default_calibration
from dyno_compile.search.wire_bytes import DEFAULT_SAMPLES, packed_cut

#: Seconds the server process may take to load the artifact and listen.
SERVER_START_S = 60.0
#: The live comparison's policies: every replayed one the live client can run (a JPEG
#: upload is not a cut of the model, so the client has no such configuration).
LIVE_POLICIES = ("device-only", "cloud-only (raw)", "Neurosurgeon", "JALAD (8-bit + zstd)", OURS)


@dataclass(frozen=True)
class LiveRequest:
    """One live request: the configuration chosen, where it ended, its latency and the
    frame it sent (0 for device-only)."""

    config: Config
    where: str
    latency_s: float
    frame_bytes: int


@dataclass(frozen=True)
class LiveComparison:
    """One policy, live and replayed, over the same trace. ``expected_frame_bytes``: per
    live request, the length of the frame the wire measurement builds for its image and
    configuration."""

    policy: str
    live: list[LiveRequest]
    replayed: ReplayResult
    expected_frame_bytes: list[int]

    @property
    def live_mean_latency_s(self) -> float:
        return float(np.mean([r.latency_s for r in self.live]))

    @property
    def live_bytes_per_inference(self) -> float:
        return float(np.mean([r.frame_bytes for r in self.live]))

    @property
    def frames_exact(self) -> bool:
        return [r.frame_bytes for r in self.live] == self.expected_frame_bytes

    @property
    def same_configs(self) -> bool:
        return [r.config for r in self.live] == [r.config for r in self.replayed.requests]

    @property
    def fallbacks(self) -> int:
        return sum(r.where == "fallback" for r in self.live)

    def summary(self) -> dict:
        return {
            "policy": self.policy,
            "requests": len(self.live),
            "live_mean_latency_ms": 1e3 * self.live_mean_latency_s,
            "replay_mean_latency_ms": 1e3 * self.replayed.mean_latency_s,
            "latency_ratio": self.live_mean_latency_s / self.replayed.mean_latency_s,
            "live_bytes": self.live_bytes_per_inference,
            "replay_bytes": self.replayed.bytes_per_inference,
            "frames_exact": self.frames_exact,
            "same_configs": self.same_configs,
            "fallbacks": self.fallbacks,
            "live_offloaded": sum(r.where == "cloud" for r in self.live) / len(self.live),
            "replay_offloaded": self.replayed.offloaded_fraction,
            "rtt_s": self.replayed.settings.rtt_s,
            "cloud_load": self.replayed.settings.cloud_load,
        }


def emulated_evaluations(prepared: PreparedModel, device_only_s: float) -> tuple[list[Evaluation], float]:
    """The host-timed configurations with device times scaled so that device-only takes
    ``device_only_s`` (labelled), and the factor."""
    evaluations = prepared.evaluations("host", "host")
    device_only = next(e for e in evaluations if e.config.cut == prepared.device_only_cut)
    factor = device_only_s / device_only.device_s
    return slower_device(evaluations, factor), factor


def live_comparison(
    prepared: PreparedModel,
    trace: LabelledTrace,
    *,
    rtt_s: float,
    requests: int = 2 * DEFAULT_SAMPLES,
    device_only_s: float = 0.2,
    policy_names: Sequence[str] = LIVE_POLICIES,
    probe_every_s: float = ClientOptions.probe_every_s,
    progress: Progress = silent,
) -> list[LiveComparison]:
    """Each policy of ``policy_names`` live over ``trace`` and replayed (see the module)."""
    evaluations, factor = emulated_evaluations(prepared, device_only_s)
    progress(
        f"{prepared.name}: live run on an emulated device {factor:.0f}x slower than the host, "
        f"trace {trace.name}, round trip {1e3 * rtt_s:.0f} ms"
    )
    factories = policies(prepared, evaluations)
    images = default_calibration(model_spec(prepared.name), prepared.artifact.graph.inputs[0].shape).x[:DEFAULT_SAMPLES]
    frames = _FrameSizes(prepared.artifact, images)
    with _ServeProcess(prepared.artifact) as (host, port):
        _warm_cloud(f"grpc://{host}:{port}", prepared.artifact, evaluations, images[0])
        with LinkShaper((host, port), uplink=None, one_way_delay_s=rtt_s / 2) as shaper:
            endpoint = "grpc://{}:{}".format(*shaper.address)
            out = []
            for name in policy_names:
                settings = ReplaySettings(
                    rtt_s=rtt_s, requests=requests, probe_every_s=probe_every_s, hedge=name in HEDGED
                )
                live, measured = _live(
                    factories[name]("sequential"), evaluations, prepared, endpoint, shaper, trace, images, settings
                )
                replayed = replay(
                    factories[name]("sequential"),
                    trace.trace,
                    replace(settings, rtt_s=measured["rtt_s"], cloud_load=measured["cloud_load"]),
                )
                expected = [frames.size(r.config, i % len(images)) for i, r in enumerate(live)]
                out.append(LiveComparison(name, live, replayed, expected))
                s = out[-1].summary()
                progress(
                    f"{prepared.name}: {name}: live {s['live_mean_latency_ms']:.1f} ms, replay "
                    f"{s['replay_mean_latency_ms']:.1f} ms (round trip {1e3 * s['rtt_s']:.1f} ms, server load "
                    f"x{s['cloud_load']:.2f} as measured live); bytes {s['live_bytes']:.0f} vs "
                    f"{s['replay_bytes']:.0f}"
                )
            return out


def _warm_cloud(endpoint: str, artifact: Artifact, evaluations: list[Evaluation], x: np.ndarray) -> None:
    """Every offloading configuration once through the server: first calls pay one-off
    set-up a replay knows nothing of."""
    device = DeviceSide(artifact)
    model = model_id(artifact.model_hash)
    transport = connect(endpoint)
    try:
        for e in evaluations:
            if not is_device_only(e):
                env = device.start(x[None], e.config.cut)
                frame = device.frame(env, e.config, secrets.randbits(64))  # the replay guard wants fresh ids
                reply = decode_reply(transport.call(encode_request(frame, model=model), 60.0))
                if not reply.ok:
                    raise InputError(f"warming the cloud up with {e.config.label}: {reply.status.name} {reply.message}")
    finally:
        transport.close()


class _ServeProcess:
    """``python -m dyno_compile serve`` on a free loopback port, as a process of its own: a
    cloud is another machine, and in this process its Python threads and TVM's spinning
    thread pool would contend with the client's and the shaper's (a server in-process
    reported 3-62 ms for a 1.9 ms model)."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> tuple[str, int]:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dyno_compile",
                "serve",
                str(self.artifact.root),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        stdout = self.proc.stdout
        assert stdout is not None, "Popen(stdout=PIPE) gives a pipe"
        ready = select.select([stdout], [], [], SERVER_START_S)[0]
        line = stdout.readline().strip() if ready else ""
        parts = urlsplit(line)
        if not parts.hostname or not parts.port:
            self.__exit__()
            raise InputError(f"the live run's server did not start within {SERVER_START_S:.0f} s (said {line!r})")
        return parts.hostname, parts.port

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _live(
    selector: Selector,
    evaluations: list[Evaluation],
    prepared: PreparedModel,
    endpoint: str,
    shaper: LinkShaper,
    trace: LabelledTrace,
    images: np.ndarray,
    settings: ReplaySettings,
) -> tuple[list[LiveRequest], dict[str, float]]:
    """``settings.requests`` requests, one at a time, with the trace starting at the first
    (no time-out: the replay never abandons a frame either); and what the live run
    measured of its surroundings for the replay to be given: the round trip through the
    shaper (the client's estimate from its pings: the shaper's timers and the gRPC stack
    add a few ms to the delay asked for) and the server's load (its reported time over the
    profiled cloud time: decoding, the codec and the RPC stack cost a Python server more
    than the kernels alone; the replay's default is 1, the profile exactly)."""
    if settings.requests is None:
        raise InputError("a live run sends a number of requests: give ReplaySettings.requests, not duration_s")
    options = ClientOptions(
        selector=selector,
        link=LinkEstimator(),
        probe_every_s=settings.probe_every_s,
        probe_bytes=settings.probe_bytes,
        timeout_s=60.0,
        hedge=settings.hedge,
    )
    shaper.set_uplink(None)
    out, loads = [], []
    with emulate_device(DeviceClient(prepared.artifact, [endpoint], options), evaluations) as client:
        shaper.set_uplink(trace.trace)
        for i in range(settings.requests):
            result = client.run(images[i % len(images)][None])
            e = result.decision.evaluation
            frame = result.bytes_sent - REQUEST_HEADER_BYTES if result.bytes_sent else 0
            out.append(LiveRequest(e.config, result.where, result.latency_s, frame))
            if result.reply is not None and e.cloud_s > 0:
                loads.append(result.reply.server_s / e.cloud_s)
        rtt_s = client.link.conditions().rtt_s
    shaper.set_uplink(None)
    return out, {"rtt_s": rtt_s, "cloud_load": float(np.median(loads)) if loads else 1.0}


class _FrameSizes:
    """The frame each (configuration, image) makes, built as the wire measurement builds it
    (NumPy quantise/pack, bit-identical to the kernels; the same codec)."""

    def __init__(self, artifact: Artifact, images: np.ndarray) -> None:
        self.simulator = AccuracySimulator(
            artifact.graph, CalibrationSet(images, None, "live-run images"), [c["position"] for c in artifact.cuts]
        )
        self._sizes: dict[tuple[Config, int], int] = {}

    def size(self, config: Config, image: int) -> int:
        key = (config, image)
        if key not in self._sizes:
            packed = [t.relayout(config.layout) for t in packed_cut(self.simulator, config, image)]
            frame = (
                encode_packed(packed, codec=config.codec, level=config.level, cut_id=config.cut, request_id=0)
                if packed
                else b""
            )
            self._sizes[key] = len(frame)
        return self._sizes[key]
