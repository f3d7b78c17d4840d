"""Rewrite frontend idioms into the IR's canonical ops (peephole rules, to a fixed point).

Rules, each one small and each declining (leaving the graph as it is) when it does not
match exactly:

- ``identity(x)``, ``reshape(x)`` to x's own shape, ``mul(x, 1)`` -> ``x``;
- ``reshape(reshape(x))`` -> one reshape;
- ``reshape`` of ``[N, ...]`` to ``[N, rest]`` -> ``flatten`` (batch-size agnostic);
- ``broadcast_to`` read only by broadcasting binary ops that give the same shape without
  it -> bypassed (the copy is never materialised);
- ``div(reduce_sum(x, H and W), H*W)`` or ``reduce_mean`` over H and W of a 4-D tensor ->
  ``global_avg_pool2d`` (NCHW or NHWC);
- ``mul(x, a)`` then ``div(., b)`` with scalar weights -> ``mul(x, a / b)``;
- two clamps in a row (``relu``, ``relu6``, ``clip``, or ``maximum``/``minimum`` with a
  scalar weight), the inner one read only by the outer -> one ``clip`` (``relu6`` for
  [0, 6], ``relu`` for [0, inf)): ``jnp.clip(x, 0, 6)`` traces to a ``max`` and a ``min``,
  and as two nodes it would show as two layers and offer a cut between the halves of one
  activation;
- ``x * 0.5 * (1 + erf(x / sqrt 2))``, factors in any order and grouping, ``/ 2`` for
  ``* 0.5`` and ``* (1 / sqrt 2)`` for ``/ sqrt 2`` -> ``gelu`` (exact): the TorchScript
  exporter spells GELU so, and as five nodes it would offer cuts inside one activation;
  also ``1 - erf(-x / sqrt 2)`` (exact ``jax.nn.gelu``'s erfc), and
  ``x * 0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))`` -> ``gelu`` (tanh; JAX's
  default and torch's ``approximate='tanh'``);
- ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* scale] [+ bias]`` over trailing
  axes, with constant scale and bias -> ``layer_norm``: the TorchScript exporter's
  LayerNorm before opset 17 (nine nodes, eight places to cut one normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from math import prod

import numpy as np

from dyno_compile.ir import CONST_OP, Graph, Node
from dyno_compile.ir.ops.elementwise import BINARY_OPS

#: A rule rewrites around one node and says whether it did.
Rule = Callable[[Graph, Node], bool]


def simplify(graph: Graph) -> Graph:
    graph = graph.copy()
    changed = True
    while changed:
        changed = False
        for node in graph.compute_nodes:
            if node.name in graph and any(rule(graph, node) for rule in _RULES):
                changed = True
    return graph


def _replace(graph: Graph, node: Node, replacement: str) -> bool:
    graph.replace_all_uses(node.name, replacement)
    graph.erase(node.name)
    return True


def _scalar(graph: Graph, name: str) -> float | None:
    """The value of a single-element weight, else None."""
    value = graph.params.get(name) if graph.node(name).op == CONST_OP else None
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _drop_identity(graph: Graph, node: Node) -> bool:
    src = graph.node(node.inputs[0]) if node.inputs else None
    if src is None or src.type != node.type:
        return False
    if node.op in ("identity", "reshape") or (node.op == "mul" and _scalar(graph, node.inputs[1]) == 1.0):
        return _replace(graph, node, src.name)
    return False


def _merge_reshapes(graph: Graph, node: Node) -> bool:
    if node.op != "reshape" or graph.node(node.inputs[0]).op != "reshape":
        return False
    inner = graph.node(node.inputs[0])
    merged = graph.add("reshape", inner.inputs, {"shape": node.shape}, after=node.name)
    return _replace(graph, node, merged.name)


def _reshape_to_flatten(graph: Graph, node: Node) -> bool:
    src = graph.node(node.inputs[0]) if node.op == "reshape" else None
    if src is None or len(src.shape) < 3 or node.shape != (src.shape[0], prod(src.shape[1:])):
        return False
    flat = graph.add("flatten", [src.name], {"axis": 1}, after=node.name)
    return _replace(graph, node, flat.name)


def _bypass_broadcast(graph: Graph, node: Node) -> bool:
    if node.op != "broadcast_to" or node.name in graph.outputs:
        return False
    users = graph.users(node.name)
    src = node.inputs[0]
    for user in users:
        if user.op not in BINARY_OPS:
            return False
        shapes = [graph.node(src if i == node.name else i).shape for i in user.inputs]
        if tuple(np.broadcast_shapes(*shapes)) != user.shape:
            return False
    for user in users:
        graph.set_inputs(user.name, [src if i == node.name else i for i in user.inputs])
    graph.erase(node.name)
    return True


def _global_avg_pool(graph: Graph, node: Node) -> bool:
    if node.op == "div":
        total = graph.node(node.inputs[0])
        if total.op != "reduce_sum":
            return False
        src = graph.node(total.inputs[0])
        if _scalar(graph, node.inputs[1]) != _spatial_size(src, total.attrs["axes"]):
            return False
    elif node.op == "reduce_mean":
        total, src = node, graph.node(node.inputs[0])
    else:
        return False
    layout = _layout_of_axes(src, total.attrs["axes"])
    if layout is None:
        return False
    pool = graph.add(
        "global_avg_pool2d",
        [src.name],
        {"layout": layout, "keepdims": total.attrs["keepdims"]},
        name="global_avg_pool",
        after=node.name,
    )
    return _replace(graph, node, pool.name)


_SPATIAL_AXES_LAYOUT: dict[tuple[int, ...], str] = {(2, 3): "NCHW", (1, 2): "NHWC"}


def _layout_of_axes(src: Node, axes: tuple[int, ...]) -> str | None:
    if len(src.shape) != 4:
        return None
    return _SPATIAL_AXES_LAYOUT.get(tuple(sorted(a % 4 for a in axes)))


def _spatial_size(src: Node, axes: tuple[int, ...]) -> float | None:
    return float(prod(src.shape[a] for a in axes)) if _layout_of_axes(src, axes) else None


def _merge_scalar_mul_div(graph: Graph, node: Node) -> bool:
    if node.op != "div":
        return False
    b = _scalar(graph, node.inputs[1])
    prev = graph.node(node.inputs[0])
    if b is None or prev.op != "mul" or len(graph.users(prev.name)) != 1:
        return False
    a = _scalar(graph, prev.inputs[1])
    if a is None or graph.node(prev.inputs[1]).shape != graph.node(node.inputs[1]).shape:
        return False
    factor = graph.add_const("literal", np.asarray(a / b, dtype=graph.params[prev.inputs[1]].dtype))
    merged = graph.add("mul", [prev.inputs[0], factor.name], after=node.name)
    return _replace(graph, node, merged.name)


#: (lower, upper) bounds of the clamps that single ops are; None where unbounded.
_FIXED_CLAMPS: dict[str, tuple[float | None, float | None]] = {"relu": (0.0, None), "relu6": (0.0, 6.0)}


def _clamp_of(graph: Graph, node: Node) -> tuple[str, float | None, float | None] | None:
    """``(x, lower, upper)`` when ``node`` clamps float ``x`` to an interval, else None."""
    if not np.issubdtype(np.dtype(node.dtype), np.floating):
        return None
    if node.op in _FIXED_CLAMPS:
        return (node.inputs[0], *_FIXED_CLAMPS[node.op])
    if node.op == "clip":
        return node.inputs[0], node.attrs["min"], node.attrs["max"]
    if node.op in ("maximum", "minimum"):
        for pos in (0, 1):
            bound, x = _scalar(graph, node.inputs[pos]), node.inputs[1 - pos]
            if bound is not None and graph.node(x).shape == node.shape:
                return (x, bound, None) if node.op == "maximum" else (x, None, bound)
    return None


def _merge_clamps(graph: Graph, node: Node) -> bool:
    outer = _clamp_of(graph, node)
    inner_node = graph.node(outer[0]) if outer else None
    inner = _clamp_of(graph, inner_node) if inner_node else None
    if outer is None or inner is None or inner_node is None:
        return False
    if len(graph.users(inner_node.name)) != 1 or inner_node.name in graph.outputs:
        return False
    lo, hi = _compose_clamps(inner[1:], outer[1:])
    op, attrs = next(((op, {}) for op, b in _FIXED_CLAMPS.items() if b == (lo, hi)), ("clip", {"min": lo, "max": hi}))
    scope = node.name.rpartition(".")[0]
    merged = graph.add(op, [inner[0]], attrs, name=f"{scope}.{op}" if scope else op, after=node.name)
    return _replace(graph, node, merged.name)


def _compose_clamps(
    first: tuple[float | None, float | None], then: tuple[float | None, float | None]
) -> tuple[float | None, float | None]:
    """The interval of ``clamp(clamp(x, *first), *then)``: a clamp is monotone, so the
    composition clamps to the images of ``first``'s bounds under ``then``."""

    def apply(v: float) -> float:
        lo, hi = then
        return min(max(v, -np.inf if lo is None else lo), np.inf if hi is None else hi)

    lo = apply(-np.inf if first[0] is None else first[0])
    hi = apply(np.inf if first[1] is None else first[1])
    return (None if np.isinf(lo) else float(lo)), (None if np.isinf(hi) else float(hi))


