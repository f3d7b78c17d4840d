"""The two halves of an artifact at run time: the device that runs the first segments and
packs the cut, and the cloud that unpacks it and runs the rest.

Both sides hold every segment (DynO's skip/transfer/resume), so the device can finish any
request on its own at any cut: a failed transfer costs the remaining segments, not a
restart. Each object wraps one Relax VM, which is not thread-safe: use one per thread.
Only the TVM runtime and NumPy are needed.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from dyno_compile.artifact.load import Artifact, run_segments
from dyno_compile.artifact.store import ArtifactError
from dyno_compile.configs import Config
from dyno_compile.errors import InputError
from dyno_compile.packing import (
    KERNEL_LAYOUT,
    PackConfig,
    PackedTensor,
    QuantParams,
    bits_value,
    encode_packed,
    pack_tensor,
)

#: Where the activations of one request live between segments, by tensor name: TVM
#: tensors on the side's device (no copy to NumPy and back between segments), or arrays.
Env = dict[str, Any]


class _Side:
    def __init__(self, artifact: Artifact, side: str, target: str) -> None:
        self.artifact = artifact
        self.target = target
        self.runner = artifact.runner(side, target)
        self.input_name = artifact.manifest["inputs"][0]["name"]
        self.output_name = artifact.manifest["outputs"][0]["name"]
        self.output_shape = tuple(artifact.manifest["outputs"][0]["shape"])
        self.granularity = artifact.manifest.get("granularity", "tensor")
        self._cuts = {c["position"]: c for c in artifact.cuts}

    def cut(self, position: int) -> dict[str, Any]:
        try:
            return self._cuts[position]
        except KeyError:
            raise ArtifactError(f"cut {position} is not one of the built cuts {sorted(self._cuts)}") from None

    def run_segments(self, indices: list[int], env: Env, *, key: str = "function") -> None:
        run_segments(self.artifact, self.runner.invoke, indices, env, key=key)

    def finish(self, env: Env, position: int) -> np.ndarray:
        """Run the segments after cut ``position`` on this side: the cloud's work, or the
        device's when it runs alone (device-only, or a failed offload)."""
        self.run_segments(self.cut(position)["cloud_segments"], env)
        return _numpy(env[self.output_name])

    def kernel(self, cut: dict[str, Any], bits: str, tensor: str) -> dict[str, str] | None:
        """The pack/unpack kernel pair for ``tensor`` at integer width ``bits``, if built."""
        for k in cut.get("kernels", {}).get(bits, ()):
            if k["tensor"] == tensor:
                return k
        return None

    @staticmethod
    def channel_axis(cut: dict[str, Any], tensor: str) -> int:
        """The axis of ``tensor`` that the cut's per-channel kernels take ranges along."""
        return cut["channel_axes"][cut["tensors"].index(tensor)]


