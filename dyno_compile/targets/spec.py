"""Named compilation targets: what TVM compiles for, how the result is linked, and
roofline figures (peak compute, memory bandwidth) for cost estimates.

A ``TargetSpec`` is plain data (TVM targets in their JSON-dict form), so it can be
printed, compared and saved without importing TVM. ``get_target(name)`` looks one up.

Roofline figures are FP32, dense, no tensor cores, batch-1 friendly *peaks*: estimates
take fractions of them. Sources and assumptions:

* ``arm64``: a Cortex-A76-class board with 4 cores at 2.4 GHz (Raspberry Pi 5,
  BCM2712). A76 has two 128-bit NEON FMA pipes: 2 x 4 lanes x 2 flop = 16 flop/cycle
  per core, so 4 x 2.4 GHz x 16 = 153.6 GFLOP/s. Memory: 32-bit LPDDR4X-4267,
  4267 MT/s x 4 B = 17.1 GB/s.
  It stays a generic A76-class target (no ``mcpu``: LLVM's generic AArch64 tuning), kept
  for the builds and boards that name it; :data:`BOARD_TARGETS` are the named boards.
* ``rpi4``: Raspberry Pi 4 Model B (BCM2711), 4x Cortex-A72 at 1.8 GHz (boards since
  2020; 1.5 GHz before). A72 issues one 128-bit FMA per cycle: 4 lanes x 2 flop = 8
  flop/cycle/core, 4 x 1.8 x 8 = 57.6 GFLOP/s. Memory: 32-bit LPDDR4-3200 = 12.8 GB/s
  (raspberrypi/documentation, bcm2711; 9.6 GB/s on LPDDR4-2400 boards).
* ``rpi5``: Raspberry Pi 5 (BCM2712), 4x Cortex-A76 at 2.4 GHz: as ``arm64``, with
  ``mcpu=cortex-a76`` (raspberrypi/documentation, bcm2712).
* ``jetson-nano``: NVIDIA Jetson Nano's CPU, 4x Cortex-A57 at 1.43 GHz, 8 flop/cycle/core:
  45.8 GFLOP/s; 64-bit LPDDR4-3200 = 25.6 GB/s (NVIDIA Jetson Nano module data sheet).
* ``phone``: a Snapdragon 855 phone (Pixel 4 class), its four big cores: 1x Cortex-A76
  (Kryo 485 Gold "prime") at 2.84 GHz + 3x Cortex-A76 at 2.42 GHz, 16 flop/cycle/core:
  (2.84 + 3 x 2.42) x 16 = 161.6 GFLOP/s; 4x16-bit LPDDR4X-2133 = 34.1 GB/s (Qualcomm
  Snapdragon 855 product brief). The little A55 cores are not used (4 threads).
* ``cuda-sm75``: NVIDIA T4 datasheet: 8.1 TFLOP/s FP32, 320 GB/s GDDR6.
* ``cuda-sm80``: NVIDIA A100 SXM4 80 GB datasheet: 19.5 TFLOP/s FP32 (non-tensor),
  2039 GB/s HBM2e.
* ``cuda-sm90``: NVIDIA H100 SXM5 datasheet: 67 TFLOP/s FP32 (non-tensor), 3350 GB/s HBM3.
* ``host``: this build machine, figured from its core count and AVX2 (two 256-bit FMA
  pipes: 32 flop/cycle per core) at an assumed 2.5 GHz; memory bandwidth assumed
  20 GB/s (one or two DDR4 channels as a VM sees them). Rough: measure if it matters.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dyno_compile.targets.errors import TargetError

__all__ = ["BOARD_TARGETS", "GPU_KINDS", "TargetSpec", "get_target", "list_targets", "host_cpu_count"]

#: The named ARM boards: their device times are anchored on published latencies
#: (:mod:`dyno_compile.search.device_model`), not scaled from the host's.
BOARD_TARGETS = ("rpi4", "rpi5", "jetson-nano", "phone")

#: TVM target kinds that compile for a GPU: their kernels need thread bindings.
GPU_KINDS = ("cuda", "rocm", "vulkan", "metal", "opencl")


def _freeze(value: Any) -> Any:
    """Lists to tuples, recursively, so that specs are hashable and compare by value."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def host_cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, eq=False)
