"""ONNX operators of detection and segmentation backbones and older CNNs (Resize,
ConvTranspose, PRelu, LeakyRelu, InstanceNormalization, LRN) against ONNX Runtime at every
opset the exporters emit, each one IR op; their host builds against the IR's interpreter
(JAX), arm64 and CUDA compiles, and the passes that reason about op families."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import rel_err
from dyno_compile.errors import FrontendError, UnsupportedOpError
from dyno_compile.frontend.onnx_import import from_onnx
from dyno_compile.ir import Graph, Interpreter

RNG = np.random.default_rng(0)
OPSETS = range(13, 19)  # what the TorchScript and dynamo exporters write for CNNs
RESIZE_OPSETS = range(11, 20)  # 11-17 one form; 18 adds axes and antialias, 19 half_pixel_symmetric
SCHEDULED = {"tiled", "window", "winograd", "parallel"}  # the CPU schedule's first choices


# ====================================================================== helpers
def model(
    nodes: Sequence[onnx.NodeProto], x_shape: tuple, inits: dict | None = None, opset: int = 17
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "case",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def one(op: str, inputs: Sequence[str], x_shape: tuple, inits: dict | None = None, opset: int = 17, **attrs):
    return model([helper.make_node(op, list(inputs), ["y"], **attrs)], x_shape, inits, opset)


def check(proto: onnx.ModelProto, x: np.ndarray | None = None, tol: float = 2e-6) -> Graph:
    """Import, run with the IR's interpreter and compare with ONNX Runtime; the graph."""
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.standard_normal(shape).astype(np.float32) if x is None else x
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    g = from_onnx(proto)
    got = np.asarray(Interpreter(g)(x))
    assert got.shape == want.shape
    assert rel_err(got, want) <= tol, rel_err(got, want)
    return g


def ops_of(g: Graph) -> list[str]:
    return [n.op for n in g.compute_nodes]


def build_and_compare(g: Graph, x: np.ndarray, tol: float = 1e-5) -> None:
    """A host build of ``g`` equals the interpreter, scheduled without fallback."""
    from dyno_compile.targets import compile_graph, run

    c = compile_graph(g, "host")
    assert set(c.schedule_report.functions.values()) <= SCHEDULED, c.schedule_report.functions
    got = run(c, [x])[0]
    assert rel_err(got, np.asarray(Interpreter(g)(x))) <= tol


# ====================================================================== Resize
def resize_model(opset: int, x_shape: tuple, *, scales=None, sizes=None, axes=None, **attrs) -> onnx.ModelProto:
    """Resize in the form ``opset`` takes: roi and scales as inputs (empty where unused)
    through opset 17, omitted inputs from 18 (``axes`` there limits scales and sizes)."""
    inits = {}
    if opset < 18:
        inits["roi"] = np.zeros(0, np.float32)
        inits["scales"] = np.asarray(scales if scales is not None else [], np.float32)
        inputs = ["x", "roi", "scales"]
    else:
        inputs = ["x", "", "scales" if scales is not None else ""]
        if scales is not None:
            inits["scales"] = np.asarray(scales, np.float32)
        if axes is not None:
            attrs["axes"] = axes
    if sizes is not None:
        inits["sizes"] = np.asarray(sizes, np.int64)
        inputs.append("sizes")
    return one("Resize", inputs, x_shape, inits, opset, **attrs)


NEAREST = [
    {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},  # torch's nearest
    {"coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_floor"},  # ONNX's defaults
    {"coordinate_transformation_mode": "align_corners", "nearest_mode": "round_prefer_ceil"},
    {"coordinate_transformation_mode": "pytorch_half_pixel", "nearest_mode": "ceil"},
]
LINEAR = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]


@pytest.mark.parametrize("opset", RESIZE_OPSETS)
def test_resize_at_every_opset(opset):
    """Each opset's form (roi and empty scales as inputs through 17, omitted from 18), by
    scales and by sizes, nearest and bilinear."""
    g = check(resize_model(opset, (2, 3, 5, 7), scales=[1, 1, 2.0, 1.5], mode="nearest", **NEAREST[0]))
    assert ops_of(g) == ["resize2d"]
    check(resize_model(opset, (1, 4, 6, 5), sizes=[1, 4, 11, 3], mode="linear"))


