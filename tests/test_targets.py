"""TVM targets: every IR op lowered to Relax and built for the host equals the IR
interpreter (JAX, the semantics' source); zoo models compiled with the tuning-free
schedule; arm64 cross-linked shared objects; CUDA builds without a GPU; clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import rel_err
from dyno_compile.errors import DynoError
from dyno_compile.ir import Graph, Interpreter
from dyno_compile.targets import (
    CompiledModule,
    LoweringError,
    ModuleRunner,
    TargetError,
    compile_graph,
    export,
    get_target,
    list_targets,
    run,
    supported_ops,
    to_relax,
)
from dyno_compile.targets.schedule import config_for, schedule_module

TOL = 1e-4
TOL_F16 = 2e-3  # one float16 ulp near the output's scale
SCHEDULED = {"tiled", "window", "winograd", "parallel"}  # the schedule's first choices (no fallback)


def _ref(g: Graph, xs: list[np.ndarray]) -> list[np.ndarray]:
    out = Interpreter(g)(*xs)
    return [np.asarray(o) for o in (out if isinstance(out, tuple) else (out,))]


def check(g: Graph, xs: list[np.ndarray], tol: float = TOL, **kw) -> list[np.ndarray]:
    """Build ``g`` for the host, run it on ``xs``, compare every output with the interpreter."""
    c = compile_graph(g, "host", **kw)
    if c.schedule_report is not None:  # the schedule's first choice works for every op's functions
        assert set(c.schedule_report.functions.values()) <= SCHEDULED, c.schedule_report.functions
    got = run(c, xs)
    want = _ref(g, xs)
    assert len(got) == len(want)
    for name, a, b in zip(g.outputs, got, want):
        assert a.shape == b.shape, name
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_array_equal(np.isinf(a), np.isinf(b), err_msg=f"{name}: infinities differ")
            fin = np.isfinite(b)
            assert rel_err(a[fin], b[fin]) <= tol, (name, rel_err(a[fin], b[fin]))
    return got


def unary_graph(op: str, shape=(2, 3, 5, 6), attrs=None, dtype="float32") -> Graph:
    g = Graph(op)
    g.add_input("x", shape, dtype)
    n = g.add(op, ["x"], attrs or {})
    g.set_outputs([n.name])
    return g


def normal(rng, shape, dtype="float32"):
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- targets
def test_registry_names_and_aliases():
    assert {"host", "arm64", "cuda-sm75", "cuda-sm80", "cuda-sm90"} <= set(list_targets())
    assert get_target("cuda") is get_target("cuda-sm80")
    arm = get_target("arm64")
    assert arm.target["mtriple"] == "aarch64-linux-gnu" and arm.linker is not None
    assert get_target("cuda-sm90").host == {"kind": "llvm"} and get_target("cuda-sm90").is_gpu
    assert get_target("host").is_host and not arm.is_host
    for name in list_targets():
        spec = get_target(name)
        assert spec.peak_gflops > 0 and spec.mem_bandwidth_gbs > 0 and spec.source
        spec.tvm_target()  # TVM accepts every target dict


def test_unknown_target_lists_names():
    with pytest.raises(TargetError, match=r"unknown target 'tpu'.*host.*arm64.*cuda-sm80"):
        get_target("tpu")


# --------------------------------------------------------------------------- op level
UNARY = ["relu", "relu6", "sigmoid", "hardswish", "hardsigmoid", "silu", "tanh", "exp", "neg", "abs", "identity"]


@pytest.mark.parametrize("op", UNARY)
def test_unary(op, rng):
    g = unary_graph(op)
    check(g, [normal(rng, (2, 3, 5, 6)) * 4])


@pytest.mark.parametrize("op", ["log", "sqrt", "rsqrt"])
def test_unary_positive(op, rng):
    g = unary_graph(op)
    check(g, [rng.uniform(0.1, 5.0, (2, 3, 5, 6)).astype(np.float32)])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op,attrs", [("erf", {}), ("gelu", {"approximate": False}), ("gelu", {"approximate": True})])
def test_erf_and_gelu(op, attrs, dtype, rng):
    """TOPI's fast erf and tanh (float16 computed in float32) stay within the tolerance."""
    g = unary_graph(op, attrs=attrs, dtype=dtype)
    check(g, [normal(rng, (2, 3, 5, 6), dtype) * 3], TOL_F16 if dtype == "float16" else TOL)


@pytest.mark.parametrize("lo,hi", [(-1.0, 2.5), (0.0, None), (None, 0.5)])
def test_clip(lo, hi, rng):
    check(unary_graph("clip", attrs={"min": lo, "max": hi}), [normal(rng, (2, 3, 5, 6)) * 3])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum", "pow"])
