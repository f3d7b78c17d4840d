"""ONNX elementwise operators, casts and the nodes that only rename a tensor (Identity, Constant).

Opset-dependent forms (Clip's bounds as attributes before opset 11, the legacy
``broadcast``/``axis`` of opset < 7 binary ops) become the IR's single form here. GELU
is one IR op (``gelu``) whether spelled ``Gelu`` (opset 20) or through ``Erf`` (the
``simplify`` pass recognises the latter).
"""

from __future__ import annotations

import math

import numpy as np

from dyno_compile.frontend.onnx_context import Context, OnnxNode, constant_value, np_dtype, optional_scalar

__all__ = [
    "binary",
    "cast",
    "cast_like",
    "clip",
    "constant",
    "dropout",
    "gelu",
    "hard_sigmoid",
    "identity",
    "pow_",
    "unary",
    "variadic",
]


def unary(ir_op: str, ctx: Context, node: OnnxNode) -> str:
    return ctx.add(ir_op, [ctx.input(node)], None, node)


def binary(ir_op: str, ctx: Context, node: OnnxNode) -> str:
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    if ir_op == "div" and not np.issubdtype(np.dtype(ctx.dtype(a)), np.floating):
        raise ctx.unsupported(
            node,
            "integer division of values computed at run time is not supported (the IR's div "
            "is true division); shape arithmetic on static shapes is folded at import",
        )
    if ctx.opset < 7 and node.attrs.get("broadcast", 0) and "axis" in node.attrs:
        b = _legacy_broadcast(ctx, node, a, b)
    return ctx.add(ir_op, [a, b], None, node)


def pow_(ctx: Context, node: OnnxNode) -> str:
    """Pow's result has the base's type whatever the exponent's (ONNX); the IR's pow promotes,
    so a known exponent is stored in the base's dtype and a computed one is cast to it."""
    x = ctx.input(node, 0)
    dtype = ctx.dtype(x)
    tensor = node.inputs[1]
    if tensor in ctx.constants and tensor not in ctx.tensors and ctx.constants[tensor].dtype != dtype:
        e = ctx.graph.add_const(f"{node.base_name}_exponent", ctx.constants[tensor].astype(dtype)).name
    else:
        e = ctx.input(node, 1)
        if ctx.dtype(e) != dtype:
            e = ctx.add("cast", [e], {"dtype": dtype}, node, "exponent")
    return ctx.add("pow", [x, e], None, node)


def gelu(ctx: Context, node: OnnxNode) -> str:
    """Gelu (opset 20): ``approximate`` is ``none`` (erf) or ``tanh``."""
    approximate = node.attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.unsupported(node, f"approximate={approximate!r}; only 'none' and 'tanh' exist")
    return ctx.add("gelu", [ctx.input(node)], {"approximate": approximate == "tanh"}, node)


def _legacy_broadcast(ctx: Context, node: OnnxNode, a: str, b: str) -> str:
    """Opset < 7 aligned ``b`` at ``axis`` of ``a``; NumPy rules align trailing dims, so pad with 1s."""
    rank_a, shape_b = len(ctx.shape(a)), ctx.shape(b)
    axis = node.attrs["axis"] % rank_a
    trailing = rank_a - axis - len(shape_b)
    if trailing <= 0:
        return b
    return ctx.add("reshape", [b], {"shape": shape_b + (1,) * trailing}, node, "b_aligned")


def variadic(ir_op: str, ctx: Context, node: OnnxNode) -> str:
    """Max/Min of N inputs as a chain of binary ops; the last one carries the node's name."""
    names = [ctx.value(t, node) for t in node.inputs if t]
    if len(names) == 1:
        return ctx.add("identity", names, None, node)
    acc = names[0]
    for k, other in enumerate(names[1:], start=1):
        acc = ctx.add(ir_op, [acc, other], None, node, "" if k == len(names) - 1 else f"part{k}")
    return acc


def clip(ctx: Context, node: OnnxNode) -> str:
    """Bounds are attributes before opset 11 and optional constant inputs from opset 11 on."""
    if ctx.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    else:
        lo = optional_scalar(ctx, node, 1, "min")
        hi = optional_scalar(ctx, node, 2, "max")
    return ctx.add("clip", [ctx.input(node)], {"min": lo, "max": hi}, node)


def hard_sigmoid(ctx: Context, node: OnnxNode) -> str:
    """``max(0, min(1, alpha*x + beta))``; the IR's hardsigmoid is the alpha=1/6, beta=1/2 case."""
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    x = ctx.input(node)
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5, rel_tol=1e-6):
        return ctx.add("hardsigmoid", [x], None, node)
    scaled = ctx.add("mul", [x, ctx.scalar(alpha, ctx.dtype(x), node, "alpha")], None, node, "scaled")
    shifted = ctx.add("add", [scaled, ctx.scalar(beta, ctx.dtype(x), node, "beta")], None, node, "shifted")
    return ctx.add("clip", [shifted], {"min": 0.0, "max": 1.0}, node)


def cast(ctx: Context, node: OnnxNode) -> str:
    dtype = np_dtype(node.attrs["to"], f"Cast node {node.name!r}", ctx.source)
    return ctx.add("cast", [ctx.input(node)], {"dtype": dtype}, node)


def cast_like(ctx: Context, node: OnnxNode) -> str:
    """CastLike (opset 15; the dynamo exporter casts its constants so): a cast to input 1's dtype."""
    return ctx.add("cast", [ctx.input(node)], {"dtype": ctx.static_dtype(node, 1)}, node)


def identity(ctx: Context, node: OnnxNode) -> str:
    """No IR node: readers of the output read the input (Identity, inference-time Dropout)."""
    return ctx.input(node)


def dropout(ctx: Context, node: OnnxNode) -> str:
    if node.has_input(2) and bool(ctx.const_input(node, 2, "training_mode").reshape(())):
        raise ctx.unsupported(node, "Dropout in training mode is not supported")
    return identity(ctx, node)


def constant(ctx: Context, node: OnnxNode) -> None:
    """Keep the value aside like an initializer; it becomes a const node only if read as a tensor."""
    value = constant_value(node)
    if value is None:
        raise ctx.unsupported(node, f"only value/value_float(s)/value_int(s) are supported, got {sorted(node.attrs)}")
    ctx.constants[node.outputs[0]] = value
    return None
