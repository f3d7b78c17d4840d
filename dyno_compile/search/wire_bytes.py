"""Bytes on the wire per configuration, measured by packing real cut activations.

A lossless codec's ratio depends on the data (a post-ReLU map is mostly zeros; its low bit
planes are noise), so the size of a frame is measured, never computed from the shape: each
calibration sample's crossing tensors, exactly as the device has them for one batch-1
request, are quantised and packed as the device's kernel packs them, then framed exactly as
the runtime frames them (:mod:`dyno_compile.runtime.sides`): re-laid out for the wire and
compressed (:func:`~dyno_compile.packing.encode_packed`), then decoded and laid back
(:func:`~dyno_compile.packing.decode_packed`). The mean frame length is the configuration's
bytes. Only that host stage is timed — the quantise/pack and unpack kernels are in the
library profiles already — and its *median* over the samples is what each end adds to its
compute time, so one sample slowed by other load on the machine does not move a figure.
An image codec at cut 0 is measured the same way, at the config's level (its quality): its
encode is the device's, its decode the cloud's, its frames' lengths its bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dyno_compile.configs import Config
from dyno_compile.errors import InputError
from dyno_compile.packing import (
    KERNEL_LAYOUT,
    PackConfig,
    PackedTensor,
    bits_value,
    decode_packed,
    encode_packed,
    pack_tensor,
)
from dyno_compile.search.accuracy import AccuracySimulator

__all__ = ["DEFAULT_SAMPLES", "WireBytes", "WireCost", "packed_cut"]

#: Frames measured per configuration: enough for a stable mean, few enough to be quick.
DEFAULT_SAMPLES = 32


def packed_cut(simulator: AccuracySimulator, config: Config, sample: int) -> list[PackedTensor]:
    """The tensors crossing ``config``'s cut for calibration sample ``sample``, quantised and
    packed as the device's kernels pack them: in the kernels' layout, each per-channel range
    along that tensor's own channel axis. Empty for device-only."""
    arrays = simulator.activations(config.cut)
    axes = simulator.cut(config.cut).channel_axes
    return [
        pack_tensor(
            a[sample],
            PackConfig(bits=bits_value(config.bits), granularity=config.granularity, axis=axis, layout=KERNEL_LAYOUT),
        )
        for a, axis in zip(arrays, axes)
    ]


@dataclass(frozen=True)
class WireCost:
    """Per request: mean frame ``bytes``, median ``encode_s`` (device host) and ``decode_s``
    (cloud host), over ``samples`` frames; all 0 for device-only, which sends nothing."""

    bytes: float
    encode_s: float
    decode_s: float
    samples: int


class WireBytes:
    """Measures :class:`WireCost` per :class:`Config` on the first ``samples`` calibration
    samples, reading the cut activations from ``simulator`` where it holds them and
    computing only those samples' where it does not (:meth:`AccuracySimulator.head`)."""

    def __init__(self, simulator: AccuracySimulator, *, samples: int = DEFAULT_SAMPLES) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InputError(f"samples must be a positive integer, got {samples!r}")
        self.samples = min(samples, len(simulator.calibration))
        self.simulator = simulator.head(self.samples)
        self._costs: dict[Config, WireCost] = {}

    def measure(self, config: Config) -> WireCost:
        """The cost of ``config``, measured once and then cached."""
        if not isinstance(config, Config):
            raise InputError(f"measure takes a search Config, got {type(config).__name__}")
        if config not in self._costs:
            self._costs[config] = self._measure(config)
        return self._costs[config]

    def _measure(self, config: Config) -> WireCost:
        if not self.simulator.activations(config.cut):  # device-only
            return WireCost(0.0, 0.0, 0.0, 0)
        sizes, encode_s, decode_s = [], [], []
        for i in range(self.samples):
            packed = packed_cut(self.simulator, config, i)
            start = time.perf_counter()
            frame = encode_packed(
                [t.relayout(config.layout) for t in packed],
                codec=config.codec,
                level=config.level,
                cut_id=config.cut,
                request_id=i,
            )
            middle = time.perf_counter()
            for tensor in decode_packed(frame).tensors:
                tensor.relayout(KERNEL_LAYOUT)  # what the cloud's unpack kernel reads
            decode_s.append(time.perf_counter() - middle)
            encode_s.append(middle - start)
            sizes.append(len(frame))
        return WireCost(float(np.mean(sizes)), float(np.median(encode_s)), float(np.median(decode_s)), self.samples)
