"""Device time of the named ARM boards, anchored on published float32 latencies.

Why not the host-calibrated roofline of :mod:`.estimate`: it assumes each function reaches
on the board the fraction of the board's roofline that our build reached on the host,
which ties the board's time to how well *our* x86 build ran. What a user compares DynO
with on a board is ncnn or TFLite (XNNPACK): hand-written NEON, Winograd, fused
activations. So a board's time here is **what kernels as good as ncnn's/TFLite's take on
it**, modelled node by node and fitted to what those frameworks published
(``data_root()/devices/published_latency.tsv``; nothing in it was measured here).

The model (fitted in log space by least squares, :func:`fit`). For a node of class ``c``
(:data:`~dyno_compile.search.device_features.CLASSES`) with ``F`` flops and ``B`` bytes::

    t = F / (P * e_c * k) + B / (W * m) + o

``P`` is the FP32 peak of the cores the run uses (flop/cycle x clocks), ``W`` the DRAM
bandwidth (datasheet, :data:`HARDWARE`). The fitted parameters, shared by every device:

* ``e_winograd``: efficiency of 3x3 stride-1 dense convolutions against their naive flops
  (ncnn runs them with Winograd, so it may exceed 1);
* ``e_gemm``: efficiency of every other conv and dense layer (im2col/1x1 GEMM, depthwise,
  fully connected), with a prior pulling it towards 1 (weight :data:`GEMM_PRIOR`): tuned
  NEON GEMMs run near peak, and without the prior the fit blames the mobile nets' memory
  traffic on their 1x1 convolutions and leaving ResNet-50 out then doubles its estimate;
* ``m``: the fraction of DRAM bandwidth the bytes every node reads and writes are moved at
  (elementwise, pooling, concat, depthwise: everything but the fused activations);
* ``o``: a fixed cost per kernel (dispatch, thread sync);
* ``eta``: parallel efficiency of more than one thread (compute scales by ``threads * eta``);

and per device two scalars with a ridge prior (weight :data:`DEVICE_PRIOR`, towards 1):
``k_<device>`` (how far that core's kernels beat or miss the shared efficiencies) and
``k_<framework>`` for XNNPACK/TFLite against ncnn. A device with no rows keeps ``k = 1``:
its estimate is the shared efficiencies transferred by roofline.

Terms are added, not maxed: a kernel that streams its activations from DRAM also stalls
its arithmetic, and the additive form fitted the rows better. How well it predicts rows it
was not fitted to is measured by leaving each model out (:func:`leave_one_model_out`);
``benchmarks/device_estimates.py`` writes the table to ``docs/device-estimates.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.search.device_features import CLASSES, Features, load_features
from dyno_compile.search.profile import ProfileError

#: Weight of the prior ``log e_gemm ~ 0`` in the least squares (1/sigma in log units: 1/3).
GEMM_PRIOR = 3.0
#: Weight of the ridge prior on the per-device and per-framework log scalars (sigma 1).
DEVICE_PRIOR = 1.0
#: Frameworks with kernels of the XNNPACK family (TFLite's CPU delegate is XNNPACK).
XNNPACK_FAMILY = frozenset({"XNNPACK", "TFLite"})
PARAMS = ("e_winograd", "e_gemm", "m", "o", "eta")
_WINOGRAD, _FUSED, _OTHER = CLASSES.index("conv3x3s1"), CLASSES.index("fused"), CLASSES.index("other")


@dataclass(frozen=True)
class Hardware:
    """One device of the published rows: its core, FP32 flop/cycle per core, its cores'
    clocks relative to the fastest (a phone's big cores differ), DRAM bandwidth, sources."""

    key: str
    core: str
    flop_per_cycle: int
    relative_clocks: tuple[float, ...]
    bandwidth_gbs: float
    source: str

    def peak_flops(self, clock_ghz: float, threads: int) -> float:
        if threads > len(self.relative_clocks):
            raise InputError(f"{self.key} has {len(self.relative_clocks)} fast cores, asked for {threads} threads")
        return self.flop_per_cycle * clock_ghz * 1e9 * sum(self.relative_clocks[:threads])


#: The devices of the published rows (datasheets; ``devices/README.md`` for the boards).
HARDWARE: dict[str, Hardware] = {
    h.key: h
    for h in (
        Hardware("rpi4", "Cortex-A72", 8, (1, 1, 1, 1), 12.8, "BCM2711: 1x128-bit FMA/cycle; LPDDR4-3200 x32"),
        Hardware(
            "jetson-nano-cpu", "Cortex-A57", 8, (1, 1, 1, 1), 25.6, "Jetson Nano module: 1x128-bit FMA; LPDDR4 x64"
        ),
        Hardware(
            "pixel3",
            "Kryo 385 Gold (Cortex-A75)",
            8,
            (1, 1, 1, 1),
            29.9,
            "Snapdragon 845: 4 big A75-class cores, 2x64-bit FMA/cycle; LPDDR4X-1866 4x16-bit",
        ),
        Hardware(
            "pixel4",
            "Cortex-A76",
            16,
            (1.0, 2.42 / 2.84, 2.42 / 2.84, 2.42 / 2.84),
            34.1,
            "Snapdragon 855: 1 A76 @2.84 + 3 A76 @2.42 GHz, 2x128-bit FMA/cycle; LPDDR4X-2133 4x16-bit",
        ),
    )
}


@dataclass(frozen=True)
class PublishedRow:
    """One line of ``published_latency.tsv``."""

    device: str
    soc_cores: str
    clock_ghz: float
    framework: str
    threads: int
    precision: str
    model: str
    input_size: int
    ms: float
    source: str

    @property
    def key(self) -> str:
        """How labels name the row: ``rpi4 ncnn 4t squeezenet1.1``."""
        return f"{self.device} {self.framework} {self.threads}t {self.model}"

    @property
    def hardware(self) -> Hardware:
        try:
            return HARDWARE[self.device]
        except KeyError:
            raise ProfileError(f"published row {self.key}: no hardware figures for device {self.device!r}") from None


def rows_path() -> Path:
    from dyno_compile.datasets import data_root

    return data_root() / "devices" / "published_latency.tsv"


def read_rows(path: Path | None = None) -> list[PublishedRow]:
    """The fp32 rows of the published table (the README's caveats leave fp16 ones out)."""
    path = path or rows_path()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the published latencies ({exc})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) != 10:
            raise InputError(f"{path}:{n}: expected 10 tab-separated cells, got {len(cells)}")
        try:
            row = PublishedRow(
                cells[0], cells[1], float(cells[2]), cells[3], int(cells[4]), cells[5], cells[6], int(cells[7]),
                float(cells[8]), cells[9],
            )  # fmt: skip
        except ValueError as exc:
            raise InputError(f"{path}:{n}: {exc}") from None
        if row.precision == "fp32":
            rows.append(row)
    return rows


