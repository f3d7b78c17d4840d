"""Run passes in order, validating after each and naming the pass at fault.

As torch.fx's pass manager: a failure says which pass broke the graph and which passes
ran before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dyno_compile.errors import GraphError
from dyno_compile.ir import Graph, validate
from dyno_compile.passes.annotate_costs import annotate_costs
from dyno_compile.passes.eliminate_dead_code import eliminate_dead_code
from dyno_compile.passes.fold_bn import fold_bn
from dyno_compile.passes.fold_constants import fold_constants
from dyno_compile.passes.simplify import simplify

Pass = Callable[[Graph], Graph]

#: The passes ``inspect`` and ``build`` run, in order: clean the frontend's output, fold
#: batch norms into convolutions, drop what is dead, then annotate costs.
STANDARD_PASSES: tuple[Pass, ...] = (fold_constants, simplify, fold_bn, eliminate_dead_code, annotate_costs)


def run_passes(graph: Graph, passes: Sequence[Pass] = STANDARD_PASSES, *, check: bool = True) -> Graph:
    done: list[str] = []
    for p in passes:
        try:
            graph = p(graph)
            if check:
                validate(graph)
        except GraphError as exc:
            ran = ", ".join(done) or "none"
            raise GraphError(f"pass {p.__name__} failed (passes run before it: {ran}): {exc}") from exc
        done.append(p.__name__)
    return graph