def _fuse_gelu(graph: Graph, node: Node) -> bool:
    if node.op not in ("mul", "div") or not np.issubdtype(np.dtype(node.dtype), np.floating):
        return False
    product = _product(graph, node.name, root=True)
    if product is None or not math.isclose(product[0], 0.5, rel_tol=1e-6) or len(product[1]) != 2:
        return False
    for x, other in (product[1], product[1][::-1]):
        approximate = _gelu_form(graph, other, x) if graph.node(x).shape == node.shape else None
        if approximate is not None:
            scope = node.name.rpartition(".")[0]
            gelu = graph.add(
                "gelu", [x], {"approximate": approximate}, name=f"{scope}.gelu" if scope else "gelu", after=node.name
            )
            return _replace(graph, node, gelu.name)
    return False


def _gelu_form(graph: Graph, name: str, x: str) -> bool | None:
    """Which GELU ``x * 0.5 * name`` is: False (exact) where ``name`` is ``1 + erf(x / sqrt 2)``
    (or ``1 - erf(-x / sqrt 2)``, how ``jax.nn.gelu``'s erfc imports), True (tanh) where it
    is ``1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))``; None where it is neither."""
    node = graph.node(name)
    if len(graph.users(name)) != 1 or name in graph.outputs or node.op not in ("add", "sub"):
        return None
    pairs = [node.inputs, node.inputs[::-1]] if node.op == "add" else [node.inputs]
    sign = 1.0 if node.op == "add" else -1.0
    for one, term in pairs:
        if _scalar(graph, one) != 1.0:
            continue
        erf = _sole_input(graph, term, "erf")
        if erf is not None and _is_close(_linear(graph, erf.inputs[0], x), sign * math.sqrt(0.5)):
            return False
        tanh = _sole_input(graph, term, "tanh") if sign > 0 else None
        if tanh is not None and _is_tanh_gelu_argument(graph, tanh.inputs[0], x):
            return True
    return None