def test_binary_broadcasting(op, rng):
    g = Graph(op)
    g.add_input("a", (2, 3, 4, 5))
    g.add_input("b", (3, 1, 5))
    n = g.add(op, ["a", "b"])
    g.set_outputs([n.name])
    a = rng.uniform(0.5, 2.0, (2, 3, 4, 5)).astype(np.float32)
    b = rng.uniform(0.5, 2.0, (3, 1, 5)).astype(np.float32)
    if op not in ("pow", "div"):
        a, b = a - 1.2, b - 1.2
    check(g, [a, b])


def test_binary_with_weight_and_scalar(rng):
    g = Graph("bw")
    g.add_input("x", (2, 8))
    g.add_const("w", normal(rng, (8,)))
    g.add_const("s", np.asarray(0.5, np.float32))
    a = g.add("mul", ["x", "w"])
    b = g.add("add", [a.name, "s"])
    g.set_outputs([b.name])
    check(g, [normal(rng, (2, 8))])
    check(g, [normal(rng, (2, 8))], bind_weights=False)


def test_integer_div_is_true_division(rng):
    g = Graph("idiv")
    g.add_input("a", (4, 5), "int32")
    g.add_input("b", (4, 5), "int32")
    n = g.add("div", ["a", "b"])
    g.set_outputs([n.name])
    assert n.dtype == "float32"
    check(g, [rng.integers(-50, 50, (4, 5)).astype(np.int32), rng.integers(1, 7, (4, 5)).astype(np.int32)])


@pytest.mark.parametrize(
    "op,dtype,lo,hi",
    [
        ("pow", "int32", -3, 5),
        ("pow", "uint8", 0, 9),
        ("add", "int8", -100, 100),
        ("maximum", "uint8", 0, 255),
        ("mul", "int32", -1000, 1000),
    ],
)
def test_integer_binary(op, dtype, lo, hi, rng):
    g = Graph(op)
    g.add_input("a", (3, 8), dtype)
    g.add_input("b", (8,), dtype)
    n = g.add(op, ["a", "b"])
    g.set_outputs([n.name])
    check(g, [rng.integers(lo, hi, (3, 8)).astype(dtype), rng.integers(lo, hi, (8,)).astype(dtype)])


@pytest.mark.parametrize(
    "src,dst",
    [("float32", "int32"), ("float32", "float16"), ("int32", "float32"), ("float32", "bool"), ("float16", "float32")],
)
def test_cast(src, dst, rng):
    x = (normal(rng, (3, 7)) * 5).astype(src)
    if dst == "bool":
        x[0, :3] = [0.0, 0.25, -0.5]
    check(unary_graph("cast", (3, 7), {"dtype": dst}, src), [x])


# --------------------------------------------------------------------------- nn
CONV_CASES = {
    "plain_bias": dict(x=(2, 4, 9, 9), w=(6, 4, 3, 3), bias=True, attrs={"padding": ((1, 1), (1, 1))}),
    "stride_asym_pad": dict(
        x=(1, 3, 11, 10), w=(8, 3, 3, 3), bias=False, attrs={"strides": (2, 2), "padding": ((1, 0), (2, 1))}
    ),
    "dilation": dict(
        x=(1, 4, 12, 12), w=(4, 4, 3, 3), bias=True, attrs={"dilation": (2, 2), "padding": ((2, 2), (2, 2))}
    ),
    "groups": dict(x=(1, 8, 7, 7), w=(6, 4, 3, 3), bias=True, attrs={"groups": 2, "padding": ((1, 1), (1, 1))}),
    "depthwise": dict(
        x=(1, 8, 10, 10), w=(8, 1, 3, 3), bias=True, attrs={"groups": 8, "strides": (2, 2), "padding": ((1, 1), (1, 1))}
    ),
    "pointwise_rect": dict(x=(1, 16, 5, 7), w=(12, 16, 1, 1), bias=True, attrs={}),
    "nhwc_hwio": dict(
        x=(1, 9, 9, 4),
        w=(3, 3, 4, 6),
        bias=True,
        attrs={"padding": ((1, 1), (0, 1)), "data_layout": "NHWC", "kernel_layout": "HWIO"},
    ),
    "nhwc_depthwise": dict(
        x=(1, 8, 8, 6),
        w=(3, 3, 1, 6),
        bias=False,
        attrs={"groups": 6, "padding": ((1, 1), (1, 1)), "data_layout": "NHWC", "kernel_layout": "HWIO"},
    ),
}


def conv_graph(rng, x, w, bias, attrs, dtype="float32"):
    g = Graph("conv")
    g.add_input("x", x, dtype)
    g.add_const("w", (normal(rng, w) * 0.3).astype(dtype))
    ins = ["x", "w"]
    if bias:
        out_c = w[0] if attrs.get("kernel_layout", "OIHW") == "OIHW" else w[3]
        g.add_const("b", normal(rng, (out_c,)).astype(dtype))
        ins.append("b")
    n = g.add("conv2d", ins, attrs)
    g.set_outputs([n.name])
    return g


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d(case, rng):
    spec = CONV_CASES[case]
    g = conv_graph(rng, **spec)
    check(g, [normal(rng, spec["x"])])


