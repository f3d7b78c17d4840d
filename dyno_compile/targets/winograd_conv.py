"""CPU legalization and schedule of 3x3 stride-1 convolutions as Winograd F(m x m, 3x3).

A direct convolution on these CPUs already runs at about 90 % of the FMA peak
(:mod:`dyno_compile.targets.blocked_conv`), so beating it needs fewer multiplications.
Winograd's minimal filtering computes each m x m output tile from an (m+2) x (m+2) input
tile with (m+2)^2 multiplications per input channel instead of 9 m^2 (F(4x4, 3x3): 36
instead of 144; F(2x2, 3x3): 16 instead of 36): the input tile and the filter are
transformed (``V = B^T d B``, ``U = G g G^T``), multiplied element by element and summed
over input channels, which is (m+2)^2 independent matrix products ``M[e] = U[e] V[e]``,
and the result is transformed back (``Y = A^T M A``). The filter transform ``U`` is
computed once at build time from the constant weights (so only constant weights
qualify). The tile is 4 where the output's height and width divide by 4, else 2.

The schedule fuses every stage under one parallel loop over rows of tiles, so the
transformed tiles (2.25x the input for m = 4) never leave the core's cache: for a row of
tiles, the padded input rows are read once, transformed (separably: rows, then columns),
the products accumulate in registers (output channels in SIMD lanes, tiles as the
register axis, as in the direct schedule), and are transformed back, with output channels
innermost throughout; the last stage, with the fused epilogue, writes the row to
``NCHW``. Measured against the direct schedule on 2 AVX-512 cores (one convolution with
bias and ReLU, 2 threads): 64 channels at 56x56 598 against 813 us and 128 at 28x28 541
against 757 us (m = 4), 256 at 14x14 646 against 730 us (m = 2); ResNet-18 13.4 to
12.4 ms with m = 4 alone, 2.5 % less again with m = 2. Small convolutions gain little
(16 channels at 32x32: 27 against 25 us) and stay direct; 7x7 maps divide into no tile.

Only ``float32`` qualifies: the transforms' constants (up to 8 in ``B``, 1/4..1 in ``G``
for m = 4) cost about one decimal digit, 2e-6 relative error per layer in float32, which
float16 cannot spare. Convolutions that do not fit (other kernels, strides, dilations,
padding or groups, odd output sizes, little work: :data:`MIN_MACS`) keep the next
legalization.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dyno_compile.targets.schedule_common import KEEP, child_blocks, pick_factor, static_int

__all__ = [
    "TILES",
    "winograd_matrices",
    "transform_weights",
    "conv2d_winograd",
    "legalize_winograd_conv",
    "schedule_winograd",
]

#: Output tile edges ``m`` of F(m x m, 3 x 3) to try, largest first (the input tile edge is
#: ``m + 2``): the first that divides the output's height and width is used.
TILES = (4, 2)
#: Multiply-accumulates (per image) below which a convolution stays direct. LLVM takes
#: about 1 s to build each Winograd function (its transforms are unrolled), and below
#: this a convolution runs in under ~150 us and would save tens of microseconds: CIFAR
#: ResNet-20's convolutions (2.4 M each) saved 2 % of the model in all and cost 6 s of build.
MIN_MACS = 20_000_000
_GEMM = "winograd_gemm"


def winograd_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, G)`` of F(m, 3) in float64 (TVM's Cook-Toom construction and interpolation points)."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    a, b, g = _cook_toom_convolution(_interpolation_points(m + 2), m, 3)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def transform_weights(w: np.ndarray, lanes: int, m: int) -> np.ndarray:
    """``OIHW`` 3x3 weights as ``U[e, n, K/lanes, C, lanes]`` = ``(G w G^T)[e, n]``, output channels blocked."""
    k, c = w.shape[:2]
    _, _, g = winograd_matrices(m)
    u = np.einsum("ai,kcij,bj->abkc", g, w.astype(np.float64), g)
    u = u.reshape(m + 2, m + 2, k // lanes, lanes, c).transpose(0, 1, 2, 4, 3)
    return np.ascontiguousarray(u, dtype=w.dtype)


def _coef(matrix: np.ndarray, i, j):
    """``matrix[i, j]`` for loop variables that the schedule unrolls (the selects then fold to constants)."""
    from tvm import tirx

    zero = tirx.const(0.0, "float32")
    expr = zero
    for a, row in enumerate(matrix):  # rows outside, columns inside: chains as short as the matrix is wide
        entry = zero
        for b, v in enumerate(row):
            if v != 0:
                entry = tirx.Select(j == b, tirx.const(float(v), "float32"), entry)
        expr = tirx.Select(i == a, entry, expr)
    return expr


def _transform(shape, matrix: np.ndarray, name: str, body):
    """One side of a tile transform: ``out[i] = sum_r matrix[row, r] * operand`` where
    ``body(r, *i)`` gives ``(row, operand)``; ``r`` runs over the matrix's columns."""
    from tvm import te

    r = te.reduce_axis((0, matrix.shape[1]), name="r")

    def compute(*idx):
        row, value = body(r, *idx)
        return te.sum(_coef(matrix, row, r) * value, axis=r)

    return te.compute(shape, compute, name=name)