@pytest.mark.parametrize("attrs", NEAREST, ids=lambda a: a["coordinate_transformation_mode"])
def test_resize_nearest(attrs):
    check(resize_model(13, (2, 3, 5, 7), scales=[1, 1, 2.0, 1.5], mode="nearest", **attrs))
    check(resize_model(18, (2, 3, 9, 7), sizes=[2, 3, 4, 10], mode="nearest", **attrs))  # down and up


@pytest.mark.parametrize("mode", LINEAR)
def test_resize_bilinear(mode):
    kw = {"mode": "linear", "coordinate_transformation_mode": mode}
    g = check(resize_model(13, (1, 4, 6, 5), scales=[1, 1, 2.0, 0.7], **kw))
    assert g.compute_nodes[0].attrs["scales"] == (2.0, float(np.float32(0.7)))  # the model's scales place samples
    check(resize_model(18, (1, 4, 6, 5), sizes=[1, 4, 11, 3], **kw))


@pytest.mark.parametrize("opset", [18, 19])
def test_resize_axes_name_only_height_and_width(opset):
    check(resize_model(opset, (1, 2, 4, 6), scales=[3.0, 0.5], axes=[2, 3], mode="linear"))
    check(resize_model(opset, (1, 2, 4, 6), sizes=[5, 9], axes=[-2, -1], mode="nearest"))


def test_resize_half_pixel_symmetric():
    for mode in ("nearest", "linear"):
        kw = {"mode": mode, "coordinate_transformation_mode": "half_pixel_symmetric"}
        check(resize_model(19, (1, 2, 5, 7), scales=[1, 1, 1.5, 2.3], **kw))


def test_resize_matches_onnx_runtime_at_ties_and_same_size():
    """Sources at a tie as ONNX Runtime sees one (39 -> 6 samples, asymmetric: 6.4999995 in
    float32 rounds as 6.5), and an output of the input's size, which ONNX Runtime copies
    whatever the scale (2 -> 2 at 1.25)."""
    x = np.arange(39, dtype=np.float32).reshape(1, 1, 1, 39)
    for nearest in ("round_prefer_ceil", "round_prefer_floor"):
        kw = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": nearest}
        check(resize_model(13, (1, 1, 1, 39), sizes=[1, 1, 1, 6], **kw), x)
    check(resize_model(13, (1, 1, 2, 2), scales=[1, 1, 1.25, 1.25], mode="nearest", nearest_mode="floor"))


@pytest.mark.parametrize(
    "opset,kw,match",
    [
        (13, {"scales": [1, 1, 2, 2], "mode": "cubic"}, "mode='cubic'"),
        (13, {"scales": [1, 1, 2, 2], "coordinate_transformation_mode": "tf_crop_and_resize"}, "tf_crop_and_resize"),
        (13, {"scales": [1, 1, 2, 2], "nearest_mode": "simple"}, "nearest_mode='simple'"),
        (18, {"scales": [1, 1, 0.5, 0.5], "mode": "linear", "antialias": 1}, "antialias=1"),
        (18, {"sizes": [1, 3, 4, 4], "keep_aspect_ratio_policy": "not_larger"}, "keep_aspect_ratio_policy"),
        (13, {"scales": [1, 2, 2, 2]}, "batch or channel axis"),
        (13, {"sizes": [2, 3, 4, 4]}, "batch or channel axis"),
    ],
)
def test_resize_refuses_what_it_does_not_implement_by_name(opset, kw, match):
    with pytest.raises(UnsupportedOpError, match=rf"'Resize' at node 'y'.*{match}"):
        from_onnx(resize_model(opset, (1, 3, 5, 5), **kw))


def test_resize_before_opset_11_is_refused():
    proto = one("Resize", ["x", "scales"], (1, 1, 2, 2), {"scales": np.ones(4, np.float32)}, opset=10)
    with pytest.raises(UnsupportedOpError, match="before opset 11"):
        from_onnx(proto)