@pytest.mark.parametrize(
    "channels,lanes,want", [(64, 16, 16), (24, 16, 8), (12, 16, 0), (24, 8, 8), (20, 8, 4), (6, 4, 2), (3, 4, 0)]
)
def test_weight_blocks_fill_a_register_or_half_of_one(channels, lanes, want):
    """MobileNetV2's 24-channel projections take blocks of 8 on 16 lanes rather than TVM's
    own convolution; blocks under half a register are not worth a layout (0: none)."""
    from dyno_compile.targets.blocked_conv import weight_block

    assert weight_block(channels, lanes) == want


def test_conv2d_float16_accumulates_in_float32(rng):
    spec = CONV_CASES["plain_bias"]
    g = conv_graph(rng, **spec, dtype="float16")
    check(g, [normal(rng, spec["x"], "float16")], tol=TOL_F16)


def test_conv2d_unscheduled_and_unbound(rng):
    spec = CONV_CASES["stride_asym_pad"]
    g = conv_graph(rng, **spec)
    x = normal(rng, spec["x"])
    check(g, [x], schedule=False)
    check(g, [x], bind_weights=False)


@pytest.mark.parametrize("bias,dtype", [(True, "float32"), (False, "float32"), (True, "float16")])
def test_dense(bias, dtype, rng):
    g = Graph("dense")
    g.add_input("x", (3, 20), dtype)
    g.add_const("w", normal(rng, (12, 20), dtype))
    ins = ["x", "w"]
    if bias:
        g.add_const("b", normal(rng, (12,), dtype))
        ins.append("b")
    n = g.add("dense", ins)
    g.set_outputs([n.name])
    check(g, [normal(rng, (3, 20), dtype)], tol=TOL if dtype == "float32" else TOL_F16)


def test_dense_vector_input_whole_output_tile(rng):
    """A 1-D matmul whose output fits one vector tile (no outer loop to parallelise)."""
    g = Graph("gemv")
    g.add_input("x", (8,))
    g.add_const("w", normal(rng, (16, 8)))
    n = g.add("dense", ["x", "w"])
    r = g.add("relu", [n.name])
    g.set_outputs([r.name])
    check(g, [normal(rng, (8,))])


def test_classifier_gemv_takes_independent_accumulators(rng):
    """Batch 1 through a classifier: no register axis, so the tile holds several vectors
    (unrolled) instead of one chain of dependent FMAs; equal to the interpreter."""
    from tvm import tirx

    g = Graph("classifier")
    g.add_input("x", (1, 64))
    g.add_const("w", normal(rng, (200, 64)))
    g.add_const("b", normal(rng, (200,)))
    n = g.add("dense", ["x", "w", "b"])
    g.set_outputs([n.name])
    loops, report = _scheduled_loops(g)
    assert set(report.functions.values()) == {"tiled"}, report.functions
    unrolled = [int(lp.extent) for lp in loops if lp.kind == tirx.ForKind.UNROLLED]
    assert unrolled and max(unrolled) > 1, [(lp.loop_var.name, lp.kind) for lp in loops]
    check(g, [normal(rng, (1, 64))])


@pytest.mark.parametrize("shape,axis", [((2, 5, 4, 4), 1), ((2, 4, 4, 5), -1), ((3, 5), 1)])
def test_batch_norm(shape, axis, rng):
    c = shape[axis]
    g = Graph("bn")
    g.add_input("x", shape)
    names = []
    for k, lo in (("gamma", 0.5), ("beta", -1.0), ("mean", -1.0), ("var", 0.1)):
        names.append(g.add_const(k, rng.uniform(lo, 1.5, c).astype(np.float32)).name)
    n = g.add("batch_norm", ["x", *names], {"axis": axis, "epsilon": 1e-3})
    g.set_outputs([n.name])
    check(g, [normal(rng, shape)])


def layer_norm_graph(rng, shape, axis, param_shape, bias=True, dtype="float32") -> Graph:
    g = Graph("ln")
    g.add_input("x", shape, dtype)
    ins = ["x", g.add_const("scale", normal(rng, param_shape, dtype)).name]
    if bias:
        ins.append(g.add_const("bias", normal(rng, param_shape, dtype)).name)
    g.set_outputs([g.add("layer_norm", ins, {"axis": axis, "epsilon": 1e-6}).name])
    return g


@pytest.mark.parametrize(
    "shape,axis,param_shape,bias,dtype",
    [
        ((2, 7, 7, 16), -1, (16,), True, "float32"),  # ConvNeXt's LayerNorm over channels in NHWC
        ((2, 16, 7, 7), 1, (16, 7, 7), False, "float32"),  # over C, H and W; no bias
        ((3, 5, 8), -2, (1,), True, "float32"),  # a scale that broadcasts
        ((2, 7, 7, 16), -1, (16,), True, "float16"),  # normalised in float32
    ],
)
def test_layer_norm(shape, axis, param_shape, bias, dtype, rng):
    g = layer_norm_graph(rng, shape, axis, param_shape, bias, dtype)
    check(g, [normal(rng, shape, dtype) * 3 + 1], TOL_F16 if dtype == "float16" else TOL)


