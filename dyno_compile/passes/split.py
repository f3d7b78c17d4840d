"""Split a graph at one cut into a device graph and a cloud graph, with explicit sends.

The device graph runs the compute nodes before the cut and ends in one ``send`` per
crossing tensor (its outputs, in the cut's tensor order); the cloud graph takes those
tensors as inputs of the same names and computes the model's outputs. Cut ``n``
(device-only) has no cloud graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyno_compile.errors import GraphError
from dyno_compile.ir import Graph
from dyno_compile.ir.subgraph import extract
from dyno_compile.passes.find_cuts import CutPoint, find_cuts


@dataclass(frozen=True)
class SplitModel:
    cut: CutPoint
    device: Graph
    cloud: Graph | None


def split(graph: Graph, position: int) -> SplitModel:
    cuts = find_cuts(graph)
    if not 0 <= position < len(cuts):
        raise GraphError(f"graph {graph.name!r}: cut {position} out of range 0..{len(cuts) - 1}")
    cut, order = cuts[position], graph.compute_nodes
    if cut.kind == "device-only":
        return SplitModel(cut, graph.copy(), None)
    early = [o for o in graph.outputs if o in {n.name for n in order[:position]} | {n.name for n in graph.inputs}]
    if early:
        raise GraphError(f"graph {graph.name!r}: cut {position} leaves outputs {early} on the device; cut after them")
    device = extract(
        graph,
        [n.name for n in order[:position]],
        [n.name for n in graph.inputs],
        cut.tensors,
        name=f"{graph.name}.device",
    )
    sends = [
        device.add("send", [t], {"cut": position, "slot": i}, name=f"{t}.send").name for i, t in enumerate(cut.tensors)
    ]
    device.set_outputs(sends)
    cloud = extract(graph, [n.name for n in order[position:]], cut.tensors, graph.outputs, name=f"{graph.name}.cloud")
    return SplitModel(cut, device, cloud)