class DeviceLike(Protocol):
    """What a client needs of its device half: :class:`DeviceSide`, or a stand-in for it
    (the evaluation's emulated slower device)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def input_dtype(self) -> np.dtype: ...

    @property
    def output_shape(self) -> tuple[int, ...]: ...

    def start(self, x: np.ndarray, position: int) -> Env: ...

    def finish(self, env: Env, position: int) -> np.ndarray: ...

    def frame(self, env: Env, config: Config, request_id: int) -> bytes: ...

    def warm_up(self) -> None: ...


class DeviceSide(_Side):
    """Runs the device segments up to a cut and packs the crossing tensors into a frame."""

    def __init__(self, artifact: Artifact, target: str = "host") -> None:
        super().__init__(artifact, "device", target)
        spec = artifact.manifest["inputs"][0]
        self.input_shape, self.input_dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])

    def start(self, x: np.ndarray, position: int) -> Env:
        """Run the segments before cut ``position`` on ``x``."""
        x = np.asarray(x)
        if x.shape != self.input_shape:
            raise InputError(f"input shape {x.shape} does not match the model's {self.input_shape}")
        env: Env = {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}
        self.run_segments(self.cut(position)["device_segments"], env)
        return env

    def warm_up(self) -> None:
        """Run every segment once on zeros, so one-off set-up costs no request."""
        self.finish(self.start(np.zeros(self.input_shape, self.input_dtype), 0), 0)

    def frame(self, env: Env, config: Config, request_id: int) -> bytes:
        """The cut frame of ``config`` for this request: the compiled pack kernel's codes and
        range, in the wire's layout, through the codec at the config's level (an image
        codec's quality; the cloud reads nothing of it but the frame)."""
        cut = self.cut(config.cut)
        packed = [self._pack(t, env[t], cut, config) for t in cut["tensors"]]
        return encode_packed(packed, codec=config.codec, level=config.level, cut_id=config.cut, request_id=request_id)

    def _pack(self, tensor: str, x: Any, cut: dict[str, Any], config: Config) -> PackedTensor:
        bits = bits_value(config.bits)
        if isinstance(bits, str):  # a float passthrough: the cast is the whole kernel
            return pack_tensor(_numpy(x), PackConfig(bits=bits))
        kernel = self.kernel(cut, config.bits, tensor)
        if kernel is None or config.granularity != self.granularity:
            raise ArtifactError(
                f"{config.label}: the artifact has no pack kernel for it (built: bits "
                f"{self.artifact.manifest['bits']}, granularity {self.granularity})"
            )
        data, rng = self.runner.run(kernel["pack"], [x])
        axis = 0 if config.granularity == "tensor" else self.channel_axis(cut, tensor)
        params = QuantParams(bits, config.granularity, axis, rng[0], rng[1])
        shape = tuple(int(d) for d in x.shape)
        packed = PackedTensor(np.dtype(str(x.dtype)), shape, params, KERNEL_LAYOUT, data.tobytes())
        return packed.relayout(config.layout)


class CloudSide(_Side):
    """Unpacks a cut frame and runs the cloud segments after it.

    Integer codes go through the artifact's compiled unpack kernel (on the GPU when the
    cloud library is a CUDA build, so only packed bytes cross PCIe); float passthroughs
    are a cast. A frame that does not fit the cut it names is a :class:`FrameMismatch`.
    """

    def __init__(self, artifact: Artifact, target: str = "host") -> None:
        super().__init__(artifact, "cloud", target)
        self._shapes: dict[str, tuple[int, ...]] = {}
        for seg in artifact.segments:
            info = self.runner.module.function(seg["function"])
            self._shapes.update((name, tuple(spec.shape)) for name, spec in zip(info.input_names, info.inputs))

    def run(self, position: int, tensors: list[PackedTensor]) -> np.ndarray:
        return self.finish(self.unpack(position, tensors), position)

    def run_many(self, position: int, requests: list[list[PackedTensor]]) -> list[np.ndarray | InputError]:
        """Several requests at one cut: each unpacked alone (it has its own range), then
        stacked ``cloud_batch`` at a time through the batched segments when the artifact
        has them (a last partial batch is padded with zeros). A request that does not fit
        the cut gets its error in its place; the others still run."""
        outputs: list[np.ndarray | InputError] = [None] * len(requests)  # type: ignore[list-item]
        envs: dict[int, Env] = {}
        for i, tensors in enumerate(requests):
            try:
                envs[i] = self.unpack(position, tensors)
            except InputError as e:
                outputs[i] = e
        if not envs:
            return outputs
        batch, cut = self.artifact.manifest.get("cloud_batch", 1), self.cut(position)
        ready = list(envs)
        while ready:
            group, ready = ready[:batch], ready[batch:]
            if batch == 1 or len(group) == 1:
                outputs[group[0]] = self.finish(envs[group[0]], position)
                continue
            stacked = {name: _stack([envs[i][name] for i in group], batch) for name in cut["tensors"]}
            self.run_segments(cut["cloud_segments"], stacked, key="batched_function")
            result = _numpy(stacked[self.output_name])
            for k, i in enumerate(group):
                outputs[i] = result[k : k + 1]
        return outputs

    def unpack(self, position: int, tensors: list[PackedTensor]) -> Env:
        """The crossing tensors of one request at cut ``position``, checked and unpacked."""
        cut = self.cut(position)
        if cut["kind"] == "device-only":
            raise FrameMismatch(f"cut {position} is device-only: nothing runs in the cloud")
        names = cut["tensors"]
        if len(tensors) != len(names):
            raise FrameMismatch(f"cut {position} crosses {len(names)} tensor(s); the frame has {len(tensors)}")
        env: Env = {}
        for name, packed in zip(names, tensors):
            expected = self._shapes.get(name)
            if expected is not None and tuple(packed.shape) != expected:
                raise FrameMismatch(f"cut {position} tensor {name!r} has shape {expected}, the frame {packed.shape}")
            env[name] = self._unpack(name, packed, cut)
        return env

    def _unpack(self, name: str, packed: PackedTensor, cut: dict[str, Any]) -> np.ndarray:
        params = packed.params
        kernel = None if params.is_passthrough else self.kernel(cut, str(params.bits), name)
        built = params.granularity == self.granularity and (
            params.granularity == "tensor" or params.axis == self.channel_axis(cut, name)
        )
        if kernel is None or not built:
            return packed.values()  # a cast, or a coding without a compiled kernel: NumPy, same formula
        data = np.frombuffer(packed.relayout(KERNEL_LAYOUT).data, dtype=np.uint8)
        rng = (
            np.stack([params.lo, params.scale])
            if params.granularity == "channel"
            else np.array([params.lo[0], params.scale[0]], dtype=np.float32)
        )
        return self.runner.invoke(kernel["unpack"], [data, rng])[0]


class FrameMismatch(InputError):
    """A well-formed frame that does not fit the artifact's cut (wrong count or shapes)."""


def _numpy(x: Any) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.numpy()


def _stack(values: list[Any], batch: int) -> np.ndarray:
    """Batch-1 tensors stacked on axis 0 and zero-padded to ``batch``."""
    arrays = [_numpy(v) for v in values]
    out = np.zeros((batch, *arrays[0].shape[1:]), arrays[0].dtype)
    out[: len(arrays)] = np.concatenate(arrays)
    return out
