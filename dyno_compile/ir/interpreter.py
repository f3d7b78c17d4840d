"""The reference interpreter: runs any graph with JAX; the numerical ground truth.

Like ``jax.core.eval_jaxpr``: read inputs, bind each node's op in topological order,
free values once their last reader has run, return the outputs. It is pure and
``jax.jit``-able; ``Interpreter`` caches one jitted function per graph and passes the
weights as arguments so they are not baked into the compiled program.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from dyno_compile.errors import GraphError, InputError
from dyno_compile.ir.graph import Graph
from dyno_compile.ir.node import CONST_OP, INPUT_OP, Node
from dyno_compile.ir.ops import get_op

Env = dict[str, jax.Array]

#: An op's operand: a ``jax.Array`` while interpreting, a NumPy weight when folded at compile time.
Operand = jax.Array | np.ndarray


def run_node(node: Node, args: Sequence[Operand]) -> jax.Array:
    """Apply one node's op; errors name the node."""
    try:
        return get_op(node.op, node.name).impl(*args, **node.attrs)
    except GraphError:
        raise
    except Exception as exc:
        raise GraphError(f"node {node.name!r} ({node.op}) failed: {exc}") from exc


def evaluate(
    graph: Graph,
    params: Mapping[str, jax.Array],
    inputs: Mapping[str, jax.Array],
    *,
    on_value: Callable[[Node, jax.Array], None] | None = None,
) -> list[jax.Array]:
    """Run ``graph``; ``on_value`` sees every computed value (for taps and checks)."""
    order = graph.nodes
    last_use: dict[str, int] = {}
    for pos, node in enumerate(order):
        for i in node.inputs:
            last_use[i] = pos
    keep = set(graph.outputs)
    env: Env = {}
    for pos, node in enumerate(order):
        if node.op == INPUT_OP:
            value = inputs[node.name]
        elif node.op == CONST_OP:
            value = params[node.name]
        else:
            value = run_node(node, [env[i] for i in node.inputs])
            if on_value is not None:
                on_value(node, value)
        env[node.name] = value
        for i in set(node.inputs):
            if last_use[i] == pos and i not in keep:
                del env[i]
    return [env[o] for o in graph.outputs]


def check_inputs(graph: Graph, args: Sequence[ArrayLike]) -> dict[str, jax.Array]:
    """Match positional inputs to the graph's inputs, refusing wrong count, shape or dtype."""
    specs = graph.inputs
    if len(args) != len(specs):
        names = ", ".join(f"{n.name}: {n.type}" for n in specs)
        raise InputError(f"model {graph.name!r} takes {len(specs)} input(s) ({names}), got {len(args)}")
    out = {}
    for spec, arg in zip(specs, args):
        shape = tuple(np.shape(arg))
        if shape != spec.shape:
            raise InputError(f"model {graph.name!r}: input {spec.name!r} expects shape {spec.shape}, got {shape}")
        out[spec.name] = jnp.asarray(arg, dtype=spec.dtype)
    return out


class Interpreter:
    """Callable view of a graph: ``Interpreter(g)(x)`` returns the output (or a tuple)."""

    def __init__(self, graph: Graph, *, jit: bool = True) -> None:
        self.graph = graph
        self._params = {k: jnp.asarray(v) for k, v in graph.params.items()}
        fn = lambda params, inputs: evaluate(graph, params, inputs)  # noqa: E731
        self._fn = jax.jit(fn) if jit else fn

    def __call__(self, *args: ArrayLike) -> jax.Array | tuple[jax.Array, ...]:
        outs = self._fn(self._params, check_inputs(self.graph, args))
        return outs[0] if len(outs) == 1 else tuple(outs)
