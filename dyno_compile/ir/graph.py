"""The graph IR: a typed dataflow graph of operator nodes, stored in a networkx DiGraph.

The ``Graph`` is the only way to change the structure (as in torch.fx): it keeps the
networkx edges in step with each node's ordered ``inputs``, refuses to erase a node that
still has users, and gives a deterministic topological order (program order among
independent nodes). Weights live apart, in ``params``, keyed by the name of the ``const``
node that stands for them, so the structure saves as small JSON and weights as ``.npz``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import networkx as nx
import numpy as np

from dyno_compile.errors import GraphError
from dyno_compile.ir.node import CONST_OP, INPUT_OP, Node
from dyno_compile.ir.ops import get_op, infer_type
from dyno_compile.ir.types import Shape, TensorType


class Graph:
    def __init__(self, name: str = "model") -> None:
        self.name = name
        self.params: dict[str, np.ndarray] = {}
        self.outputs: list[str] = []
        self._nx = nx.DiGraph()
        self._seq = itertools.count()
        self._order_cache: list[Node] | None = None

    # ----------------------------------------------------------------- reading
    def __contains__(self, name: str) -> bool:
        return name in self._nx

    def __len__(self) -> int:
        return self._nx.number_of_nodes()

    def node(self, name: str) -> Node:
        try:
            return self._nx.nodes[name]["node"]
        except KeyError:
            raise GraphError(f"graph {self.name!r} has no node {name!r}") from None

    @property
    def nx_graph(self) -> nx.DiGraph:
        """Read-only view of the structure, for networkx algorithms (edges: producer -> user)."""
        return self._nx.copy(as_view=True)

    @property
    def nodes(self) -> list[Node]:
        """All nodes in deterministic topological order."""
        if self._order_cache is None:
            try:
                names = nx.lexicographical_topological_sort(self._nx, key=lambda n: self.node(n).order_key)
                self._order_cache = [self.node(n) for n in names]
            except nx.NetworkXUnfeasible:
                cycle = " -> ".join(u for u, _ in nx.find_cycle(self._nx))
                raise GraphError(f"graph {self.name!r} has a cycle: {cycle}") from None
        return list(self._order_cache)

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op == INPUT_OP]

    @property
    def compute_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.is_compute]

    def users(self, name: str) -> list[Node]:
        """Nodes that read ``name``, by program order."""
        return sorted((self.node(n) for n in self._nx.successors(name)), key=lambda n: n.order_key)

    def input_types(self, node: Node) -> tuple[TensorType, ...]:
        return tuple(self.node(i).type for i in node.inputs)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    # ----------------------------------------------------------------- building
    def fresh_name(self, base: str) -> str:
        base = base or "t"
        if base not in self._nx:
            return base
        for i in itertools.count(1):
            name = f"{base}_{i}"
            if name not in self._nx:
                return name
        raise AssertionError("unreachable")

    def add_input(self, name: str, shape: Shape, dtype: str = "float32") -> Node:
        return self._insert(Node(self._claim(name), INPUT_OP, (), {}, TensorType(shape, dtype)), None)

    def add_const(self, name: str, value: np.ndarray, *, after: str | None = None) -> Node:
        value = np.asarray(value)
        node = Node(self._claim(name), CONST_OP, (), {}, TensorType(value.shape, value.dtype.name))
        self.params[node.name] = value
        return self._insert(node, after)

    def add(
        self,
        op: str,
        inputs: Iterable[str],
        attrs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        after: str | None = None,
    ) -> Node:
        """Add an op node; its output type is inferred from its inputs and attributes.

        ``after`` places the node right after that node in program order (for rewrites
        that must not reorder independent branches); the default is the end.
        """
        name = self._claim(name or op)
        inputs = tuple(inputs)
        opdef = get_op(op, name)
        opdef.check_arity(len(inputs), name)
        for i in inputs:
            if i not in self._nx:
                raise GraphError(f"node {name!r} ({op}): input {i!r} does not exist (dangling input)")
        full = opdef.complete_attrs(attrs or {}, name)
        out_type = infer_type(op, tuple(self.node(i).type for i in inputs), full, name)
        return self._insert(Node(name, op, inputs, full, out_type), after)

    def set_outputs(self, names: Iterable[str]) -> None:
        names = list(names)
        for n in names:
            self.node(n)
        self.outputs = names

    # ----------------------------------------------------------------- rewriting
    def set_inputs(self, name: str, inputs: Iterable[str]) -> None:
        """Rewire a node's inputs; its type must stay what it was."""
        node = self.node(name)
        inputs = tuple(inputs)
        for i in inputs:
            self.node(i)
        new_type = infer_type(node.op, tuple(self.node(i).type for i in inputs), node.attrs, name)
        if new_type != node.type:
            raise GraphError(
                f"node {name!r} ({node.op}): rewiring would change its type from {node.type} to {new_type}"
            )
        for old in set(node.inputs):
            self._nx.remove_edge(old, name)
        node.inputs = inputs
        self._nx.add_edges_from((i, name) for i in inputs)
        self._order_cache = None

    def replace_all_uses(self, old: str, new: str) -> None:
        """Make every user of ``old`` (and the graph outputs) read ``new`` instead."""
        if self.node(old).type != self.node(new).type:
            raise GraphError(f"cannot replace {old!r} ({self.node(old).type}) by {new!r} ({self.node(new).type})")
        for user in list(self._nx.successors(old)):
            if user == new:
                continue
            u = self.node(user)
            self.set_inputs(user, [new if i == old else i for i in u.inputs])
        self.outputs = [new if o == old else o for o in self.outputs]

    def substitute(self, old: str, new: str) -> None:
        """Put node ``new`` in the place of ``old``: readers move over, ``old`` goes, ``new`` takes its name.

        The usual end of a rewrite: names that users and tables know stay stable.
        """
        self.replace_all_uses(old, new)
        self.erase(old)
        self.rename(new, old)

    def rename(self, name: str, new_name: str) -> None:
        if new_name in self._nx:
            raise GraphError(f"cannot rename {name!r} to {new_name!r}: that name is taken")
        node = self.node(name)
        nx.relabel_nodes(self._nx, {name: new_name}, copy=False)
        node.name = new_name
        for user in self._nx.successors(new_name):
            u = self.node(user)
            u.inputs = tuple(new_name if i == name else i for i in u.inputs)
        if name in self.params:
            self.params[new_name] = self.params.pop(name)
        self.outputs = [new_name if o == name else o for o in self.outputs]
        self._order_cache = None

    def erase(self, name: str) -> None:
        """Remove a node that nothing reads any more."""
        users = list(self._nx.successors(name))
        if users:
            raise GraphError(f"cannot erase {name!r}: still read by {users}")
        if name in self.outputs:
            raise GraphError(f"cannot erase {name!r}: it is a graph output")
        self._nx.remove_node(name)
        self.params.pop(name, None)
        self._order_cache = None

    def copy(self) -> Graph:
        """A structural copy that a pass may rewrite freely: nodes and their ``meta`` are the
        copy's own (a pass annotating one graph must not annotate another), types are taken
        as they are (they were checked when the nodes were added) and program order is kept.
        Weight arrays are shared: passes replace, never mutate, them."""
        other = Graph(self.name)
        other.params = dict(self.params)
        other.outputs = list(self.outputs)
        for name, data in self._nx.nodes(data=True):
            n = data["node"]
            other._nx.add_node(
                name, node=Node(n.name, n.op, n.inputs, dict(n.attrs), n.type, copy.deepcopy(n.meta), n.order_key)
            )
        other._nx.add_edges_from(self._nx.edges)
        other._seq = itertools.count(max((n.order_key[0] for n in self.nodes), default=-1) + 1)
        return other

    # ----------------------------------------------------------------- internals
    def _claim(self, name: str) -> str:
        return self.fresh_name(name)

    def _insert(self, node: Node, after: str | None) -> Node:
        if after is None:
            node.order_key = (next(self._seq),)
        else:
            anchor = self.node(after).order_key
            taken = {self.node(n).order_key for n in self._nx if self.node(n).order_key[: len(anchor)] == anchor}
            node.order_key = anchor + (max((k[len(anchor)] for k in taken if len(k) > len(anchor)), default=0) + 1,)
        self._nx.add_node(node.name, node=node)
        self._nx.add_edges_from((i, node.name) for i in node.inputs)
        self._order_cache = None
        return node

    def __repr__(self) -> str:
        lines = [f"graph {self.name}({', '.join(n.name for n in self.inputs)}):"]
        lines += [f"  {n!r}" for n in self.nodes if n.op != INPUT_OP]
        lines.append(f"  return {', '.join(self.outputs)}")
        return "\n".join(lines)