class TargetSpec:
    """One compilation target.

    ``target`` and ``host`` are TVM target dicts (``tvm.target.Target(target, host=host)``);
    ``host`` is set for GPU targets only (where the host code runs). ``linker`` is the
    command (argv prefix) that links a shared object, ``None`` for the system ``cc``.
    ``threads`` is the worker count the runtime should use on the device. ``peak_gflops``
    and ``mem_bandwidth_gbs`` are FP32 roofline figures (see the module docstring).
    """

    name: str
    target: Mapping[str, Any]
    host: Mapping[str, Any] | None = None
    linker: tuple[str, ...] | None = None
    threads: int = 1
    peak_gflops: float = 0.0
    mem_bandwidth_gbs: float = 0.0
    description: str = ""
    source: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return str(self.target["kind"])

    @property
    def is_gpu(self) -> bool:
        return self.kind in GPU_KINDS

    @property
    def is_host(self) -> bool:
        """True when code built for it runs on this machine (no cross compilation)."""
        return self.kind == "llvm" and "mtriple" not in self.target

    @property
    def ridge_point(self) -> float:
        """Arithmetic intensity (flop/byte) where the roofline turns from memory- to compute-bound."""
        return self.peak_gflops / self.mem_bandwidth_gbs if self.mem_bandwidth_gbs else float("inf")

    def tvm_target(self):
        """The ``tvm.target.Target`` (imports TVM)."""
        import tvm

        return tvm.target.Target(dict(self.target), host=dict(self.host) if self.host else None)

    def _key(self) -> tuple:
        return (self.name, _freeze(self.target), _freeze(self.host), self.linker, self.threads)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TargetSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return f"{self.name} ({self.description or self.kind})"


def _host_spec() -> TargetSpec:
    target: dict[str, Any] = {"kind": "llvm"}
    try:  # the host CPU name lets LLVM use AVX2/AVX-512/NEON; TVM reports it without a build
        from tvm.target import codegen

        cpu = codegen.llvm_get_system_cpu()
        if cpu and cpu != "generic":
            target["mcpu"] = cpu
    except Exception:  # pragma: no cover - TVM without LLVM: generic code still runs
        pass
    cores = host_cpu_count()
    target["num-cores"] = cores
    return TargetSpec(
        name="host",
        target=target,
        threads=cores,
        peak_gflops=cores * 2.5 * 32,
        mem_bandwidth_gbs=20.0,
        description=f"this machine, LLVM {target.get('mcpu', 'generic')} x {cores} cores",
        source="estimate: cores x 2.5 GHz x 32 flop/cycle (AVX2, 2 FMA pipes); 20 GB/s assumed",
    )


