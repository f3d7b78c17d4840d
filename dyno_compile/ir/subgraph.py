"""Cut a region out of a graph as a graph of its own (torch.fx's ``split_module`` idea).

The region's boundary tensors become ``input`` nodes of the same name and type, the weights
it reads come along, and program order is kept, so running the pieces one after another
is the same computation as running the whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dyno_compile.errors import GraphError
from dyno_compile.ir.graph import Graph
from dyno_compile.ir.node import CONST_OP


def extract(graph: Graph, nodes: Iterable[str], inputs: Sequence[str], outputs: Sequence[str], *, name: str) -> Graph:
    """A graph computing ``outputs`` from ``inputs`` with the compute nodes ``nodes``.

    Every value a node reads must be an input, a weight or another node of the region.
    """
    members = set(nodes)
    sub = Graph(name)
    for t in inputs:
        src = graph.node(t)
        sub.add_input(t, src.shape, src.dtype)
    for node in graph.nodes:
        if node.name not in members:
            continue
        for i in node.inputs:
            if i in sub:
                continue
            if graph.node(i).op != CONST_OP:
                raise GraphError(
                    f"{name}: node {node.name!r} reads {i!r}, which is neither in the region nor one of its inputs"
                )
            sub.add_const(i, graph.params[i])
        copy = sub.add(node.op, node.inputs, node.attrs, name=node.name)
        copy.meta.update(node.meta)
    missing = [o for o in outputs if o not in sub]
    if missing:
        raise GraphError(f"{name}: outputs {missing} are not computed in the region")
    sub.set_outputs(outputs)
    return sub
