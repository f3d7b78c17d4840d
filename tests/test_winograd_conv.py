"""3x3 stride-1 convolutions as Winograd F(4x4, 3x3) or F(2x2, 3x3) on CPU targets (``targets/winograd_conv.py``):
the transforms, equality with the IR interpreter through the fused schedule (epilogues,
batches, rectangular maps), and the convolutions that keep the direct legalization."""

from __future__ import annotations

import numpy as np
import pytest
from test_blocked_conv import _prim_names
from test_targets import check, conv_graph, normal

from dyno_compile.ir import Graph
from dyno_compile.targets import compile_graph, get_target, winograd_conv
from dyno_compile.targets.compile import fused_module
from dyno_compile.targets.schedule import schedule_module
from dyno_compile.targets.winograd_conv import TILES, transform_weights, winograd_matrices

SAME = {"padding": ((1, 1), (1, 1))}


@pytest.fixture(autouse=True)
def small_convolutions_too(monkeypatch):
    """Small shapes build fast; production keeps convolutions under MIN_MACS direct (tested below)."""
    monkeypatch.setattr(winograd_conv, "MIN_MACS", 0)


@pytest.mark.parametrize("m", TILES)
def test_matrices_compute_a_correlation(m):
    """``A^T [(G g) * (B^T d)]`` is the valid correlation of an (m+2)-tap input with a 3-tap filter."""
    a, b, g = winograd_matrices(m)
    rng = np.random.default_rng(0)
    d, f = rng.standard_normal(m + 2), rng.standard_normal(3)
    want = np.array([d[i : i + 3] @ f for i in range(m)])
    np.testing.assert_allclose(a.T @ ((g @ f) * (b.T @ d)), want, rtol=1e-12, atol=1e-12)