_ZIG_AARCH64 = (sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-gnu")
_CUDA_HOST = {"kind": "llvm"}


def _board(
    name: str, mcpu: str, description: str, gflops: float, gbs: float, source: str, threads: int = 4
) -> TargetSpec:
    """An AArch64 Linux board whose CPU LLVM knows by name (``mcpu``: its scheduling model
    and features), linked with the same zig cross linker as ``arm64``."""
    return TargetSpec(
        name=name,
        target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": ["+neon"], "num-cores": threads},
        linker=_ZIG_AARCH64,
        threads=threads,
        peak_gflops=gflops,
        mem_bandwidth_gbs=gbs,
        description=description,
        source=source,
    )


#: Shared memory a CUDA block may use without opting in, on every architecture since sm_20;
#: dlight's GPU rules read it from the target (and log its absence once per function).
_CUDA_SHARED_MEMORY_PER_BLOCK = 48 * 1024


def _cuda(arch: str, board: str, gflops: float, gbs: float, source: str, aliases: tuple[str, ...] = ()) -> TargetSpec:
    sm = arch.replace("_", "")
    return TargetSpec(
        name=f"cuda-{sm}",
        target={"kind": "cuda", "arch": arch, "max_shared_memory_per_block": _CUDA_SHARED_MEMORY_PER_BLOCK},
        host=_CUDA_HOST,
        linker=None,
        threads=1,
        peak_gflops=gflops,
        mem_bandwidth_gbs=gbs,
        description=f"NVIDIA {board} ({arch}), CUDA",
        source=source,
        aliases=aliases,
    )


def _registry() -> dict[str, TargetSpec]:
    specs = [
        _host_spec(),
        TargetSpec(
            name="arm64",
            target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4},
            linker=_ZIG_AARCH64,
            threads=4,
            peak_gflops=4 * 2.4 * 16,
            mem_bandwidth_gbs=17.1,
            description="64-bit ARM Linux device, Cortex-A76 class x 4 (e.g. Raspberry Pi 5)",
            source="Cortex-A76: 2x128-bit FMA = 16 flop/cycle/core @2.4 GHz x 4; LPDDR4X-4267 x32 = 17.1 GB/s",
            aliases=("aarch64",),
        ),
        _board(
            "rpi4",
            "cortex-a72",
            "Raspberry Pi 4 Model B (BCM2711), 4x Cortex-A72 @ 1.8 GHz",
            4 * 1.8 * 8,
            12.8,
            "raspberrypi/documentation bcm2711: 4x A72 @1.8 GHz x 8 flop/cycle (1x128-bit FMA); "
            "LPDDR4-3200 x32 = 12.8 GB/s",
        ),
        _board(
            "rpi5",
            "cortex-a76",
            "Raspberry Pi 5 (BCM2712), 4x Cortex-A76 @ 2.4 GHz",
            4 * 2.4 * 16,
            17.1,
            "raspberrypi/documentation bcm2712: 4x A76 @2.4 GHz x 16 flop/cycle (2x128-bit FMA); "
            "LPDDR4X-4267 x32 = 17.1 GB/s",
        ),
        _board(
            "jetson-nano",
            "cortex-a57",
            "NVIDIA Jetson Nano CPU, 4x Cortex-A57 @ 1.43 GHz",
            4 * 1.43 * 8,
            25.6,
            "NVIDIA Jetson Nano module data sheet: 4x A57 @1.43 GHz x 8 flop/cycle; LPDDR4 x64 = 25.6 GB/s",
        ),
        _board(
            "phone",
            "cortex-a76",
            "Snapdragon 855 phone (Pixel 4 class), big cores: 1x A76 @ 2.84 + 3x A76 @ 2.42 GHz",
            (2.84 + 3 * 2.42) * 16,
            34.1,
            "Qualcomm Snapdragon 855: 4 big Kryo 485 (Cortex-A76) cores, 1 @2.84 + 3 @2.42 GHz x 16 flop/cycle; "
            "LPDDR4X-2133 4x16-bit = 34.1 GB/s",
        ),
        _cuda("sm_75", "T4", 8100.0, 320.0, "NVIDIA T4 datasheet: 8.1 TFLOPS FP32, 320 GB/s"),
        _cuda(
            "sm_80",
            "A100 SXM4 80GB",
            19500.0,
            2039.0,
            "NVIDIA A100 datasheet: 19.5 TFLOPS FP32 (non-tensor), 2039 GB/s (80 GB SXM4)",
            aliases=("cuda",),
        ),
        _cuda(
            "sm_90",
            "H100 SXM5",
            67000.0,
            3350.0,
            "NVIDIA H100 datasheet: 67 TFLOPS FP32 (non-tensor), 3.35 TB/s (SXM5)",
        ),
    ]
    return {s.name: s for s in specs}


_REGISTRY: dict[str, TargetSpec] | None = None


def _specs() -> dict[str, TargetSpec]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _registry()
    return _REGISTRY


def list_targets() -> list[str]:
    """Target names (aliases not included), in registry order."""
    return list(_specs())


def get_target(name: str | TargetSpec) -> TargetSpec:
    """The ``TargetSpec`` called ``name`` (or an alias such as ``cuda``); a spec passes through."""
    if isinstance(name, TargetSpec):
        return name
    specs = _specs()
    if name in specs:
        return specs[name]
    for spec in specs.values():
        if name in spec.aliases:
            return spec
    aliases = [f"{a} (= {s.name})" for s in specs.values() for a in s.aliases]
    raise TargetError(
        f"unknown target {name!r}; known targets: {', '.join(specs)}"
        + (f"; aliases: {', '.join(aliases)}" if aliases else "")
    )
