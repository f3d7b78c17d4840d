"""Bytes on the wire per configuration, measured by packing real cut activations.

A lossless codec's ratio depends on the data (a post-ReLU map is mostly zeros; its low bit
planes are noise), so the size of a frame is measured, never computed from the shape: each
calibration sample's crossing tensors, exactly as the device has them for one batch-1
request, go through :func:`dyno_compile.packing.encode` into a real frame, and that frame
through :func:`~dyno_compile.packing.decode`. The mean frame length is the configuration's
bytes; the mean encode and decode times are the host-side codec stage each end adds to its
compute time (the search adds them to device and cloud time).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from dyno_compile.errors import InputError
from dyno_compile.packing import PackConfig, decode, encode
from dyno_compile.search.accuracy import CHANNEL_AXIS, AccuracySimulator
from dyno_compile.search.space import Config, bits_value

__all__ = ["DEFAULT_SAMPLES", "WireBytes", "WireCost"]

#: Frames measured per configuration: enough for a stable mean, few enough to be quick.
DEFAULT_SAMPLES = 32


@dataclass(frozen=True)
class WireCost:
    """Per request: mean frame ``bytes``, mean ``encode_s`` (device host) and ``decode_s``
    (cloud host), over ``samples`` frames; all 0 for device-only, which sends nothing."""

    bytes: float
    encode_s: float
    decode_s: float
    samples: int


class WireBytes:
    """Measures :class:`WireCost` per :class:`Config` on the first ``samples`` calibration
    samples, reading the cut activations from ``simulator`` (whose cache it shares)."""

    def __init__(self, simulator: AccuracySimulator, *, samples: int = DEFAULT_SAMPLES) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InputError(f"samples must be a positive integer, got {samples!r}")
        self.simulator = simulator
        self.samples = min(samples, len(simulator.calibration))
        self._costs: dict[Config, WireCost] = {}

    def measure(self, config: Config) -> WireCost:
        """The cost of ``config``, measured once and then cached."""
        if not isinstance(config, Config):
            raise InputError(f"measure takes a search Config, got {type(config).__name__}")
        if config not in self._costs:
            self._costs[config] = self._measure(config)
        return self._costs[config]

    def _measure(self, config: Config) -> WireCost:
        arrays = self.simulator.activations(config.cut)
        if not arrays:  # device-only
            return WireCost(0.0, 0.0, 0.0, 0)
        pack = PackConfig(bits=bits_value(config.bits), granularity=config.granularity, axis=CHANNEL_AXIS,
                          layout=config.layout, codec=config.codec)
        total = encode_s = decode_s = 0.0
        for i in range(self.samples):
            start = time.perf_counter()
            frame = encode([a[i] for a in arrays], pack, cut_id=config.cut, request_id=i)
            middle = time.perf_counter()
            decode(frame)
            encode_s += middle - start
            decode_s += time.perf_counter() - middle
            total += len(frame)
        n = self.samples
        return WireCost(total / n, encode_s / n, decode_s / n, n)