# ====================================================================== ConvTranspose
CONV_T = {
    "k3_s2_p1_out1": {"w": (4, 3, 3, 3), "strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    "k4_s2_p1": {"w": (4, 3, 4, 4), "strides": [2, 2], "pads": [1, 1, 1, 1]},  # DCGAN / U-Net upsampling
    "groups_dilation": {"w": (4, 2, 3, 3), "group": 2, "strides": [2, 1], "dilations": [2, 1], "pads": [0, 2, 1, 0]},
    "depthwise_no_bias": {"w": (4, 1, 3, 3), "group": 4, "strides": [1, 1], "pads": [1, 1, 1, 1], "bias": False},
    "pads_beyond_kernel": {"w": (4, 3, 1, 1), "strides": [3, 2], "pads": [2, 0, 0, 1], "output_padding": [2, 1]},
    "same_upper": {"w": (4, 3, 3, 3), "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    "same_lower": {"w": (4, 3, 4, 4), "strides": [2, 3], "auto_pad": "SAME_LOWER"},
    "output_shape": {"w": (4, 3, 3, 3), "strides": [2, 2], "output_shape": [10, 14]},
    "output_shape_upper": {"w": (4, 3, 3, 3), "strides": [2, 2], "output_shape": [10, 12], "auto_pad": "SAME_UPPER"},
}


def conv_t_model(case: dict, opset: int) -> onnx.ModelProto:
    attrs = {k: v for k, v in case.items() if k not in ("w", "bias")}
    w = RNG.standard_normal(case["w"]).astype(np.float32)
    inits = {"w": w}
    if case.get("bias", True):
        inits["b"] = RNG.standard_normal(case["w"][1] * case.get("group", 1)).astype(np.float32)
    return one("ConvTranspose", ["x", *inits], (2, 4, 5, 6), inits, opset, **attrs)


@pytest.mark.parametrize("case", list(CONV_T))
def test_conv_transpose(case):
    g = check(conv_t_model(CONV_T[case], 17), tol=1e-5)
    assert ops_of(g) == ["conv2d_transpose"]


@pytest.mark.parametrize("group", [1, 2])
def test_batch_norm_folds_into_a_transposed_convolution(group):
    """A decoder's ConvTranspose -> BatchNormalization becomes one conv2d_transpose (the
    scale applied per output channel of each group's weights) that still equals ONNX Runtime."""
    from dyno_compile.passes import run_passes

    c_out = 3 * group
    inits = {
        "w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "gamma": RNG.uniform(0.5, 2, c_out).astype(np.float32),
        "beta": RNG.standard_normal(c_out).astype(np.float32),
        "mean": RNG.standard_normal(c_out).astype(np.float32),
        "var": RNG.uniform(0.5, 2, c_out).astype(np.float32),
    }
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["up"], strides=[2, 2], pads=[1, 1, 1, 1], group=group),
        helper.make_node("BatchNormalization", ["up", "gamma", "beta", "mean", "var"], ["y"]),
    ]
    proto = model(nodes, (2, 4, 5, 6), inits)
    x = RNG.standard_normal((2, 4, 5, 6)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    g = run_passes(from_onnx(proto))
    assert ops_of(g) == ["conv2d_transpose"]
    assert rel_err(np.asarray(Interpreter(g)(x)), want) <= 1e-5


def test_conv_transpose_output_shape_beyond_the_kernels_reach_is_refused():
    proto = conv_t_model({"w": (4, 3, 2, 2), "strides": [2, 2], "output_shape": [12, 15]}, 13)
    with pytest.raises(FrontendError, match=r"node 'y' \(ConvTranspose\).*output_shape \[12, 15\] is larger"):
        from_onnx(proto)


# ====================================================================== activations and normalisation
@pytest.mark.parametrize("slope_shape", [(4, 1, 1), (1,), (6,), (4, 5, 6)])
def test_prelu(slope_shape):
    slope = RNG.uniform(-0.5, 0.5, slope_shape).astype(np.float32)
    assert ops_of(check(one("PRelu", ["x", "slope"], (2, 4, 5, 6), {"slope": slope}))) == ["prelu"]


def test_leaky_relu_default_and_given_alpha():
    assert ops_of(check(one("LeakyRelu", ["x"], (2, 3, 4)))) == ["leaky_relu"]
    check(one("LeakyRelu", ["x"], (2, 3, 4), alpha=0.3))


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 7)])
def test_instance_norm(shape):
    inits = {"s": RNG.standard_normal(3).astype(np.float32), "b": RNG.standard_normal(3).astype(np.float32)}
    x = (RNG.standard_normal(shape) * 3 + 1000).astype(np.float32)  # a large mean: centred before squaring
    g = check(one("InstanceNormalization", ["x", "s", "b"], shape, inits, epsilon=1e-3), x, tol=1e-4)
    assert ops_of(g) == ["instance_norm"]


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size):
    g = check(one("LRN", ["x"], (2, 7, 4, 5), size=size, alpha=0.3, beta=0.8, bias=1.5))
    assert ops_of(g) == ["lrn"]