def conv2d_winograd(data, u, m: int):
    """TE compute: ``NCHW`` data (3x3, stride 1, padding 1), transformed weights (:func:`transform_weights`).

    Stages (named ``winograd_*`` for :func:`schedule_winograd`), with ``T = H/m`` rows and
    ``S = W/m`` columns of tiles:
    ``pad[n, c, row, col]`` the zero-padded input; ``split[n, c, row, q, s]`` its columns
    split by ``col % m``, so a tile's columns are contiguous across tiles; ``rows``/``input``
    the input transform (``B^T d`` then ``. B``); ``gemm[n, e, f, t, s, k]`` the (m+2)^2
    products summed over channels; ``cols``/``output`` the inverse transform; the result in
    ``NCHW``. The input transform and the products run over ``S`` rounded up to whole
    vectors (:func:`_vector_width`).
    """
    from tvm import te, tirx

    n, c, h, w = (int(d) for d in data.shape)
    a_, b_, _ = winograd_matrices(m)
    at, bt = a_.T, b_.T
    al = m + 2
    kb, lanes = int(u.shape[2]), int(u.shape[4])
    k = kb * lanes
    rows, cols = h // m, w // m
    vcols = _vector_width(cols, lanes)
    span = vcols + (al - 1) // m
    zero = tirx.const(0.0, data.dtype)

    padded = te.compute(
        (n, c, rows * m + 2, m * span),
        lambda b, ci, y, x: tirx.if_then_else(
            tirx.all(y >= 1, y <= h, x >= 1, x <= w), data[b, ci, y - 1, x - 1], zero
        ),
        name="winograd_pad",
        attrs={KEEP: 1},
    )
    pad = te.compute(
        (n, c, rows * m + 2, m, span), lambda b, ci, y, q, s: padded[b, ci, y, s * m + q], name="winograd_split"
    )
    row_t = _transform(
        (n, al, c, rows, al, vcols),
        bt,
        "winograd_rows",
        lambda r, b, e, ci, t, j, s: (e, pad[b, ci, t * m + r, j % m, s + j // m]),
    )
    v = _transform(
        (n, al, al, c, rows, vcols), bt, "winograd_input", lambda r, b, e, f, ci, t, s: (f, row_t[b, e, ci, t, r, s])
    )
    rc = te.reduce_axis((0, c), name="rc")
    gemm = te.compute(
        (n, al, al, rows, vcols, k),
        lambda b, e, f, t, s, ko: te.sum(u[e, f, ko // lanes, rc, ko % lanes] * v[b, e, f, rc, t, s], axis=rc),
        name=_GEMM,
    )
    col_t = _transform(
        (n, al, rows, m, cols, k), at, "winograd_cols", lambda r, b, e, t, jj, s, ko: (jj, gemm[b, e, r, t, s, ko])
    )
    y = _transform(
        (n, rows, m, m, cols, k), at, "winograd_output", lambda r, b, t, ii, jj, s, ko: (ii, col_t[b, r, t, jj, s, ko])
    )
    return te.compute(
        (n, k, h, w),
        lambda b, ko, yy, xx: y[b, yy // m, yy % m, xx % m, xx // m, ko],
        name="winograd_nchw",
        tag="conv2d_nchw",
    )


def _vector_width(cols: int, lanes: int) -> int:
    """Tile columns the input transform and the products compute: ``cols`` rounded up to a
    power of two below ``lanes``, else to a multiple of ``lanes``, so the transforms' vectors
    are whole registers (LLVM splits a 14- or 7-lane vector into 8 + 4 + 2 or 4 + 2 + 1
    loads, stores and inserts). The extra columns hold zero padding and are never read."""
    if cols >= lanes:
        return -(-cols // lanes) * lanes
    return 1 << (cols - 1).bit_length()


def _fits(call, vector_bits: int) -> tuple[int, int]:
    """``(SIMD lanes to block output channels by, tile edge m)``, or ``(0, 0)`` where this
    legalization does not apply."""
    from dyno_compile.targets.blocked_conv import constant_nchw_conv

    a = call.attrs
    x, w = call.args
    if not constant_nchw_conv(call) or str(w.ty.dtype) != "float32" or str(x.ty.dtype) != "float32":
        return 0, 0
    if [int(s) for s in a.strides] != [1, 1] or [int(d) for d in a.dilation] != [1, 1]:
        return 0, 0
    if [int(p) for p in a.padding] != [1, 1, 1, 1]:
        return 0, 0
    shape = tuple(int(d) for d in w.value.shape)
    lanes = vector_bits // 32
    try:
        h, wd = (int(d) for d in list(x.ty.shape)[2:])
    except (TypeError, ValueError):  # symbolic sizes
        return 0, 0
    m = next((t for t in TILES if h % t == 0 and wd % t == 0), 0)
    if shape[2:] != (3, 3) or shape[0] % lanes or not m or h * wd * shape[0] * shape[1] * 9 < MIN_MACS:
        return 0, 0
    return lanes, m


def legalize_winograd_conv(vector_bits: int, fallback: Callable[[Any, Any], Any]):
    """A ``LegalizeOps`` entry for ``relax.nn.conv2d``: Winograd where it fits, else ``fallback``."""
    from tvm import relax

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> Any:
        lanes, m = _fits(call, vector_bits)
        if not lanes:
            return fallback(bb, call)
        u = relax.const(transform_weights(call.args[1].value.numpy(), lanes, m))
        return bb.call_te(conv2d_winograd, call.args[0], u, m, primfunc_name_hint="conv2d_winograd")

    return legalize


def schedule_winograd(sch, acc_registers: int):
    """Schedule a function holding :func:`conv2d_winograd`'s stages; returns the parallel loop
    over rows of tiles (every stage is under it), or ``None`` if there is no such function."""
    names = {str(sch.get(b).name_hint): b for b in child_blocks(sch)}
    if _GEMM not in names:
        return None
    gemm = names[_GEMM]
    m = int(sch.get(names["winograd_split"]).writes[0].source.shape[3])  # split[n, c, row, col % m, col // m]
    n, e, f, t, s, k, rc = sch.get_loops(gemm)
    lanes = int(sch.get(gemm).reads[0].source.shape[-1])  # u[e, f, K/lanes, C, lanes]
    cols, kb = int(sch.get(s).extent), int(sch.get(k).extent) // lanes  # static: the legalization's shapes
    rf = pick_factor(cols, acc_registers)
    vk = pick_factor(kb, max(1, acc_registers // rf))
    ko, kv, ki = sch.split(k, [None, vk, lanes])
    so, si = sch.split(s, [None, rf])
    sch.reorder(n, t, e, f, ko, so, rc, kv, si, ki)
    par = sch.fuse(n, t)
    cache = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(cache, so)
    sch.parallel(par)
    sch.unroll(kv)
    sch.unroll(si)
    sch.vectorize(ki)
    init = sch.decompose_reduction(gemm, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(cache)[-1])
    for name in ("winograd_input", "winograd_rows"):
        sch.compute_at(names[name], par)
    for name in ("winograd_cols", "winograd_output"):
        sch.reverse_compute_at(names[name], par)
    for name in ("winograd_rows", "winograd_input", "winograd_cols", "winograd_output"):
        _schedule_transform(sch, names[name], m + 2)
    _split_columns(sch, names["winograd_split"], names["winograd_pad"], par)
    for final in sch.get_consumers(names["winograd_output"]):
        _write_rows_in_place(sch, final, par, m)
    return par


def _split_columns(sch, split, padded, par) -> None:
    """Compute a row of tiles' padded input rows, then split their columns by ``col % m``,
    under the parallel loop.

    Split as TVM vectors, every lane is a scalar load at stride ``m``; padded in the same
    stage, the bounds check keeps LLVM from vectorising it at all (one scalar load, compare
    and store per element: 17 % of a 64-channel 56x56 convolution's time). Padding first
    (its own stage: ``KEEP``) leaves the split free of conditions, and its width loop, left
    scalar with the ``m`` phases unrolled inside, is one interleaved group that LLVM's loop
    vectoriser loads as whole vectors and separates with permutes.
    """
    sch.compute_at(split, par)
    sch.compute_at(padded, par)
    _, _, q, s = sch.get_loops(split)[1:]
    sch.reorder(s, q)
    sch.unroll(q)


def _write_rows_in_place(sch, block, par, m: int) -> None:
    """Write a row of tiles to ``NCHW`` (with any fused epilogue) while it is in cache.

    The final block iterates over ``(n, k, y, x)`` and reads tiles at ``y // m, x // m``,
    which ``compute_at`` cannot invert; iterating it over ``(n, tile row, k, y % m, x // m,
    x % m)`` instead makes every index affine, so it joins the parallel loop over tile rows.
    The tiles hold output channels innermost, so this stage transposes: vectorised by TVM
    over the row, every lane is a scalar load and insert; left to LLVM (tile columns a
    plain loop, the ``m`` columns of a tile unrolled inside), it gathers each column of
    tiles with one instruction and scatters, 1-7 % faster per convolution (ResNet-18 12.61
    to 12.41 ms, A/B in one process).
    """
    from tvm.tirx import IndexMap

    if len(sch.get_loops(block)) != 4:
        return
    sch.transform_block_layout(
        block, IndexMap.from_func(lambda b, k, y, x: (b, y // m, k, y % m, x // m, x % m), ndim=4)
    )
    sch.reverse_compute_at(block, par)
    sch.unroll(sch.get_loops(block)[-1])


def _schedule_transform(sch, block, tile: int) -> None:
    """A transform stage under the parallel loop: its ``tile``-long loops and reduction
    unrolled, so the coefficient selects fold to constants; the innermost (contiguous) axis vectorised."""
    loops = sch.get_loops(block)[1:]
    spatial, red = loops[:-1], loops[-1]
    sch.reorder(*spatial[:-1], red, spatial[-1])
    for lp in spatial[:-1]:
        if (static_int(sch.get(lp).extent) or 0) <= tile:
            sch.unroll(lp)
    sch.unroll(red)
    sch.vectorize(spatial[-1])
