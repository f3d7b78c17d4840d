"""Which axis of each activation holds its channels, read from the layouts of the ops around it.

Per-channel quantisation at a cut takes one range per channel, so it must know where the
channels are: axis 1 in an NCHW graph (ONNX, PyTorch), the last axis in an NHWC one (Flax's
default). The graph states a layout only at its layout-bearing ops — a convolution's
``data_layout`` (NCHW for a transposed one), a pool's or a resize's ``layout``, a batch,
instance or local response norm's ``axis``, a dense layer's features
(its last axis), a layer norm over the last axis alone (ConvNeXt's LayerNorm over NHWC
channels) — and each of those fixes the channel axis of its data input and its
output. Between them the fact travels through the ops that leave every axis where it is
(elementwise ops, pads, slices, concats; only between operands of the output's rank, not
broadcast weights): forward from a producer to its readers and backward from a reader to
its producer, which also places the graph input and whatever feeds a convolution. A
tensor no fact reaches keeps the NCHW convention, ``DEFAULT_CHANNEL_AXIS`` (1).
"""

from __future__ import annotations

from dyno_compile.ir import CONST_OP, Graph, Node, get_op
from dyno_compile.ir.ops import DEFAULT_CHANNEL_AXIS, channel_axis

#: Non-elementwise ops that keep every axis of their same-rank inputs in place.
_AXIS_KEEPING = frozenset({"pad", "slice", "concat"})


def channel_axes(graph: Graph) -> dict[str, int]:
    """The non-negative channel axis of every graph input and compute node's output."""
    order = graph.compute_nodes
    known: dict[str, int] = {}
    for node in order:  # stated layouts first; the first op to state one for a tensor wins
        for tensor, axis in _stated(graph, node).items():
            known.setdefault(tensor, axis)
    changed = True
    while changed:  # each round places at least one more tensor, or ends
        changed = False
        for node in order:
            for a, b in _keeping_pairs(graph, node):
                if a in known and b not in known:
                    known[b] = known[a]
                    changed = True
        for node in reversed(order):
            for a, b in _keeping_pairs(graph, node):
                if b in known and a not in known:
                    known[a] = known[b]
                    changed = True
    nodes = [*graph.inputs, *order]
    return {n.name: known.get(n.name, min(DEFAULT_CHANNEL_AXIS, max(len(n.shape) - 1, 0))) for n in nodes}


def _stated(graph: Graph, node: Node) -> dict[str, int]:
    """Channel axes a layout-bearing op states for its data input and its output."""
    if not node.inputs:  # a source (a constant): it states nothing, and every op below has a data input
        return {}
    attrs, data = node.attrs, node.inputs[0]
    if node.op == "conv2d":
        return dict.fromkeys((data, node.name), channel_axis(attrs["data_layout"]))
    if node.op == "conv2d_transpose":  # NCHW only
        return dict.fromkeys((data, node.name), DEFAULT_CHANNEL_AXIS)
    if node.op in ("max_pool2d", "avg_pool2d", "resize2d"):
        return dict.fromkeys((data, node.name), channel_axis(attrs["layout"]))
    if node.op == "global_avg_pool2d":
        axis = channel_axis(attrs["layout"])
        return {data: axis, node.name: axis if attrs["keepdims"] else 1}
    if node.op in ("batch_norm", "instance_norm", "lrn"):
        return dict.fromkeys((data, node.name), attrs["axis"] % len(node.shape))
    if node.op == "layer_norm" and attrs["axis"] % len(node.shape) == len(node.shape) - 1:
        return dict.fromkeys((data, node.name), len(node.shape) - 1)
    if node.op == "dense":
        return {data: len(graph.node(data).shape) - 1, node.name: len(node.shape) - 1}
    return {}


def _keeping_pairs(graph: Graph, node: Node) -> list[tuple[str, str]]:
    """``(input, node)`` pairs whose axes line up one to one: an axis-keeping op's
    non-weight inputs of the output's rank."""
    if node.op not in _AXIS_KEEPING and get_op(node.op).kind != "elementwise":
        return []
    return [
        (i, node.name)
        for i in node.inputs
        if graph.node(i).op != CONST_OP and len(graph.node(i).shape) == len(node.shape)
    ]
