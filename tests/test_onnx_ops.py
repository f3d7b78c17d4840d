"""ONNX operators of ConvNeXt and ShuffleNetV2 exports against ONNX Runtime, at every opset
the exporters emit: shape arithmetic folded at import (the IR holds none of it), the
indexing ops on run-time tensors, Split, LayerNormalization, Gelu, Erf and Pow; a
ConvNeXt block and a channel-shuffle block, also through the standard passes and a host
build."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import rel_err
from dyno_compile.errors import FrontendError, UnsupportedOpError
from dyno_compile.frontend.onnx_import import from_onnx
from dyno_compile.ir import Graph, Interpreter, validate
from dyno_compile.passes import run_passes
from dyno_compile.passes.channel_axes import channel_axes

RNG = np.random.default_rng(0)
OPSETS = range(13, 19)  # what the TorchScript and dynamo exporters write for CNNs
INT64_MAX = np.iinfo(np.int64).max


# ====================================================================== helpers
def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, tuple],
    outputs: Sequence[str] = ("y",),
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 13,
) -> onnx.ModelProto:
    """A model of float inputs and outputs (of undeclared shape: ``onnx.checker`` would want
    them, so ONNX Runtime's session is the check of each model it runs)."""
    graph = helper.make_graph(
        list(nodes),
        "case",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def const(name: str, value) -> onnx.NodeProto:
    """A Constant node holding ``value`` (int64 unless it is a float array)."""
    array = np.asarray(value)
    array = array if array.dtype.kind == "f" else array.astype(np.int64)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array))


def ints(name: str, values: int | Sequence[int]) -> onnx.NodeProto:
    return const(name, np.asarray(values, np.int64))


def feeds_for(proto: onnx.ModelProto, scale: float = 1.0) -> dict[str, np.ndarray]:
    weights = {t.name for t in proto.graph.initializer}
    return {
        i.name: (RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]) * scale).astype(np.float32)
        for i in proto.graph.input
        if i.name not in weights
    }


