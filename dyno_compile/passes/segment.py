"""Cut a graph into a chain of segments between candidate cut points (DynO's skip/resume).

Both the device and the cloud hold every segment. Running cut ``k`` means the device runs
the segments before ``k``, sends the tensors crossing ``k``, and the cloud runs the rest;
any candidate cut can be chosen per request with no new build. Segment ``i`` reads the
tensors crossing its start cut and returns those crossing its end cut (a shortcut that
spans a whole segment passes through it); the last segment returns the graph outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dyno_compile.errors import GraphError
from dyno_compile.ir import Graph
from dyno_compile.ir.subgraph import extract
from dyno_compile.passes.find_cuts import CutPoint, find_cuts


@dataclass(frozen=True)
class Segment:
    index: int
    start: CutPoint
    end: CutPoint
    graph: Graph

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.graph.inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.graph.outputs)


def segment(graph: Graph, positions: Sequence[int]) -> list[Segment]:
    """Segments between consecutive ``positions`` (cloud-only 0 and device-only n are added)."""
    cuts = find_cuts(graph)
    n = len(cuts) - 1
    bad = [p for p in positions if not 0 <= p <= n]
    if bad:
        raise GraphError(f"graph {graph.name!r}: cut positions {bad} out of range 0..{n}")
    bounds = sorted({0, n, *positions})
    _check_outputs_reach_the_end(graph, cuts, bounds)
    order = graph.compute_nodes
    segments = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        outputs = cuts[b].tensors if b < n else tuple(graph.outputs)
        sub = extract(
            graph, [node.name for node in order[a:b]], cuts[a].tensors, outputs, name=f"{graph.name}.segment_{i}"
        )
        segments.append(Segment(i, cuts[a], cuts[b], sub))
    return segments


def _check_outputs_reach_the_end(graph: Graph, cuts: list[CutPoint], bounds: list[int]) -> None:
    """Only the last segment returns the graph outputs, so each must be computed in it or
    cross into it (an output that later nodes also read passes through the segments in
    between); one that neither would be lost between segments. Checked before extraction,
    so the error names the outputs and the cut to move rather than a region that lacks them.
    """
    last_start = bounds[-2] if len(bounds) > 1 else 0
    produced_early = {node.name for node in graph.compute_nodes[:last_start]} | {node.name for node in graph.inputs}
    lost = [o for o in graph.outputs if o in produced_early and o not in cuts[last_start].tensors]
    if lost:
        raise GraphError(
            f"graph {graph.name!r}: outputs {lost} are computed before cut position {last_start} "
            "and not read after it, so they would not reach the last segment; choose cut positions "
            "after them"
        )