@pytest.mark.parametrize("target", ["arm64", "cuda-sm90"])
def test_layer_norm_and_gelu_compile_for_devices(target, rng):
    g = layer_norm_graph(rng, (1, 7, 7, 32), -1, (32,))
    g.set_outputs([g.add("gelu", g.outputs, {"approximate": False}).name])
    assert compile_graph(g, target).target.name == target


POOL_CASES = {
    "max_pad_stride": ("max_pool2d", (1, 3, 9, 9), {"kernel": (3, 3), "strides": (2, 2), "padding": ((1, 1), (1, 1))}),
    "max_asym_dilated": (
        "max_pool2d",
        (2, 2, 10, 9),
        {"kernel": (2, 3), "padding": ((0, 1), (2, 1)), "dilation": (2, 1)},
    ),
    "max_nhwc": ("max_pool2d", (1, 8, 8, 5), {"kernel": (2, 2), "strides": (2, 2), "layout": "NHWC"}),
    # windows that see only padding: JAX gives -inf (its init value)
    "max_all_padding": ("max_pool2d", (1, 2, 4, 4), {"kernel": (1, 1), "padding": ((1, 1), (1, 1))}),
    "avg_exclude_pad": (
        "avg_pool2d",
        (1, 3, 9, 9),
        {"kernel": (3, 3), "strides": (2, 2), "padding": ((1, 1), (1, 1)), "count_include_pad": False},
    ),
    "avg_include_pad": (
        "avg_pool2d",
        (1, 3, 9, 9),
        {"kernel": (3, 3), "strides": (2, 2), "padding": ((1, 1), (1, 1)), "count_include_pad": True},
    ),
    "avg_asym_dilated_exclude": (
        "avg_pool2d",
        (1, 2, 10, 11),
        {"kernel": (3, 2), "padding": ((2, 0), (1, 2)), "dilation": (2, 2), "count_include_pad": False},
    ),
    "avg_dilated_include": (
        "avg_pool2d",
        (1, 2, 10, 11),
        {"kernel": (3, 2), "padding": ((2, 0), (1, 2)), "dilation": (2, 2), "count_include_pad": True},
    ),
    "avg_nhwc": ("avg_pool2d", (1, 7, 7, 4), {"kernel": (3, 3), "padding": ((1, 1), (1, 1)), "layout": "NHWC"}),
    "gap_nchw": ("global_avg_pool2d", (2, 6, 5, 7), {}),
    "gap_nchw_keepdims_false": ("global_avg_pool2d", (2, 6, 5, 7), {"keepdims": False}),
    "gap_nhwc": ("global_avg_pool2d", (2, 5, 7, 6), {"layout": "NHWC", "keepdims": False}),
}


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pooling(case, rng):
    op, shape, attrs = POOL_CASES[case]
    check(unary_graph(op, shape, attrs), [normal(rng, shape)])


@pytest.mark.parametrize(
    "extent,regs,want",
    [
        (64, 2, 32),
        (48, 2, 16),
        (28, 2, 28),
        (56, 2, 8),
        (56, 1, 8),
        (1000, 1, 8),
        (28, 1, 14),
        (113, 2, 1),
        (226, 2, 1),
    ],
)
def test_vector_tiles_are_whole_registers_where_a_divisor_allows(extent, regs, want):
    """Up to ``regs`` registers of 16 lanes: the whole extent if it fits, else multiples of
    the lanes, then a power of two of at least half the lanes (a 14-lane vector costs LLVM
    three loads), then the largest divisor of at least half the lanes, else none (1)."""
    from dyno_compile.targets.schedule_common import pick_vector

    assert pick_vector(extent, 16, regs) == want


def test_rows_without_a_vector_divisor_stay_an_inner_loop(rng):
    """A row of 113 (prime) has no vector split: the rows run in parallel and each row is a
    plain inner loop, not one parallel loop over every element; equal to the interpreter."""
    from tvm import tirx

    g = unary_graph("relu", (2, 3, 40, 113), {})
    loops, report = _scheduled_loops(g)
    assert set(report.functions.values()) == {"parallel"}, report.functions
    parallel = [lp for lp in loops if lp.kind == tirx.ForKind.PARALLEL]
    assert len(parallel) == 1 and int(parallel[0].extent) == 2 * 3 * 40, [(lp.loop_var.name, lp.extent) for lp in loops]
    inner = [lp for lp in loops if lp.kind == tirx.ForKind.SERIAL]
    assert [int(lp.extent) for lp in inner] == [113], [(lp.loop_var.name, lp.extent) for lp in loops]
    check(g, [normal(rng, (2, 3, 40, 113))])


