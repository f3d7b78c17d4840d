"""Remove nodes whose values never reach a graph output (and weights nothing reads).

Graph inputs are kept even when unused: they are the model's calling convention.
"""

from __future__ import annotations

import networkx as nx

from dyno_compile.ir import INPUT_OP, Graph


def eliminate_dead_code(graph: Graph) -> Graph:
    graph = graph.copy()
    structure = graph.nx_graph
    live = set(graph.outputs)
    for out in graph.outputs:
        live |= nx.ancestors(structure, out)
    for node in reversed(graph.nodes):
        if node.name not in live and node.op != INPUT_OP:
            graph.erase(node.name)
    return graph
