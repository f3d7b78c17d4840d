"""Recompute every node's output type from the graph inputs, optionally with new input shapes.

Used to re-batch a graph (``{"x": (8, 3, 32, 32)}``) or to re-check types after a hand
edit. A node whose attributes pin a shape that no longer fits (a reshape to a fixed
batch size) fails with an error naming it. When the batch size changes, every node that
carried the old batch must carry the new one: a node that pinned batch 1 would otherwise
broadcast silently against the rest and give wrong results.
"""

from __future__ import annotations

from collections.abc import Mapping

from dyno_compile.errors import GraphError
from dyno_compile.ir import INPUT_OP, Graph, TensorType
from dyno_compile.ir.ops import infer_type
from dyno_compile.ir.types import Shape


def infer_shapes(graph: Graph, input_shapes: Mapping[str, Shape] | None = None) -> Graph:
    graph = graph.copy()
    input_shapes = dict(input_shapes or {})
    unknown = set(input_shapes) - {n.name for n in graph.inputs}
    if unknown:
        raise GraphError(
            f"graph {graph.name!r} has no input(s) {sorted(unknown)}; inputs are {[n.name for n in graph.inputs]}"
        )
    batch = _batch_change(graph, input_shapes)
    for node in graph.nodes:
        old = node.shape
        if node.op == INPUT_OP and node.name in input_shapes:
            node.type = TensorType(tuple(input_shapes[node.name]), node.dtype)
        elif node.is_compute:
            node.type = infer_type(node.op, graph.input_types(node), node.attrs, node.name)
            if batch and old[:1] == (batch[0],) and node.shape[:1] != (batch[1],):
                raise GraphError(
                    f"node {node.name!r} ({node.op}) pins the batch size: its output went from "
                    f"{old} to {node.shape} when the batch changed {batch[0]} -> {batch[1]}; "
                    "re-import the model with the batch size you need"
                )
    return graph


def _batch_change(graph: Graph, input_shapes: Mapping[str, Shape]) -> tuple[int, int] | None:
    """(old, new) leading dimension if the given input shapes change the batch size."""
    for node in graph.inputs:
        new = input_shapes.get(node.name)
        if new is not None and node.shape and len(new) == len(node.shape) and new[0] != node.shape[0]:
            return node.shape[0], int(new[0])
    return None
