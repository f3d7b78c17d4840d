"""CPU legalization of ``relax.nn.conv2d`` with output-channel-blocked weights.

TOPI's NCHW convolution reads weights as ``OIHW``. The CPU schedule
(:mod:`dyno_compile.targets.schedule`) vectorises a reduction along an axis that indexes
some input's innermost dimension; for ``OIHW`` that is only the output width, which wastes
SIMD lanes wherever the width is not a multiple of the vector (ResNet-18's 56, 28, 14
and 7 on AVX-512's 16 lanes: 7 of 16 lanes at 7x7), and gathers where the stride is 2.

Here a float convolution whose weights are constants (bound at build time) reads them as
``OIHW{b}o``: ``[O/b, I, KH, KW, b]`` with ``b`` the SIMD lane count, relaid once at
build time. The output-channel axis then indexes a contiguous run of ``b`` weights, so
the schedule can vectorise over output channels (always full registers, weights streamed
in order) and keep the output width as the register tile, as direct convolutions on
CPUs do. Activations stay ``NCHW``, so segment boundaries, cuts and the wire format do
not change, and nothing else in the graph needs another layout. The output is computed
in the same order and precision as TOPI's (a sum over ``ic, kh, kw`` in the
accumulation dtype), so results match the unblocked build.

Where the output channels are not a multiple of the lanes but are of half of them (24
on 16 lanes), ``b`` is half a register. A pointwise (1x1) convolution has no window
axes, so its input is indexed by ``(y, x)`` alone and the schedule can treat the pixels
as one axis. A strided pointwise convolution (a ResNet projection) subsamples its input
in a stage of its own first, so its product reads whole rows too, instead of one value
of every input plane per output column: ResNet-50's 256 -> 512 projection from 56 x 56
to 28 x 28 took 1742 us in the model with strided reads, 1074 us this way (its
projections 4.4 to 3.2 ms in all, ResNet-50 39.3 to 38.0 ms; ResNet-18's level, A/B in
one process on 2 AVX-512 cores). Convolutions that do not fit (grouped, other layouts,
weights that are not constants, output channels not a multiple of half the lanes) keep
TVM's own legalization.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["block_weights", "constant_nchw_conv", "conv2d_blocked", "legalize_blocked_conv", "weight_block"]


def block_weights(w: np.ndarray, block: int) -> np.ndarray:
    """``OIHW`` weights as ``[O/block, I, KH, KW, block]`` (output channel ``o`` at
    ``[o // block, ..., o % block]``)."""
    o, i, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(o // block, block, i, kh, kw).transpose(0, 2, 3, 4, 1))


def conv2d_blocked(data, weight, strides, padding, dilation, out_dtype: str):
    """TE compute: ``NCHW`` data, blocked weights (:func:`block_weights`), ``NCHW`` output.

    ``padding`` is ``(top, left, bottom, right)``. The padded input is its own stage, which
    the CPU schedule keeps materialised, so the reduction reads it without bounds checks.
    """
    from tvm import te, topi

    from dyno_compile.targets.schedule_common import KEEP

    n, c, h, w = (int(d) for d in data.shape)
    ob, ic, kh, kw, b = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    t, left, bottom, right = padding
    if any(padding):
        data = topi.nn.pad(data, [0, 0, t, left], [0, 0, bottom, right], name="pad_temp")
    oh = (h + t + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if kh == kw == 1 and (sh, sw) != (1, 1):  # subsample once: the product then reads whole rows
        data = te.compute(
            (n, c, oh, ow), lambda nn, cc, y, x: data[nn, cc, y * sh, x * sw], name="subsample", attrs={KEEP: 1}
        )
        sh = sw = 1
    rc = te.reduce_axis((0, ic), name="rc")
    # no unit window axes: a pointwise convolution's input is then indexed by (y, x) alone
    window = [] if kh == kw == 1 else [te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")]
    ry, rx = window or (0, 0)
    return te.compute(
        (n, ob * b, oh, ow),
        lambda nn, oc, y, x: te.sum(
            data[nn, rc, y * sh + ry * dh, x * sw + rx * dw].astype(out_dtype)
            * weight[oc // b, rc, ry, rx, oc % b].astype(out_dtype),
            axis=[rc, *window],
        ),
        name="conv2d_blocked",
        tag="conv2d_nchw",
    )


def constant_nchw_conv(call) -> bool:
    """``call`` is an ungrouped ``NCHW``/``OIHW`` convolution whose weights are constants
    (which CPU legalizations may relay or transform once, at build time)."""
    from tvm.ir.expr import Constant

    a = call.attrs
    return (
        isinstance(call.args[1], Constant)
        and int(a.groups) == 1
        and (a.data_layout, a.kernel_layout, a.out_layout) == ("NCHW", "OIHW", "NCHW")
    )


def _fits(call, vector_bits: int) -> int:
    """The weight block for ``call`` (SIMD lanes of its dtype), or 0 where blocking does not fit."""
    x, w = call.args
    if not constant_nchw_conv(call):
        return 0
    name = str(w.ty.dtype)
    dtype = np.dtype(name) if name != "bfloat16" else None
    if dtype is None or dtype.kind != "f" or str(x.ty.dtype) != name:
        return 0
    shape = tuple(w.value.shape)
    return weight_block(shape[0], vector_bits // (8 * dtype.itemsize)) if len(shape) == 4 else 0


def weight_block(channels: int, lanes: int) -> int:
    """Output channels per weight block: a whole register of ``lanes`` where they divide
    ``channels``, else half of one (24 channels on 16 lanes: MobileNetV2's projections
    ran 10-25 % faster in blocks of 8 than in TVM's own convolution), else 0 (none)."""
    return next((b for b in (lanes, lanes // 2) if b > 1 and channels % b == 0), 0)


def legalize_blocked_conv(vector_bits: int):
    """A ``LegalizeOps`` entry for ``relax.nn.conv2d`` on a CPU with ``vector_bits``-bit SIMD
    registers: blocked weights where they fit, else TVM's own legalization."""
    from tvm import relax
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> Any:
        block = _fits(call, vector_bits)
        if not block:
            return _nn_conv2d(bb, call)
        a = call.attrs
        weight = relax.const(block_weights(call.args[1].value.numpy(), block))
        out_dtype = str(a.out_dtype) if str(a.out_dtype) not in ("", "void") else str(call.ty.dtype)
        return bb.call_te(
            conv2d_blocked,
            call.args[0],
            weight,
            [int(s) for s in a.strides],
            [int(p) for p in a.padding],
            [int(d) for d in a.dilation],
            out_dtype,
            primfunc_name_hint="conv2d",
        )

    return legalize
