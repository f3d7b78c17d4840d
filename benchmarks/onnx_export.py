"""A small IR ``Graph`` -> ONNX exporter, for benchmarks only (ONNX Runtime as a baseline).

Covers what the zoo CNNs need after ``dyno_compile.passes.run_passes`` (ResNet-18/20,
VGG, MobileNetV2): NCHW ``conv2d`` (Conv), ``dense`` (Gemm, ``transB=1``), pooling,
elementwise ops, ``pad``, ``slice``, ``flatten``, ``reshape``, ``transpose``,
``concat``, ``softmax``, ``batch_norm`` (in case it was not folded), ``clip``/``relu6``,
``cast``, ``identity``. Weights become initializers; anything else raises
``NotImplementedError`` naming the node. Float32 graphs only were checked.

    python benchmarks/onnx_export.py resnet20 resnet18     # export, run ORT, compare with the IR interpreter
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

INT64_MAX = np.iinfo(np.int64).max
OPSET = 17


class _Builder:
    def __init__(self, graph) -> None:
        import onnx  # noqa: F401 - fail early with the import error

        self.graph = graph
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self._n += 1
        name = f"{base}__c{self._n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, name: str, **attrs: Any) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))


def _nchw(node, key: str = "data_layout") -> None:
    layout = node.attrs.get(key, "NCHW")
    if layout != "NCHW" or node.attrs.get("kernel_layout", "OIHW") != "OIHW":
        raise NotImplementedError(f"node {node.name!r} ({node.op}): only NCHW/OIHW is exported, got {layout}")


def _pads(padding) -> list[int]:
    (t, b), (l, r) = padding
    return [int(t), int(l), int(b), int(r)]


def _conv2d(bld: _Builder, node, ins: list[str]) -> None:
    _nchw(node)
    a = node.attrs
    kshape = list(bld.graph.node(node.inputs[1]).shape[2:])
    bld.node(
        "Conv",
        ins,
        node.name,
        node.name,
        kernel_shape=kshape,
        strides=list(a["strides"]),
        pads=_pads(a["padding"]),
        dilations=list(a["dilation"]),
        group=int(a["groups"]),
    )


def _dense(bld: _Builder, node, ins: list[str]) -> None:
    if len(bld.graph.node(node.inputs[0]).shape) != 2:
        raise NotImplementedError(f"node {node.name!r} (dense): only 2-D inputs are exported")
    bld.node("Gemm", ins, node.name, node.name, transB=1)


def _pool(op: str) -> Callable:
    def conv(bld: _Builder, node, ins: list[str]) -> None:
        _nchw(node, "layout")
        a = node.attrs
        kw: dict[str, Any] = dict(kernel_shape=list(a["kernel"]), strides=list(a["strides"]), pads=_pads(a["padding"]))
        if tuple(a["dilation"]) != (1, 1):
            kw["dilations"] = list(a["dilation"])
        if op == "AveragePool":
            kw["count_include_pad"] = int(bool(a["count_include_pad"]))
            if "dilations" in kw:
                raise NotImplementedError(f"node {node.name!r}: dilated average pooling needs opset 19")
        bld.node(op, ins, node.name, node.name, **kw)

    return conv


def _global_avg_pool(bld: _Builder, node, ins: list[str]) -> None:
    _nchw(node, "layout")
    if node.attrs["keepdims"]:
        bld.node("GlobalAveragePool", ins, node.name, node.name)
    else:
        bld.node("GlobalAveragePool", ins, node.name + "__gap", node.name + "__gap")
        bld.node("Flatten", [node.name + "__gap"], node.name, node.name, axis=1)


def _simple(op: str, **fixed: Any) -> Callable:
    def conv(bld: _Builder, node, ins: list[str]) -> None:
        bld.node(op, ins, node.name, node.name, **fixed)

    return conv


def _clip(lo: Any, hi: Any) -> Callable:
    def conv(bld: _Builder, node, ins: list[str]) -> None:
        dtype = np.dtype(node.dtype)
        lo_v = node.attrs.get("min") if lo == "attr" else lo
        hi_v = node.attrs.get("max") if hi == "attr" else hi
        args = [
            ins[0],
            bld.const(node.name, np.asarray(lo_v, dtype)) if lo_v is not None else "",
            bld.const(node.name, np.asarray(hi_v, dtype)) if hi_v is not None else "",
        ]
        bld.node("Clip", args, node.name, node.name)

    return conv


def _pad(bld: _Builder, node, ins: list[str]) -> None:
    pads = node.attrs["pads"]
    flat = [int(lo) for lo, _ in pads] + [int(hi) for _, hi in pads]
    value = bld.const(node.name, np.asarray(node.attrs["value"], np.dtype(node.dtype)))
    bld.node(
        "Pad", [ins[0], bld.const(node.name, np.asarray(flat, np.int64)), value], node.name, node.name, mode="constant"
    )


def _slice(bld: _Builder, node, ins: list[str]) -> None:
    a = node.attrs
    rank = len(a["starts"])
    steps = a["strides"] or (1,) * rank
    ends = [INT64_MAX if e is None else int(e) for e in a["limits"]]
    ints = [
        np.asarray(a["starts"], np.int64),
        np.asarray(ends, np.int64),
        np.arange(rank, dtype=np.int64),
        np.asarray(steps, np.int64),
    ]
    args = [ins[0], *(bld.const(node.name, v) for v in ints)]
    bld.node("Slice", args, node.name, node.name)


def _reshape(bld: _Builder, node, ins: list[str]) -> None:
    bld.node("Reshape", [ins[0], bld.const(node.name, np.asarray(node.shape, np.int64))], node.name, node.name)


def _flatten(bld: _Builder, node, ins: list[str]) -> None:
    bld.node("Flatten", ins, node.name, node.name, axis=int(node.attrs["axis"]))


def _batch_norm(bld: _Builder, node, ins: list[str]) -> None:
    if node.attrs["axis"] % len(node.shape) != 1:
        raise NotImplementedError(f"node {node.name!r}: batch_norm is exported on axis 1 only")
    bld.node("BatchNormalization", ins, node.name, node.name, epsilon=float(node.attrs["epsilon"]))


def _cast(bld: _Builder, node, ins: list[str]) -> None:
    from onnx import helper

    bld.node("Cast", ins, node.name, node.name, to=helper.np_dtype_to_tensor_dtype(np.dtype(node.attrs["dtype"])))


EXPORTERS: dict[str, Callable] = {
    "conv2d": _conv2d,
    "dense": _dense,
    "max_pool2d": _pool("MaxPool"),
    "avg_pool2d": _pool("AveragePool"),
    "global_avg_pool2d": _global_avg_pool,
    "batch_norm": _batch_norm,
    "relu": _simple("Relu"),
    "sigmoid": _simple("Sigmoid"),
    "tanh": _simple("Tanh"),
    "exp": _simple("Exp"),
    "log": _simple("Log"),
    "sqrt": _simple("Sqrt"),
    "neg": _simple("Neg"),
    "abs": _simple("Abs"),
    "identity": _simple("Identity"),
    "relu6": _clip(0.0, 6.0),
    "clip": _clip("attr", "attr"),
    "add": _simple("Add"),
    "sub": _simple("Sub"),
    "mul": _simple("Mul"),
    "div": _simple("Div"),
    "maximum": _simple("Max"),
    "minimum": _simple("Min"),
    "pad": _pad,
    "slice": _slice,
    "flatten": _flatten,
    "reshape": _reshape,
    "cast": _cast,
}


def _with_attr(op: str, key: str) -> Callable:
    def conv(bld: _Builder, node, ins: list[str]) -> None:
        value = node.attrs[key]
        bld.node(op, ins, node.name, node.name, **{key: list(value) if isinstance(value, tuple) else int(value)})

    return conv


EXPORTERS.update(
    {
        "transpose": _with_attr("Transpose", "perm"),
        "concat": _with_attr("Concat", "axis"),
        "softmax": _with_attr("Softmax", "axis"),
    }
)


def export_onnx(graph, path: str | Path | None = None, *, opset: int = OPSET):
    """``graph`` as an ONNX ``ModelProto`` (also saved to ``path`` when given)."""
    import onnx
    from onnx import helper

    bld = _Builder(graph)
    inputs, outputs = [], []
    for node in graph.nodes:
        if node.op == "input":
            inputs.append(
                helper.make_tensor_value_info(
                    node.name, helper.np_dtype_to_tensor_dtype(np.dtype(node.dtype)), list(node.shape)
                )
            )
        elif node.op == "const":
            from onnx import numpy_helper

            bld.inits.append(numpy_helper.from_array(np.asarray(graph.params[node.name]), node.name))
        elif node.op in EXPORTERS:
            EXPORTERS[node.op](bld, node, list(node.inputs))
        else:
            raise NotImplementedError(
                f"node {node.name!r}: op {node.op!r} has no ONNX export (exported: {', '.join(sorted(EXPORTERS))})"
            )
    for name in graph.outputs:
        n = graph.node(name)
        outputs.append(
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(n.dtype)), list(n.shape))
        )
    model = helper.make_model(
        helper.make_graph(bld.nodes, graph.name, inputs, outputs, bld.inits),
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="dyno_compile-bench",
    )
    model.ir_version = min(model.ir_version, 9)  # ONNX Runtime releases lag the onnx package's IR version
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model


def ort_session(model, threads: int = 2):
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, one inter-op, all optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def check_against_interpreter(graph, xs: list[np.ndarray], threads: int = 2) -> float:
    """Relative error (max abs diff / max abs reference) of ORT vs the IR interpreter, worst output."""
    from dyno_compile.ir import Interpreter

    sess = ort_session(export_onnx(graph), threads)
    names = [n.name for n in graph.nodes if n.op == "input"]
    got = sess.run(None, dict(zip(names, xs)))
    ref = Interpreter(graph)(*xs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    worst = 0.0
    for a, b in zip(got, ref):
        b = np.asarray(b, np.float64)
        worst = max(worst, float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-12)))
    return worst


def main(argv: list[str]) -> int:
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from dyno_compile import zoo
    from dyno_compile.frontend.jax_import import from_jax
    from dyno_compile.passes import run_passes

    for name in argv or ["resnet20", "resnet18"]:
        m = zoo.get_model(name)
        g = run_passes(from_jax(m.fn, m.params, m.random_input()))
        err = check_against_interpreter(g, [m.random_input(1)])
        print(f"{name}: ONNX Runtime vs IR interpreter, relative error {err:.1e}")
        if err > 1e-4:
            print(f"{name}: MISMATCH", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
