"""Recompute every node's output type from the graph inputs, optionally with new input shapes.

Used to re-batch a graph (``{"x": (8, 3, 32, 32)}``) or to re-check types after a hand
edit. A node whose attributes pin a shape that no longer fits (a reshape to a fixed
batch size) fails with an error naming it.
"""
from __future__ import annotations

from typing import Mapping

from dyno_compile.errors import GraphError
from dyno_compile.ir import INPUT_OP, Graph, TensorType
from dyno_compile.ir.ops import infer_type
from dyno_compile.ir.types import Shape


def infer_shapes(graph: Graph, input_shapes: Mapping[str, Shape] | None = None) -> Graph:
    graph = graph.copy()
    input_shapes = dict(input_shapes or {})
    unknown = set(input_shapes) - {n.name for n in graph.inputs}
    if unknown:
        raise GraphError(f"graph {graph.name!r} has no input(s) {sorted(unknown)}; "
                         f"inputs are {[n.name for n in graph.inputs]}")
    for node in graph.nodes:
        if node.op == INPUT_OP and node.name in input_shapes:
            node.type = TensorType(tuple(input_shapes[node.name]), node.dtype)
        elif node.is_compute:
            node.type = infer_type(node.op, graph.input_types(node), node.attrs, node.name)
    return graph