def test_transform_weights_layout(rng):
    w = normal(rng, (32, 5, 3, 3))
    u = transform_weights(w, 16, 4)
    _, _, g = winograd_matrices(4)
    assert u.shape == (6, 6, 2, 5, 16) and u.dtype == np.float32
    for k in (0, 17, 31):
        np.testing.assert_allclose(
            u[:, :, k // 16, :, k % 16], np.einsum("ai,cij,bj->abc", g, w[k], g), rtol=1e-5, atol=1e-6
        )


def _residual_graph(rng, x, k):
    """conv -> + bias -> + input -> relu: the epilogue a ResNet block fuses into the convolution."""
    g = Graph("residual")
    g.add_input("x", x)
    g.add_const("w", normal(rng, (k, x[1], 3, 3)) * 0.3)
    g.add_const("b", normal(rng, (k,)))
    conv = g.add("conv2d", ["x", "w", "b"], dict(SAME))
    add = g.add("add", [conv.name, "x"])
    out = g.add("relu", [add.name])
    g.set_outputs([out.name])
    return g


CASES = {
    "bias": lambda rng: conv_graph(rng, x=(1, 16, 8, 8), w=(16, 16, 3, 3), bias=True, attrs=dict(SAME)),
    "few_inputs_wide_output": lambda rng: conv_graph(
        rng, x=(1, 3, 12, 20), w=(32, 3, 3, 3), bias=False, attrs=dict(SAME)
    ),
    "batch2_residual_relu": lambda rng: _residual_graph(rng, (2, 16, 16, 12), 16),
    # 6x10 divides into 2x2 tiles only: F(2x2, 3x3)
    "tile2_residual_relu": lambda rng: _residual_graph(rng, (1, 32, 6, 10), 32),
    # 18 columns of tiles: the input transform runs over two vectors, 14 columns of them padding
    "wide_row_two_vectors": lambda rng: conv_graph(rng, x=(1, 8, 8, 72), w=(16, 8, 3, 3), bias=True, attrs=dict(SAME)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_winograd_matches_interpreter(case, rng):
    g = CASES[case](rng)
    assert "winograd_gemm" in _prim_names(fused_module(g, "host"))
    c = compile_graph(g, "host")
    assert "winograd" in c.schedule_report.functions.values(), c.schedule_report.functions
    check(g, [normal(rng, tuple(g.nodes[0].type.shape))])


@pytest.mark.parametrize(
    "attrs,x,w",
    [
        ({"strides": (2, 2), **SAME}, (1, 16, 8, 8), (16, 16, 3, 3)),
        ({"dilation": (2, 2), "padding": ((2, 2), (2, 2))}, (1, 16, 8, 8), (16, 16, 3, 3)),
        ({}, (1, 16, 10, 10), (16, 16, 3, 3)),  # no padding
        (dict(SAME), (1, 16, 7, 7), (16, 16, 3, 3)),  # 7 divides into no tile
        ({"padding": ((2, 2), (2, 2))}, (1, 16, 8, 8), (16, 16, 5, 5)),
        (dict(SAME), (1, 16, 8, 8), (24, 16, 3, 3)),  # output channels fill no SIMD register
    ],
)
def test_direct_where_winograd_does_not_fit(attrs, x, w, rng):
    g = conv_graph(rng, x=x, w=w, bias=True, attrs=attrs)
    names = _prim_names(fused_module(g, "host"))
    assert "winograd_gemm" not in names
    check(g, [normal(rng, x)])


def test_winograd_only_for_float32_constant_weights_on_cpu(rng):
    g = CASES["bias"](rng)
    assert "winograd_gemm" in _prim_names(fused_module(g, "arm64"))
    assert "winograd_gemm" not in _prim_names(fused_module(g, "cuda-sm80"))
    assert "winograd_gemm" not in _prim_names(fused_module(g, "host", bind_weights=False))
    half = conv_graph(rng, x=(1, 16, 8, 8), w=(16, 16, 3, 3), bias=True, attrs=dict(SAME), dtype="float16")
    assert "winograd_gemm" not in _prim_names(fused_module(half, "host"))


def test_little_work_stays_direct(rng, monkeypatch):
    """Under MIN_MACS (a CIFAR ResNet's 16 channels at 32x32) the build time is not worth it."""
    monkeypatch.setattr(winograd_conv, "MIN_MACS", 20_000_000)
    small = conv_graph(rng, x=(1, 16, 32, 32), w=(16, 16, 3, 3), bias=True, attrs=dict(SAME))
    assert "winograd_gemm" not in _prim_names(fused_module(small, "host"))
    large = conv_graph(rng, x=(1, 64, 56, 56), w=(64, 64, 3, 3), bias=True, attrs=dict(SAME))
    assert "winograd_gemm" in _prim_names(fused_module(large, "host"))


@pytest.mark.parametrize(
    "cols,lanes,want",
    [(14, 16, 16), (7, 16, 8), (16, 16, 16), (18, 16, 32), (3, 16, 4), (1, 16, 1), (7, 4, 8), (2, 4, 2)],
)
def test_tile_columns_round_up_to_whole_vectors(cols, lanes, want):
    assert winograd_conv._vector_width(cols, lanes) == want


def test_padding_and_column_split_are_separate_stages(rng):
    """The padded rows stay a stage of their own (the schedule would inline them into the
    split), and the split runs its width as a plain loop with the m phases unrolled inside,
    for LLVM to vectorise as one interleaved group; so does the final write to NCHW."""
    import tvm_ffi
    from tvm import tirx

    g = CASES["bias"](rng)
    mod, report = schedule_module(fused_module(g, "host"), get_target("host").tvm_target())
    assert "winograd" in report.functions.values(), report.functions
    func = next(
        f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and "winograd_split" in _block_names(f.body)
    )
    assert "winograd_pad" in _block_names(func.body)
    loops: list = []
    tvm_ffi.structural_walk(func.body, (tirx.For, loops.append), order="post")
    phase, width = [lp for lp in loops if _block_names(lp.body) == ["winograd_split"]][:2]  # innermost first
    assert phase.kind == tirx.ForKind.UNROLLED and int(phase.extent) == 4
    assert width.kind == tirx.ForKind.SERIAL
    # the write to NCHW (with the bias) transposes: a tile's columns unrolled, tile columns a plain loop
    final = next(name for name in reversed(_block_names(func.body)) if not name.startswith(("winograd", "root")))
    column, tile_column = [lp for lp in loops if _block_names(lp.body) == [final]][:2]
    assert column.kind == tirx.ForKind.UNROLLED and int(column.extent) == 4
    assert tile_column.kind == tirx.ForKind.SERIAL


def _block_names(stmt) -> list[str]:
    import tvm_ffi
    from tvm import s_tir

    found: list = []
    tvm_ffi.structural_walk(stmt, (s_tir.SBlock, found.append), order="post")
    return [str(b.name_hint) for b in found]