def _is_tanh_gelu_argument(graph: Graph, name: str, x: str) -> bool:
    """Whether ``name`` is ``sqrt(2 / pi) * (x + 0.044715 * x^3)``."""
    outer = _product(graph, name, root=True)
    if outer is None or not _is_close(outer[0], math.sqrt(2 / math.pi)) or len(outer[1]) != 1:
        return False
    total = _sole_input(graph, outer[1][0], "add")
    for a, cubic in [total.inputs, total.inputs[::-1]] if total is not None else []:
        inner = _product(graph, cubic) if a == x else None
        if inner is None or not _is_close(inner[0], 0.044715) or len(inner[1]) != 1:
            continue
        power = _sole_input(graph, inner[1][0], "pow")
        if power is not None and power.inputs[0] == x and _scalar(graph, power.inputs[1]) == 3.0:
            return True
    return False


def _linear(graph: Graph, name: str, x: str) -> float | None:
    """``k`` where ``name`` is ``k * x`` by scalar ``mul``/``div``/``neg`` steps, else None."""
    product = _product(graph, name, root=True)
    return product[0] if product is not None and product[1] == [x] else None


def _is_close(value: float | None, want: float) -> bool:
    return value is not None and math.isclose(value, want, rel_tol=1e-6)


def _product(graph: Graph, name: str, *, root: bool = False) -> tuple[float, list[str]] | None:
    """``(scale, factors)`` of a tree of ``mul``s (and ``div``s by scalar weights, and ``neg``s)
    whose inner nodes only feed the tree: the scalar weights multiplied, the other operands
    listed."""
    value = _scalar(graph, name)
    if value is not None:
        return value, []
    node = graph.node(name)
    inner = root or (len(graph.users(name)) == 1 and name not in graph.outputs)
    if inner and node.op == "neg":
        negated = _product(graph, node.inputs[0])
        return None if negated is None else (-negated[0], negated[1])
    if not inner or node.op not in ("mul", "div"):
        return 1.0, [name]
    divisor = _scalar(graph, node.inputs[1]) if node.op == "div" else None
    if node.op == "div" and not divisor:
        return None if root else (1.0, [name])
    parts = [_product(graph, node.inputs[0])] + ([] if divisor else [_product(graph, node.inputs[1])])
    if any(p is None for p in parts):
        return None
    scale = math.prod(p[0] for p in parts if p is not None) / (divisor or 1.0)
    return scale, [f for p in parts if p is not None for f in p[1]]