def test_strided_pooling_leaves_the_width_loop_to_llvm(rng):
    """A 3x3 max pool at stride 2 (ResNet's, smaller) has no contiguous axis: parallel rows,
    the width a plain loop with the window unrolled inside; a global average pool (no
    stride) is not such a window. Both equal to the interpreter."""
    from tvm import tirx

    pool = unary_graph("max_pool2d", (1, 8, 32, 32), {"kernel": (3, 3), "strides": (2, 2), "padding": ((1, 1), (1, 1))})
    loops, report = _scheduled_loops(pool)
    assert set(report.functions.values()) == {"window"}, report.functions
    kinds = {lp.loop_var.name: lp.kind for lp in loops}
    assert tirx.ForKind.VECTORIZED not in kinds.values(), kinds
    assert [k for k in kinds.values() if k == tirx.ForKind.UNROLLED] == [tirx.ForKind.UNROLLED] * 2, kinds
    assert tirx.ForKind.PARALLEL in kinds.values(), kinds
    check(pool, [normal(rng, (1, 8, 32, 32))])

    _, report = _scheduled_loops(unary_graph("global_avg_pool2d", (1, 8, 7, 7), {}))
    assert "window" not in report.functions.values(), report.functions


def test_strided_pointwise_conv_subsamples_then_multiplies_whole_rows(rng):
    """A 1x1 stride-2 projection with bias, residual add and ReLU (ResNet's) subsamples
    its input in a stage of its own; the product then reads the subsampled plane, whose
    8 x 18 pixels fuse into one axis like a stride-1 convolution's. Equal to the interpreter."""
    from tvm import s_tir

    g = conv_graph(rng, x=(1, 16, 16, 36), w=(32, 16, 1, 1), bias=True, attrs={"strides": (2, 2)})
    g.add_input("r", (1, 32, 8, 18), "float32")
    relu = g.add("relu", [g.add("add", [g.outputs[0], "r"]).name])
    g.set_outputs([relu.name])
    funcs, report = _scheduled(g)
    assert set(report.functions.values()) == {"tiled"}, report.functions
    blocks = _nodes(funcs, s_tir.SBlock)
    assert "subsample" in {b.name_hint for b in blocks}, sorted({b.name_hint for b in blocks})
    local = [tuple(int(d) for d in b.shape) for blk in blocks for b in blk.alloc_buffers if b.scope() == "local"]
    assert local == [(1, 32, 144)], local
    check(g, [normal(rng, (1, 16, 16, 36)), normal(rng, (1, 32, 8, 18))])


@pytest.mark.parametrize("stride,how", [(2, "window"), (1, "tiled")])
def test_depthwise_conv_pads_each_plane_inside_its_parallel_loop(stride, how, rng):
    """A 3x3 depthwise convolution with bias and ReLU (MobileNetV2's): at stride 2 a
    strided window, at stride 1 a register tile. Either way one parallel loop, over the
    16 planes, pads each plane in turn (no pass of its own over the tensor) and runs the
    convolution and its epilogue on it. Equal to the interpreter."""
    from tvm import tirx

    g = conv_graph(
        rng,
        x=(1, 16, 20, 20),
        w=(16, 1, 3, 3),
        bias=True,
        attrs={"groups": 16, "strides": (stride, stride), "padding": ((1, 1), (1, 1))},
    )
    relu = g.add("relu", [g.outputs[0]])
    g.set_outputs([relu.name])
    loops, report = _scheduled_loops(g)
    assert set(report.functions.values()) == {how}, report.functions
    parallel = [int(lp.extent) for lp in loops if lp.kind == tirx.ForKind.PARALLEL]
    assert parallel == [16], [(lp.loop_var.name, lp.kind, lp.extent) for lp in loops]
    check(g, [normal(rng, (1, 16, 20, 20))])


def _scheduled(g: Graph) -> tuple[list, object]:
    """``g``'s host functions after the schedule, and the schedule's report."""
    from tvm import tirx

    from dyno_compile.targets.compile import fused_module

    mod, report = schedule_module(fused_module(g, "host"), get_target("host").tvm_target())
    return [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)], report


def _nodes(funcs: list, kind) -> list:
    """Every node of type ``kind`` in ``funcs`` (post order)."""
    import tvm_ffi

    found: list = []
    for f in funcs:
        tvm_ffi.structural_walk(f.body, (kind, found.append), order="post")
    return found


def _scheduled_loops(g: Graph) -> tuple[list, object]:
    """Every loop of ``g``'s scheduled host functions (post order), and the schedule's report."""
    from tvm import tirx

    funcs, report = _scheduled(g)
    return _nodes(funcs, tirx.For), report