def check(proto: onnx.ModelProto, *, passes: bool = False, positive: bool = False, tol: float = 1e-5) -> Graph:
    """Import, run with the IR's interpreter (after the standard passes if ``passes``) and
    compare every output with ONNX Runtime; the imported (or passed) graph."""
    feeds = feeds_for(proto)
    if positive:
        feeds = {k: np.abs(v) + 0.1 for k, v in feeds.items()}
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    graph = from_onnx(proto)
    validate(graph)
    if passes:
        graph = run_passes(graph)
    out = Interpreter(graph)(*[feeds[i.name] for i in graph.inputs])
    got = [np.asarray(o) for o in (out if isinstance(out, tuple) else (out,))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
    return graph


def ops_of(graph: Graph) -> list[str]:
    return [n.op for n in graph.compute_nodes]


def build_matches_interpreter(graph: Graph) -> None:
    """The host TVM build of ``graph`` equals its interpreter on random input."""
    from dyno_compile.targets import compile_graph, run

    xs = [RNG.standard_normal(i.shape).astype(np.float32) for i in graph.inputs]
    got = run(compile_graph(graph, "host"), xs)
    want = Interpreter(graph)(*xs)
    for g, w in zip(got, want if isinstance(want, tuple) else (want,)):
        assert rel_err(g, np.asarray(w)) <= 1e-4


def axes_arg(opset: int, since: int, name: str, axes: Sequence[int]) -> tuple[list[str], list, dict]:
    """Axes as an input (``since`` that opset) or an attribute: (extra inputs, Constant nodes, attrs)."""
    if opset >= since:
        return [name], [ints(name, axes)], {}
    return [], [], {"axes": list(axes)}


# ====================================================================== shape arithmetic is folded
def shuffle_torchscript(opset: int, groups: int = 2) -> onnx.ModelProto:
    """``x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, -1, h, w)`` as the TorchScript
    exporter writes it: every dimension read with Shape + Gather, ``c // g`` an integer Div,
    the target shapes assembled with Unsqueeze + Concat."""
    nodes = [node("Shape", ["x"], ["shape"])]
    for k, dim in enumerate("bchw"):
        nodes += [ints(f"i{dim}", k), node("Gather", ["shape", f"i{dim}"], [dim], axis=0)]
    nodes += [ints("g", groups), node("Div", ["c", "g"], ["cpg"])]
    parts1, parts2 = [], []
    for name in ("b", "g", "cpg", "h", "w"):
        extra, cnodes, attrs = axes_arg(opset, 13, f"ax_{name}", [0])
        nodes += cnodes + [node("Unsqueeze", [name, *extra], [f"u_{name}"], **attrs)]
        parts1.append(f"u_{name}")
    nodes += [ints("minus1", [-1])]
    for name in ("b", "h", "w"):
        parts2.append(f"u_{name}")
    nodes += [
        node("Concat", parts1, ["shape5"], axis=0),
        node("Reshape", ["x", "shape5"], ["grouped"]),
        node("Transpose", ["grouped"], ["swapped"], perm=[0, 2, 1, 3, 4]),
        node("Concat", [parts2[0], "minus1", *parts2[1:]], ["shape4"], axis=0),
        node("Reshape", ["swapped", "shape4"]),
    ]
    return model(nodes, {"x": (2, 8, 3, 5)}, opset=opset)


@pytest.mark.parametrize("opset", [11, *OPSETS])
def test_shuffle_shape_arithmetic_folds_to_reshapes(opset):
    graph = check(shuffle_torchscript(opset))
    assert ops_of(graph) == ["reshape", "transpose", "reshape"] and not graph.params  # no shape vectors either
    assert [n.shape for n in graph.compute_nodes] == [(2, 2, 4, 3, 5), (2, 4, 2, 3, 5), (2, 8, 3, 5)]


def test_floor_division_fixup_and_friends_fold():
    """torch's ``//`` on ints: Div, then a fixup through Mod/Less/Xor/And/Not/Where/Cast;
    ConstantOfShape, Range, Equal, Expand, ReduceProd and Size fold too."""
    nodes = [
        node("Shape", ["x"], ["s"]),
        ints("i1", 1),
        node("Gather", ["s", "i1"], ["c"]),
        ints("three", 3),
        ints("zero", 0),
        node("Div", ["c", "three"], ["q"]),
        node("Mod", ["c", "three"], ["r"]),
        node("Less", ["c", "zero"], ["cn"]),
        node("Less", ["three", "zero"], ["tn"]),
        node("Xor", ["cn", "tn"], ["neg"]),
        node("Equal", ["r", "zero"], ["exact"]),
        node("Not", ["exact"], ["inexact"]),
        node("And", ["neg", "inexact"], ["fix"]),
        node("Cast", ["fix"], ["fixi"], to=TensorProto.INT64),
        node("Sub", ["q", "fixi"], ["fq"]),  # 6 // 3 = 2
        node("Size", ["x"], ["n"]),  # 2 * 6 * 4 = 48
        node("Div", ["n", "fq"], ["half"]),  # 24
        ints("ax0", [0]),
        node("Unsqueeze", ["half", "ax0"], ["half1"]),
        node("Unsqueeze", ["fq", "ax0"], ["fq1"]),
        node("Concat", ["fq1", "half1"], ["target"], axis=0),  # [2, 24]
        node("Reshape", ["x", "target"], ["flat"]),
        node("Range", ["zero", "fq", "i1"], ["rng"]),  # [0, 1]
        node("ReduceProd", ["rng"], ["p"], keepdims=0),  # 0
        node("ConstantOfShape", ["target"], ["zeros"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        node("Add", ["flat", "zeros"], ["y0"]),
        node("Cast", ["p"], ["pf"], to=TensorProto.FLOAT),
        node("Add", ["y0", "pf"]),
    ]
    graph = check(model(nodes, {"x": (2, 6, 4)}, opset=13))
    assert set(ops_of(graph)) == {"reshape", "add"}


def test_float_range_has_onnx_count():
    nodes = [const(n, np.float32(v)) for n, v in (("a", 0.0), ("b", 1.0), ("d", 0.1))]
    graph = check(model([*nodes, node("Range", ["a", "b", "d"], ["r"]), node("Add", ["x", "r"])], {"x": (10,)}))
    assert ops_of(graph) == ["add"]


@pytest.mark.parametrize("opset", [15, 18])
def test_shape_start_and_end(opset):
    """Opset 15's Shape(start, end) slices the shape like Python."""
    nodes = [
        node("Shape", ["x"], ["last"], start=-1),
        node("Shape", ["x"], ["middle"], start=1, end=-1),
        ints("minus1", [-1]),
        node("Concat", ["minus1", "middle", "last"], ["target"], axis=0),
        node("Reshape", ["x", "target"]),
    ]
    graph = check(model(nodes, {"x": (2, 3, 4)}, opset=opset))
    assert ops_of(graph) == ["reshape"] and graph.compute_nodes[0].shape == (2, 3, 4)


@pytest.mark.parametrize("opset", [13, 18])
def test_expand_to_a_computed_shape(opset):
    nodes = [node("Shape", ["x"], ["s"]), node("Expand", ["b", "s"], ["bx"]), node("Add", ["x", "bx"])]
    graph = check(model(nodes, {"x": (2, 3, 4), "b": (3, 1)}, opset=opset))
    assert ops_of(graph) == ["broadcast_to", "add"]
    assert ops_of(run_passes(graph)) == ["add"]  # the broadcast is bypassed


@pytest.mark.parametrize("opset", [15, 18])
def test_cast_like(opset):
    """The dynamo exporter's ``CastLike(constant, x)`` folds; on a run-time tensor it is a cast."""
    nodes = [
        const("one", np.int64(1)),
        node("CastLike", ["one", "x"], ["one_f"]),
        node("Add", ["x", "one_f"], ["x1"]),
        const("half_like", np.float16(0)),
        node("CastLike", ["x1", "half_like"], ["h"]),
        node("CastLike", ["h", "x"]),
    ]
    graph = check(model(nodes, {"x": (2, 3)}, opset=opset), tol=1e-3)
    assert ops_of(graph) == ["add", "cast", "cast"] and [n.dtype for n in graph.compute_nodes][1] == "float16"


# ====================================================================== indexing ops on run-time tensors
@pytest.mark.parametrize("opset", [11, *OPSETS])
def test_squeeze_and_unsqueeze(opset):
    extra_s, nodes_s, attrs_s = axes_arg(opset, 13, "sq_axes", [1, -1])
    extra_u, nodes_u, attrs_u = axes_arg(opset, 13, "un_axes", [0, -1])
    nodes = [
        *nodes_s,
        *nodes_u,
        node("Squeeze", ["x", *extra_s], ["s"], **attrs_s),
        node("Squeeze", ["x"], ["all"]),
        node("Unsqueeze", ["s", *extra_u], ["y"], **attrs_u),
        node("Relu", ["all"], ["z"]),
    ]
    graph = check(model(nodes, {"x": (2, 1, 3, 1)}, ["y", "z"], opset=opset))
    assert [n.shape for n in graph.compute_nodes if n.op == "reshape"] == [(2, 3), (2, 3), (1, 2, 3, 1)]


SLICES = {
    "crop": ([1, 2], [3, -1], [2, 3], None),
    "to_end": ([1], [INT64_MAX], [1], None),
    "strided": ([0, 1], [INT64_MAX, 5], [-1, 2], [2, 2]),
    "backwards": ([-1], [-INT64_MAX], [3], [-1]),
    "backwards_stepped": ([4, 3], [0, -10], [1, 2], [-2, -1]),
    "negative_axis": ([-3], [-1], [-2], None),
}


@pytest.mark.parametrize("case,opset", list(zip(SLICES, OPSETS)))
def test_slice(case, opset):
    """Slice has one form from opset 10 on, so each case runs at one of the opsets."""
    starts, ends, axes, steps = SLICES[case]
    nodes = [ints("st", starts), ints("en", ends), ints("ax", axes)]
    inputs = ["x", "st", "en", "ax"]
    if steps is not None:
        nodes.append(ints("sp", steps))
        inputs.append("sp")
    check(model([*nodes, node("Slice", inputs)], {"x": (2, 5, 4, 6)}, opset=opset))


def test_slice_opset9_attributes():
    check(model([node("Slice", ["x"], starts=[1, 0], ends=[INT64_MAX, -2], axes=[1, 3])], {"x": (2, 5, 4, 6)}, opset=9))


@pytest.mark.parametrize(
    "indices,axis,want",
    [
        (1, 1, ["slice", "reshape"]),  # a scalar index drops the axis
        (-1, 3, ["slice", "reshape"]),
        ([2], 1, ["slice"]),
        ([0, 2, 4], 3, ["slice"]),
        ([3, 2, 1], 2, ["slice"]),
    ],
)
def test_gather_of_constant_indices_is_a_slice(indices, axis, want):
    nodes = [ints("idx", indices), node("Gather", ["x", "idx"], axis=axis)]
    graph = check(model(nodes, {"x": (2, 5, 4, 6)}))
    assert ops_of(graph) == want


def test_gather_that_is_no_slice_names_the_node():
    nodes = [ints("idx", [0, 2, 3]), node("Gather", ["x", "idx"], ["picked"], axis=1)]
    with pytest.raises(UnsupportedOpError, match=r"'Gather' at node 'picked'.*step evenly"):
        from_onnx(model(nodes, {"x": (2, 5)}))


# ====================================================================== Split
def split_model(opset: int, sizes: Sequence[int] | None, outputs: int, dim: int = 6) -> onnx.ModelProto:
    """Split along axis 1 in the form of ``opset``; each output read by a different op."""
    nodes: list[onnx.NodeProto] = []
    inputs = ["x"]
    attrs: dict[str, Any] = {"axis": 1}
    if sizes is not None and opset >= 13:
        nodes.append(ints("sizes", sizes))
        inputs.append("sizes")
    elif sizes is not None:
        attrs["split"] = list(sizes)
    elif opset >= 18:
        attrs["num_outputs"] = outputs
    names = [f"part{k}" for k in range(outputs)]
    nodes.append(node("Split", inputs, names, **attrs))
    nodes += [node("Relu", [names[0]], ["y"])] + [node("Neg", [n], [f"y{k}"]) for k, n in enumerate(names[1:], 1)]
    return model(nodes, {"x": (2, dim, 3)}, ["y", *[f"y{k}" for k in range(1, outputs)]], opset=opset)


@pytest.mark.parametrize("opset", [11, *OPSETS])
@pytest.mark.parametrize("sizes", [[2, 4], None], ids=["sizes", "equal"])
def test_split_binds_every_output(sizes, opset):
    graph = check(split_model(opset, sizes, 2))
    slices = [n for n in graph.compute_nodes if n.op == "slice"]
    assert [n.name for n in slices] == ["part0", "part1"]


def test_split_opset18_uneven_parts():
    graph = check(split_model(18, None, 3, dim=7))
    assert [n.shape for n in graph.compute_nodes if n.op == "slice"] == [(2, 3, 3), (2, 3, 3), (2, 1, 3)]


def test_split_of_unequal_axis_without_sizes_is_refused():
    with pytest.raises(FrontendError, match="cannot split an axis of 7 into 2 equal parts"):
        from_onnx(split_model(13, None, 2, dim=7))


# ====================================================================== LayerNormalization, Gelu, Erf, Pow
@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("shape,axis,bias", [((2, 3, 3, 8), -1, True), ((2, 4, 3, 3), 1, False), ((2, 5, 6), -2, True)])
def test_layer_normalization(shape, axis, bias, opset):
    norm = shape[axis:]
    inits = {
        "scale": RNG.uniform(0.5, 1.5, norm).astype(np.float32),
        "bias": RNG.standard_normal(norm).astype(np.float32),
    }
    inputs = ["x", "scale", "bias"] if bias else ["x", "scale"]
    proto = model([node("LayerNormalization", inputs, axis=axis, epsilon=1e-6)], {"x": shape}, inits=inits, opset=opset)
    assert ops_of(check(proto)) == ["layer_norm"]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_opset20(approximate):
    assert ops_of(check(model([node("Gelu", ["x"], approximate=approximate)], {"x": (2, 3, 4)}, opset=20))) == ["gelu"]


def erf_gelu_nodes(x: str, out: str) -> list[onnx.NodeProto]:
    """GELU as the TorchScript exporter writes it: ``(x * (erf(x / sqrt 2) + 1)) * 0.5``."""
    return [
        const(f"{out}_sqrt2", np.float32(np.sqrt(2))),
        const(f"{out}_one", np.float32(1)),
        const(f"{out}_half", np.float32(0.5)),
        node("Div", [x, f"{out}_sqrt2"], [f"{out}_scaled"]),
        node("Erf", [f"{out}_scaled"], [f"{out}_erf"]),
        node("Add", [f"{out}_erf", f"{out}_one"], [f"{out}_plus"]),
        node("Mul", [x, f"{out}_plus"], [f"{out}_prod"]),
        node("Mul", [f"{out}_prod", f"{out}_half"], [out]),
    ]


@pytest.mark.parametrize("opset", OPSETS)
def test_erf_gelu_becomes_one_gelu(opset):
    graph = check(model(erf_gelu_nodes("x", "y"), {"x": (2, 3, 4)}, opset=opset), passes=True)
    assert ops_of(graph) == ["gelu"]


def test_erf_alone_and_a_shared_erf_stay_as_they_are():
    nodes = [*erf_gelu_nodes("x", "y"), node("Erf", ["x"], ["z"]), node("Relu", ["y_erf"], ["w"])]
    graph = check(model(nodes, {"x": (2, 3)}, ["y", "z", "w"]), passes=True)
    assert "gelu" not in ops_of(graph) and ops_of(graph).count("erf") == 2


@pytest.mark.parametrize("opset", [13, 18])  # one form throughout
@pytest.mark.parametrize(
    "exponent",
    [np.float32(2.0), np.float32(0.5), np.int64(3), np.float64(2.0)],
    ids=["square", "sqrt", "int_cube", "double"],
)
def test_pow_with_constant_exponent(exponent, opset):
    nodes = [const("e", np.asarray(exponent)), node("Pow", ["x", "e"])]
    graph = check(model(nodes, {"x": (2, 3, 4)}, opset=opset), positive=True)
    assert ops_of(graph) == ["pow"] and graph.compute_nodes[0].dtype == "float32"


def test_pow_with_a_computed_exponent():
    check(model([node("Pow", ["x", "e"])], {"x": (2, 3), "e": (3,)}), positive=True)


# ====================================================================== whole blocks
def convnext_block(opset: int, channels: int = 8, size: int = 7) -> onnx.ModelProto:
    """torchvision's CNBlock: depthwise 7x7 -> NHWC -> LayerNorm -> Linear -> GELU -> Linear
    -> NCHW -> layer scale (a [C, 1, 1] parameter) -> residual. LayerNormalization from
    opset 17 (before, the TorchScript exporter's decomposition), GELU via Erf (the Gelu op
    from opset 20)."""
    c, hidden = channels, 4 * channels
    inits = {
        "dw_w": (RNG.standard_normal((c, 1, 7, 7)) * 0.2).astype(np.float32),
        "dw_b": RNG.standard_normal(c).astype(np.float32),
        "ln_s": RNG.uniform(0.5, 1.5, c).astype(np.float32),
        "ln_b": (RNG.standard_normal(c) * 0.1).astype(np.float32),
        "w1": (RNG.standard_normal((c, hidden)) / np.sqrt(c)).astype(np.float32),
        "b1": (RNG.standard_normal(hidden) * 0.1).astype(np.float32),
        "w2": (RNG.standard_normal((hidden, c)) / np.sqrt(hidden)).astype(np.float32),
        "b2": (RNG.standard_normal(c) * 0.1).astype(np.float32),
        "gamma": np.full((c, 1, 1), 0.5, np.float32),
    }
    nodes = [
        node("Conv", ["x", "dw_w", "dw_b"], ["dw"], pads=[3, 3, 3, 3], group=c, kernel_shape=[7, 7]),
        node("Transpose", ["dw"], ["nhwc"], perm=[0, 2, 3, 1]),
    ]
    if opset >= 17:
        nodes.append(node("LayerNormalization", ["nhwc", "ln_s", "ln_b"], ["ln"], axis=-1, epsilon=1e-6))
    else:
        nodes += [
            const("two", np.float32(2)),
            const("eps", np.float32(1e-6)),
            node("ReduceMean", ["nhwc"], ["mu"], axes=[-1]),
            node("Sub", ["nhwc", "mu"], ["d"]),
            node("Pow", ["d", "two"], ["d2"]),
            node("ReduceMean", ["d2"], ["var"], axes=[-1]),
            node("Add", ["var", "eps"], ["var_eps"]),
            node("Sqrt", ["var_eps"], ["std"]),
            node("Div", ["d", "std"], ["normed"]),
            node("Mul", ["normed", "ln_s"], ["scaled"]),
            node("Add", ["scaled", "ln_b"], ["ln"]),
        ]
    nodes += [node("MatMul", ["ln", "w1"], ["fc1_mm"]), node("Add", ["fc1_mm", "b1"], ["fc1"])]
    if opset >= 20:
        nodes.append(node("Gelu", ["fc1"], ["act"]))
    else:
        nodes += erf_gelu_nodes("fc1", "act")
    nodes += [
        node("MatMul", ["act", "w2"], ["fc2_mm"]),
        node("Add", ["fc2_mm", "b2"], ["fc2"]),
        node("Transpose", ["fc2"], ["nchw"], perm=[0, 3, 1, 2]),
        node("Mul", ["gamma", "nchw"], ["scaled_res"]),
        node("Add", ["scaled_res", "x"]),
    ]
    return model(nodes, {"x": (1, c, size, size)}, inits=inits, opset=opset)


@pytest.mark.parametrize("opset", [13, 17, 18, 20])
def test_convnext_block(opset):
    graph = check(convnext_block(opset), passes=True, tol=1e-4)
    # one node per user-level op (the biases fold into the dense layers)
    assert ops_of(graph) == ["conv2d", "transpose", "layer_norm", "dense", "gelu", "dense", "transpose", "mul", "add"]


def layer_norm_decomposed(affine: bool = True, square: str = "Pow") -> list[onnx.NodeProto]:
    """LayerNorm over the last axis of ``x`` as the TorchScript exporter wrote it before opset 17."""
    nodes = [
        const("two", np.float32(2)),
        const("eps", np.float32(1e-5)),
        node("ReduceMean", ["x"], ["mu"], axes=[-1]),
        node("Sub", ["x", "mu"], ["d"]),
        node("Pow", ["d", "two"], ["d2"]) if square == "Pow" else node("Mul", ["d", "d"], ["d2"]),
        node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        node("Add", ["var", "eps"], ["var_eps"]),
        node("Sqrt", ["var_eps"], ["std"]),
        node("Div", ["d", "std"], ["normed" if affine else "y"]),
    ]
    if affine:
        nodes += [node("Mul", ["normed", "s"], ["scaled"]), node("Add", ["scaled", "b"])]
    return nodes


@pytest.mark.parametrize("affine,square", [(True, "Pow"), (False, "Pow"), (True, "Mul")])
def test_layer_norm_decomposition_becomes_one_layer_norm(affine, square):
    inits = {"s": RNG.uniform(0.5, 1.5, 6).astype(np.float32), "b": RNG.standard_normal(6).astype(np.float32)}
    proto = model(layer_norm_decomposed(affine, square), {"x": (2, 3, 6)}, inits=inits if affine else None)
    assert ops_of(check(proto, passes=True)) == ["layer_norm"]


def test_layer_norm_decomposition_read_inside_stays():
    """A mean also read outside the pattern keeps the decomposition (fusing would drop it)."""
    proto = model([*layer_norm_decomposed(False), node("Relu", ["mu"], ["m"])], {"x": (2, 3, 6)}, ["y", "m"])
    assert "layer_norm" not in ops_of(check(proto, passes=True))


def test_convnext_layer_norm_states_nhwc_channels():
    """Per-channel quantisation at a cut between the permute and the LayerNorm takes the last axis."""
    graph = run_passes(from_onnx(convnext_block(17)))
    axes = channel_axes(graph)
    assert (axes["dw"], axes["nhwc"], axes["ln"], axes["nchw"]) == (1, 3, 3, 1)


def test_convnext_block_builds_for_host():
    build_matches_interpreter(run_passes(from_onnx(convnext_block(17))))


def shuffle_unit_dynamo(opset: int, channels: int = 8) -> onnx.ModelProto:
    """ShuffleNetV2's stride-1 unit as the dynamo exporter writes it: Split (``chunk``), a
    branch, Concat, then the channel shuffle with constant target shapes."""
    half = channels // 2
    inits = {"pw": RNG.standard_normal((half, half, 1, 1)).astype(np.float32), "pb": np.zeros(half, np.float32)}
    sizes, split_attrs = ([ints("halves", [half, half])], ["halves"]), {}
    if opset >= 18:
        sizes, split_attrs = ([], []), {"num_outputs": 2}
    nodes = [
        *sizes[0],
        node("Split", ["x", *sizes[1]], ["keep", "branch_in"], axis=1, **split_attrs),
        node("Conv", ["branch_in", "pw", "pb"], ["pw_out"], kernel_shape=[1, 1]),
        node("Relu", ["pw_out"], ["branch"]),
        node("Concat", ["keep", "branch"], ["joined"], axis=1),
        ints("shape5", [1, 2, half, 4, 4]),
        node("Reshape", ["joined", "shape5"], ["grouped"]),
        node("Transpose", ["grouped"], ["swapped"], perm=[0, 2, 1, 3, 4]),
        ints("shape4", [1, channels, 4, 4]),
        node("Reshape", ["swapped", "shape4"]),
    ]
    return model(nodes, {"x": (1, channels, 4, 4)}, inits=inits, opset=opset)


@pytest.mark.parametrize("opset", OPSETS)
def test_shuffle_unit_dynamo(opset):
    graph = check(shuffle_unit_dynamo(opset), passes=True)
    assert ops_of(graph) == ["slice", "slice", "conv2d", "relu", "concat", "reshape", "transpose", "reshape"]


@pytest.mark.parametrize("make", [shuffle_torchscript, shuffle_unit_dynamo], ids=["torchscript", "dynamo"])
def test_shuffle_builds_for_host(make):
    build_matches_interpreter(run_passes(from_onnx(make(17))))
