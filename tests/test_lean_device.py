"""The device side runs on TVM's runtime-only library (``TVM_USE_RUNTIME_LIB=1``, what a
board needs): loading the artifact, the device segments and the compiled pack kernels give
the same bytes as with the full library, and nothing of the compiler, JAX, Optuna, ONNX or
matplotlib is imported on that path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from dyno_compile.configs import Config
from dyno_compile.runtime.sides import DeviceSide

#: Modules the device path must not need (a lean install does not have them).
HEAVY = ("jax", "optuna", "onnx", "matplotlib", "tvm.relax", "tvm.s_tir", "networkx", "dyno_compile.search")

_DEVICE_SCRIPT = """
import sys
started = set(sys.modules)  # what the interpreter loaded on its own (site hooks): not the device path's
import json
import numpy as np
from dyno_compile.artifact.load import load_artifact
from dyno_compile.configs import Config
from dyno_compile.runtime.client import DeviceClient

root, position = sys.argv[1], int(sys.argv[2])
x = np.random.default_rng(7).normal(size=(1, 3, 32, 32)).astype(np.float32)
client = DeviceClient(load_artifact(root), [])
device = client.device
frame = device.frame(device.start(x, position), Config(position, "4"), request_id=1)
print(json.dumps({
    "output": client.infer(x).ravel().tolist(),
    "frame": frame.hex(),
    "heavy": [m for m in sys.argv[3].split(",") if m in sys.modules],
    "top": sorted({m.split(".")[0] for m in set(sys.modules) - started} - set(sys.stdlib_module_names)),
}))
"""


def test_device_side_runs_on_the_tvm_runtime_alone(artifact, resnet20_host):
    positions = [c["position"] for c in artifact.cuts]
    position = positions[len(positions) // 2]  # a split inside the model, not either end
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _DEVICE_SCRIPT, str(resnet20_host), str(position), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lean = json.loads(proc.stdout.strip().splitlines()[-1])
    assert lean["heavy"] == []
    assert _distributions(lean["top"]) <= _closure(_requirements()), "requirements-device.txt misses a package"

    x = np.random.default_rng(7).normal(size=(1, 3, 32, 32)).astype(np.float32)
    device = DeviceSide(artifact)
    full = device.frame(device.start(x, position), Config(position, "4"), request_id=1)
    assert bytes.fromhex(lean["frame"]) == full
    np.testing.assert_array_equal(np.asarray(lean["output"], np.float32), device.finish(device.start(x, 0), 0).ravel())


def _requirements() -> set[str]:
    """The distributions requirements-device.txt names."""
    text = (Path(__file__).resolve().parents[1] / "requirements-device.txt").read_text()
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return {_norm(re.split(r"[<>=!~\[; ]", line)[0]) for line in lines if line}


def _closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require, as installed here."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.requires(name) or ():
            if "extra ==" not in req:
                todo.append(_norm(re.split(r"[<>=!~\[; (]", req)[0]))
    return seen


def _distributions(modules: list[str]) -> set[str]:
    """The installed distributions that provide the top-level ``modules`` (this project's aside)."""
    provided = metadata.packages_distributions()
    return {_norm(d) for m in modules if m != "dyno_compile" for d in provided.get(m, ())}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