def _sole_input(graph: Graph, name: str, op: str) -> Node | None:
    """The node ``name`` if it is an ``op`` read only once (so a fusion may consume it)."""
    node = graph.node(name)
    if node.op != op or len(graph.users(name)) != 1 or name in graph.outputs:
        return None
    return node


def _fuse_layer_norm(graph: Graph, node: Node) -> bool:
    core = _layer_norm_core(graph, node) if node.op == "div" else None
    if core is None:
        return False
    x, axis, epsilon = core
    top, affine = node, dict[str, str]()
    for op in ("mul", "add"):  # scale, then bias; each optional
        users = graph.users(top.name)
        if len(users) == 1 and top.name not in graph.outputs and users[0].op == op:
            param = _affine_param(graph, users[0], top.name, x, axis)
            if param is not None:
                top, affine[op] = users[0], param
    if "mul" not in affine:  # the IR's layer_norm always scales
        ones = np.ones(graph.node(x).shape[axis:], dtype=node.dtype)
        affine["mul"] = graph.add_const("literal", ones).name
    params = [affine["mul"]] + ([affine["add"]] if "add" in affine else [])
    scope = top.name.rpartition(".")[0]
    name = f"{scope}.layer_norm" if scope else "layer_norm"
    fused = graph.add("layer_norm", [x, *params], {"axis": axis, "epsilon": epsilon}, name=name, after=top.name)
    return _replace(graph, top, fused.name)


def _layer_norm_core(graph: Graph, div: Node) -> tuple[str, int, float] | None:
    """``(x, axis, eps)`` when ``div`` is ``(x - mean) / sqrt(var + eps)`` over x's axes from
    ``axis`` on, every inner node read only inside the pattern."""
    centered = graph.node(div.inputs[0])
    std = _sole_input(graph, div.inputs[1], "sqrt")
    var_eps = _sole_input(graph, std.inputs[0], "add") if std else None
    if centered.op != "sub" or var_eps is None or not np.issubdtype(np.dtype(div.dtype), np.floating):
        return None
    epsilon, var_name = next(
        ((_scalar(graph, a), b) for a, b in (var_eps.inputs, var_eps.inputs[::-1]) if _scalar(graph, a) is not None),
        (None, ""),
    )
    var = _sole_input(graph, var_name, "reduce_mean") if epsilon is not None else None
    mean = _sole_input(graph, centered.inputs[1], "reduce_mean")
    x = centered.inputs[0]
    if var is None or mean is None or mean.inputs[0] != x or epsilon is None:
        return None
    square = _sole_input(graph, var.inputs[0], "pow") or _sole_input(graph, var.inputs[0], "mul")
    if square is None or not (
        (square.op == "pow" and square.inputs[0] == centered.name and _scalar(graph, square.inputs[1]) == 2.0)
        or (square.op == "mul" and square.inputs == (centered.name, centered.name))
    ):
        return None
    rank = len(graph.node(x).shape)
    axes = tuple(sorted(a % rank for a in mean.attrs["axes"]))
    trailing = bool(axes) and axes == tuple(range(axes[0], rank))
    same = (
        axes == tuple(sorted(a % rank for a in var.attrs["axes"])) and mean.attrs["keepdims"] and var.attrs["keepdims"]
    )
    readers = {u.name for u in graph.users(centered.name)}
    if not (trailing and same) or readers != {square.name, div.name} or centered.name in graph.outputs:
        return None
    return x, axes[0], epsilon


def _affine_param(graph: Graph, step: Node, prev: str, x: str, axis: int) -> str | None:
    """The weight ``step`` (a mul or add) applies to ``prev``, if it broadcasts over x's
    normalised axes only (so the fused op's scale or bias can hold it)."""
    other = next((i for i in step.inputs if i != prev), None)
    if other is None or graph.node(other).op != CONST_OP or step.type != graph.node(x).type:
        return None
    norm_shape, shape = graph.node(x).shape[axis:], graph.node(other).shape
    fits = len(shape) <= len(norm_shape) and all(d in (1, n) for d, n in zip(shape[::-1], norm_shape[::-1]))
    return other if fits else None


_RULES: tuple[Rule, ...] = (
    _drop_identity,
    _merge_reshapes,
    _reshape_to_flatten,
    _bypass_broadcast,
    _global_avg_pool,
    _merge_scalar_mul_div,
    _merge_clamps,
    _fuse_gelu,
    _fuse_layer_norm,
)
