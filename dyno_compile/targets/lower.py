"""Lower IR ``Graph``s to a TVM Relax ``IRModule``: the driver that walks a graph and
converts each node (:func:`dyno_compile.targets.convert.convert_node`).

One Relax function ``main(*inputs, *weights)`` with the attribute ``num_input`` set to the
number of graph inputs, so that the weights (the graph's ``const`` nodes, in program
order) can either be bound into the module or passed at run time from a param file. It
returns the graph output, or a tuple of them. ``lower_functions`` puts several graphs into
one module, one such function per name (the segments of a model and the pack/unpack
functions of its cuts), sharing identical kernels.

``lower(graph)`` also returns the parameter order; ``to_relax(graph)`` just the module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dyno_compile.targets import convert_spatial  # noqa: F401  (registers the spatial ops' converters)
from dyno_compile.targets.convert import CONVERTERS, convert_node, relax_name, supported_ops
from dyno_compile.targets.errors import LoweringError

if TYPE_CHECKING:  # the IR (and JAX behind it) is needed to lower, not to import this module
    from dyno_compile.ir import Graph

__all__ = ["Lowered", "lower", "lower_functions", "to_relax"]


@dataclass
class Lowered:
    """One Relax function of a module and how its parameters map to the graph."""

    mod: Any  # tvm.IRModule (shared by every function lowered into it)
    input_names: list[str]
    weight_names: list[str]
    output_names: list[str]
    #: Relax parameter vars for the weights, in order (for ``BindParams``).
    weight_vars: list[Any] = field(default_factory=list)
    #: The Relax function's name in ``mod``.
    name: str = "main"

    @property
    def num_input(self) -> int:
        return len(self.input_names)


_FUNC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_graph(graph: Graph) -> None:
    from dyno_compile.ir import CONST_OP

    if not graph.outputs:
        raise LoweringError(f"graph {graph.name!r} has no outputs")
    for node in graph.nodes:  # refuse before building anything
        if node.is_compute and node.op not in CONVERTERS:
            raise LoweringError(
                f"graph {graph.name!r}: node {node.name!r} uses op {node.op!r}, which has no TVM "
                f"converter; supported ops: {', '.join(supported_ops())}"
            )
        if node.op == CONST_OP and node.name not in graph.params:
            raise LoweringError(f"graph {graph.name!r}: const node {node.name!r} has no weight")


def _lower_function(bb, graph: Graph, func_name: str) -> Lowered:
    """Add ``func_name(*inputs, *weights)`` computing ``graph`` to the block builder ``bb``."""
    from tvm import relax

    from dyno_compile.ir import CONST_OP, INPUT_OP

    order = graph.nodes
    inputs = [n for n in order if n.op == INPUT_OP]
    weights = [n for n in order if n.op == CONST_OP]

    def var(n):
        return relax.Var(relax_name(n.name), relax.TensorType(list(n.shape), n.dtype))

    in_vars = [var(n) for n in inputs]
    w_vars = [var(n) for n in weights]
    env = {n.name: v for n, v in zip(inputs + weights, in_vars + w_vars)}

    with bb.function(func_name, in_vars + w_vars, attrs={"num_input": len(in_vars)}):
        with bb.dataflow():
            for node in order:
                if not node.is_compute:
                    continue
                try:
                    value = convert_node(bb, node, graph.input_types(node), [env[i] for i in node.inputs])
                except Exception as exc:
                    if isinstance(exc, LoweringError) and node.name in str(exc):
                        raise
                    raise LoweringError(
                        f"graph {graph.name!r}: lowering node {node.name!r} ({node.op}) failed: {exc}"
                    ) from exc
                env[node.name] = value
            outs = [env[o] for o in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return Lowered(
        mod=None,
        input_names=[n.name for n in inputs],
        weight_names=[n.name for n in weights],
        output_names=list(graph.outputs),
        weight_vars=w_vars,
        name=func_name,
    )


def lower(graph: Graph, name: str = "main") -> Lowered:
    """Lower ``graph``; see :func:`to_relax`. Raises ``LoweringError`` naming the node at fault."""
    from tvm import relax

    _check_graph(graph)
    bb = relax.BlockBuilder()
    low = _lower_function(bb, graph, name)
    low.mod = bb.get()
    return low


def lower_functions(graphs: Mapping[str, Graph]) -> dict[str, Lowered]:
    """Lower several graphs into ONE ``IRModule``, one Relax function per name.

    Each function is ``name(*inputs, *weights)`` with its own ``num_input``; kernels that
    come out identical (the same convolution shape in two segments) are added once. Every
    ``Lowered`` returned holds the same module. Names must be identifiers, unique, and not
    a name the module gives its kernels.
    """
    from tvm import relax

    if not graphs:
        raise LoweringError("no graphs to lower")
    for name, graph in graphs.items():
        if not isinstance(name, str) or not _FUNC_NAME.match(name):
            raise LoweringError(f"function name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
        _check_graph(graph)
    bb = relax.BlockBuilder()
    lowered = {name: _lower_function(bb, graph, name) for name, graph in graphs.items()}
    mod = bb.get()
    for low in lowered.values():
        low.mod = mod
    return lowered


def to_relax(graph: Graph):
    """``graph`` as a Relax ``IRModule`` with one function ``main(*inputs, *weights)``.

    ``main`` carries ``num_input`` (the number of graph inputs); the remaining parameters
    are the graph's weights (its ``const`` nodes, in program order).
    """
    return lower(graph).mod
