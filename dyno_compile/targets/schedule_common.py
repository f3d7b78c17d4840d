"""Small queries and choices shared by the schedules (:mod:`.schedule` for single
reductions, :mod:`.winograd_conv` for Winograd's stages, :mod:`.cut_kernels`, and the
tuning records that schedule functions too), so none imports another's private helpers."""

from __future__ import annotations

__all__ = [
    "KEEP",
    "SCHEDULED_ATTR",
    "child_blocks",
    "divisors",
    "fuse_loops",
    "is_scheduled",
    "pick_factor",
    "static_int",
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