def every_opset_case(op: str, opset: int) -> onnx.ModelProto:
    """One model of ``op`` at ``opset`` (these ops' forms are the same from 13 to 18)."""
    x_shape = (2, 4, 5, 6)
    if op == "ConvTranspose":
        return conv_t_model(CONV_T["k3_s2_p1_out1"], opset)
    if op == "PRelu":
        return one(op, ["x", "s"], x_shape, {"s": RNG.uniform(-1, 1, (4, 1, 1)).astype(np.float32)}, opset)
    if op == "InstanceNormalization":
        inits = {"s": RNG.standard_normal(4).astype(np.float32), "b": RNG.standard_normal(4).astype(np.float32)}
        return one(op, ["x", "s", "b"], x_shape, inits, opset)
    return one(op, ["x"], x_shape, opset=opset, **({"size": 3} if op == "LRN" else {"alpha": 0.2}))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("op", ["ConvTranspose", "PRelu", "LeakyRelu", "InstanceNormalization", "LRN"])
def test_every_opset(op, opset):
    check(every_opset_case(op, opset), tol=1e-5)


# ====================================================================== TVM builds
def _graph(proto: onnx.ModelProto) -> tuple[Graph, np.ndarray]:
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return from_onnx(proto), RNG.standard_normal(shape).astype(np.float32)


HOST_BUILDS = {
    "resize_nearest": resize_model(17, (1, 3, 5, 7), scales=[1, 1, 2.0, 2.0], mode="nearest", **NEAREST[0]),
    "resize_bilinear": resize_model(17, (1, 3, 5, 7), sizes=[1, 3, 9, 4], mode="linear"),
    "conv_transpose": conv_t_model(CONV_T["k3_s2_p1_out1"], 17),
    "conv_transpose_padded_out": conv_t_model(CONV_T["pads_beyond_kernel"], 17),
    "conv_transpose_grouped_dilated": conv_t_model(CONV_T["groups_dilation"], 17),
    "conv_transpose_output_shape": conv_t_model(CONV_T["output_shape"], 17),
    "prelu": every_opset_case("PRelu", 17),
    "leaky_relu": every_opset_case("LeakyRelu", 17),
    "instance_norm": every_opset_case("InstanceNormalization", 17),
    "lrn": every_opset_case("LRN", 17),
}


@pytest.mark.parametrize("name", list(HOST_BUILDS))
def test_host_build_matches_interpreter(name):
    build_and_compare(*_graph(HOST_BUILDS[name]))


@pytest.mark.parametrize("groups,dilation", [(1, (1, 1)), (2, (2, 1))])
def test_host_build_of_end_pads_with_output_padding_beyond_the_stride(groups, dilation):
    """Relax's transposed convolution takes an output padding below the stride only: the
    rest of the end comes from the full result where the end pads leave some of it (not
    zeros), zeros past it."""
    g = Graph("conv_t")
    g.add_input("x", (2, 4, 4, 5))
    g.add_const("w", RNG.standard_normal((4, 2, 2, 4)).astype(np.float32))
    attrs = {"strides": (2, 1), "padding": ((2, 4), (4, 3)), "output_padding": (0, 2), "dilation": dilation}
    g.set_outputs([g.add("conv2d_transpose", ["x", "w"], {**attrs, "groups": groups}).name])
    build_and_compare(g, RNG.standard_normal((2, 4, 4, 5)).astype(np.float32))