@dataclass(frozen=True)
class DeviceProfile:
    """How a board target is priced: which published device's scalars it takes
    (``hardware``), with which framework's kernels, and whether it is that device
    (``transfer=False``) or another board with the same core, transferred by roofline."""

    target: str
    hardware: str
    framework: str
    transfer: bool = False
    note: str = ""


#: The board targets of :mod:`dyno_compile.targets.spec` and the rows they rest on.
PROFILES: dict[str, DeviceProfile] = {
    p.target: p
    for p in (
        DeviceProfile("rpi4", "rpi4", "ncnn"),
        DeviceProfile("jetson-nano", "jetson-nano-cpu", "ncnn"),
        DeviceProfile("phone", "pixel4", "TFLite", note="Pixel 4 = Snapdragon 855, the phone target's SoC"),
        DeviceProfile(
            "rpi5",
            "pixel4",
            "TFLite",
            transfer=True,
            note="no fp32 rows for the Pi 5: the Cortex-A76 rows (Pixel 4) transferred by roofline",
        ),
    )
}


def device_profile(target: str) -> DeviceProfile:
    try:
        return PROFILES[target]
    except KeyError:
        raise ProfileError(
            f"no published-latency device profile for target {target!r}; anchored targets: {', '.join(PROFILES)}"
        ) from None


@dataclass(frozen=True)
class DeviceModel:
    """Fitted parameters (:data:`PARAMS`, per-device and per-framework scalars) and the rows fitted."""

    params: Mapping[str, float]
    device_scale: Mapping[str, float]
    framework_scale: float
    rows: tuple[PublishedRow, ...]
    residual_rms: float = field(default=0.0)

    def scale(self, device: str, framework: str) -> float:
        """``k``: the device's scalar (1 for a device with no rows) times the framework's."""
        return self.device_scale.get(device, 1.0) * (self.framework_scale if framework in XNNPACK_FAMILY else 1.0)

    def node_seconds(
        self, features: Features, peak_flops: float, bandwidth: float, threads: int, scale: float
    ) -> np.ndarray:
        """Seconds of every node of ``features`` on cores of ``peak_flops`` (all threads'),
        DRAM of ``bandwidth`` bytes/s, with the device scalar ``scale``."""
        return _node_seconds(_vector(self.params), features, peak_flops, bandwidth, threads, scale)

    def row_seconds(self, row: PublishedRow, features: Features) -> float:
        hw = row.hardware
        return float(
            self.node_seconds(
                features,
                hw.peak_flops(row.clock_ghz, row.threads),
                hw.bandwidth_gbs * 1e9,
                row.threads,
                self.scale(row.device, row.framework),
            ).sum()
        )

    def anchor_rows(self, profile: DeviceProfile) -> list[PublishedRow]:
        """The rows a target's scalars rest on: its device's rows (of the same core for a transfer)."""
        return [r for r in self.rows if r.device == profile.hardware]


