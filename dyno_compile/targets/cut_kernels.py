"""Cut kernels: DynO's quantize / pack at a cut as TE computes, each with its CPU and GPU
schedule, in one record per kind (:data:`CUT_KERNELS`).

The semantics are the JAX impls of :mod:`dyno_compile.ir.ops.quant` (and, bit for bit,
:mod:`dyno_compile.packing`)::

    lo, hi = min(x), max(x)                                  # per tensor or per channel
    scale  = (hi - lo) * float32(1 / (2**bits - 1));  1.0 where below 2**-126
    q      = clip(round_half_even((x - lo) * (1 / scale)), 0, 2**bits - 1)
    x'     = float32(q) * scale + lo

and a dense little-endian, LSB-first bit stream of ceil(N * bits / 8) bytes. Each op is
one TE kernel ("cut kernel", :func:`prim_func`) marked opaque, so fusion leaves it alone,
and scheduled by :func:`schedule_cut_kernels` (CPU: parallel and vectorised; GPU: thread
bindings) instead of the generic schedule: a min/max reduction and bit gathers are not
patterns that the generic schedule recognises. The kernel's kind, its compute and both
schedules are one :class:`CutKernel`, so a new kind is one record, not a branch in each
of three places. Kernels work on a 3-D view ``[outer, C, inner]`` of the tensor
(``[1, 1, N]`` per tensor, :func:`quant_view`) that the caller makes with a free Relax
reshape, so that the channel of an element is one loop index and the innermost loop is
contiguous.

This module knows TE and TensorIR, not Relax: :mod:`dyno_compile.targets.convert` adds
the kernels to a Relax module and calls them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from dyno_compile.packing import vocab
from dyno_compile.packing.quantize import inverse_levels, levels
from dyno_compile.packing.vocab import refused_as
from dyno_compile.targets.errors import LoweringError
from dyno_compile.targets.schedule_common import SCHEDULED_ATTR, child_blocks, fuse_loops, is_scheduled
from dyno_compile.targets.spec import GPU_KINDS

__all__ = [
    "CUT_KERNELS",
    "CUT_KERNEL_ATTR",
    "CutKernel",
    "GROUP_ATTR",
    "code_dtype",
    "is_cut_kernel",
    "pack_period",
    "prim_func",
    "quant_view",
    "schedule_cut_kernels",
]

#: PrimFunc attribute naming a cut kernel's kind; :func:`schedule_cut_kernels` looks for it.
CUT_KERNEL_ATTR = "dyno.cut_kernel"
#: PrimFunc attribute of the pack kernels: how many consecutive outputs repeat their bit
#: layout (:attr:`CutKernel.group`); the schedules unroll that many.
GROUP_ATTR = "dyno.group"
_OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps leaves the call alone
#: Vector widths (elements) tried for the innermost loop of the kernels, widest first: the
#: widest divisor of the innermost extent is used (LLVM splits wide vectors into registers).
_VECTOR_WIDTHS = (32, 16, 8, 4, 2)


def code_dtype(bits: int) -> str:
    """The TVM dtype of ``bits``-bit codes (the vocabulary's rule); a bad width is a
    :class:`LoweringError`."""
    with refused_as(LoweringError):
        return vocab.code_dtype(bits).name


def quant_view(shape: Sequence[int], granularity: str, axis: int) -> tuple[int, int, int]:
    """``(outer, C, inner)`` of the 3-D view for per-tensor or per-channel ``axis``."""
    n = math.prod(shape)
    with refused_as(LoweringError):
        granularity = vocab.check_granularity(granularity)
    if granularity == "tensor":
        return 1, 1, n
    if not shape:
        raise LoweringError("per-channel quantisation needs a tensor of rank >= 1")
    a = int(axis) % len(shape)
    return math.prod(shape[:a]), int(shape[a]), math.prod(shape[a + 1 :])


def _vector_width(extent: int) -> int:
    return next((v for v in _VECTOR_WIDTHS if extent % v == 0), 1)


# --------------------------------------------------------------------------- computes
def _f32(value):
    from tvm import tirx

    return value if str(value.dtype) == "float32" else tirx.Cast("float32", value)


def _minmax_reducer():
    from tvm import te, tirx

    return te.comm_reducer(
        lambda a, b: (tirx.min(a[0], b[0]), tirx.max(a[1], b[1])),
        lambda t0, t1: (tirx.const(math.inf, t0), tirx.const(-math.inf, t1)),
        name="minmax",
    )


def _range_split(outer: int, channels: int, inner: int) -> tuple[int, int, int, int]:
    """How ``quant_range`` splits the reduction: ``(L, M, P, R)``.

    The innermost ``L`` elements (a divisor of ``inner``) are vector lanes; the ``M = inner
    / L`` groups are cut into ``P`` chunks of ``R`` groups, so that ``channels * P`` partial
    min/max reductions run in parallel, each over at least about 2048 elements.
    """
    lanes = _vector_width(inner)
    groups = inner // lanes
    per_chunk = max(1, 2048 // max(1, lanes * outer))
    chunks = max(1, min(-(-64 // channels), groups // per_chunk))
    rows = -(-groups // chunks)
    return lanes, groups, -(-groups // rows), rows


def _te_quant_range(x, *, bits: int, per_channel: bool):
    """``[2]`` (or ``[2, C]``): row 0 ``lo``, row 1 ``scale``, from the 3-D view ``x``.

    Min and max in one pass (a tuple reduction): per (channel, chunk, lane) partials, then
    per channel over chunks and lanes; min/max are exact, so any order gives JAX's result.
    """
    from tvm import te, tirx

    outer, channels, inner = (int(d) for d in x.shape)
    lanes, groups, chunks, rows = _range_split(outer, channels, inner)
    minmax = _minmax_reducer()
    ro = te.reduce_axis((0, outer), "ro")
    rr = te.reduce_axis((0, rows), "rr")

    def partial(c, p, lane):
        g = p * rows + rr
        if chunks * rows > groups:  # the last chunk is short: reread the last group (min/max unchanged)
            g = tirx.min(g, groups - 1)
        v = _f32(x[ro, c, g * lanes + lane])
        return minmax((v, v), axis=[ro, rr])

    pmin, pmax = te.compute((channels, chunks, lanes), partial, name="range_partial")
    rp = te.reduce_axis((0, chunks), "rp")
    rl = te.reduce_axis((0, lanes), "rl")
    lo, hi = te.compute(
        (channels,), lambda c: minmax((pmin[c, rp, rl], pmax[c, rp, rl]), axis=[rp, rl]), name="range_final"
    )
    inv_levels = tirx.const(float(inverse_levels(bits)), "float32")

    def row(i, c):
        scale = (hi[c] - lo[c]) * inv_levels
        no_range = scale < tirx.const(float(vocab.MIN_SCALE), "float32")
        scale = tirx.Select(no_range, tirx.const(1.0, "float32"), scale)
        return tirx.Select(i == 0, lo[c], scale)

    if per_channel:
        return te.compute((2, channels), row, name="range")
    return te.compute((2,), lambda i: row(i, 0), name="range")


def _range_at(rng, per_channel: bool, c):
    """(lo, scale) for channel ``c`` from a ``[2]`` or ``[2, C]`` range tensor."""
    return (rng[0, c], rng[1, c]) if per_channel else (rng[0], rng[1])


def _te_quantize(x, rng, *, bits: int, per_channel: bool):
    """Codes of the 3-D view ``x``: ``clip(round_half_even((x - lo) * (1 / scale)), 0, 2**bits - 1)``."""
    from tvm import te, tirx

    one, zero = tirx.const(1.0, "float32"), tirx.const(0.0, "float32")
    top = tirx.const(float(levels(bits)), "float32")
    dtype = code_dtype(bits)

    def code(o, c, i):
        lo, scale = _range_at(rng, per_channel, c)
        # nearbyint: round half to even on every target (CUDA's roundf rounds half away from 0)
        q = tirx.nearbyint((_f32(x[o, c, i]) - lo) * (one / scale))
        return tirx.Cast(dtype, tirx.min(tirx.max(q, zero), top))

    return te.compute(x.shape, code, name="quantize")


def _te_dequantize(codes, rng, *, per_channel: bool):
    """``float32(q) * scale + lo`` over the 3-D view ``codes``."""
    from tvm import te, tirx

    def value(o, c, i):
        lo, scale = _range_at(rng, per_channel, c)
        return tirx.Cast("float32", codes[o, c, i]) * scale + lo

    return te.compute(codes.shape, value, name="dequantize")


def _u32(value):
    from tvm import tirx

    return value if str(value.dtype) == "uint32" else tirx.Cast("uint32", value)


def pack_period(bits: int) -> tuple[int, int]:
    """``(bytes, codes)``: the bit stream repeats every ``8 / gcd(b, 8)`` codes, which fill
    ``b / gcd(b, 8)`` bytes (1 byte per 2 codes at 4 bits, 3 bytes per 8 codes at 3 bits)."""
    g = math.gcd(bits, 8)
    return bits // g, 8 // g


def _pieces_of_byte(bits: int, j: int) -> list[tuple[int, int]]:
    """``(m, shift)`` for each code ``m`` of a period that has bits in its byte ``j``:
    the byte is ``OR((code_m << shift) if shift >= 0 else (code_m >> -shift)) & 0xFF``."""
    return [
        (m, m * bits - 8 * j) for m in range(pack_period(bits)[1]) if m * bits < 8 * (j + 1) and (m + 1) * bits > 8 * j
    ]


def _bytes_of_code(bits: int, m: int) -> list[tuple[int, int]]:
    """``(j, shift)`` for each byte ``j`` of a period holding bits of its code ``m``: the
    code is ``OR((byte_j << shift) if shift >= 0 else (byte_j >> -shift)) & mask``."""
    return [
        (j, 8 * j - m * bits) for j in range(pack_period(bits)[0]) if 8 * j < (m + 1) * bits and 8 * (j + 1) > m * bits
    ]


def _shifted(value, shift: int):
    from tvm import tirx

    if shift > 0:
        return value << tirx.const(shift, "uint32")
    if shift < 0:
        return value >> tirx.const(-shift, "uint32")
    return value


def _by_position(position, period: int, pieces: Callable[[int], list[tuple[int, int]]], value: Callable[[int], Any]):
    """The part at ``position`` of a period of ``period`` parts, part ``p`` the OR of
    ``value(i)`` shifted by ``shift`` over ``(i, shift)`` in ``pieces(p)``: one rule for both
    directions (a byte from the codes with bits in it, a code from the bytes holding its
    bits). A loop-dependent ``position`` picks through a Select chain that folds to one part
    once the schedule unrolls the period (``position`` a constant)."""
    from tvm import tirx

    parts = []
    for p in range(period):
        acc = None
        for i, shift in pieces(p):
            piece = _shifted(value(i), shift)
            acc = piece if acc is None else acc | piece
        parts.append(acc)
    expr = parts[-1]
    for p in range(len(parts) - 2, -1, -1):
        expr = tirx.Select(position == p, parts[p], expr)
    return expr


def _te_bitpack(codes, *, bits: int):
    """``ceil(N * bits / 8)`` bytes from ``N`` codes. Code ``i`` occupies stream bits
    ``[i*b, (i+1)*b)``; byte ``k`` (byte ``j`` of period ``G``) ORs together the pieces of
    the codes its 8 bits come from, all at constant shifts within a period. Only the low
    ``b`` bits of a code count (as in the JAX op, which extracts bits 0..b-1)."""
    from tvm import te, tirx

    count = int(codes.shape[0])
    nbytes = (count * bits + 7) // 8
    period_bytes, period_codes = pack_period(bits)
    full = count % period_codes == 0  # else the last period has fewer codes
    mask = tirx.const(levels(bits), "uint32")

    def code(i):
        if full:
            return _u32(codes[i]) & mask
        value = _u32(codes[tirx.min(i, count - 1)]) & mask
        return tirx.Select(i < count, value, tirx.const(0, "uint32"))

    def byte(k):
        g, j = k // period_bytes, k % period_bytes
        by_j = _by_position(j, period_bytes, partial(_pieces_of_byte, bits), lambda m: code(g * period_codes + m))
        return tirx.Cast("uint8", by_j & tirx.const(0xFF, "uint32"))

    return te.compute((nbytes,), byte, name="bitpack")


def _te_bitunpack(packed, *, bits: int, count: int):
    """``count`` codes from the stream: code ``i`` (code ``m`` of period ``G``) ORs together
    the (at most 3) bytes holding its bits, at constant shifts within a period. Every byte a
    code reads lies inside the stream, so no bounds checks are needed."""
    from tvm import te, tirx

    period_bytes, period_codes = pack_period(bits)
    dtype = code_dtype(bits)
    mask = tirx.const(levels(bits), "uint32")

    def code(i):
        g, m = i // period_codes, i % period_codes
        by_m = _by_position(
            m, period_codes, partial(_bytes_of_code, bits), lambda j: _u32(packed[g * period_bytes + j])
        )
        return tirx.Cast(dtype, by_m & mask)

    return te.compute((count,), code, name="bitunpack")


# --------------------------------------------------------------------------- schedules
#: Elements below which a cut kernel stays on one thread: a 1x16x32x32 map quantises and
#: packs in about 8 us on one core, and waking the pool (worse: waiting on a busy core) costs
#: more than the second core saves.
_PARALLEL_MIN = 65536
#: Iterations per task of the byte/code loops of bitpack and bitunpack.
_PACK_CHUNK = 512
#: Threads per GPU thread block.
_GPU_THREADS = 256

#: A schedule of one kind of kernel: ``(s_tir.Schedule of the PrimFunc, the PrimFunc)``, in place.
ScheduleFn = Callable[[Any, Any], None]


def _extents(sch, loops) -> list[int]:
    return [int(sch.get(lp).extent) for lp in loops]


def _parallel_if(sch, loop, work: int) -> None:
    if int(sch.get(loop).extent) > 1 and work >= _PARALLEL_MIN:
        sch.parallel(loop)


def _unroll_period(sch, loop, group: int):
    """``loop`` split by the pack period ``group`` (the outputs whose bit positions repeat:
    8 codes of b bits fill b bytes) with the period unrolled, so that every shift and index
    inside it is a constant; returns the loop over periods."""
    if 1 < group < int(sch.get(loop).extent):
        loop, unit = sch.split(loop, factors=[None, group])
        sch.unroll(unit)
    return loop


def _cpu_quant_range(sch, func) -> None:
    """The per (channel, chunk, lane) partial min/max: channels x chunks in parallel, the
    lanes vectorised innermost (its init too); the final reduction over chunks and lanes
    is small and stays serial."""
    block = sch.get_sblock("range_partial")
    c, p, lane, o, r = sch.get_loops(block)
    extents = _extents(sch, [c, p, lane, o, r])
    sch.reorder(c, p, o, r, lane)
    cp = sch.fuse(c, p)
    _parallel_if(sch, cp, math.prod(extents))
    if extents[2] > 1:  # loop kinds first: the update stops being a reduction block without its init
        sch.vectorize(lane)
    init = sch.decompose_reduction(block, o)
    if extents[2] > 1:
        sch.vectorize(sch.get_loops(init)[-1])


def _cpu_elementwise(sch, func, *, block: str) -> None:
    """quantize / dequantize over the 3-D view: the innermost loop vectorised by the widest
    width that divides it, the rest fused into one parallel loop."""
    blk = sch.get_sblock(block)
    o, c, i = sch.get_loops(blk)
    extents = _extents(sch, [o, c, i])
    width = _vector_width(extents[2])
    if width > 1:
        io, ii = sch.split(i, factors=[None, width])
        sch.vectorize(ii)
        outer = sch.fuse(o, c, io)
    else:
        outer = sch.fuse(o, c, i)
    _parallel_if(sch, outer, math.prod(extents))


def _cpu_pack(sch, func, *, block: str, work_per_output: int) -> None:
    """Bytes (bitpack) or codes (bitunpack), one loop, in periods (:func:`_unroll_period`);
    chunks of periods run in parallel, and LLVM's loop vectoriser handles each chunk's
    loop over periods (its interleaved loads and stores beat TVM's own vectorisation of
    these gathers by 3-10x). ``work_per_output`` weighs an output against the parallel
    threshold (a packed byte gathers 8 bits)."""
    group = int(func.attrs[GROUP_ATTR])
    (loop,) = sch.get_loops(sch.get_sblock(block))
    work = int(sch.get(loop).extent) * work_per_output
    loop = _unroll_period(sch, loop, group)
    groups = int(sch.get(loop).extent)
    target = max(1, _PACK_CHUNK // group)
    if groups > target:  # a divisor near the target keeps the inner loop free of bounds checks
        per_task = max((d for d in range(target // 2, target + 1) if groups % d == 0), default=target)
        outer, _ = sch.split(loop, factors=[None, per_task])
        _parallel_if(sch, outer, work)


def _gpu_bind(sch, block, loops) -> None:
    """``block``'s leading data-parallel ``loops`` fused and bound to ``blockIdx.x`` x
    ``threadIdx.x``; the loops after them (reductions) run serially in each thread."""
    spatial = []
    for lp, iv in zip(loops, sch.get(block).iter_vars):
        if int(iv.iter_type) != 0:  # not data-parallel: the rest runs serially per thread
            break
        spatial.append(lp)
    if not spatial:
        spatial = [sch.add_unit_loop(block)]
    fused = fuse_loops(sch, spatial)
    extent = int(sch.get(fused).extent)
    bx, tx = sch.split(fused, factors=[None, min(_GPU_THREADS, extent)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _gpu_blocks(sch, func) -> None:
    """Every block bound to threads (:func:`_gpu_bind`): quant_range's reductions run serially per thread."""
    for block in child_blocks(sch):
        _gpu_bind(sch, block, sch.get_loops(block))


def _gpu_pack(sch, func) -> None:
    """The period unrolled first, as on the CPU, so that each thread computes one period."""
    (block,) = child_blocks(sch)
    loops = sch.get_loops(block)
    _gpu_bind(sch, block, [_unroll_period(sch, loops[0], int(func.attrs[GROUP_ATTR]))])


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class CutKernel:
    """One kind of cut kernel: what it computes and how a CPU and a GPU build schedule it.

    ``compute(*placeholders, **params)`` returns the TE output tensor(s) (params: ``bits``,
    ``per_channel``, ``count``, as the kind takes them); ``schedule_cpu`` and
    ``schedule_gpu`` schedule the kernel's PrimFunc in place; ``group`` (the pack kernels)
    maps the params to how many consecutive outputs repeat their bit layout, which the
    schedules unroll (stored on the PrimFunc as :data:`GROUP_ATTR`).
    """

    kind: str
    compute: Callable[..., Any]
    schedule_cpu: ScheduleFn
    schedule_gpu: ScheduleFn
    group: Callable[..., int] | None = None


def _bytes_per_period(*, bits: int, **_: Any) -> int:
    return pack_period(bits)[0]


def _codes_per_period(*, bits: int, **_: Any) -> int:
    return pack_period(bits)[1]


def _pack_kernel(kind: str, compute: Callable[..., Any], work_per_output: int, group: Callable[..., int]) -> CutKernel:
    """bitpack or bitunpack: both directions loop over whole periods with the same schedules,
    told their block and the work of one output (a packed byte gathers 8 codes' bits)."""
    schedule_cpu = partial(_cpu_pack, block=kind, work_per_output=work_per_output)
    return CutKernel(kind, compute, schedule_cpu, _gpu_pack, group=group)


#: Kind -> its kernel; :func:`prim_func` builds one, :func:`schedule_cut_kernels` schedules it.
CUT_KERNELS: dict[str, CutKernel] = {
    k.kind: k
    for k in (
        CutKernel("quant_range", _te_quant_range, _cpu_quant_range, _gpu_blocks),
        CutKernel("quantize", _te_quantize, partial(_cpu_elementwise, block="quantize"), _gpu_blocks),
        CutKernel("dequantize", _te_dequantize, partial(_cpu_elementwise, block="dequantize"), _gpu_blocks),
        _pack_kernel("bitpack", _te_bitpack, 8, _bytes_per_period),
        _pack_kernel("bitunpack", _te_bitunpack, 1, _codes_per_period),
    )
}


def prim_func(kind: str, inputs: Sequence[tuple[Sequence[int], str]], **params: Any) -> tuple[Any, list]:
    """The PrimFunc of a ``kind`` kernel over inputs of these ``(shape, dtype)``, and its
    outputs' ``(shape, dtype)``.

    The function is marked opaque (fusion leaves its call alone) and tagged with
    :data:`CUT_KERNEL_ATTR` (and :data:`GROUP_ATTR`), so that :func:`schedule_cut_kernels`
    finds it in the fused module and knows its kind.
    """
    from tvm import te

    kernel = CUT_KERNELS[kind]
    holders = [te.placeholder(tuple(shape), dtype, name=f"in{i}") for i, (shape, dtype) in enumerate(inputs)]
    outs = kernel.compute(*holders, **params)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    func = te.create_prim_func(holders + outs).without_attr("global_symbol")
    func = func.with_attr("op_pattern", _OPAQUE).with_attr(CUT_KERNEL_ATTR, kind)
    if kernel.group is not None:
        func = func.with_attr(GROUP_ATTR, kernel.group(**params))
    return func, [([int(d) for d in o.shape], str(o.dtype)) for o in outs]


def is_cut_kernel(func) -> bool:
    """Whether the PrimFunc ``func`` is a cut kernel (it has its own schedules: the generic
    schedules and the tuner leave it alone)."""
    return func.attrs is not None and CUT_KERNEL_ATTR in func.attrs


def schedule_cut_kernels(mod, target) -> tuple[Any, dict[str, str]]:
    """Schedule every cut kernel of ``mod`` not scheduled yet, with its kind's CPU or GPU
    schedule as ``target`` says.

    CPU (LLVM): parallel outer loops, vectorised contiguous inner loops; GPU: every block's
    spatial loops bound to blocks and threads, reductions serial per thread. Scheduled
    functions get ``tirx.is_scheduled`` so that later schedules skip them. Returns the module
    and ``{function: "cut kernel (<kind>)"}``.
    """
    from tvm import s_tir, tirx

    gpu = str(target.kind.name) in GPU_KINDS
    done, report = {}, {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or not is_cut_kernel(func) or is_scheduled(func):
            continue
        kind = str(func.attrs[CUT_KERNEL_ATTR])
        kernel = CUT_KERNELS[kind]
        sch = s_tir.Schedule(func)
        (kernel.schedule_gpu if gpu else kernel.schedule_cpu)(sch, func)
        done[gv] = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
        report[gv.name_hint] = f"cut kernel ({kind})"
    for gv, func in done.items():
        mod[gv] = func
    return mod, report