def test_host_build_of_a_pad_after_a_convolution_writes_the_padding():
    """The CPU schedule made a pad fused after a convolution only where it read the
    convolution, leaving its padding unwritten (a transposed convolution's output padding
    beyond the stride; here a plain one): now the pad keeps its own loops."""
    g = Graph("conv_pad")
    g.add_input("x", (2, 4, 5, 6))
    g.add_const("w", RNG.standard_normal((3, 4, 3, 3)).astype(np.float32))
    g.add_const("b", RNG.standard_normal((1, 3, 1, 1)).astype(np.float32))
    conv = g.add("conv2d", ["x", "w"])
    padded = g.add("pad", [conv.name], {"pads": ((0, 0), (0, 0), (0, 2), (0, 0))})
    g.set_outputs([g.add("add", [padded.name, "b"]).name])
    build_and_compare(g, RNG.standard_normal((2, 4, 5, 6)).astype(np.float32))


def decoder_model() -> onnx.ModelProto:
    """Every op of this module in one small decoder-like chain."""
    c = 4
    inits = {
        "w": RNG.standard_normal((c, c, 4, 4)).astype(np.float32) * 0.3,
        "s": np.ones(c, np.float32),
        "b": np.zeros(c, np.float32),
        "slope": np.full((c, 1, 1), 0.25, np.float32),
        "roi": np.zeros(0, np.float32),
        "scales": np.asarray([1, 1, 2, 2], np.float32),
    }
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["up"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["up"], ["act"], alpha=0.2),
        helper.make_node("InstanceNormalization", ["act", "s", "b"], ["norm"]),
        helper.make_node("Resize", ["norm", "roi", "scales"], ["big"], mode="linear"),
        helper.make_node("PRelu", ["big", "slope"], ["act2"]),
        helper.make_node("LRN", ["act2"], ["y"], size=3),
    ]
    return model(nodes, (1, c, 4, 5), inits)


def test_decoder_chain_matches_onnx_runtime_and_its_host_build():
    g = check(decoder_model(), tol=1e-5)
    assert ops_of(g) == ["conv2d_transpose", "leaky_relu", "instance_norm", "resize2d", "prelu", "lrn"]
    build_and_compare(g, RNG.standard_normal((1, 4, 4, 5)).astype(np.float32))


@pytest.mark.parametrize("target", ["arm64", "cuda-sm80"])
def test_decoder_chain_compiles_for_arm64_and_cuda(target, tmp_path):
    from dyno_compile.targets import compile_graph, export

    so = export(compile_graph(from_onnx(decoder_model()), target), tmp_path / f"decoder_{target}.so")
    head = so.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    assert int.from_bytes(head[18:20], "little") == (183 if target == "arm64" else 62)  # aarch64 / x86-64 host


# ====================================================================== passes
def test_passes_reason_about_the_new_ops():
    """Cost annotation counts a transposed convolution's MACs, the channel axes pass
    places channels through every op, cuts fall between the ops, device features class
    them, and the standard passes keep the graph's meaning."""
    from dyno_compile.passes import annotate_costs, run_passes
    from dyno_compile.passes.channel_axes import channel_axes
    from dyno_compile.passes.find_cuts import find_cuts
    from dyno_compile.search.device_features import CLASSES, graph_features

    g = from_onnx(decoder_model())
    x = RNG.standard_normal((1, 4, 4, 5)).astype(np.float32)
    passed = run_passes(g)
    assert rel_err(np.asarray(Interpreter(passed)(x)), np.asarray(Interpreter(g)(x))) <= 1e-6
    costs = {n.op: n.meta["macs"] for n in annotate_costs(g).compute_nodes}
    assert costs["conv2d_transpose"] == (4 * 4 * 5) * 4 * 4 * 4  # each input element scatters a 4x4 kernel per channel
    assert costs["lrn"] == 4 * 16 * 20 * 3
    assert set(channel_axes(g).values()) == {1}
    nhwc = Graph("nhwc")
    nhwc.add_input("x", (1, 4, 5, 3))
    up = nhwc.add("resize2d", ["x"], {"size": (8, 10), "layout": "NHWC"})
    nhwc.set_outputs([nhwc.add("lrn", [nhwc.add("relu", [up.name]).name], {"size": 3, "axis": 3}).name])
    assert set(channel_axes(nhwc).values()) == {3}
    assert len(find_cuts(g)) == len(g.compute_nodes) + 1
    classes = [CLASSES[i] for i in graph_features(g).classes]
    assert classes == ["conv", "fused", "other", "other", "other", "other"]
