"""Graph passes: each one job, one file, ``Graph -> Graph`` (the input is left untouched)."""

from dyno_compile.passes.annotate_costs import annotate_costs
from dyno_compile.passes.eliminate_dead_code import eliminate_dead_code
from dyno_compile.passes.find_cuts import CutPoint, find_cuts
from dyno_compile.passes.fold_bn import fold_bn
from dyno_compile.passes.fold_constants import fold_constants
from dyno_compile.passes.infer_shapes import infer_shapes
from dyno_compile.passes.pipeline import STANDARD_PASSES, run_passes
from dyno_compile.passes.simplify import simplify

__all__ = [
    "STANDARD_PASSES",
    "CutPoint",
    "annotate_costs",
    "eliminate_dead_code",
    "find_cuts",
    "fold_bn",
    "fold_constants",
    "infer_shapes",
    "run_passes",
    "simplify",
]
