"""Open a built artifact (a directory or its one-file archive): verified manifest, the cut
table, and runners for each library.

Opening needs only the TVM runtime (``tvm.runtime.load_module`` and the Relax VM) and
NumPy; it verifies every file's checksum first, and refuses an artifact whose model hash
differs from the one the caller expects (a client and a server must run the same model).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from dyno_compile.artifact.archive import open_archive
from dyno_compile.artifact.store import ArtifactError, read_manifest


@dataclass(frozen=True)
class Artifact:
    root: Path
    manifest: dict[str, Any]

    @property
    def model_hash(self) -> str:
        return self.manifest["model_hash"]

    @property
    def cuts(self) -> list[dict[str, Any]]:
        return self.manifest["cuts"]

    @property
    def segments(self) -> list[dict[str, Any]]:
        return self.manifest["segments"]

    def library(self, side: str, target: str = "host") -> str:
        rel = f"{side}/{target}.so"
        if rel not in self.manifest["libraries"]:
            have = ", ".join(sorted(self.manifest["libraries"]))
            raise ArtifactError(f"{self.root}: no {side} library for target {target!r}; it has {have}")
        return rel

    def runner(self, side: str, target: str = "host") -> Any:
        """A ``ModuleRunner`` over the ``side`` library built for ``target``."""
        from dyno_compile.targets.module import CompiledModule
        from dyno_compile.targets.runner import ModuleRunner

        rel = self.library(side, target)
        module = CompiledModule.from_description(self.manifest["libraries"][rel]["module"], self.root / rel)
        return ModuleRunner(module)

    @cached_property
    def graph(self):
        """The optimised IR graph (for JAX simulation of any configuration)."""
        from dyno_compile.ir import load

        return load(self.root / "model")

    def cut(self, position: int) -> dict[str, Any]:
        for c in self.cuts:
            if c["position"] == position:
                return c
        raise ArtifactError(
            f"{self.root}: cut {position} is not one of the built cuts {[c['position'] for c in self.cuts]}"
        )


def load_artifact(root: str | os.PathLike, *, expect_model_hash: str | None = None) -> Artifact:
    """Open an artifact directory, or a one-file archive of one (``build --archive``)."""
    root = Path(root)
    if root.is_file():
        root = open_archive(root)
    elif not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact directory or archive")
    manifest = read_manifest(root)
    if expect_model_hash is not None and manifest.get("model_hash") != expect_model_hash:
        raise ArtifactError(
            f"{root}: built for model {manifest.get('model_hash', '?')[:12]}, expected "
            f"{expect_model_hash[:12]}: the two sides must run the same build"
        )
    return Artifact(root, manifest)


def run_split(
    artifact: Artifact,
    x: np.ndarray,
    position: int,
    bits: str = "float32",
    *,
    target: str = "host",
    runners: tuple[Any, Any] | None = None,
    record: dict[str, Any] | None = None,
) -> np.ndarray:
    """Run cut ``position`` at ``bits`` with both sides' libraries for ``target``, in this
    process, or with ``runners``: (device, cloud) ``ModuleRunner``s opened once for many
    calls (the cloud's may run on a GPU here).

    The device runs its segments and packs each crossing tensor; the packed values are
    what would go on the wire; the cloud unpacks them and runs the rest. ``record``, if
    given, receives the crossing tensors (``"crossing"``) and the wire values (``"wire"``).
    """
    cut = artifact.cut(position)
    device, cloud = runners or (artifact.runner("device", target), artifact.runner("cloud", target))
    env: dict[str, np.ndarray] = {artifact.manifest["inputs"][0]["name"]: np.asarray(x)}
    run_segments(artifact, device.run, cut["device_segments"], env)
    if cut["kind"] == "device-only":
        return env[artifact.manifest["outputs"][0]["name"]]
    if bits != "float32":
        try:
            kernels = cut["kernels"][bits]
        except KeyError:
            raise ArtifactError(
                f"{artifact.root}: bits {bits!r} not built; built: {artifact.manifest['bits']}"
            ) from None
        for k in kernels:
            wire = device.run(k["pack"], [env[k["tensor"]]])
            if record is not None:
                record.setdefault("crossing", {})[k["tensor"]] = env[k["tensor"]]
                record.setdefault("wire", {})[k["tensor"]] = wire
            env[k["tensor"]] = cloud.run(k["unpack"], wire)[0]
    run_segments(artifact, cloud.run, cut["cloud_segments"], env)
    return env[artifact.manifest["outputs"][0]["name"]]


def run_segments(
    artifact: Artifact,
    call: Callable[[str, list], list],
    indices: list[int],
    env: dict[str, Any],
    *,
    key: str = "function",
) -> None:
    """Run segments ``indices`` in order, reading inputs from and writing outputs to
    ``env``; ``call(function, inputs)`` is a runner's ``run`` (NumPy out) or ``invoke``
    (tensors stay on the device); ``key`` picks the segment's ``"function"`` or its
    ``"batched_function"``."""
    for i in indices:
        seg = artifact.segments[i]
        outs = call(seg[key], [env[t] for t in seg["inputs"]])
        env.update(zip(seg["outputs"], outs))
