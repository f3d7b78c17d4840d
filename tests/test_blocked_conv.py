"""Convolutions legalized with output-channel-blocked weights on CPU targets
(``targets/blocked_conv.py``) and the schedule's output-channel vector tiles: equal to
the IR interpreter, used where they fit, TVM's own legalization where they do not."""

from __future__ import annotations

import numpy as np
import pytest
from test_targets import check, conv_graph, normal

from dyno_compile.targets import get_target
from dyno_compile.targets.blocked_conv import block_weights
from dyno_compile.targets.compile import fused_module

# output channels a multiple of 16, so every SIMD width (4, 8 or 16 float lanes) blocks them
BLOCKED_CASES = {
    # 7-wide output: a short register axis, several vectors of output channels per tile
    "3x3_7wide": dict(x=(1, 32, 7, 7), w=(64, 32, 3, 3), bias=True, attrs={"padding": ((1, 1), (1, 1))}),
    # a width that fills no register: output channels are the vector axis
    # (odd, so no Winograd tile divides it)
    "3x3_13wide": dict(x=(1, 16, 13, 13), w=(32, 16, 3, 3), bias=False, attrs={"padding": ((1, 1), (1, 1))}),
    # stride 2, asymmetric padding: the strided width is not vectorised (it would gather)
    "stride2_asym": dict(
        x=(1, 3, 33, 30), w=(16, 3, 7, 7), bias=True, attrs={"strides": (2, 2), "padding": ((3, 2), (3, 3))}
    ),
    "dilation": dict(
        x=(2, 8, 12, 12), w=(16, 8, 3, 3), bias=True, attrs={"dilation": (2, 2), "padding": ((2, 2), (2, 2))}
    ),
    "pointwise_32wide": dict(x=(1, 24, 5, 32), w=(48, 24, 1, 1), bias=True, attrs={}),
}


def _prim_names(mod) -> list[str]:
    from tvm import tirx

    return [str(b.name_hint) for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) for b in _blocks(f)]


def _blocks(func) -> list:
    import tvm_ffi
    from tvm import s_tir

    found: list = []
    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, found.append), order="post")
    return found


def test_block_weights_layout(rng):
    w = normal(rng, (32, 5, 3, 2))
    b = block_weights(w, 8)
    assert b.shape == (4, 5, 3, 2, 8) and b.flags.c_contiguous
    for o in (0, 7, 8, 31):
        np.testing.assert_array_equal(b[o // 8, :, :, :, o % 8], w[o])


@pytest.mark.parametrize("case", list(BLOCKED_CASES))
def test_blocked_conv_matches_interpreter(case, rng):
    spec = BLOCKED_CASES[case]
    g = conv_graph(rng, **spec)
    assert "conv2d_blocked" in _prim_names(fused_module(g, "host"))
    check(g, [normal(rng, spec["x"])])


def test_blocked_only_on_cpu_with_constant_weights(rng):
    """GPU builds keep TOPI's convolution (dlight schedules it); so do unbound weights,
    which would be relaid on every call, and grouped convolutions."""
    g = conv_graph(rng, **BLOCKED_CASES["3x3_7wide"])
    assert "conv2d_blocked" in _prim_names(fused_module(g, "arm64"))
    assert "conv2d_blocked" not in _prim_names(fused_module(g, "cuda-sm80"))
    assert "conv2d_blocked" not in _prim_names(fused_module(g, "host", bind_weights=False))
    grouped = conv_graph(
        rng, x=(1, 32, 7, 7), w=(32, 16, 3, 3), bias=False, attrs={"groups": 2, "padding": ((1, 1), (1, 1))}
    )
    assert "conv2d_blocked" not in _prim_names(fused_module(grouped, "host"))
    x = normal(rng, (1, 32, 7, 7))
    check(g, [x], bind_weights=False)
    check(grouped, [x])


def test_float16_blocked_conv(rng):
    spec = BLOCKED_CASES["3x3_13wide"]
    g = conv_graph(rng, **spec, dtype="float16")
    got = check(g, [normal(rng, spec["x"], "float16")], tol=2e-3)
    assert got[0].dtype == np.float16


def test_block_follows_the_target_simd_width(rng):
    """The arm64 build (NEON: 4 float lanes) blocks by 4, the host by its own width."""
    from dyno_compile.targets.schedule import vector_bits

    g = conv_graph(rng, **BLOCKED_CASES["dilation"])
    host_lanes = vector_bits(get_target("host").tvm_target()) // 32
    shapes = {}
    for name in ("host", "arm64"):
        mod = fused_module(g, name)
        for _, f in mod.functions_items():
            for block in _blocks(f) if hasattr(f, "body") else ():
                if str(block.name_hint) == "conv2d_blocked":
                    shapes[name] = tuple(int(d) for d in block.reads[1].source.shape)
    assert shapes["host"] == (16 // host_lanes, 8, 3, 3, host_lanes)
    assert shapes["arm64"] == (4, 8, 3, 3, 4)


# (x, w, strides) -> the axis the parallel loop walks first: the largest tensor's
ORDER_CASES = {
    # a downsampling 3x3: the input (25 K values) outweighs the output (13 K) and weights (18 K)
    # (a downsampling 1x1 reads its subsampled input, a quarter of the size)
    "input_largest": ((1, 32, 28, 28), (64, 32, 3, 3), (2, 2), "y"),
    # a late 3x3: weights (37 K) outweigh the 7x7 input and output (3 K each)
    "weights_largest": ((1, 64, 7, 7), (64, 64, 3, 3), (1, 1), "oc"),
    # an expansion: the output (19 K) outweighs the input (3 K)
    "output_largest": ((1, 16, 14, 14), (96, 16, 1, 1), (1, 1), "oc"),
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_parallel_loop_walks_the_largest_tensor_first(case, rng):
    """Threads split the largest tensor (the schedule's ``_stream_last`` order); results do not change."""
    import tvm_ffi
    from tvm import tirx

    from dyno_compile.targets.schedule import schedule_module

    x, w, strides, first = ORDER_CASES[case]
    pad = (w[2] // 2, w[2] // 2)
    g = conv_graph(rng, x=x, w=w, bias=True, attrs={"strides": strides, "padding": (pad, pad)})
    target = get_target("host").tvm_target()
    mod, _ = schedule_module(fused_module(g, "host"), target)
    parallel = []
    for _, f in mod.functions_items():
        if isinstance(f, tirx.PrimFunc) and any(str(b.name_hint) == "conv2d_blocked_update" for b in _blocks(f)):
            loops: list = []
            tvm_ffi.structural_walk(f.body, (tirx.For, loops.append), order="post")
            parallel += [str(lp.loop_var.name) for lp in loops if lp.kind == tirx.ForKind.PARALLEL]
    conv_loops = [name for name in parallel if "oc" in name]
    assert len(conv_loops) == 1, parallel
    axes = [a for a in conv_loops[0].split("_") if a in ("nn", "oc", "y", "x")]
    assert [a for a in axes if a != "nn"][0] == first, conv_loops
    check(g, [normal(rng, x)])