@pytest.mark.parametrize("epilogue,batch", [(True, 1), (True, 2), (False, 1)])
def test_pointwise_conv_fuses_rows_and_columns_into_one_vector_axis(epilogue, batch, rng):
    """A 1x1 stride-1 convolution (24 output channels) whose width, 18, fills no vector
    but whose plane, 8 x 18 = 144 pixels, does: with an epilogue (bias, residual add,
    ReLU) the pixels are one axis, vectorised in whole registers, and the accumulator
    tile is a run of pixels; without one it writes the function's output in its own
    layout and is not fused. A batch keeps its own axis. Equal to the interpreter."""
    from tvm import s_tir, tirx

    lanes = config_for(get_target("host").tvm_target()).vector_bits // 32
    g = conv_graph(rng, x=(batch, 16, 8, 18), w=(24, 16, 1, 1), bias=epilogue, attrs={})
    if epilogue:
        g.add_input("r", (batch, 24, 8, 18), "float32")
        relu = g.add("relu", [g.add("add", [g.outputs[0], "r"]).name])
        g.set_outputs([relu.name])
    funcs, report = _scheduled(g)
    assert set(report.functions.values()) == {"tiled"}, report.functions
    local = [
        tuple(int(d) for d in b.shape)
        for blk in _nodes(funcs, s_tir.SBlock)
        for b in blk.alloc_buffers
        if b.scope() == "local"
    ]
    if epilogue:  # pixels in whole registers
        assert local == [(batch, 24, 144)], local
        vectors = {int(lp.extent) for lp in _nodes(funcs, tirx.For) if lp.kind == tirx.ForKind.VECTORIZED}
        assert any(v % lanes == 0 and 144 % v == 0 for v in vectors), (vectors, lanes)
    else:  # rows and columns apart (which axis is the vector depends on the lanes)
        assert len(local) == 1 and len(local[0]) == 4, local
    xs = [normal(rng, (batch, 16, 8, 18))] + ([normal(rng, (batch, 24, 8, 18))] if epilogue else [])
    check(g, xs)


def test_pooling_float16(rng):
    shape = (1, 4, 9, 9)
    attrs = {"kernel": (3, 3), "padding": ((1, 1), (1, 1)), "count_include_pad": False}
    check(unary_graph("avg_pool2d", shape, attrs, "float16"), [normal(rng, shape, "float16")], tol=TOL_F16)
    check(unary_graph("global_avg_pool2d", shape, {}, "float16"), [normal(rng, shape, "float16")], tol=TOL_F16)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax(axis, rng):
    check(unary_graph("softmax", (2, 7, 3), {"axis": axis}), [normal(rng, (2, 7, 3)) * 3])


# --------------------------------------------------------------------------- tensor
def test_concat(rng):
    g = Graph("concat")
    for i, c in enumerate((2, 3, 1)):
        g.add_input(f"x{i}", (2, c, 4))
    n = g.add("concat", ["x0", "x1", "x2"], {"axis": 1})
    g.set_outputs([n.name])
    check(g, [normal(rng, (2, c, 4)) for c in (2, 3, 1)])


@pytest.mark.parametrize("pads,value", [(((0, 0), (1, 2), (3, 0)), 0.0), (((1, 0), (-1, 2), (0, -2)), -2.5)])
def test_pad(pads, value, rng):
    check(unary_graph("pad", (2, 4, 5), {"pads": pads, "value": value}), [normal(rng, (2, 4, 5))])


@pytest.mark.parametrize(
    "op,attrs",
    [
        ("flatten", {}),
        ("flatten", {"axis": 2}),
        ("reshape", {"shape": (6, 20)}),
        ("transpose", {"perm": (0, 2, 3, 1)}),
        ("broadcast_to", {"shape": (3, 2, 3, 4, 5)}),
    ],
)
def test_shape_ops(op, attrs, rng):
    check(unary_graph(op, (2, 3, 4, 5), attrs), [normal(rng, (2, 3, 4, 5))])


@pytest.mark.parametrize(
    "starts,limits,strides",
    [
        ((0, 1, 0, 0), (None, 3, None, None), None),
        ((0, 0, 1, 0), (None, None, None, None), (1, 1, 2, 2)),
        ((1, -2, 0, 1), (2, None, 3, -1), (1, 1, 1, 3)),
        ((0, 2, 3, 4), (None, 0, None, None), (1, -1, -2, -1)),  # negative strides
    ],
)
def test_slice(starts, limits, strides, rng):
    attrs = {"starts": starts, "limits": limits, "strides": strides}
    check(unary_graph("slice", (2, 3, 4, 5), attrs), [normal(rng, (2, 3, 4, 5))])


@pytest.mark.parametrize("op", ["reduce_sum", "reduce_max", "reduce_min", "reduce_mean"])
@pytest.mark.parametrize("axes,keepdims", [((1,), False), ((2, 3), True), ((-1, 0), False)])
def test_reductions(op, axes, keepdims, rng):
    check(unary_graph(op, (2, 3, 4, 5), {"axes": axes, "keepdims": keepdims}), [normal(rng, (2, 3, 4, 5))])


