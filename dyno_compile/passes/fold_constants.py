"""Evaluate nodes whose inputs are all weights, replacing them by one weight.

Frontends leave weight arithmetic in the graph (batch-norm's ``gamma * rsqrt(var + eps)``,
transposed dense kernels); folding it once at compile time removes that work from every
inference. ``broadcast_to`` is left alone: folding it would store the broadcast copy.

Before: ``%s = rsqrt(%var_eps); %m = mul(%gamma, %s)`` (all weights).
After:  ``%m = const()`` holding the product.
"""

from __future__ import annotations

import numpy as np

from dyno_compile.ir import CONST_OP, Graph, Node
from dyno_compile.ir.interpreter import run_node

_NEVER_FOLD = frozenset({"broadcast_to"})


def fold_constants(graph: Graph) -> Graph:
    graph = graph.copy()
    for node in graph.compute_nodes:
        if node.op in _NEVER_FOLD or not node.inputs:
            continue
        if not all(graph.node(i).op == CONST_OP for i in node.inputs):
            continue
        value = np.asarray(run_node(node, [graph.params[i] for i in node.inputs]))
        const = graph.add_const(_folded_name(graph, node), value, after=node.name)
        graph.replace_all_uses(node.name, const.name)
        graph.erase(node.name)
        for i in set(node.inputs):  # free the name of a weight only this node read
            if not graph.users(i) and i not in graph.outputs:
                graph.erase(i)
    return graph


def _folded_name(graph: Graph, node: Node) -> str:
    """Name a folded weight after the weight it derives from: ``fc.weight.transpose``."""
    named = [i for i in node.inputs if not i.startswith("literal")]
    return f"{named[0]}.{node.op}" if named else node.name
