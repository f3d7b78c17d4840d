"""A tuning-free CPU schedule for the fused TensorIR functions of a Relax module.

TVM's default CPU build emits naive loops (no parallel loop, no vectorisation), about
20x slower than ``jax.jit`` on a ResNet. This pass, applied to each fused ``PrimFunc``
after Relax's ``"zero"`` pipeline (legalize, fold, fuse), makes the default build faster
than ``jax.jit`` (ResNet-18 at 224: about 0.5x JAX's time on 2 AVX2 cores, 0.16x on 2
AVX-512 cores, level with ONNX Runtime there; see ``benchmarks/tvm_vs_ort.py``):

1. **Inline** every injective block that is not an output and not the direct producer of
   a reduction (so bias-add, residual add and ReLU collapse into one epilogue block,
   while a convolution's padded input stays materialised and contiguous).
2. **Tile the main reduction** (conv, matmul, pooling, single reductions) when the
   function has exactly one. A *vector axis* (the output's innermost axis, which must
   index some input's innermost dimension so loads are contiguous) is split into one
   SIMD register; a *register axis*, a spatial axis the vector operand does not depend on
   (output channels for a convolution: each input vector then feeds several
   accumulators), is split into a small tile so that about 3/4 of the SIMD register file
   holds accumulators. A strided index (a stride-2 convolution's width) does not count
   as contiguous. Convolutions with constant weights read them output-channel-blocked
   (:mod:`dyno_compile.targets.blocked_conv`), so output channels are a contiguous
   vector axis wherever the width fills no register; when the register axis is short
   (a 7-wide output) the tile also takes several vectors of the vector axis. A pointwise
   convolution whose plane fills whole vectors (56 x 56) first has its rows and columns
   fused into one pixel axis, with its epilogue's; that contiguous axis is then the
   vector axis, in tiles of several vectors, and output channels the register axis. Loop order:
   ``[fused outer spatial loops: parallel] [reduction loops] [register tiles: unrolled]
   [vector tile: vectorised]``, the outer loops that index the largest tensor first (the
   threads then split that tensor and re-read the smaller ones from cache); the reduction
   runs outside the tile and the tile accumulates in a ``local`` buffer (registers) laid
   out with the vector axis innermost.
   The init block is split off and vectorised; the **epilogue** runs inside the parallel
   loop right after its tile, while the tile is hot.
   A window that reads a padded input plane by plane (a depthwise convolution) runs its
   planes in parallel, pads each one under that loop while it is in cache, and takes
   fewer rows per tile. A reduction with no contiguous axis at all, a small window slid
   with a stride (max pooling at stride 2), gets **parallel rows** (planes, where
   padded plane by plane) and a plain width loop with the window unrolled inside, which
   LLVM's loop vectoriser turns into whole-vector loads and even/odd permutes. A
   Winograd convolution (:mod:`dyno_compile.targets.winograd_conv`: several reductions,
   one per stage) gets that module's own schedule instead.
3. Every other block (pads, elementwise functions, functions with several reductions
   such as softmax) gets **parallel outer spatial loops** and, where the innermost axis
   is spatial, a **vectorised innermost axis**. Loop nests under ``min_parallel_work``
   iterations stay on one thread.

Each function is scheduled on its own and checked by running the TIR lowering passes
on it; when that fails it is retried without the local accumulator, then with parallel
loops only, and at worst keeps TVM's default loops: the build never fails because of
this pass. ``ScheduleReport`` says what happened to each function.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import prod
from typing import Any

from dyno_compile.targets.schedule_common import (
    KEEP,
    SCHEDULED_ATTR,
    block_realize,
    child_blocks,
    fuse_loops,
    index_vars,
    is_reduction,
    is_scheduled,
    iter_kinds,
    pick_factor,
    pick_vector,
    region_indices,
    simple_binding,
    static_int,
    static_ints,
    strided,
)
from dyno_compile.targets.stage_broadcast import staged
from dyno_compile.targets.winograd_conv import schedule_winograd

__all__ = ["ScheduleConfig", "ScheduleReport", "config_for", "schedule_module", "schedule_func", "vector_bits"]


@dataclass(frozen=True)
class ScheduleConfig:
    """Knobs of the schedule. ``config_for(target)`` fills the first two from the target;
    the rest were picked on ResNet-18/20 and MobileNetV2 on a 2-core AVX2 x86 (Zen 3):
    one-register vector tiles with 12 accumulators ran 1.5-1.8x faster than two-register
    tiles with 8, and 16 accumulators spilled."""

    #: SIMD register width in bits (256 for AVX2, 512 for AVX-512, 128 for NEON).
    vector_bits: int = 256
    #: Accumulator registers to aim for in a reduction tile: 3/4 of the SIMD register
    #: file (AVX2 has 16, AVX-512 and NEON 32; the latter two not measured).
    acc_registers: int = 12
    #: Most SIMD registers a vector tile spans.
    max_vector_regs: int = 1
    #: ... on a pointwise convolution's fused pixel axis (:func:`_flatten_pixels`). Each
    #: input channel is then read in runs of 4 vectors, not of 1, from as many planes as
    #: there are input channels: MobileNetV2's 24-channel projections in the model took
    #: 141 and 225 us with 1 register, 75 and 117 with 4 (8 spilled); the model 4.69 to
    #: 4.45 ms, ResNet-50 42.2 to 39.4 (A/B in one process, 2 AVX-512 cores).
    pixel_vector_regs: int = 4
    #: Keep a reduction's padded input as a separate (parallel) block instead of inlining it.
    keep_reduction_producers: bool = True
    #: Use a ``local`` write cache for the reduction tile.
    local_accumulator: bool = True
    #: ``pragma_auto_unroll_max_step`` on the parallel loop of tiled reductions (0: none);
    #: 64 unrolls a 3x3 window's loops: ResNet-18 14.4 vs 15.3 ms on 2 AVX-512 cores.
    unroll_max_step: int = 64
    #: Loop iterations below which a loop nest stays on one thread (launch costs more).
    min_parallel_work: int = 4096
    #: Lower each scheduled function to check it, falling back on failure.
    verify: bool = True
    #: Load each register tile's broadcast operand as whole vectors, once per reduction
    #: step (:func:`.stage_broadcast.stage_broadcast`): for SIMD without an FMA that takes a broadcast
    #: memory operand (NEON; :func:`config_for` sets it there).
    stage_broadcast: bool = False


@dataclass
class ScheduleReport:
    """What the pass did: function name -> ``tiled`` | ``window`` | ``winograd`` | ``parallel`` |
    ``default (reason)``; a simpler schedule taken after the first choice failed adds
    ``(after: reason)`` (so does the GPU schedule, :mod:`.gpu_schedule`)."""

    functions: dict[str, str] = field(default_factory=dict)

    @property
    def fallbacks(self) -> dict[str, str]:
        """The functions that did not get their first choice: left to TVM's default, or scheduled after a failure."""
        return {k: v for k, v in self.functions.items() if v.startswith("default") or "(after: " in v}

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for v in self.functions.values():
            key = v.split(" ")[0]
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))

    def __str__(self) -> str:
        return self.summary()


