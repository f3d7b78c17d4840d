"""One configuration of a split model, and what it measures: shared by the search that
finds them, the runtime that serves them and the evaluation that replays them.

A configuration is everything the device and the cloud must agree on for one request:
where to cut, how to code the crossing tensors (width, range granularity) and how to
ship them (bit layout, lossless codec). An :class:`Evaluation` holds the four
bandwidth-independent measures of a configuration — device time, cloud time, bytes on the
wire and accuracy — so the run-time selector can rank a Pareto set of them under any
live bandwidth, round-trip time and load without measuring anything again.

It sits beside :mod:`dyno_compile.errors`, importing only it and the packing vocabulary,
so the runtime can read a Pareto set without importing the search.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

from dyno_compile.errors import InputError
from dyno_compile.packing.vocab import bits_key, check_codec, check_granularity, check_layout, check_level, refused_as

#: The fields of a :class:`Config`, in the order they sort by.
CONFIG_FIELDS = ("cut", "bits", "granularity", "layout", "codec", "level")


@functools.total_ordering
@dataclass(frozen=True)
class Config:
    """One point of the space. ``cut`` is a cut position of the artifact's cut table;
    ``bits`` is spelt as the cut table spells it (``"8"``, ``"float16"``); for float widths
    ``granularity`` is irrelevant and kept at ``"tensor"``; for the device-only cut nothing
    is sent and only ``cut`` matters. ``level`` is the codec's level (an image codec's
    quality), ``None`` for the codec's default: the search leaves it ``None`` for lossless
    codecs (their default levels are what it measures) and sets it for image codecs, whose
    quality trades bytes against accuracy. A Pareto set stored before levels existed has
    none, and reads back with ``None``."""

    cut: int
    bits: str = "float32"
    granularity: str = "tensor"
    layout: str = "stream"
    codec: str = "none"
    level: int | None = None

    def __post_init__(self) -> None:
        with refused_as(InputError):
            object.__setattr__(self, "bits", bits_key(self.bits))
            check_granularity(self.granularity)
            check_layout(self.layout)
            check_codec(self.codec)
            if self.level is not None:  # kept as given: None stays "the default", not the default's number
                object.__setattr__(self, "level", check_level(self.codec, self.level))

    def _sort_key(self) -> tuple:
        """Fields in order, with no level sorting before any level (None and ints do not compare)."""
        return (self.cut, self.bits, self.granularity, self.layout, self.codec, self.level is not None, self.level or 0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self._sort_key() < other._sort_key()

    @property
    def label(self) -> str:
        level = "" if self.level is None else f" level {self.level}"
        return f"cut {self.cut} {self.bits}b {self.granularity} {self.layout} {self.codec}{level}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return cls(**{k: d[k] for k in CONFIG_FIELDS if k in d})


@dataclass(frozen=True)
class Evaluation:
    """The measures of one configuration, per request (batch 1).

    ``device_s``: device segments before the cut, the pack kernels and the codec's encode;
    ``cloud_s``: the codec's decode, the unpack kernels and the segments after the cut;
    ``bytes``: mean size of the real wire frame over the calibration set (0 for
    device-only); ``accuracy``: top-1 on the calibration labels (agreement with the float
    model where there are no labels); ``agreement``: top-1 agreement with the float model.
    ``sources`` says where each figure came from (``"measured:host"``,
    ``"measured:rpc:<key>"``, ``"emulated:rpc:<key>"``, ``"estimated:roofline:<target>"``)
    so nothing estimated or emulated is ever shown as measured.
    """

    config: Config
    device_s: float
    cloud_s: float
    bytes: float
    accuracy: float
    agreement: float
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "device_s": self.device_s,
            "cloud_s": self.cloud_s,
            "bytes": self.bytes,
            "accuracy": self.accuracy,
            "agreement": self.agreement,
            "sources": dict(self.sources),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        return cls(
            Config.from_dict(d["config"]),
            float(d["device_s"]),
            float(d["cloud_s"]),
            float(d["bytes"]),
            float(d["accuracy"]),
            float(d["agreement"]),
            dict(d.get("sources", {})),
        )
