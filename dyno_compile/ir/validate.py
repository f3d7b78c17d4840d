"""Whole-graph validation, run after passes: catches what a rewrite may have broken."""

from __future__ import annotations

from dyno_compile.errors import GraphError
from dyno_compile.ir.graph import Graph
from dyno_compile.ir.node import CONST_OP, INPUT_OP
from dyno_compile.ir.ops import get_op, infer_type
from dyno_compile.ir.types import TensorType


def validate(graph: Graph) -> None:
    """Raise ``GraphError`` naming the first broken node; return quietly if all holds.

    Checks: no cycle, known ops with right arity and attributes, inputs that exist,
    declared types equal to those the inputs give, weights present with their declared
    types, outputs that exist.
    """
    order = graph.nodes  # raises on a cycle
    if not graph.outputs:
        raise GraphError(f"graph {graph.name!r} has no outputs")
    for node in order:
        if node.op == INPUT_OP:
            continue
        if node.op == CONST_OP:
            value = graph.params.get(node.name)
            if value is None:
                raise GraphError(f"const node {node.name!r} has no weight")
            if TensorType(value.shape, value.dtype.name) != node.type:
                raise GraphError(
                    f"const node {node.name!r}: weight is {value.dtype.name}{list(value.shape)}, node says {node.type}"
                )
            continue
        opdef = get_op(node.op, node.name)
        opdef.check_arity(len(node.inputs), node.name)
        if opdef.complete_attrs(node.attrs, node.name) != node.attrs:
            raise GraphError(f"node {node.name!r} ({node.op}): attributes {node.attrs} are incomplete")
        for i in node.inputs:
            if i not in graph:
                raise GraphError(f"node {node.name!r} ({node.op}): input {i!r} does not exist (dangling input)")
        inferred = infer_type(node.op, graph.input_types(node), node.attrs, node.name)
        if inferred != node.type:
            raise GraphError(
                f"node {node.name!r} ({node.op}): declared {node.type} but inputs give {inferred} (shape mismatch)"
            )
    for o in graph.outputs:
        if o not in graph:
            raise GraphError(f"graph output {o!r} is not a node")