def _vector(params: Mapping[str, float]) -> np.ndarray:
    return np.log([params[p] for p in PARAMS])


def _node_seconds(
    theta: np.ndarray, f: Features, peak: float, bandwidth: float, threads: int, scale: float
) -> np.ndarray:
    e_wino, e_gemm, m, o, eta = np.exp(theta[: len(PARAMS)])
    compute = peak * scale * (eta if threads > 1 else 1.0)
    eff = np.where(f.classes == _WINOGRAD, e_wino, e_gemm)
    flops = np.where((f.classes == _OTHER) | (f.classes == _FUSED), 0.0, f.flops)
    t = flops / (compute * eff) + f.nbytes / (bandwidth * m) + o
    return np.where(f.classes == _FUSED, 0.0, t)


def fit(rows: Sequence[PublishedRow], features: Mapping[str, Features]) -> DeviceModel:
    """Least squares in log space of every row's modelled against published time, with the
    priors of the module docstring."""
    from scipy.optimize import least_squares

    if not rows:
        raise ProfileError("no published rows to fit the device model to")
    missing = sorted({r.model for r in rows} - set(features))
    if missing:
        raise ProfileError(f"no IR features for published models {', '.join(missing)}")
    devices = sorted({r.device for r in rows})
    for r in rows:
        _ = r.hardware  # unknown devices fail here, by name
    n = len(PARAMS)
    fixed = [
        (features[r.model], r.hardware.peak_flops(r.clock_ghz, r.threads), r.hardware.bandwidth_gbs * 1e9, r)
        for r in rows
    ]

    def residuals(theta: np.ndarray) -> np.ndarray:
        dev, fw = theta[n : n + len(devices)], theta[-1]
        out = []
        for f, peak, bw, r in fixed:
            scale = np.exp(dev[devices.index(r.device)] + (fw if r.framework in XNNPACK_FAMILY else 0.0))
            out.append(np.log(_node_seconds(theta, f, peak, bw, r.threads, scale).sum() * 1e3 / r.ms))
        out.append(GEMM_PRIOR * theta[PARAMS.index("e_gemm")])
        out.extend(DEVICE_PRIOR * theta[n:])
        return np.array(out)

    start = np.zeros(n + len(devices) + 1)
    start[:n] = np.log([1.0, 1.0, 0.5, 20e-6, 0.7])
    sol = least_squares(residuals, start)
    theta = sol.x
    res = residuals(theta)[: len(rows)]
    return DeviceModel(
        dict(zip(PARAMS, (float(v) for v in np.exp(theta[:n])))),
        {d: float(np.exp(v)) for d, v in zip(devices, theta[n : n + len(devices)])},
        float(np.exp(theta[-1])),
        tuple(rows),
        float(np.sqrt(np.mean(res**2))),
    )


def leave_one_model_out(rows: Sequence[PublishedRow], features: Mapping[str, Features]) -> dict[str, float]:
    """Each row's estimate (ms) from a fit to every row of *other* models: one refit per model."""
    out: dict[str, float] = {}
    for model in sorted({r.model for r in rows}):
        refit = fit([r for r in rows if r.model != model], features)
        for r in rows:
            if r.model == model:
                out[r.key] = refit.row_seconds(r, features[model]) * 1e3
    return out


@functools.lru_cache(maxsize=1)
def default_model() -> DeviceModel:
    """The fit to every fp32 published row and the stored features (once per process)."""
    return fit(read_rows(), load_features())


def describe_anchor(target: str, model: DeviceModel | None = None) -> str:
    """What a target's estimate rests on, for labels: the device profile and its rows."""
    profile = device_profile(target)
    model = model or default_model()
    rows = model.anchor_rows(profile)
    if not rows:
        raise ProfileError(
            f"target {target!r}: no published rows of device {profile.hardware!r} to anchor on and no transfer"
        )
    hw = HARDWARE[profile.hardware]
    how = (
        f"transferred by roofline from {hw.core} rows" if profile.transfer else f"{hw.core}, {profile.framework}-class"
    )
    return f"device model {target} ({how}); rows: {', '.join(r.key for r in rows)}"
