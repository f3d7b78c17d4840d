"""ONNX import: every converter against ONNX Runtime, the real SqueezeNet, and the failures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import shared_data
from dyno_compile.errors import FrontendError, UnsupportedOpError
from dyno_compile.frontend.onnx_import import from_onnx
from dyno_compile.frontend.onnx_shape_ops import resolve_reshape
from dyno_compile.ir import Interpreter, validate

RNG = np.random.default_rng(0)


# ====================================================================== helpers
def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, tuple],
    outputs: Sequence[str],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 13,
    output_shapes: dict[str, tuple] | None = None,
) -> onnx.ModelProto:
    """A checked single-graph model; output shapes not given come from ONNX shape inference."""
    output_shapes = output_shapes or {}
    graph = helper.make_graph(
        list(nodes),
        "case",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, output_shapes.get(n)) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
    )
    opsets = [helper.make_opsetid("", opset)]
    ir_version = helper.find_min_ir_version_for(opsets)
    if ir_version < 4:  # IR version 3 lists every initializer as a graph input too
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in graph.initializer)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_ir(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    graph = from_onnx(model)
    validate(graph)
    out = Interpreter(graph)(*[feeds[n.name] for n in graph.inputs])
    return [np.asarray(o) for o in (out if isinstance(out, tuple) else (out,))]


def assert_matches_ort(model: onnx.ModelProto) -> None:
    weights = {t.name for t in model.graph.initializer}
    feeds = {
        i.name: RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
        if i.name not in weights
    }
    expected, got = run_ort(model, feeds), run_ir(model, feeds)
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def one(
    op: str,
    *,
    shape: tuple = (2, 3, 8, 8),
    inits: dict | None = None,
    inputs: Sequence[str] = ("x",),
    opset: int = 13,
    **attrs,
) -> onnx.ModelProto:
    """A model of a single node reading ``x`` (and the named initializers)."""
    return make_model([node(op, inputs, **attrs)], {"x": shape}, ["y"], inits, opset)


# ====================================================================== converters vs ONNX Runtime
CONV = {"w3": w(4, 3, 3, 3), "b4": w(4)}
CASES = {
    # convolution
    "conv_pads_bias": one("Conv", inputs=["x", "w3", "b4"], inits=CONV, pads=[1, 1, 1, 1]),
    "conv_no_bias_stride_dilation": one(
        "Conv", inputs=["x", "w3"], inits=CONV, strides=[2, 2], dilations=[2, 2], shape=(1, 3, 11, 11)
    ),
    "conv_asymmetric_pads": one("Conv", inputs=["x", "w3", "b4"], inits=CONV, pads=[0, 1, 2, 1]),
    "conv_same_upper": one("Conv", inputs=["x", "w3"], inits=CONV, auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower": one("Conv", inputs=["x", "w3"], inits=CONV, auto_pad="SAME_LOWER", strides=[2, 2]),
    "conv_valid": one("Conv", inputs=["x", "w3"], inits=CONV, auto_pad="VALID", kernel_shape=[3, 3]),
    "conv_grouped": one(
        "Conv", inputs=["x", "wg", "b4"], inits={"wg": w(4, 2, 3, 3), "b4": w(4)}, shape=(1, 4, 7, 7), group=2
    ),
    "conv_depthwise": one("Conv", inputs=["x", "wd"], inits={"wd": w(3, 1, 3, 3)}, group=3, pads=[1, 1, 1, 1]),
    # activations
    "relu": one("Relu"),
    "sigmoid": one("Sigmoid"),
    "tanh": one("Tanh"),
    "hardswish": one("HardSwish", opset=14),
    "hardsigmoid_default": one("HardSigmoid"),
    "hardsigmoid_1_6": one("HardSigmoid", alpha=1 / 6, beta=0.5),
    "clip_opset6_attrs": one("Clip", opset=6, min=0.0, max=0.5),
    "clip_opset6_min_only": one("Clip", opset=6, min=-0.2),
    "clip_opset13_inputs": one("Clip", inputs=["x", "lo", "hi"], inits={"lo": np.float32(-0.5), "hi": np.float32(0.7)}),
    "clip_opset13_max_only": one("Clip", inputs=["x", "", "hi"], inits={"hi": np.float32(0.3)}),
    "exp": one("Exp"),
    "neg": one("Neg"),
    "abs": one("Abs"),
    # arithmetic with broadcasting
    **{
        f"{op.lower()}_broadcast": one(op, inputs=["x", "c"], inits={"c": w(3, 1, 1)})
        for op in ("Add", "Sub", "Mul", "Div")
    },
    "max_variadic": make_model([node("Max", ["x", "a", "b"])], {"x": (2, 5)}, ["y"], {"a": w(2, 5), "b": w(5)}),
    "min_single": make_model([node("Min", ["x"])], {"x": (2, 5)}, ["y"]),
    "concat_axis1": make_model(
        [node("Relu", ["x"], ["r"]), node("Concat", ["x", "r", "x"], axis=1)], {"x": (1, 2, 4, 4)}, ["y"]
    ),
    "concat_negative_axis": make_model([node("Concat", ["x", "c"], axis=-1)], {"x": (2, 3)}, ["y"], {"c": w(2, 4)}),
    # pooling
    "maxpool": one("MaxPool", kernel_shape=[3, 3], strides=[2, 2], shape=(1, 3, 9, 9)),
    "maxpool_pads": one("MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
    "maxpool_ceil_adds_window": one("MaxPool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, shape=(1, 2, 6, 6)),
    "maxpool_ceil_drops_window_in_pad": one(
        "MaxPool", kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, shape=(1, 2, 5, 5)
    ),
    "maxpool_ceil_caffe_like": one("MaxPool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, shape=(1, 2, 113, 113)),
    "maxpool_dilated": one("MaxPool", kernel_shape=[2, 2], dilations=[2, 2], shape=(1, 2, 7, 7)),
    "maxpool_same_upper": one("MaxPool", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "avgpool_exclude_pad": one("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "avgpool_include_pad": one("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
    "avgpool_ceil_exclude_pad": one(
        "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, shape=(1, 2, 6, 6)
    ),
    "avgpool_ceil_include_pad": one(
        "AveragePool",
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        ceil_mode=1,
        count_include_pad=1,
        shape=(1, 2, 6, 6),
    ),
    "avgpool_ceil_no_pads": one(
        "AveragePool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1, shape=(1, 2, 6, 6)
    ),
    "global_avgpool": one("GlobalAveragePool"),
    "global_maxpool": one("GlobalMaxPool"),
    # normalisation and dense layers
    "batchnorm_opset9": one(
        "BatchNormalization",
        inputs=["x", "g", "b", "m", "v"],
        opset=9,
        epsilon=1e-3,
        inits={"g": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.1},
    ),
    "batchnorm_opset15": one(
        "BatchNormalization",
        inputs=["x", "g", "b", "m", "v"],
        opset=15,
        inits={"g": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.1},
    ),
    "gemm_transb1_bias": one("Gemm", inputs=["x", "wt", "c"], shape=(2, 6), transB=1, inits={"wt": w(4, 6), "c": w(4)}),
    "gemm_transb0_bias": one("Gemm", inputs=["x", "wk", "c"], shape=(2, 6), inits={"wk": w(6, 4), "c": w(4)}),
    "gemm_alpha_beta": one(
        "Gemm", inputs=["x", "wt", "c"], shape=(2, 6), transB=1, alpha=0.5, beta=2.0, inits={"wt": w(4, 6), "c": w(4)}
    ),
    "gemm_bias_2d": one("Gemm", inputs=["x", "wt", "c"], shape=(2, 6), transB=1, inits={"wt": w(4, 6), "c": w(2, 4)}),
    "gemm_no_bias_alpha": one("Gemm", inputs=["x", "wk"], shape=(2, 6), alpha=3.0, inits={"wk": w(6, 4)}),
    "gemm_transa": one("Gemm", inputs=["x", "wk", "c"], shape=(6, 2), transA=1, inits={"wk": w(6, 4), "c": w(4)}),
    "matmul_const_weight": one("MatMul", inputs=["x", "wk"], shape=(3, 6), inits={"wk": w(6, 5)}),
    "matmul_3d_input": one("MatMul", inputs=["x", "wk"], shape=(2, 3, 6), inits={"wk": w(6, 5)}),
    "softmax_opset13_axis1": one("Softmax", shape=(2, 5, 3), axis=1),
    "softmax_opset11_flattens": one("Softmax", shape=(2, 5, 3), opset=11, axis=1),
    "softmax_opset11_default_axis": one("Softmax", shape=(2, 5, 3), opset=11),
    "softmax_opset7_squeezenet_like": one("Softmax", shape=(1, 10, 1, 1), opset=7),
    # shapes
    "flatten_axis1": one("Flatten"),
    "flatten_axis0": one("Flatten", axis=0),
    "flatten_axis_negative": one("Flatten", axis=-1, opset=11),
    "reshape_zero_minus_one": one("Reshape", inputs=["x", "s"], inits={"s": np.array([0, -1, 4], np.int64)}),
    "transpose_perm": one("Transpose", perm=[0, 2, 3, 1]),
    "transpose_default": one("Transpose", shape=(2, 3, 4)),
    "pad_opset7_attrs": one("Pad", opset=7, pads=[0, 0, 1, 2, 0, 0, 3, 0], value=1.5),
    "pad_opset13_inputs": one(
        "Pad", inputs=["x", "p", "v"], inits={"p": np.array([0, 1, 1, 0, 0, 0, 2, 1], np.int64), "v": np.float32(-2.0)}
    ),
    "pad_negative_crops": one("Pad", inputs=["x", "p"], inits={"p": np.array([0, 0, -1, 1, 0, 0, 2, -2], np.int64)}),
    "pad_opset18_axes": one(
        "Pad",
        inputs=["x", "p", "", "ax"],
        opset=18,
        inits={"p": np.array([1, 2, 3, 4], np.int64), "ax": np.array([2, -1], np.int64)},
    ),
    "reducemean_keepdims": one("ReduceMean", axes=[2, 3]),
    "reducemean_drop_dims": one("ReduceMean", axes=[1], keepdims=0),
    "reducemean_all_axes": one("ReduceMean", keepdims=0),
    "reducemean_opset18_input": one(
        "ReduceMean", inputs=["x", "ax"], opset=18, inits={"ax": np.array([-1, -2], np.int64)}
    ),
    "reducesum_opset13_input": one("ReduceSum", inputs=["x", "ax"], inits={"ax": np.array([1], np.int64)}),
    "reducemax_opset11": one("ReduceMax", opset=11, axes=[3], keepdims=0),
    # no-ops and constants
    "dropout_opset7": make_model(
        [node("Dropout", ["x"], ["d", "mask"], ratio=0.5), node("Relu", ["d"])], {"x": (2, 3)}, ["y"], opset=7
    ),
    "dropout_opset13_output": make_model([node("Dropout", ["x"], ["y"])], {"x": (2, 3)}, ["y"]),
    "identity": make_model([node("Identity", ["x"], ["i"]), node("Neg", ["i"])], {"x": (4,)}, ["y"]),
    "constant_nodes": make_model(
        [
            node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([3, 8], np.int64))),
            node("Constant", [], ["k"], value_float=2.0),
            node("Reshape", ["x", "s"], ["r"]),
            node("Mul", ["r", "k"]),
        ],
        {"x": (2, 3, 4)},
        ["y"],
    ),
    "cast_roundtrip": make_model(
        [node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), node("Cast", ["h"], to=TensorProto.FLOAT)],
        {"x": (3, 4)},
        ["y"],
    ),
    "two_outputs": make_model([node("Relu", ["x"], ["y"]), node("Sigmoid", ["x"], ["z"])], {"x": (2, 2)}, ["y", "z"]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_converter_matches_onnxruntime(case: onnx.ModelProto) -> None:
    assert_matches_ort(case)


def test_every_required_op_is_covered() -> None:
    required = {
        "Conv",
        "Relu",
        "Clip",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Concat",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "BatchNormalization",
        "Gemm",
        "MatMul",
        "Flatten",
        "Reshape",
        "Transpose",
        "Softmax",
        "Dropout",
        "Identity",
        "Pad",
        "ReduceMean",
    }
    covered = {n.op_type for m in CASES.values() for n in m.graph.node}
    assert required <= covered


def test_softmax_before_opset13_lowers_through_reshape() -> None:
    graph = from_onnx(CASES["softmax_opset11_flattens"])
    assert [n.op for n in graph.compute_nodes] == ["reshape", "softmax", "reshape"]
    assert graph.node(graph.outputs[0]).shape == (2, 5, 3)


def test_gemm_transb0_transposes_the_weight() -> None:
    graph = from_onnx(CASES["gemm_transb0_bias"])
    ops = [n.op for n in graph.compute_nodes]
    assert ops == ["transpose", "dense"]
    assert graph.node(graph.outputs[0]).inputs[2] == "c"  # bias fused into dense


def test_dropout_and_identity_leave_no_node() -> None:
    graph = from_onnx(CASES["dropout_opset7"])
    assert [n.op for n in graph.compute_nodes] == ["relu"]


def test_node_names_are_sanitised_onnx_output_names() -> None:
    model = make_model([node("Relu", ["in/put:0"], ["fire2/squeeze 1x1"])], {"in/put:0": (2,)}, ["fire2/squeeze 1x1"])
    graph = from_onnx(model)
    assert [n.name for n in graph.inputs] == ["in_put_0"]
    assert graph.outputs == ["fire2_squeeze_1x1"]


def test_reshape_before_opset5_reads_the_shape_attribute() -> None:
    """ONNX Runtime starts at opset 7, so this one is checked against NumPy."""
    graph = helper.make_graph(
        [node("Reshape", ["x"], shape=[2, -1])],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3, 4))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 12))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 1)], ir_version=3)
    x = w(2, 3, 4)
    np.testing.assert_array_equal(run_ir(model, {"x": x})[0], x.reshape(2, 12))


def test_add_before_opset7_aligns_at_axis() -> None:
    """Opset-6 broadcasting (``broadcast=1, axis=1``); ONNX Runtime has no Add-6, so NumPy checks it."""
    c = w(3)
    model = one("Add", inputs=["x", "c"], inits={"c": c}, opset=6, broadcast=1, axis=1)
    x = w(2, 3, 8, 8)
    np.testing.assert_allclose(run_ir(model, {"x": x})[0], x + c[:, None, None], rtol=1e-6)


@pytest.mark.parametrize(
    "target,expected", [((0, -1), (2, 12)), ((-1,), (24,)), ((2, 0, 4), (2, 3, 4)), ((4, -1, 2), (4, 3, 2))]
)
def test_resolve_reshape(target: tuple, expected: tuple) -> None:
    assert resolve_reshape((2, 3, 4), target) == expected


# ====================================================================== failures
@pytest.mark.parametrize(
    "op_type,inputs,attrs",
    [
        ("Einsum", ["x", "x"], {"equation": "ij,jk->ik"}),
        ("LSTM", ["x", "lw", "lr"], {"hidden_size": 2}),
    ],
)
def test_unsupported_op_names_op_and_node(op_type: str, inputs: list, attrs: dict) -> None:
    inits = {"lw": w(1, 8, 3), "lr": w(1, 8, 2)}
    model = make_model(
        [node("Relu", ["x"], ["r"]), helper.make_node(op_type, inputs, ["y"], name="the_node", **attrs)],
        {"x": (3, 1, 3)} if op_type == "LSTM" else {"x": (3, 3)},
        ["y"],
        inits if op_type == "LSTM" else None,
    )
    with pytest.raises(UnsupportedOpError, match=f"'{op_type}' at node 'the_node'") as info:
        from_onnx(model)
    assert info.value.op == op_type and info.value.node == "the_node"


def test_unsupported_op_in_file_names_the_file(tmp_path: Path) -> None:
    model = make_model([node("Einsum", ["x", "x"], equation="ij,jk->ik")], {"x": (3, 3)}, ["y"])
    path = tmp_path / "einsum.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedOpError, match=r"einsum\.onnx: unsupported operator 'Einsum' at node 'y'"):
        from_onnx(path)


@pytest.mark.parametrize(
    "model,message",
    [
        (
            make_model(
                [node("Dropout", ["x"], ["d", "mask"]), node("Cast", ["mask"], to=TensorProto.FLOAT)],
                {"x": (2,)},
                ["y"],
            ),
            "secondary output 'mask'",
        ),
        (
            make_model([node("Equal", ["x", "x"], ["e"]), node("Where", ["e", "x", "x"])], {"x": (2, 3)}, ["y"]),
            "'Equal'.*only on values known at import time.*'x' is computed at run time",
        ),
        pytest.param(
            make_model(
                [node("Cast", ["x"], ["s"], to=TensorProto.INT64), node("Reshape", ["x", "s"])],
                {"x": (2,)},
                ["y"],
                output_shapes={"y": ("a", "b")},
            ),
            "must be known at import time",
            marks=pytest.mark.filterwarnings("ignore:Explicitly requested dtype int64"),
        ),
        (one("Pad", inputs=["x", "p"], mode="reflect", inits={"p": np.zeros(8, np.int64)}), "mode='constant'"),
        (one("MatMul", inputs=["x", "x"], shape=(3, 3)), "constant 2-D right operand"),
        (one("Conv", inputs=["x", "w1"], shape=(1, 3, 8), inits={"w1": w(4, 3, 3)}), "rank 4"),
    ],
)
def test_untranslatable_uses_raise_unsupported(model: onnx.ModelProto, message: str) -> None:
    with pytest.raises(UnsupportedOpError, match=message):
        from_onnx(model)


def test_missing_file_raises_frontend_error(tmp_path: Path) -> None:
    with pytest.raises(FrontendError, match="does not exist"):
        from_onnx(tmp_path / "missing.onnx")


# ====================================================================== real model: SqueezeNet 1.1 fp16
def squeezenet_path() -> Path:
    return shared_data("imagenet", "squeezenet1.1_fp16.onnx")


@pytest.mark.parametrize("fraction", [0.0, 1e-4, 0.5, 0.999])
def test_truncated_file_raises_frontend_error(tmp_path: Path, fraction: float) -> None:
    data = squeezenet_path().read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(FrontendError, match=r"cut\.onnx.*(truncated|corrupt)"):
        from_onnx(path)


def test_squeezenet_imports_weights_as_consts_not_inputs() -> None:
    graph = from_onnx(squeezenet_path())
    validate(graph)
    assert [(n.name, n.shape, n.dtype) for n in graph.inputs] == [("data_0", (1, 3, 224, 224), "float16")]
    assert len(graph.params) == 52
    assert {v.dtype.name for v in graph.params.values()} == {"float16"}
    assert graph.outputs == ["softmaxout_1"] and graph.node("softmaxout_1").shape == (1, 1000, 1, 1)
    assert {n.op for n in graph.compute_nodes} == {
        "conv2d",
        "relu",
        "concat",
        "max_pool2d",
        "global_avg_pool2d",
        "softmax",
    }


@pytest.fixture(scope="module")
def imagenet_batch() -> tuple[np.ndarray, np.ndarray]:
    from dyno_compile.datasets.imagenet import load_samples, squeezenet_batch

    squeezenet_path()
    names, labels = load_samples()
    return squeezenet_batch(names).astype(np.float16), labels


def _near_ties(scores: np.ndarray, rel: float = 1e-2) -> np.ndarray:
    top2 = np.sort(scores.astype(np.float64), axis=1)[:, -2:]
    return np.flatnonzero(top2[:, 1] - top2[:, 0] <= rel * np.abs(top2[:, 1]))


def test_squeezenet_fp16_agrees_with_onnxruntime_on_every_sample(imagenet_batch) -> None:
    """Top-1 of the IR interpreter equals ORT's on all 200 images but near-ties, and both give the README's 130/200."""
    x, labels = imagenet_batch
    assert len(labels) == 200
    sess = ort.InferenceSession(str(squeezenet_path()), providers=["CPUExecutionProvider"])
    ort_out = np.stack([sess.run(None, {"data_0": x[i : i + 1]})[0].reshape(-1) for i in range(len(x))])
    ort_top1 = ort_out.argmax(1)

    batch = 50
    graph = from_onnx(squeezenet_path(), input_shapes={"data_0": (batch, 3, 224, 224)})
    run = Interpreter(graph)
    ir_out = np.concatenate([np.asarray(run(x[i : i + batch])).reshape(batch, -1) for i in range(0, len(x), batch)])
    ir_top1 = ir_out.argmax(1)
    # Near-ties are not import errors: the float16 softmax rounds scores 1 % apart (image
    # 35: ORT 0.316 vs 0.313) to equal values in one implementation and not the other.
    ties = set(_near_ties(ort_out).tolist()) | set(_near_ties(ir_out).tolist())
    disagree = set(np.flatnonzero(ir_top1 != ort_top1).tolist())
    assert disagree <= ties, f"IR and ORT top-1 differ on images {sorted(disagree - ties)} (not ties)"
    assert int((ort_top1 == labels).sum()) == 130
    assert abs(int((ir_top1 == labels).sum()) - 130) <= len(disagree)
