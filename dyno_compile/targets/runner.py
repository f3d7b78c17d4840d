"""Run the functions of a compiled module with the Relax VM, on this machine's CPU, on a
GPU here, or on a remote device over TVM RPC: one runner, one contract, for every caller
(tests, benchmarks, artifacts, profiling, the serving runtime).

The contract of :class:`ModuleRunner`:

* ``run(function, inputs)``: the outputs as NumPy arrays, one per function output;
  ``invoke`` the same, left on the device as ``tvm.runtime.Tensor``.
* ``time(function, inputs, number=, repeat=, min_repeat_ms=)``: seconds per call, one
  figure per repeat (a NumPy array of ``repeat`` values), timed on the runner's device by
  TVM's time evaluator after a warm-up call; callers take the statistic they need (the
  profiles and benchmarks take the median).
* ``inputs``: a list in the function's input order, a dict by input name, or one array.
  Each is checked against the function's :class:`~dyno_compile.targets.module.TensorSpec`
  and refused with an :class:`~dyno_compile.errors.InputError` naming the function, the
  input, what it expects and what it got: the shape must match; a ``tvm.runtime.Tensor``
  must have the dtype; a NumPy value is converted when only its width changes (float64
  activations to float32) or NumPy calls the cast safe, not across kinds (floats into a
  uint8 bit stream would be truncated silently).

Every call goes through ``set_input``, ``invoke_stateful`` and ``get_output``, the VM's
calling convention that also works over RPC: calling ``vm[function]`` there returns a
tuple of outputs as one opaque remote object, which cannot be unpacked. Locally it costs
a few microseconds more per call than calling the function directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.targets.errors import TargetError
from dyno_compile.targets.module import Compiled, CompiledModule, TensorSpec, contiguous
from dyno_compile.targets.spec import TargetSpec

__all__ = ["ModuleRunner", "device_for", "gpu_available", "run"]


def device_for(spec: TargetSpec, session: Any = None) -> Any:
    """The TVM device a build for ``spec`` runs on: here, or on the remote end of an RPC
    ``session`` (which names its devices the way the ``tvm`` module does)."""
    import tvm

    where = tvm if session is None else session
    if spec.kind == "cuda":
        return where.cuda(0)
    if spec.kind == "llvm":
        return where.cpu(0)
    raise TargetError(f"no runtime device for target kind {spec.kind!r}")


def gpu_available(spec: TargetSpec) -> bool:
    """Whether a GPU target can run on this machine (a CUDA driver and device are present)."""
    if not spec.is_gpu:
        return False
    try:
        return bool(device_for(spec).exist)
    except Exception:  # noqa: BLE001 - no driver
        return False


def _as_list(values: Any, names: list[str], what: str, where: str) -> list:
    """``values`` (a list in order, a dict by name, or one array) as a list in ``names`` order."""
    if values is None:
        values = []
    if isinstance(values, Mapping):
        missing = [n for n in names if n not in values]
        if missing:
            raise InputError(f"{where}: missing {what}: {', '.join(missing)}")
        return [values[n] for n in names]
    if isinstance(values, np.ndarray):
        values = [values]
    values = list(values)
    if len(values) != len(names):
        raise InputError(f"{where} takes {len(names)} {what}, got {len(values)}")
    return values


def _converts(have: np.dtype, want: np.dtype) -> bool:
    """Whether a NumPy input of dtype ``have`` is converted to ``want``: a change of width
    within one kind (float64 to float32, int64 to int32) or a cast NumPy calls safe (uint8
    to float32); not across kinds (float to an integer code, int64 to uint8)."""
    return have.kind == want.kind or np.can_cast(have, want, "safe")


class ModuleRunner:
    """Runs the functions of a :class:`CompiledModule` (or a :class:`Compiled` build, as its
    one function ``main``) with the Relax VM; see the module docstring for the contract.

    ``module`` comes from a build (host builds, or GPU builds where a GPU is present) or
    from :meth:`CompiledModule.from_description` with a loaded library, which runs wherever
    it was loaded: pass ``device`` for a remote one (``session.cpu(0)``). ``weights`` (name
    -> array or ``tvm.runtime.Tensor``, e.g. a loaded param file) is needed for modules
    compiled with ``bind_weights=False`` and defaults to the values the module was compiled
    with. Each weight is copied to the device once and passed, by name, to every function
    that takes it. Uses only the TVM runtime.
    """

    def __init__(
        self, module: CompiledModule | Compiled, weights: Mapping[str, Any] | None = None, *, device: Any = None
    ) -> None:
        import tvm
        from tvm.runtime.vm import VirtualMachine  # not tvm.relax's re-export: that needs the compiler library

        if isinstance(module, Compiled):
            module = module.as_module()
        if not isinstance(module, CompiledModule):
            raise InputError(
                f"ModuleRunner takes a CompiledModule (use CompiledModule.from_description(desc, lib) "
                f"for a loaded library) or a Compiled build, got {type(module).__name__}"
            )
        loaded = not isinstance(module.executable, tvm.runtime.Executable)  # a library loaded from a file
        if not loaded and device is None and not module.target.is_host and not gpu_available(module.target):
            raise TargetError(
                f"module {module.name!r} was compiled for {module.target.name!r}, which does not run "
                "on this machine; export it and run it on the device"
            )
        self.module = module
        self.device = device if device is not None else device_for(module.target)
        self.vm = VirtualMachine(module.executable, self.device)
        self._weights: dict[str, Any] = {}
        if not module.bind_weights:
            if weights is not None:
                self.set_weights(weights)
            elif module.weights:
                self.set_weights(module.weights)

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy the weights the module takes to the device (names it does not take are ignored)."""
        m = self.module
        missing = [n for n in m.weight_specs if n not in weights]
        if missing:
            raise InputError(
                f"module {m.name!r}: missing weights: {', '.join(missing[:10])}"
                + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            )
        self._weights = {
            n: self._tensor(weights[n], s, "weight", f"module {m.name!r}") for n, s in m.weight_specs.items()
        }

    def _tensor(self, value: Any, spec: TensorSpec, what: str, where: str):
        """``value`` on the runner's device, checked against ``spec`` (see the module docstring)."""
        import tvm

        tensor = isinstance(value, tvm.runtime.Tensor)
        if not tensor:
            value = np.asarray(value)
        dtype_fits = str(value.dtype) == spec.dtype if tensor else _converts(value.dtype, np.dtype(spec.dtype))
        if tuple(value.shape) != spec.shape or not dtype_fits:
            raise InputError(
                f"{where}: {what} {spec.name!r} expects {spec.dtype}{list(spec.shape)}, got "
                f"{value.dtype}{list(value.shape)}"
            )
        if tensor:
            return value if value.device == self.device else value.copyto(self.device)
        return tvm.runtime.tensor(contiguous(value, spec.dtype), self.device)

    def args(self, function: str, inputs: Any) -> list:
        """The VM arguments of ``function``: its inputs on the device, then its weights."""
        info = self.module.function(function)
        where = f"function {function!r}"
        arrays = _as_list(inputs, info.input_names, "input(s)", where)
        args = [self._tensor(a, s, "input", where) for a, s in zip(arrays, info.inputs)]
        if info.weights:
            if not self._weights:
                raise InputError(
                    f"module {self.module.name!r} was compiled with bind_weights=False: "
                    "pass its weights to ModuleRunner"
                )
            args += [self._weights[w] for w in info.weights]
        return args

    def invoke(self, function: str, inputs: Any) -> list:
        """Run ``function``; its outputs as ``tvm.runtime.Tensor`` on the device (no copy back)."""
        info = self.module.function(function)
        self.vm.set_input(function, *self.args(function, inputs))
        self.vm.invoke_stateful(function)
        # The module's own get_output, not VirtualMachine.get_outputs: that one builds a
        # recursive closure over the VM (a reference cycle), which over RPC holds the remote
        # session open until the garbage collector happens to run. Our outputs are flat.
        get = self.vm.module["get_output"]
        if len(info.outputs) == 1:
            return [get(function)]
        return [get(function, i) for i in range(len(info.outputs))]

    def run(self, function: str, inputs: Any) -> list[np.ndarray]:
        """Run ``function`` on ``inputs``; its outputs as NumPy arrays, in order."""
        return [o.numpy() for o in self.invoke(function, inputs)]

    def time(
        self, function: str, inputs: Any, *, number: int = 1, repeat: int = 5, min_repeat_ms: int = 200
    ) -> np.ndarray:
        """Seconds per call of ``function``, one figure per repeat (each the mean of
        ``number`` calls, or of as many as fill ``min_repeat_ms``), after a warm-up call."""
        self.vm.set_input(function, *self.args(function, inputs))
        self.vm.invoke_stateful(function)
        timer = self.vm.time_evaluator(
            "invoke_stateful", self.device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
        )
        return np.asarray(timer(function).results)


def run(
    compiled: Compiled | CompiledModule, inputs: Any, weights: Mapping[str, Any] | None = None, function: str = "main"
) -> list[np.ndarray]:
    """Run ``function`` of a build on ``inputs`` (list in input order, dict by name, or one
    array) once, on this machine; its outputs as NumPy arrays.

    ``weights`` (dict by name) is needed only for builds with ``bind_weights=False``, and
    defaults to the graph's own weights.
    """
    return ModuleRunner(compiled, weights).run(function, inputs)
