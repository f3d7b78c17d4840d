"""One engine's inferences, run by the *emulated* aarch64 Python for
``benchmarks/arm_instructions.py`` (which counts the instructions this process executes).

It imports only what a board has: NumPy and TVM's runtime with the project's lean device
path (``load_artifact``, the device library's ``ModuleRunner``), or ONNX Runtime from the
extras directory on ``PYTHONPATH``. One warm-up inference first (the VM's and ORT's first
run allocate and plan), then ``N`` more: the caller counts runs with different ``N`` and
takes the difference, so start-up, imports, loading and the warm-up cancel out. The
process's memory map is written beside the output (``OUTPUT.npy.maps``), so that hot
addresses can be mapped to the functions of the libraries it loaded.

    python3 arm_infer.py tvm ARTIFACT INPUT.npy N OUTPUT.npy
    python3 arm_infer.py ort MODEL.onnx INPUT.npy N OUTPUT.npy
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np


def tvm_inference(artifact_dir: str, x: np.ndarray) -> Callable[[], np.ndarray]:
    """Every device segment in order (the device-only cut) of the artifact's arm64 library,
    with TVM's single-threaded pool (``TVM_NUM_THREADS=1`` from the caller)."""
    from dyno_compile.artifact.load import load_artifact, run_segments

    artifact = load_artifact(artifact_dir)
    runner = artifact.runner("device", "arm64")
    cut = next(c for c in artifact.cuts if c["kind"] == "device-only")
    name_in = artifact.manifest["inputs"][0]["name"]
    name_out = artifact.manifest["outputs"][0]["name"]

    def infer() -> np.ndarray:
        env = {name_in: x}
        run_segments(artifact, runner.run, cut["device_segments"], env)
        return np.asarray(env[name_out])

    return infer


def ort_inference(model: str, x: np.ndarray) -> Callable[[], np.ndarray]:
    """ONNX Runtime's CPU provider, one intra-op thread, sequential, all graph optimisations
    (as ``benchmarks/onnx_export.ort_session``, which this process cannot import: no ONNX),
    and no spinning waits."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for pool in ("intra_op", "inter_op"):  # a spinning wait would count instructions that depend on timing
        opts.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return lambda: np.asarray(sess.run(None, feed)[0])


def main(argv: list[str]) -> int:
    engine, model, input_path, n, output_path = argv
    x = np.load(input_path)
    infer = {"tvm": tvm_inference, "ort": ort_inference}[engine](model, x)
    y = infer()  # warm-up: counted in every run, so it cancels
    for _ in range(int(n)):
        y = infer()
    np.save(output_path, y)
    with open("/proc/self/maps") as src, open(f"{output_path}.maps", "w") as dst:
        dst.write(src.read())  # where the libraries were loaded: the caller maps hot addresses to functions
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
