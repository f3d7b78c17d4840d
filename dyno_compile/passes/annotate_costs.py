"""Annotate each node with its compute and memory cost, for tables and roofline estimates.

Puts in ``node.meta``:
- ``macs``: multiply-accumulates (conv, dense; a transposed convolution scatters each
  input pixel's kernel), or one operation per output element read from each window
  (pooling, LRN's channel window) or per element (elementwise, batch norm, resize);
- ``weight_bytes``: bytes of the weights the node reads;
- ``in_bytes``: bytes of the activations it reads; ``out_bytes``: bytes it writes.
"""

from __future__ import annotations

from math import prod

from dyno_compile.ir import CONST_OP, Graph, Node
from dyno_compile.ir.ops import get_op


def annotate_costs(graph: Graph) -> Graph:
    graph = graph.copy()
    for node in graph.compute_nodes:
        reads = [graph.node(i) for i in node.inputs]
        node.meta["macs"] = _macs(graph, node)
        node.meta["weight_bytes"] = sum(r.type.nbytes for r in reads if r.op == CONST_OP)
        node.meta["in_bytes"] = sum(r.type.nbytes for r in reads if r.op != CONST_OP)
        node.meta["out_bytes"] = node.type.nbytes
    return graph


def _macs(graph: Graph, node: Node) -> int:
    out = node.type.size
    if node.op == "conv2d":
        w = graph.node(node.inputs[1]).shape
        kh, kw, cin = (w[2], w[3], w[1]) if node.attrs["kernel_layout"] == "OIHW" else (w[0], w[1], w[2])
        return out * cin * kh * kw
    if node.op == "conv2d_transpose":  # weights [C_in, C_out / groups, kh, kw]
        return graph.node(node.inputs[0]).type.size * prod(graph.node(node.inputs[1]).shape[1:])
    if node.op == "dense":
        return out * graph.node(node.inputs[1]).shape[1]
    if node.op in ("max_pool2d", "avg_pool2d"):
        return out * prod(node.attrs["kernel"])
    if node.op == "lrn":
        return out * node.attrs["size"]
    if node.op == "global_avg_pool2d" or get_op(node.op).kind == "reduce":
        return graph.node(node.inputs[0]).type.size
    if get_op(node.op).kind in ("elementwise", "nn"):
        return out
    return 0
