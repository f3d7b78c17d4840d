"""A slower device on this machine: the real device work, then a sleep until the time the
emulated device would take.

On loopback the device and the cloud are the same CPU, so device-only beats any offload by
the round trip at every bandwidth and the selector never has a reason to switch. DynO's
question only arises when the device is slower than the cloud, so a client can run as a
phone-class device would: each request's device part (the segments before the cut and the
frame, or the whole network) takes the configuration's *emulated* device time — the host's
profiled time times a factor, or a labelled estimate for a named target — the real work
first (outputs stay exact), then a sleep for the difference. The candidates' device times
are scaled the same way, so the client's device-load estimate stays near 1, as for a device
profiled on itself.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

import numpy as np

from dyno_compile.artifact.load import Artifact
from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.runtime.client import DeviceClient
from dyno_compile.runtime.selector import is_device_only, local_remainders
from dyno_compile.runtime.sides import DeviceLike
from dyno_compile.search.profile import LibraryProfile, config_times


def device_only_evaluation(artifact: Artifact) -> Evaluation:
    """Device-only as the search measures it: the device segments' profiled host times
    (``search/profiles.json``), no bytes, no cloud time, the float model's accuracy. A short
    search may not have evaluated it, yet a client can always fall back to it."""
    profiles = [
        LibraryProfile.from_dict(d) for d in json.loads((artifact.root / "search" / "profiles.json").read_text())
    ]
    device = next(p for p in profiles if p.side == "device" and p.target == "host")
    cloud = next(p for p in profiles if p.side == "cloud" and p.target == "host")
    search = artifact.manifest["search"]
    config = Config(search["space"]["device_only_cut"])
    device_s, _, sources = config_times(artifact, device, cloud, config)
    return Evaluation(config, device_s, 0.0, 0.0, search["baseline_accuracy"], 1.0, sources)


def emulated_artifact(artifact: Artifact, device_only_s: float) -> tuple[Artifact, float]:
    """The artifact as the emulated device's client sees it: the Pareto set plus
    device-only, device times scaled so that device-only takes ``device_only_s`` (sources
    say so); and the factor."""
    search = artifact.manifest["search"]
    pareto = [Evaluation.from_dict(d) for d in search["pareto"]]
    device_only = device_only_evaluation(artifact)
    factor = device_only_s / device_only.device_s
    scaled = slower_device([e for e in [*pareto, device_only] if not is_device_only(e) or e is device_only], factor)
    manifest = {**artifact.manifest, "search": {**search, "pareto": [e.to_dict() for e in scaled]}}
    return dataclasses.replace(artifact, manifest=manifest), factor


def slower_device(evaluations: list[Evaluation], factor: float) -> list[Evaluation]:
    """``evaluations`` on a device ``factor`` times slower (their sources say so)."""
    return [
        dataclasses.replace(
            e,
            device_s=e.device_s * factor,
            sources={**e.sources, "device_s": f"{e.sources.get('device_s')} x{factor:.1f}"},
        )
        for e in evaluations
    ]


class EmulatedDevice:
    """A client's :class:`~dyno_compile.runtime.sides.DeviceSide` at the emulated speed."""

    def __init__(self, real: DeviceLike, evaluations: list[Evaluation], device_only_cut: int) -> None:
        self._real = real
        self._device_s = {e.config: e.device_s for e in evaluations}
        self._device_only_cut = device_only_cut
        self._device_only_s = next(e.device_s for e in evaluations if e.config.cut == device_only_cut)
        self._remainder_s = local_remainders(evaluations)
        self._started = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def start(self, x: np.ndarray, position: int) -> Any:
        self._started = time.perf_counter()
        return self._real.start(x, position)

    def frame(self, env: Any, config: Config, request_id: int) -> bytes:
        frame = self._real.frame(env, config, request_id)
        sleep_until(self._started + self._device_s[config])
        return frame

    def finish(self, env: Any, position: int) -> np.ndarray:
        began = time.perf_counter()
        output = self._real.finish(env, position)
        if position == self._device_only_cut:
            sleep_until(self._started + self._device_only_s)
        else:  # a failed offload finishing on the device: the rest of the network
            sleep_until(began + self._rest(position))
        return output

    def finish_until(self, env: Any, position: int, stop: threading.Event) -> np.ndarray | None:
        """:meth:`finish` after an offload, given up (None) as soon as ``stop`` is set: the
        hedged client's device stops when the reply is in (``client._finish_until``)."""
        began = time.perf_counter()
        output = self._real.finish(env, position)
        if stop.wait(max(began + self._rest(position) - time.perf_counter(), 0.0)):
            return None
        return output

    def _rest(self, position: int) -> float:
        """The emulated time of the segments after cut ``position``, by the replay's rule
        (:func:`~dyno_compile.runtime.selector.local_remainders`)."""
        return self._remainder_s[position]


def emulate_device(client: DeviceClient, evaluations: list[Evaluation] | None = None) -> DeviceClient:
    """Put ``client`` on the emulated device, after one real run of every configuration
    (first calls pay one-off set-up, which would read as device load). ``evaluations``
    holds the emulated device times (default: the client's candidates, as from an
    :func:`emulated_artifact`); it must include device-only, which a failed offload
    falls back to."""
    if evaluations is None:
        if client.selector is None:
            raise InputError("emulate_device: the client has no search results; pass the evaluations to emulate")
        evaluations = list(client.selector.candidates.evaluations)
    else:
        evaluations = list(evaluations)
    x = np.zeros(client.device.input_shape, client.device.input_dtype)
    for e in evaluations:
        env = client.device.start(x, e.config.cut)
        if is_device_only(e):
            client.device.finish(env, e.config.cut)
        else:
            client.device.frame(env, e.config, 0)
    cut = max(c["position"] for c in client.artifact.cuts)
    client.device = EmulatedDevice(client.device, evaluations, cut)
    return client


def sleep_until(deadline: float) -> None:
    left = deadline - time.perf_counter()
    if left > 0:
        time.sleep(left)
