"""Small queries on blocks and choices shared by the schedules (:mod:`.schedule` for single
reductions, :mod:`.winograd_conv` for Winograd's stages, :mod:`.cut_kernels`, and the
tuning records that schedule functions too), so none imports another's private helpers."""

from __future__ import annotations

__all__ = [
    "KEEP",
    "SCHEDULED_ATTR",
    "block_realize",
    "child_blocks",
    "divisors",
    "fuse_loops",
    "index_vars",
    "is_reduction",
    "is_scheduled",
    "iter_kinds",
    "pick_factor",
    "pick_vector",
    "region_indices",
    "simple_binding",
    "static_int",
    "static_ints",
    "strided",
]

#: Block annotation (``te.compute(..., attrs={KEEP: 1})``) by which a legalization keeps a
#: stage materialised: the schedule does not inline it into its consumers.
KEEP = "dyno.keep"
#: PrimFunc attribute (TVM's) of a scheduled function: every later schedule leaves it alone.
SCHEDULED_ATTR = "tirx.is_scheduled"


def is_scheduled(func) -> bool:
    """Whether the PrimFunc ``func`` was scheduled already (cut kernels, tuning records)."""
    return func.attrs is not None and int(func.attrs.get(SCHEDULED_ATTR, 0)) == 1


def static_int(x) -> int | None:
    """``x`` as an int where it is a constant (a loop extent, a shape), else ``None``."""
    try:
        return int(x)
    except Exception:
        return None


def static_ints(xs) -> list[int] | None:
    """Every one of ``xs`` as an int where all are constants (the extents a schedule tiles),
    else ``None``: one symbolic extent and the block keeps its default schedule."""
    values = [static_int(x) for x in xs]
    return None if any(v is None for v in values) else [v for v in values if v is not None]


def child_blocks(sch) -> list:
    """The blocks directly under the function's root block, in order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def fuse_loops(sch, loops: list):
    """One loop over ``loops`` (nested, outermost first): fused, or the loop itself when
    there is one."""
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def pick_factor(extent: int, most: int) -> int:
    """The largest divisor of ``extent`` no larger than ``most`` (a split that leaves no tail)."""
    return max(d for d in divisors(extent) if d <= max(1, most))


def is_reduction(sch, block) -> bool:
    from tvm import tirx

    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def iter_kinds(sch, block) -> list[str]:
    from tvm import tirx

    out = []
    for iv in sch.get(block).iter_vars:
        out.append({tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(iv.iter_type, "O"))
    return out


def pick_vector(extent: int, lanes: int, max_regs: int) -> int:
    """Vector tile for an axis of ``extent``: a divisor, preferring multiples of ``lanes``,
    then a power of two of at least half the lanes (one register, possibly half-width),
    then the largest divisor. LLVM splits a 14-lane vector into 8 + 4 + 2 loads and
    stores; MobileNetV2's 56-wide 1x1 convolutions with 24 output channels ran 5-9 %
    faster on 8 lanes, the model 5.49 to 5.36 ms (A/B in one process)."""
    if extent <= lanes * max_regs:
        return extent
    for regs in range(max_regs, 0, -1):
        if extent % (lanes * regs) == 0:
            return lanes * regs
    fits = [d for d in divisors(extent) if d <= lanes * max_regs]
    whole = [d for d in fits if d >= lanes // 2 and d & (d - 1) == 0]
    if whole:
        return max(whole)
    best = max(fits)
    return best if best >= lanes // 2 else 1


def index_vars(expr) -> set:
    import tvm_ffi
    from tvm import tirx

    found: set = set()
    tvm_ffi.structural_walk(expr, (tirx.Var, found.add), order="post")
    return found


def strided(expr, var) -> bool:
    """``expr`` is linear in ``var`` with a coefficient other than 1 (``2 * ow + kw``)."""
    from tvm.sym.pattern import detect_linear_equation

    found = detect_linear_equation(expr, [var])
    return bool(found) and static_int(found[0]) != 1


def region_indices(region) -> list:
    return [r.min for r in region.region]


def simple_binding(sch, block) -> bool:
    """Loops map 1:1, in order, to the block's iter vars (the layout legalization emits)."""
    loops = sch.get_loops(block)
    br = block_realize(sch, block)
    if br is None or len(loops) != len(sch.get(block).iter_vars):
        return False
    for loop, value in zip(loops, br.iter_values):
        if not value.same_as(sch.get(loop).loop_var):
            return False
    return True


def block_realize(sch, block):
    """The SBlockRealize of ``block`` (its iter values), found in its parent loop's body."""
    import tvm_ffi
    from tvm import s_tir

    loops = sch.get_loops(block)
    if not loops:
        return None
    target = sch.get(block)
    found = []

    def visit(node):
        if node.block.same_as(target):
            found.append(node)

    tvm_ffi.structural_walk(sch.get(loops[-1]).body, (s_tir.SBlockRealize, visit), order="post")
    return found[0] if found else None