def config_for(target, **overrides) -> ScheduleConfig:
    """The default configuration for an LLVM ``target`` (SIMD width and register count, and
    whether an FMA can take its broadcast operand from memory: AVX-512's ``{1to16}``; NEON
    needs a load per broadcast, so its tiles stage that operand as vectors)."""
    bits = vector_bits(target)
    arm = _is_arm(target)
    registers = 16 if bits == 256 else 32  # AVX/AVX2: 16 ymm; AVX-512: 32 zmm; NEON: 32 q
    if bits == 128 and not arm:
        registers = 16  # SSE: 16 xmm
    cfg = ScheduleConfig(vector_bits=bits, acc_registers=registers * 3 // 4, stage_broadcast=arm)
    return replace(cfg, **overrides)


def _is_arm(target) -> bool:
    keys = set(str(k) for k in target.keys)
    return "arm_cpu" in keys or str(target.attrs.get("mtriple", "")).startswith(("aarch64", "arm"))


def vector_bits(target) -> int:
    """SIMD width of an LLVM target: NEON 128, AVX-512 512, AVX/AVX2 256, else 128."""
    if _is_arm(target):
        return 128
    try:
        from tvm.target import codegen

        found = codegen.llvm_get_cpu_features(target)  # a set of names (a dict name -> bool in older TVMs)
        feats = {str(k) for k, v in found.items() if v} if hasattr(found, "items") else {str(k) for k in found}
    except Exception:
        feats = set()
    if "avx512f" in feats:
        return 512
    if "avx2" in feats or "avx" in feats:
        return 256
    return 128


#: Most iterations of a window (:func:`_schedule_window`) unrolled inside its width loop.
MAX_WINDOW = 64
#: Fewest planes (batch x channels) for a plane-wise window (:func:`_plane_producers`) to
#: run them in parallel, each padded on its own.
MIN_PLANES = 8


# --------------------------------------------------------------------------- steps
def _inline(sch, cfg: ScheduleConfig) -> None:
    """Inline injective blocks into their consumers until nothing changes."""
    changed = True
    while changed:
        changed = False
        for block in child_blocks(sch):
            if is_reduction(sch, block):
                continue
            consumers = sch.get_consumers(block)
            if not consumers:
                continue  # an output
            if cfg.keep_reduction_producers and any(is_reduction(sch, c) for c in consumers):
                continue
            if KEEP in sch.get(block).annotations:
                continue
            try:
                sch.compute_inline(block)
                changed = True
                break
            except Exception:
                continue


def _work(sch, block) -> int:
    """Iterations of all loops around ``block`` (its work, roughly)."""
    return prod(static_int(sch.get(lp).extent) or 1 for lp in sch.get_loops(block))


def _parallel(sch, loop, work: int, cfg: ScheduleConfig) -> None:
    """Mark ``loop`` parallel, unless it has one iteration or the work is too small to share."""
    if (static_int(sch.get(loop).extent) or 1) > 1 and work >= cfg.min_parallel_work:
        sch.parallel(loop)


def _schedule_spatial(sch, block, lanes: int, cfg: ScheduleConfig) -> None:
    """Parallel fused outer loops and a vectorised innermost axis (split by a divisor).

    Where no divisor of the innermost extent fills half a vector (MobileNetV2's stem pads
    its 224-wide input to 226 = 2 x 113), the innermost loop stays a plain loop inside the
    parallel one, for LLVM to vectorise or not: fused into the parallel loop, every
    element paid a division and a modulo to find its indices (that pad took half of the
    stem's 420 us; 200 us after).
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    if not simple_binding(sch, block) or "R" in iter_kinds(sch, block):
        _schedule_reduction_simple(sch, block, cfg)
        return
    extents = static_ints(sch.get(lp).extent for lp in loops)
    if extents is None:
        return
    work = prod(extents)
    inner = extents[-1]
    vec = pick_vector(inner, lanes, 2) if inner > 1 else 1
    if 1 < vec < inner:
        outer_part, vloop = sch.split(loops[-1], factors=[None, vec])
        outer = loops[:-1] + [outer_part]
    elif vec > 1:
        outer, vloop = loops[:-1], loops[-1]
    elif inner > 1 and len(loops) > 1:  # no divisor fills a vector (113 wide): a plain
        outer, vloop = loops[:-1], None  # inner loop, not index arithmetic per element
    else:
        outer, vloop = loops, None
    if outer:
        _parallel(sch, fuse_loops(sch, outer), work, cfg)
    if vloop is not None:
        sch.vectorize(vloop)


def _schedule_reduction_simple(sch, block, cfg: ScheduleConfig) -> None:
    """Parallelise the spatial loops above the first reduction loop."""
    if not simple_binding(sch, block):
        return
    outer = []
    for lp, kind in zip(sch.get_loops(block), iter_kinds(sch, block)):
        if kind != "S":
            break
        outer.append(lp)
    if outer:
        _parallel(sch, fuse_loops(sch, outer), _work(sch, block), cfg)


def _choose_axes(sch, block, lanes: int) -> tuple[int | None, int | None]:
    """(vector axis, register axis) as positions among the block's iter vars, or (None, None).

    The vector axis must index the innermost dimension of an input (contiguous loads):
    the output's innermost axis when its extent is a multiple of the SIMD width, else
    another such axis whose extent is, else the output's innermost axis anyway. The
    register axis is a spatial axis that the vector operand does not depend on (the
    other operand's value is then loaded once and reused across the vector), else the
    output axis just outside the vector axis.
    """
    blk = sch.get(block)
    ivs = [iv.var for iv in blk.iter_vars]
    kinds = iter_kinds(sch, block)
    extents = [static_int(iv.dom.extent) or 1 for iv in blk.iter_vars]
    out_idx = region_indices(blk.writes[0])
    reads = list(blk.reads)
    spatial = [i for i in range(len(ivs)) if kinds[i] == "S" and extents[i] > 1]

    def operand(i):
        """The first input whose innermost index uses iter var ``i`` without a stride (a
        strided convolution's width gathers: another axis vectorises better, if there is one)."""
        for r in reads:
            idx = region_indices(r)
            if idx and ivs[i] in index_vars(idx[-1]) and not strided(idx[-1], ivs[i]):
                return r
        return None

    contiguous = [i for i in spatial if operand(i) is not None]
    last = next((i for i in contiguous if out_idx and out_idx[-1].same_as(ivs[i])), None)
    full = [i for i in contiguous if extents[i] % lanes == 0]
    if last is not None and last in full:
        vec = last
    elif full:
        vec = max(full, key=lambda i: extents[i])
    elif last is not None:
        vec = last
    else:  # nothing contiguous: a strided pooling (see _schedule_window), or not a pattern
        return None, None
    vec_vars = set()
    for e in region_indices(operand(vec)):
        vec_vars |= index_vars(e)
    candidates = [i for i in spatial if i != vec]
    free = [i for i in candidates if ivs[i] not in vec_vars]
    if free:  # largest extent, ties to the innermost output axis
        return vec, max(free, key=lambda i: (extents[i], i))
    before = [i for i in candidates if any(ivs[i] in index_vars(e) for e in out_idx[:-1])]
    if before:
        pos = {i: max(k for k, e in enumerate(out_idx) if ivs[i] in index_vars(e)) for i in before}
        return vec, max(before, key=lambda i: pos[i])
    return vec, None


def _tile_reduction(sch, block, lanes: int, cfg: ScheduleConfig):
    """Register-tile one reduction block and attach its epilogue.

    Returns the outer (parallel) loop that now holds the tile, init and epilogue, or
    ``None`` (schedule untouched) when the block does not fit the pattern.
    """
    if not simple_binding(sch, block):
        return None
    kinds = iter_kinds(sch, block)
    if "O" in kinds:
        return None
    vec, reg = _choose_axes(sch, block, lanes)
    if vec is None:
        return None
    loops = sch.get_loops(block)
    extents = static_ints(sch.get(lp).extent for lp in loops)
    if extents is None:
        return None
    vf = pick_vector(extents[vec], lanes, cfg.max_vector_regs)
    if vf <= 1:
        return None
    vregs = -(-vf // lanes)
    producers, plane = _plane_producers(sch, block)
    if vec in plane or reg in plane:
        producers, plane = [], set()
    rf = 1
    if reg is not None:  # a plane-wise window reuses input rows, not operands: fewer rows
        budget = cfg.acc_registers // 3 if plane else cfg.acc_registers
        rf = pick_factor(extents[reg], max(1, budget // vregs))
    # a short register axis (7 wide) leaves accumulators free: take several vectors of the
    # vector axis too, as separate (unrolled) registers, so each vector load stays contiguous.
    # With no register axis at all (a matrix-vector product: a classifier at batch 1) one
    # accumulator would be a single chain of dependent FMAs; half the accumulator budget of
    # independent vectors hides the FMA latency (ResNet-18's 512x1000 classifier: 127 to 66 us)
    vk = 1
    if reg is not None and vregs == 1 and rf <= cfg.acc_registers // 2:
        vk = pick_factor(extents[vec] // vf, cfg.acc_registers // rf)
    elif reg is None and vregs == 1:
        vk = pick_factor(extents[vec] // vf, cfg.acc_registers // 2)
    consumers = sch.get_consumers(block)
    epilogue = _epilogue(sch, block)
    work = prod(extents)

    # split the spatial axes
    outer_sp, inner = [], {}
    red, vk_loop = [], None
    for i, (lp, kind) in enumerate(zip(loops, kinds)):
        if kind == "R":
            red.append(lp)
            continue
        if i == vec and vk > 1:
            o, vk_loop, n = sch.split(lp, factors=[None, vk, vf])
            outer_sp.append(o)
            inner[i] = n
            continue
        factor = vf if i == vec else (rf if i == reg else 1)
        if factor > 1 and factor < extents[i]:
            o, n = sch.split(lp, factors=[None, factor])
            outer_sp.append(o)
            inner[i] = n
        elif factor > 1:
            inner[i] = lp
        else:
            outer_sp.append(lp)
    tile = [inner[i] for i in (reg, vec) if i is not None and i in inner]
    if vk_loop is not None:
        tile.insert(0, vk_loop)
    planes = [lp for i, lp in enumerate(loops) if i in plane]
    outer_sp = planes + _largest_tensor_first(sch, block, [lp for lp in outer_sp if lp not in planes])
    sch.reorder(*outer_sp, *red, *tile)
    par, fused = _outer_loops(sch, block, outer_sp, len(planes))
    if cfg.local_accumulator:
        cache = sch.cache_write(block, 0, "local")
        _vector_axis_last(sch, block, vec)
        sch.reverse_compute_at(cache, fused)
        epilogue_blocks = [cache]
        if len(consumers) == len(epilogue) == 1:
            try:  # let the epilogue read the local tile directly
                sch.compute_inline(cache)
                epilogue_blocks = []
            except Exception:
                pass
    else:
        epilogue_blocks = []
    epilogue_blocks += _attach_epilogue(sch, epilogue, fused)
    _pad_each_plane(sch, producers, par)
    # loop kinds first: the update block stops being a "reduction block" once its init is split off
    _parallel(sch, par, work, cfg)
    for loop in tile[:-1]:
        sch.unroll(loop)
    sch.vectorize(tile[-1])
    for eb in epilogue_blocks:
        _vectorize_innermost(sch, eb)
    if red:
        init = sch.decompose_reduction(block, red[0])
        _vectorize_innermost(sch, init)
    if cfg.unroll_max_step:
        sch.annotate(fused, "pragma_auto_unroll_max_step", cfg.unroll_max_step)
        sch.annotate(fused, "pragma_unroll_explicit", 1)
    return par


def _outer_loops(sch, block, outer: list, planes: int) -> tuple:
    """``(parallel loop, loop whose iteration is one tile)`` from a tile's reordered
    ``outer`` loops: all fused into one parallel loop, or, where the first ``planes`` pick
    planes padded one at a time, those fused and parallel and the rest serial inside."""
    if planes:
        par = fuse_loops(sch, outer[:planes])
        return par, (outer[-1] if len(outer) > planes else par)
    if outer:
        fused = fuse_loops(sch, outer)
        return fused, fused
    unit = sch.add_unit_loop(sch.get_loops(block)[0])  # the tile is the whole output: a loop for the epilogue
    return unit, unit


def _plane_producers(sch, block) -> tuple[list, set[int]]:
    """``(producers, plane axes)`` where ``block`` is a window that reads each of its
    producers (a pad) one plane at a time: every index but the last two uses only its
    spatial iter vars (at ``plane axes``, together at least ``MIN_PLANES`` planes) and
    unit reductions, and both of the last two slide with a reduction (the window). A
    depthwise convolution or a padded stride-1 pooling is such a window; a dense
    convolution sums over input channels and a matrix product slides no window.

    Such a producer can be made one plane at a time, under the parallel loop over planes,
    while that plane is in cache: no pass of its own over the whole tensor. With a smaller
    row tile, MobileNetV2's 3x3 depthwise convolutions at 112 x 112 and 56 x 56 took 77
    and 89 us instead of 192 and 191 (alone, 2 AVX-512 cores), those at 28 down to 7
    10-25 % less.
    """
    blk = sch.get(block)
    kinds = iter_kinds(sch, block)
    spatial = {iv.var: i for i, (iv, k) in enumerate(zip(blk.iter_vars, kinds)) if k == "S"}
    reduced = {iv.var for iv, k in zip(blk.iter_vars, kinds) if k == "R"}
    unit = {iv.var for iv in blk.iter_vars if iv.var in reduced and static_int(iv.dom.extent) == 1}
    producers = [p for p in sch.get_producers(block) if not is_reduction(sch, p)]
    plane: set[int] = set()
    for p in producers:
        written = sch.get(p).writes[0].source
        for region in blk.reads:
            if not region.source.same_as(written):
                continue
            idx = region_indices(region)
            if len(idx) < 3 or any(not index_vars(e) & (reduced - unit) for e in idx[-2:]):
                return [], set()
            for e in idx[:-2]:
                used = index_vars(e)
                if used - set(spatial) - unit:
                    return [], set()
                plane |= {spatial[v] for v in used if v in spatial}
    extents = [static_int(iv.dom.extent) or 1 for iv in blk.iter_vars]
    if not producers or not plane or prod(extents[i] for i in plane) < MIN_PLANES:
        return [], set()
    return producers, plane


def _pad_each_plane(sch, producers: list, par) -> None:
    """Make each of a plane-wise window's ``producers`` (:func:`_plane_producers`) one plane
    at a time under the parallel loop over planes ``par``."""
    for producer in producers:
        sch.compute_at(producer, par)
        _vectorize_innermost(sch, producer)


def _schedule_window(sch, block, cfg: ScheduleConfig):
    """A small window slid with a stride over the width (max pooling 3x3 at stride 2):
    parallel rows, the output width as a plain inner loop with the window unrolled
    inside it. Returns the parallel loop, or ``None`` when the block is not such a window.

    Vectorised by TVM, a stride-2 load becomes one scalar load and insert per lane. Left
    as a scalar loop, LLVM's loop vectoriser sees the window's loads at ``2x``, ``2x+1``
    and ``2x-1`` as one interleaved group and loads whole vectors, split into even and
    odd lanes by one permute each: ResNet-18's 3x3/2 pooling of 64x112x112 took 265 us
    as TVM vectors, 136 us this way (2 AVX-512 cores). The epilogue (bias, clip) runs per
    row. A padded input is not padded in a pass of its own: where the window reads it
    plane by plane (a depthwise convolution, :func:`_plane_producers`) the parallel loop
    runs over planes and pads each into cache first, else the window reads it through
    bounds checks. MobileNetV2's 96-channel 3x3/2 depthwise convolution took 410 us with
    a pad pass, 255 with bounds checks; alone, its four 3x3/2 depthwise convolutions took
    237, 80, 42 and 42 us with bounds checks, 210, 63, 42 and 28 plane by plane.
    """
    loops = sch.get_loops(block)
    kinds = iter_kinds(sch, block)
    extents = static_ints(sch.get(lp).extent for lp in loops)
    n_spatial = kinds.index("R") if "R" in kinds else len(kinds)
    if (
        n_spatial < 2
        or any(k != "R" for k in kinds[n_spatial:])
        or extents is None
        or prod(extents[n_spatial:]) > MAX_WINDOW
    ):
        return None
    blk = sch.get(block)
    width = blk.iter_vars[n_spatial - 1].var
    if not any(
        idx and width in index_vars(idx[-1]) and strided(idx[-1], width) for idx in map(region_indices, blk.reads)
    ):
        return None
    producers, plane = _plane_producers(sch, block)
    if plane != set(range(n_spatial - 2)):
        producers = []
    loops = sch.get_loops(block)
    if producers:  # parallel planes, each padded into cache, then its rows
        par, row = fuse_loops(sch, loops[: n_spatial - 2]), loops[n_spatial - 2]
        _pad_each_plane(sch, producers, par)
    else:
        for producer in sch.get_producers(block):  # a pad: bounds checks are cheaper than a pass
            if not is_reduction(sch, producer):
                try:
                    sch.compute_inline(producer)
                except Exception:  # noqa: BLE001 - it stays a stage of its own
                    pass
        par = row = fuse_loops(sch, loops[: n_spatial - 1])
    _parallel(sch, par, prod(extents), cfg)
    for loop in loops[n_spatial:]:
        sch.unroll(loop)
    _attach_epilogue(sch, _epilogue(sch, block), row)  # per row, while it is in cache
    return par


def _epilogue(sch, block) -> list:
    """The consumers of the reduction ``block`` that make each element of their output
    from the reduction's (bias, activation, residual add, a layout change): those can be
    made tile by tile right after it. One that also makes elements of its own (a pad or a
    concat: as many or more elements, some chosen by a condition) keeps its own loops;
    moved under the reduction's loop, those elements would never be written (a transposed
    convolution's output padding read uninitialised memory)."""
    size = prod(static_ints(sch.get(block).writes[0].source.shape) or [0])
    return [
        c
        for c in sch.get_consumers(block)
        if prod(static_ints(sch.get(c).writes[0].source.shape) or [-1]) == size and not _conditional(sch.get(c))
    ]


def _conditional(blk) -> bool:
    """``blk`` chooses values by a condition (``if_then_else``: a pad's or a concat's)."""
    import tvm_ffi
    from tvm import ir

    found: list = []
    tvm_ffi.structural_walk(
        blk.body, (ir.Call, lambda call: found.append(call) if str(call.op.name) == "prim.if_then_else" else None)
    )
    return bool(found)


def _attach_epilogue(sch, consumers: list, loop) -> list:
    """Move the elementwise ``consumers`` of a reduction (:func:`_epilogue`) under its
    parallel ``loop``, each right after the part of the reduction it reads; returns those
    that moved (the rest keep loops of their own)."""
    moved = []
    for c in consumers:
        if sch.get(c).name_hint and not is_reduction(sch, c):
            try:
                sch.reverse_compute_at(c, loop)
                moved.append(c)
            except Exception:  # noqa: BLE001 - it keeps its own loops
                pass
    return moved


def _pixel_axes(sch, block) -> tuple[int, int, int] | None:
    """``(row, column, width)``: the iter vars (positions) of ``block`` that index the last
    two dimensions of its output, where every tensor the block touches either indexes its
    last two dimensions with exactly those (so row ``y + 1`` follows row ``y`` in memory
    and the pair is one contiguous axis) or ignores both. ``None`` otherwise: a padded or
    strided convolution's input, a transposition."""
    blk = sch.get(block)
    if not simple_binding(sch, block):
        return None
    ivs = [iv.var for iv in blk.iter_vars]
    out = region_indices(blk.writes[0])
    if len(out) < 3:
        return None
    found = [next((i for i, v in enumerate(ivs) if e.same_as(v)), None) for e in out[-2:]]
    pos = [i for i in found if i is not None]
    if len(pos) < 2 or pos[1] != pos[0] + 1 or iter_kinds(sch, block)[pos[0]] != "S":
        return None
    row, col = (ivs[i] for i in pos)
    width = static_int(blk.iter_vars[pos[1]].dom.extent)
    if width is None:
        return None
    for region in (*blk.reads, *blk.writes):
        idx = region_indices(region)
        used = [k for k, e in enumerate(idx) if index_vars(e) & {row, col}]
        if not used:
            continue
        if (
            used != [len(idx) - 2, len(idx) - 1]
            or not idx[-2].same_as(row)
            or not idx[-1].same_as(col)
            or static_int(region.source.shape[-1]) != width
        ):
            return None
    return pos[0], pos[1], width


def _flatten_pixels(sch, block, lanes: int) -> bool:
    """Fuse a pointwise (1x1, stride 1) convolution's rows and columns into one pixel axis,
    with its elementwise consumers, where the plane fills whole vectors (56 x 56 = 196
    vectors of 16). The pixel axis is contiguous in the input and the output, so it is
    the vector axis, in tiles of several vectors (``pixel_vector_regs``) however narrow
    a row is, and output channels the register axis: a matrix product with no
    transposing epilogue (buffer flattening folds ``p // 56 * 56 + p % 56`` back into
    ``p``, so loads stay whole vectors). Alone, with its epilogue, MobileNetV2's 96 -> 24
    projection at 56 x 56 took 104 us with output channels or columns as vectors, 60 us
    on pixels (other 1x1 convolutions at 56 and 28: 30-40 % less); its 16 -> 96
    expansion at 112 x 112, in the model, 322 us on one vector of columns, 249 on four
    of pixels. The convolution must feed an epilogue in the same function, whose
    intermediate buffer takes the pixel layout too; a function's output keeps its own."""
    from tvm.tirx import IndexMap

    found = _pixel_axes(sch, block)
    if found is None:
        return False
    row, col, width = found
    rows = static_int(sch.get(block).iter_vars[row].dom.extent) or 0
    if (rows * width) % lanes:
        return False
    consumers = sch.get_consumers(block)
    written = sch.get(block).writes[0].source
    if any(written.same_as(b) for b in sch.mod["main"].params):
        return False
    if not consumers or any(is_reduction(sch, c) or _pixel_axes(sch, c) != found for c in consumers):
        return False

    def fuse_pair(b):
        ivs = sch.get(b).iter_vars
        sch.transform_block_layout(
            b,
            IndexMap.from_func(
                lambda *v: (*v[:row], v[row] * width + v[col], *v[col + 1 :]),
                ndim=len(ivs),
                index_dtype=str(ivs[row].var.ty),
            ),
        )

    for b in (block, *consumers):
        fuse_pair(b)
    # the intermediate too: a region of it is then a run of pixels, not a box of rows, so
    # the epilogue attached under a tile covers exactly the pixels the tile made
    sch.transform_layout(
        block,
        ("write", 0),
        IndexMap.from_func(
            lambda *i: (*i[:-2], i[-2] * width + i[-1]), ndim=len(written.shape), index_dtype=str(written.shape[-1].ty)
        ),
    )
    return True


def _largest_tensor_first(sch, block, loops: list) -> list:
    """``loops`` (outer loops of a reduction tile) reordered, stably, so those that index
    the reduction's largest tensor come first.

    The parallel loop is split between threads in contiguous chunks, and the tensor whose
    loops run outermost is walked once, in parts, one per thread, while the loops inside
    re-read the other operand, which should be the one that stays in cache. Where a
    convolution's input is its largest tensor (ResNet-18's 1x1 downsampling: 800 KB in,
    401 KB out, 32 KB of weights), the threads split it by rows and cycle through the
    weights; where the weights are (later 3x3 stages: 2.4 MB against 262 KB) or the output
    is (MobileNetV2's expansions: 96 planes written from 16), output channels stay
    outermost, so each weight block is read once and each output plane written in order.
    Measured against output-channels-first everywhere, in one process on 2 AVX-512 cores:
    1x1 projections 20-40 % faster; whole models 3-5 % (ResNet-18 13.7 to 13.3 ms,
    ResNet-50 44.2 to 42.1, MobileNetV2 6.7 to 6.5, ResNet-20 0.50 to 0.48).
    """
    blk = sch.get(block)
    written = blk.writes[0].source
    operands = [r for r in blk.reads if not r.source.same_as(written)]
    if len(operands) < 2:
        return loops
    largest = max(
        [*operands, blk.writes[0]], key=lambda r: prod(static_int(d) or 1 for d in r.source.shape) * r.source.dtype.bits
    )
    indexed = set()
    for e in region_indices(largest):
        indexed |= index_vars(e)
    bindings = list(zip(block_realize(sch, block).iter_values, blk.iter_vars))

    def elsewhere(loop) -> bool:
        """The loop walks an iter var that does not index the largest tensor."""
        var = sch.get(loop).loop_var
        walked = [iv.var for binding, iv in bindings if var in index_vars(binding)]
        return bool(walked) and walked[-1] not in indexed

    return sorted(loops, key=elsewhere)


def _vector_axis_last(sch, block, vec: int) -> None:
    """Lay out ``block``'s (local) output with the dimension indexed by iter var ``vec``
    innermost, so the vector tile is contiguous there: vectorising over output channels of
    an ``NCHW`` output otherwise makes LLVM scatter every lane of every accumulator."""
    from tvm.tirx import IndexMap

    blk = sch.get(block)
    var = blk.iter_vars[vec].var
    idx = region_indices(blk.writes[0])
    dims = [k for k, e in enumerate(idx) if var in index_vars(e)]
    if len(dims) != 1 or dims[0] == len(idx) - 1:
        return
    d = dims[0]
    sch.transform_layout(block, ("write", 0), IndexMap.from_func(lambda *i: (*i[:d], *i[d + 1 :], i[d]), ndim=len(idx)))


def _vectorize_innermost(sch, block) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    extent = static_int(sch.get(loops[-1]).extent) or 1
    if 1 < extent <= 64 and "R" not in iter_kinds(sch, block):
        try:
            sch.vectorize(loops[-1])
        except Exception:
            pass


def schedule_func(func, target=None, cfg: ScheduleConfig | None = None) -> tuple[Any, str]:
    """Schedule one fused PrimFunc; returns (new func, "tiled" | "window" | "winograd" | "parallel")."""
    from tvm import s_tir

    cfg = cfg or ScheduleConfig()
    lanes = max(1, cfg.vector_bits // _dtype_bits(func))
    sch = s_tir.Schedule(func)
    _inline(sch, cfg)
    blocks = child_blocks(sch)
    reductions = [b for b in blocks if is_reduction(sch, b)]
    how = "parallel"
    tile_loop = None
    if len(reductions) > 1:
        tile_loop = schedule_winograd(sch, cfg.acc_registers)
        if tile_loop is not None:
            how = "winograd"
    elif len(reductions) == 1:
        if _flatten_pixels(sch, reductions[0], lanes):
            cfg = replace(cfg, max_vector_regs=max(cfg.max_vector_regs, cfg.pixel_vector_regs))
        tile_loop = _tile_reduction(sch, reductions[0], lanes, cfg)
        if tile_loop is not None:
            how = "tiled"
        else:
            tile_loop = _schedule_window(sch, reductions[0], cfg)
            how = "window" if tile_loop is not None else how
    if cfg.stage_broadcast and how in ("tiled", "winograd"):
        sch = staged(sch, reductions, lanes)
    for block in child_blocks(sch):
        loops = sch.get_loops(block)
        if not loops:
            continue
        if tile_loop is not None and any(sch.get(lp).same_as(sch.get(tile_loop)) for lp in loops):
            continue  # the tile's own blocks: init, update, epilogue
        if _under_parallel(sch, block):
            continue
        if is_reduction(sch, block):
            _schedule_reduction_simple(sch, block, cfg)
        else:
            _schedule_spatial(sch, block, lanes, cfg)
    return sch.mod["main"], how


def _under_parallel(sch, block) -> bool:
    from tvm import tirx

    return any(sch.get(lp).kind == tirx.ForKind.PARALLEL for lp in sch.get_loops(block))


def _dtype_bits(func) -> int:
    """Bits of the widest float/int element the function writes (sets vector lanes)."""
    bits = []
    for param in func.params:
        try:
            bits.append(int(param.ty.dtype.bits))
        except Exception:
            pass
    return max(bits) if bits else 32


def _check(func, target) -> None:
    """Lower ``func`` through the TIR passes where schedules can fail (no code generation)."""
    import tvm
    from tvm import s_tir, tirx

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    passes = [
        tirx.transform.BindTarget(target),
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        tirx.transform.NarrowDataType(32),
        s_tir.transform.LoopPartition(),
        tirx.transform.VectorizeLoop(True),
        tirx.transform.StorageRewrite(),
        tirx.transform.UnrollLoop(),
        tirx.transform.VerifyMemory(),
    ]
    with tvm.transform.PassContext(opt_level=3):
        tvm.ir.transform.Sequential(passes)(mod)


def schedule_module(mod, target, *, threads: int = 1, cfg: ScheduleConfig | None = None):
    """Schedule every unscheduled PrimFunc of ``mod`` for the LLVM ``target``.

    Returns ``(mod, ScheduleReport)``. ``threads`` is accepted for future use (the
    runtime's thread pool decides the parallel split).
    """
    from tvm import tirx

    cfg = cfg or config_for(target)
    report = ScheduleReport()
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if is_scheduled(func):
            report.functions[gv.name_hint] = "default (already scheduled)"
            continue
        attempts = [("", cfg), ("no local accumulator", replace(cfg, local_accumulator=False)), ("parallel only", None)]
        errors = []
        for label, attempt in attempts:
            try:
                if attempt is None:
                    new, how = _parallel_only(func, cfg), "parallel-only"
                else:
                    new, how = schedule_func(func, target, attempt)
                if cfg.verify:
                    _check(new, target)
            except Exception as exc:  # noqa: BLE001 - any failure means: try something simpler
                lines = str(exc).strip().splitlines()
                errors.append(f"{label or 'tiled'}: {type(exc).__name__}: {lines[-1][:200] if lines else ''}")
                continue
            updates[gv] = new.with_attr(SCHEDULED_ATTR, True)
            report.functions[gv.name_hint] = how if not errors else f"{how} (after: {errors[0]})"
            break
        else:
            report.functions[gv.name_hint] = f"default ({errors[-1] if errors else 'no schedule'})"
    for gv, func in updates.items():
        mod[gv] = func
    return mod, report


def _parallel_only(func, cfg: ScheduleConfig):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for block in child_blocks(sch):
        if sch.get_loops(block) and not _under_parallel(sch, block):
            _schedule_reduction_simple(sch, block, cfg)
    return sch.mod["main"]