def test_integer_reduction(rng):
    x = rng.integers(-100, 100, (3, 40)).astype(np.int8)
    check(unary_graph("reduce_sum", (3, 40), {"axes": (1,), "keepdims": False}, "int8"), [x])


def test_every_registered_op_has_a_converter():
    from dyno_compile.ir.ops import registered_ops

    core = set(UNARY) | {
        "log",
        "sqrt",
        "rsqrt",
        "clip",
        "add",
        "sub",
        "mul",
        "div",
        "maximum",
        "minimum",
        "pow",
        "cast",
        "conv2d",
        "dense",
        "batch_norm",
        "max_pool2d",
        "avg_pool2d",
        "global_avg_pool2d",
        "softmax",
        "layer_norm",
        "gelu",
        "erf",
        "concat",
        "pad",
        "flatten",
        "reshape",
        "transpose",
        "broadcast_to",
        "slice",
        "reduce_sum",
        "reduce_max",
        "reduce_min",
        "reduce_mean",
    }
    assert core <= set(supported_ops())
    assert core <= set(registered_ops())


# --------------------------------------------------------------------------- module shape
def test_relax_main_signature(rng):
    g = Graph("sig")
    g.add_input("x", (1, 4))
    g.add_input("y", (1, 4))
    g.add_const("w", normal(rng, (4,)))
    a = g.add("mul", ["x", "w"])
    b = g.add("add", [a.name, "y"])
    r = g.add("relu", [b.name])
    g.set_outputs([b.name, r.name])
    mod = to_relax(g)
    main = mod["main"]
    assert int(main.attrs["num_input"]) == 2
    assert [p.name for p in main.params] == ["x", "y", "w"]
    # several outputs come back as a tuple, in order
    got = check(g, [normal(rng, (1, 4)), normal(rng, (1, 4))])
    assert len(got) == 2
    got2 = check(g, [normal(rng, (1, 4)), normal(rng, (1, 4))], bind_weights=False)
    assert len(got2) == 2


def test_unbound_weights_param_file_and_export(tmp_path, rng):
    import tvm

    g = conv_graph(rng, **CONV_CASES["plain_bias"])
    x = normal(rng, CONV_CASES["plain_bias"]["x"])
    want = _ref(g, [x])[0]
    c = compile_graph(g, "host", bind_weights=False)
    params = tvm.runtime.load_param_dict_from_file(str(c.save_params(tmp_path / "w.params")))
    assert set(params) == set(c.weight_names)
    lib = export(c, tmp_path / "conv.so")
    module = CompiledModule.from_description(c.as_module().describe(), lib)
    got = ModuleRunner(module, {k: v.numpy() for k, v in params.items()}).run("main", [x])[0]
    assert rel_err(got, want) <= TOL
    assert "export" in c.timings and c.timings["total"] > 0


# --------------------------------------------------------------------------- errors
def test_unsupported_op_names_node_and_op(rng, monkeypatch):
    from dyno_compile.targets import convert

    g = unary_graph("tanh")
    monkeypatch.delitem(convert.CONVERTERS, "tanh")
    with pytest.raises(LoweringError, match=r"node 'tanh'.*op 'tanh'.*no TVM converter"):
        compile_graph(g, "host")
    assert issubclass(LoweringError, DynoError)


def test_wrong_inputs_are_refused(rng):
    from dyno_compile.errors import InputError

    c = compile_graph(unary_graph("relu", (2, 3)), "host")
    with pytest.raises(InputError, match=r"input 'x' expects float32\[2, 3\], got float32\[3, 2\]"):
        run(c, [np.zeros((3, 2), np.float32)])
    with pytest.raises(InputError, match="takes 1"):
        run(c, [np.zeros((2, 3), np.float32)] * 2)


def test_cross_build_does_not_run_here():
    c = compile_graph(unary_graph("relu", (2, 3)), "arm64")
    with pytest.raises(TargetError, match="does not run on this machine"):
        run(c, [np.zeros((2, 3), np.float32)])


# --------------------------------------------------------------------------- schedule
def test_schedule_config_follows_target():
    from dyno_compile.targets.schedule import vector_bits

    arm = config_for(get_target("arm64").tvm_target())
    assert arm.vector_bits == 128 and arm.acc_registers == 24
    host = get_target("host").tvm_target()
    assert config_for(host).vector_bits == vector_bits(host) >= 128


def test_schedule_handles_multi_reduction_function(rng):
    """Softmax fuses two reductions into one function: no register tile, but parallel and correct."""
    import tvm
    from tvm import relax

    g = unary_graph("softmax", (3, 50), {"axis": -1})
    mod = to_relax(g)
    target = get_target("host").tvm_target()
    with target:
        mod = relax.get_pipeline("zero")(mod)
    mod, report = schedule_module(mod, target, cfg=config_for(target, verify=True))
    assert report.functions and not report.fallbacks
    ex = tvm.compile(mod, target, relax_pipeline="default_build")
    x = normal(rng, (3, 50))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert rel_err(got, _ref(g, [x])[0]) <= TOL


