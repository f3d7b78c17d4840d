"""Cut a graph into a chain of segments between candidate cut points (DynO's skip/resume).

Both the device and the cloud hold every segment. Running cut ``k`` means the device runs
the segments before ``k``, sends the tensors crossing ``k``, and the cloud runs the rest;
any candidate cut can be chosen per request with no new build. Segment ``i`` reads the
tensors crossing its start cut and returns those crossing its end cut (a shortcut that
spans a whole segment passes through it); the last segment returns the graph outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
    order = graph.compute_nodes
    segments = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        outputs = cuts[b].tensors if b < n else tuple(graph.outputs)
        sub = extract(graph, [node.name for node in order[a:b]], cuts[a].tensors, outputs,
                      name=f"{graph.name}.segment_{i}")
        segments.append(Segment(i, cuts[a], cuts[b], sub))
    _check_outputs_reach_the_end(graph, order, bounds)
    return segments


def _check_outputs_reach_the_end(graph: Graph, order: list, bounds: list[int]) -> None:
    """A graph output computed before the last segment would be lost between segments."""
    position = {node.name: k for k, node in enumerate(order)}
    last_start = bounds[-2] if len(bounds) > 1 else 0
    early = [o for o in graph.outputs if position.get(o, -1) < last_start]
    if early:
        raise GraphError(f"graph {graph.name!r}: outputs {early} are computed before the last segment; "
                         "choose cut positions after them")
