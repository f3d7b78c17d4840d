"""Fold batch norm, and any per-channel affine op, into the conv or dense layer before it.

At inference a batch norm is ``y * s + t`` per output channel, and so are the bias adds
and scales that frontends emit as separate ``add``/``mul``/``sub``/``div`` nodes. When the
producer is a ``conv2d``, ``conv2d_transpose`` or ``dense`` read by nothing else, the
affine op merges into its weights (``W * s``) and bias (``b * s + t``), removing a full
pass over the activation.

Before: ``%c = conv2d(%x, %w); %y = batch_norm(%c, %g, %b, %m, %v)``
After:  ``%y = conv2d(%x, %w_folded, %b_folded)``

Declines (leaves the node) when the producer has other readers, is a graph output, or
the operand is not a weight that varies only along the output-channel axis.

Where no such producer is there to take them (DenseNet's pre-activation batch norm after a
concat, spelt ``sub``, ``mul``, ``add`` by the frontend), consecutive per-channel affine
steps merge into one ``batch_norm`` (``mean`` 0, ``var`` 1, ``epsilon`` 0): one layer, as
the user wrote it, with no cut between its halves and one pass over the activation.
"""

from __future__ import annotations

import numpy as np

from dyno_compile.ir import CONST_OP, Graph, Node
from dyno_compile.ir.ops import channel_axis

_FOLDABLE_PRODUCERS = ("conv2d", "conv2d_transpose", "dense")


_AFFINE_OPS = ("batch_norm", "add", "sub", "mul", "div")


def fold_bn(graph: Graph) -> Graph:
    graph = graph.copy()
    changed = True
    while changed:
        changed = any(
            [
                _fold_into_producer(graph, node) or _merge_affine_steps(graph, node)
                for node in graph.compute_nodes
                if node.name in graph
            ]
        )
    return graph


def _fold_into_producer(graph: Graph, node: Node) -> bool:
    if node.op not in ("batch_norm", "add", "sub", "mul", "div"):
        return False
    producer_pos = 1 if node.op in ("add", "mul") and graph.node(node.inputs[1]).op in _FOLDABLE_PRODUCERS else 0
    producer = graph.node(node.inputs[producer_pos])
    if (
        producer.op not in _FOLDABLE_PRODUCERS
        or producer.name in graph.outputs
        or len(graph.users(producer.name)) != 1
        or producer.type != node.type
        or any(graph.node(i).op != CONST_OP for i in producer.inputs[1:])
    ):
        return False
    axis = _out_axis(producer)
    affine = _affine(graph, node, producer_pos, axis, producer.shape[axis])
    if affine is None:
        return False
    old_weights = producer.inputs[1:]
    weight, bias = _fold(graph, producer, *affine)
    folded = graph.add(producer.op, [producer.inputs[0], weight, bias], producer.attrs, after=node.name)
    graph.replace_all_uses(node.name, folded.name)
    graph.erase(node.name)
    graph.substitute(producer.name, folded.name)
    _take_names(graph, old_weights, (weight, bias), producer.name)
    return True


def _take_names(graph: Graph, old: tuple[str, ...], new: tuple[str, str], layer: str) -> None:
    """Give the folded weights the names of the ones they replace (``conv1.weight``), or
    ``<layer>.weight``/``<layer>.bias`` when the old ones are still read elsewhere."""
    for i, (new_name, suffix) in enumerate(zip(new, ("weight", "bias"))):
        target = old[i] if i < len(old) and not graph.users(old[i]) else f"{layer}.{suffix}"
        if i < len(old) and not graph.users(old[i]):
            graph.erase(old[i])
        if target not in graph:
            graph.rename(new_name, target)


def _out_axis(producer: Node) -> int:
    if producer.op == "conv2d":
        return channel_axis(producer.attrs["data_layout"])
    return 1 if producer.op == "conv2d_transpose" else len(producer.shape) - 1


def _channel_vector(graph: Graph, name: str, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """The weight ``name`` as a float64 vector along ``axis`` of a rank-``rank`` tensor with
    ``channels`` there, or None if it is not one."""
    if graph.node(name).op != CONST_OP:
        return None
    value = np.asarray(graph.params[name], dtype=np.float64)
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).copy()


def _affine(graph: Graph, node: Node, pos: int, axis: int, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) such that ``node(x) == x * scale + shift`` along ``axis``, where x is
    the node's input ``pos``; None where the node is no such per-channel step."""
    if node.op == "batch_norm":
        if pos != 0 or node.attrs["axis"] % len(node.shape) != axis:
            return None
        if any(graph.node(n).op != CONST_OP or graph.node(n).shape != (channels,) for n in node.inputs[1:]):
            return None
        gamma, beta, mean, var = (np.asarray(graph.params[n], np.float64) for n in node.inputs[1:])
        scale = gamma / np.sqrt(var + node.attrs["epsilon"])
        return scale, beta - mean * scale
    if node.op in ("sub", "div") and pos != 0:
        return None
    v = _channel_vector(graph, node.inputs[1 - pos], len(node.shape), axis, channels)
    if v is None or (node.op == "div" and not np.all(v)):
        return None
    ones, zeros = np.ones_like(v), np.zeros_like(v)
    if node.op == "add":
        return ones, v
    if node.op == "sub":
        return ones, -v
    return (v, zeros) if node.op == "mul" else (1.0 / v, zeros)