# --------------------------------------------------------------------------- models
def _zoo_graph(name: str, **kw) -> tuple[Graph, np.ndarray]:
    from dyno_compile import zoo
    from dyno_compile.frontend.jax_import import from_jax
    from dyno_compile.passes import run_passes

    m = zoo.get_model(name, **kw)
    return run_passes(from_jax(m.fn, m.params, m.random_input())), m.random_input(1)


@pytest.fixture(scope="module")
def resnet20():
    g, x = _zoo_graph("resnet20")
    return g, x


def test_resnet20_host_matches_interpreter(resnet20):
    g, x = resnet20
    c = compile_graph(g, "host")
    assert set(c.schedule_report.functions.values()) <= SCHEDULED, c.schedule_report.functions
    assert "tiled" in c.schedule_report.summary()
    got = run(c, [x])[0]
    assert rel_err(got, _ref(g, [x])[0]) <= TOL
    for step in ("lower", "fuse", "schedule", "build", "total"):
        assert c.timings[step] >= 0
    times = ModuleRunner(c).time("main", [x], repeat=2, min_repeat_ms=1)
    assert len(times) == 2 and np.all(times > 0)


def test_mobilenet_v2_host_matches_interpreter():
    g, x = _zoo_graph("mobilenet_v2", random_bn=True)
    c = compile_graph(g, "host")
    assert set(c.schedule_report.functions.values()) <= SCHEDULED, c.schedule_report.functions
    got = run(c, [x])[0]
    assert rel_err(got, _ref(g, [x])[0]) <= TOL


def _elf_header(path) -> tuple[bytes, int, int]:
    head = open(path, "rb").read(20)
    return head[:4], head[4], int.from_bytes(head[18:20], "little")


def test_arm64_export_is_aarch64_shared_object(resnet20, tmp_path):
    g, _ = resnet20
    c = compile_graph(g, "arm64")
    so = export(c, tmp_path / "resnet20_arm64.so")
    magic, klass, machine = _elf_header(so)
    assert magic == b"\x7fELF" and klass == 2  # ELFCLASS64
    assert machine == 183  # EM_AARCH64
    assert int.from_bytes(open(so, "rb").read(18)[16:18], "little") == 3  # ET_DYN: a shared object


def test_board_target_builds_resnet20_for_its_cpu(resnet20, tmp_path):
    """A named board (LLVM mcpu cortex-a72) compiles and links with the zig aarch64 linker as arm64 does."""
    g, _ = resnet20
    c = compile_graph(g, "rpi4")
    assert c.target.name == "rpi4" and c.target.tvm_target().attrs["mcpu"] == "cortex-a72"
    so = export(c, tmp_path / "resnet20_rpi4.so")
    magic, klass, machine = _elf_header(so)
    assert magic == b"\x7fELF" and klass == 2 and machine == 183  # EM_AARCH64


def test_board_targets_name_their_cpus_and_rooflines():
    from dyno_compile.targets.spec import BOARD_TARGETS

    cpus = {"rpi4": "cortex-a72", "rpi5": "cortex-a76", "jetson-nano": "cortex-a57", "phone": "cortex-a76"}
    assert set(BOARD_TARGETS) == set(cpus) and set(cpus) <= set(list_targets())
    for name, cpu in cpus.items():
        spec = get_target(name)
        assert spec.target["mcpu"] == cpu and spec.target["mtriple"] == "aarch64-linux-gnu"
        assert spec.linker == get_target("arm64").linker and spec.threads == 4 and not spec.is_host
    assert get_target("rpi4").peak_gflops == pytest.approx(4 * 1.8 * 8)
    assert get_target("jetson-nano").peak_gflops == pytest.approx(4 * 1.43 * 8)
    assert get_target("rpi5").peak_gflops == pytest.approx(get_target("arm64").peak_gflops)  # both 4x A76 @ 2.4
    assert "mcpu" not in get_target("arm64").target  # arm64 stays the generic A76-class build


@pytest.mark.parametrize("name", ["cuda-sm75", "cuda-sm80", "cuda-sm90"])
def test_cuda_builds_and_exports_without_gpu(name, resnet20, tmp_path):
    g, _ = resnet20
    c = compile_graph(g, name)
    so = export(c, tmp_path / f"resnet20_{name}.so")
    magic, klass, machine = _elf_header(so)
    assert magic == b"\x7fELF" and klass == 2 and machine == 62  # x86-64 host code
    assert b"__global__" in so.read_bytes() or b'extern "C"' in so.read_bytes()  # CUDA kernels inside


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "resnet56"])
def test_zoo_models_schedule_without_fallback(name):
    g, x = _zoo_graph(name)
    c = compile_graph(g, "host")
    assert set(c.schedule_report.functions.values()) <= SCHEDULED, c.schedule_report.functions
    got = run(c, [x])[0]
    assert rel_err(got, _ref(g, [x])[0]) <= TOL
