"""NEON's register tiles: the operand a tile broadcasts, staged as whole vectors.

One pass over scheduled reductions (:func:`staged`), applied by :mod:`.schedule` for ARM
targets only (``ScheduleConfig.stage_broadcast``): x86's AVX-512 folds the broadcast load
into its FMA, NEON cannot, and the measured trade (``benchmarks/arm_instructions.py``,
``docs/arm-code.md``) decides per tile whether staging pays.
"""

from __future__ import annotations

from math import prod

from dyno_compile.targets.schedule_common import block_realize, index_vars, region_indices, static_int, static_ints

__all__ = ["STAGE_COST", "stage_broadcast", "staged"]

#: Instructions one more ``local`` buffer costs a tile on TVM's CPU runtime: such buffers
#: are taken from and returned to the runtime's workspace pool once per tile (allocation
#: and release, ~400 instructions, measured on MobileNetV2's arm64 library with
#: ``benchmarks/arm_instructions.py``: 50 k more allocations, 20 M more instructions).
STAGE_COST = 400


def staged(sch, blocks: list, lanes: int):
    """``sch`` with the broadcast operand of each of ``blocks`` staged where that saves
    more loads per tile than :data:`STAGE_COST` (:func:`stage_broadcast`). Each is staged
    on a copy, kept only when worth it, so a refusal or a poor trade leaves nothing behind."""
    from tvm.s_tir.schedule import ScheduleError

    for block in blocks:
        trial = sch.copy()
        try:
            if stage_broadcast(trial, block, lanes):
                sch = trial
        except ScheduleError:
            pass
    return sch


def stage_broadcast(sch, block, lanes: int) -> bool:
    """Load the operand that a register tile broadcasts (one value per FMA) as whole
    vectors into a ``local`` buffer once per step of the innermost reduction loop.

    The tile (:func:`.schedule._tile_reduction`, Winograd's product) multiplies a vector of one
    operand by one value of the other per accumulator register. AVX-512 takes that value
    from memory inside the FMA (``vfmadd231ps zmm, zmm, [mem]{1to16}``); NEON has no such
    operand, so each value costs a load of its own (``ldr s`` or ``ld1r``) and the loads
    (ResNet-20's 3x3 convolutions: 16 scalar loads per 16 ``fmla``) were a third of the
    kernels' instructions. The values a reduction step broadcasts lie side by side in
    memory (a row of input pixels, a block of output channels' weights), so a vectorised
    copy loads them 4 to a ``q`` register, and LLVM reads each with a lane-indexed
    ``fmla v.4s, v.4s, v.s[i]``. The buffer costs each tile a workspace allocation
    (:data:`STAGE_COST`), so it is made only where the loads it saves over the tile's
    reduction steps pay for that, and not for a run shorter than two registers that fills
    no whole one (ResNet-18's 7-wide rows at 7 x 7: 37.6 to 40.8 M instructions per
    convolution, where its 31-wide stride-2 stem went from 76.3 to 64.7 M); returns whether
    it was made.
    """
    from tvm import tirx

    blk = sch.get(block)
    loops = sch.get_loops(block)
    if not loops or sch.get(loops[-1]).kind != tirx.ForKind.VECTORIZED or len(blk.reads) != 3:
        return False
    realize = block_realize(sch, block)
    if realize is None:
        return False
    binding = {iv.var: index_vars(v) for iv, v in zip(blk.iter_vars, realize.iter_values)}
    reduced = {iv.var for iv in blk.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}

    def walked(loop) -> set:
        var = sch.get(loop).loop_var
        return {iv for iv, used in binding.items() if var in used}

    depth = max((i for i, lp in enumerate(loops) if walked(lp) & reduced), default=-1)
    tile = [lp for lp in loops[depth + 1 :] if sch.get(lp).kind == tirx.ForKind.UNROLLED]
    if depth < 0 or not tile:
        return False
    vector, unrolled = walked(loops[-1]), set().union(*(walked(lp) for lp in tile))
    written = blk.writes[0].source

    def broadcast(region) -> bool:
        """Read once per tile register: indexed by the tile's loops, not by the vector's."""
        used = set().union(*(index_vars(e) for e in region_indices(region)))
        return not region.source.same_as(written) and bool(used & unrolled) and not used & vector

    index = next((i for i, region in enumerate(blk.reads) if broadcast(region)), None)
    if index is None:
        return False
    used = set().union(*(index_vars(e) for e in region_indices(blk.reads[index])))
    values = prod(static_int(sch.get(lp).extent) or 1 for lp in tile if walked(lp) & used)  # scalar loads now
    steps = prod(static_int(sch.get(lp).extent) or 1 for lp in loops[: depth + 1] if walked(lp) & reduced)
    cache = sch.cache_read(block, index, "local")
    sch.compute_at(cache, loops[depth])
    own = sch.get_loops(cache)[depth + 1 :]
    extents = static_ints(sch.get(lp).extent for lp in own)
    if not own or extents is None:
        return False
    loads = prod(extents[:-1]) * -(-extents[-1] // lanes)  # vector loads instead
    if extents[-1] % lanes and extents[-1] < 2 * lanes:
        return False  # 7 wide: split into 4 + 2 + 1 and re-read, it cost more than it saved
    if steps * (values - loads) < STAGE_COST:
        return False
    sch.vectorize(own[-1])
    for loop in own[:-1]:
        sch.unroll(loop)
    return True