def _merge_affine_steps(graph: Graph, node: Node) -> bool:
    """``node`` after another per-channel affine step read only by it -> one ``batch_norm``."""
    pos = _data_input(graph, node)
    inner = graph.node(node.inputs[pos]) if pos is not None else None
    if pos is None or inner is None or inner.name in graph.outputs or len(graph.users(inner.name)) != 1:
        return False
    inner_pos = _data_input(graph, inner)
    axis = _channel_axis_of(graph, node, inner)
    if inner_pos is None or axis is None or graph.node(inner.inputs[inner_pos]).type != node.type:
        return False
    channels = node.shape[axis]
    first = _affine(graph, inner, inner_pos, axis, channels)
    then = _affine(graph, node, pos, axis, channels)
    if first is None or then is None:
        return False
    dtype = np.dtype(node.dtype)
    scale, shift = first[0] * then[0], first[1] * then[0] + then[1]
    params = [
        graph.add_const(f"{node.name}.{part}", value.astype(dtype), after=node.name).name
        for part, value in (("weight", scale), ("bias", shift), ("mean", 0 * scale), ("var", 0 * scale + 1))
    ]
    name = inner.name if inner.op == "batch_norm" else f"{node.name.rpartition('.')[0] or node.name}.batch_norm"
    merged = graph.add(
        "batch_norm", [inner.inputs[inner_pos], *params], {"epsilon": 0.0, "axis": axis}, name=name, after=node.name
    )
    graph.replace_all_uses(node.name, merged.name)
    graph.erase(node.name)
    for old in [inner.name, *inner.inputs[1:]] if inner.op == "batch_norm" else [inner.name]:
        if old in graph and not graph.users(old) and old not in graph.outputs:
            graph.erase(old)
    return True


def _data_input(graph: Graph, node: Node) -> int | None:
    """Which input of a floating affine op is the activation (the others are weights)."""
    if node.op not in _AFFINE_OPS or not np.issubdtype(np.dtype(node.dtype), np.floating):
        return None
    consts = [graph.node(i).op == CONST_OP for i in node.inputs]
    if node.op == "batch_norm":
        return 0 if not consts[0] and all(consts[1:]) else None
    return consts.index(False) if consts.count(False) == 1 else None


def _channel_axis_of(graph: Graph, *nodes: Node) -> int | None:
    """The one axis the weights of ``nodes`` vary along (scalars go with any), else None."""
    axes = set()
    for node in nodes:
        rank = len(node.shape)
        if node.op == "batch_norm":
            axes.add(node.attrs["axis"] % rank)
            continue
        for i in node.inputs:
            if graph.node(i).op == CONST_OP:
                shape = graph.node(i).shape
                shape = (1,) * (rank - len(shape)) + tuple(shape)
                axes.update(k for k, d in enumerate(shape) if d != 1)
    return axes.pop() if len(axes) == 1 else None


def _fold(graph: Graph, producer: Node, scale: np.ndarray, shift: np.ndarray) -> tuple[str, str]:
    w = graph.params[producer.inputs[1]]
    new_w = _scaled_weights(producer, w.astype(np.float64), scale).astype(w.dtype)
    channels = scale.shape[0]
    old_b = (
        np.asarray(graph.params[producer.inputs[2]], dtype=np.float64)
        if len(producer.inputs) > 2
        else np.zeros(channels)
    )
    new_b = (old_b * scale + shift).astype(w.dtype)
    weight = graph.add_const(f"{producer.name}.weight", new_w, after=producer.inputs[1])
    bias = graph.add_const(f"{producer.name}.bias", new_b, after=producer.inputs[1])
    return weight.name, bias.name


def _scaled_weights(producer: Node, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``w`` with each output channel's weights times its ``scale``. A transposed
    convolution's weights are ``[C_in, C_out / groups, kh, kw]``: output channel ``o`` is
    column ``o % (C_out / groups)`` of group ``o // (C_out / groups)``'s rows."""
    if producer.op == "conv2d_transpose":
        groups = producer.attrs["groups"]
        c_in, per_group = w.shape[:2]
        grouped = w.reshape(groups, c_in // groups, per_group, *w.shape[2:])
        return (grouped * scale.reshape(groups, 1, per_group, 1, 1)).reshape(w.shape)
    shape = [1] * w.ndim
    shape[producer.attrs["kernel_layout"].index("O") if producer.op == "conv2d" else 0] = -1
    return w * scale.reshape(shape)
