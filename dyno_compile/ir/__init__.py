"""Graph IR: nodes, graph, op registry, reference interpreter, validation, save/load."""

from dyno_compile.ir.graph import Graph
from dyno_compile.ir.interpreter import Interpreter, evaluate
from dyno_compile.ir.node import CONST_OP, INPUT_OP, Node
from dyno_compile.ir.ops import get_op, register_op
from dyno_compile.ir.serialize import load, save
from dyno_compile.ir.types import TensorType
from dyno_compile.ir.validate import validate

__all__ = [
    "CONST_OP",
    "INPUT_OP",
    "Graph",
    "Interpreter",
    "Node",
    "TensorType",
    "evaluate",
    "get_op",
    "load",
    "register_op",
    "save",
    "validate",
]
