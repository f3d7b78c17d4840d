"""JAX frontend: trace ``f(params, *inputs)`` to a jaxpr and translate it to the graph IR.

Works for plain lax/jnp code and for Flax modules through ``module.apply`` (whose
``variables`` are the params). Leaves of ``params`` become ``const`` nodes named by their
pytree path (``layer1.0.conv1.weight``, ``params.Conv_0.kernel``), so the IR keeps the
user's names. Calls that JAX names (``jax.nn.relu``, ``relu6``, ``silu``, ``hard_swish``
...) become single IR ops; other nested calls are inlined. Any primitive without a
translation is an ``UnsupportedOpError`` naming it and the source line; nothing partial
is returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend as jex
import numpy as np

from dyno_compile.errors import FrontendError, UnsupportedOpError
from dyno_compile.frontend.jax_rules import NAMED_CALLS, RULES, Emitter, describe
from dyno_compile.ir import Graph

_CALL_PRIMITIVES = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}


def from_jax(
    fn: Callable[..., Any],
    params: Any,
    *example_inputs: Any,
    name: str = "model",
    input_names: Sequence[str] | None = None,
) -> Graph:
    """Translate ``fn(params, *inputs)`` into a Graph.

    ``example_inputs`` are arrays or ``jax.ShapeDtypeStruct``s; only their shapes and
    dtypes matter. Returns a graph whose interpreter computes what ``fn`` computes.
    """
    if not example_inputs:
        raise FrontendError(f"{name}: give at least one example input (an array or jax.ShapeDtypeStruct)")
    specs = [jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", np.float32)) for x in example_inputs]
    try:
        closed = jax.make_jaxpr(fn)(params, *specs)
    except Exception as exc:
        raise FrontendError(f"{name}: tracing the JAX function failed: {exc}") from exc

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = input_names or (["x"] if len(specs) == 1 else [f"x{i}" for i in range(len(specs))])
    if len(names) != len(specs):
        raise FrontendError(f"{name}: {len(names)} input names for {len(specs)} inputs")

    graph = Graph(name)
    emit = Emitter(graph)
    jaxpr = closed.jaxpr
    n_params = len(leaves)
    for var, (path, value) in zip(jaxpr.invars[:n_params], leaves):
        emit.bind(var, graph.add_const(_param_name(path), np.asarray(value)).name)
    for var, input_name, spec in zip(jaxpr.invars[n_params:], names, specs):
        emit.bind(var, graph.add_input(input_name, spec.shape, np.dtype(spec.dtype).name).name)
    for var, value in zip(jaxpr.constvars, closed.consts):
        emit.bind(var, graph.add_const("captured", np.asarray(value)).name)
    outs = _translate(emit, jaxpr, name)
    graph.set_outputs(outs)
    return graph


def _translate(emit: Emitter, jaxpr: jex.core.Jaxpr, model: str, calls: tuple = ()) -> list[str]:
    """Translate each equation; returns the IR names of the jaxpr's outputs.

    ``calls`` are the enclosing call equations of an inlined jaxpr, for error locations.
    """
    for eqn in jaxpr.eqns:
        if not calls:  # inlined equations keep the scope of the call they came from
            emit.scope = str(eqn.source_info.name_stack).replace("/", ".")
        ins = [emit.read(v) for v in eqn.invars]
        outs = _translate_eqn(emit, eqn, ins, model, calls)
        for var, out in zip(eqn.outvars, outs):
            emit.bind(var, out)
    return [emit.read(v) for v in jaxpr.outvars]


def _translate_eqn(emit: Emitter, eqn: jex.core.JaxprEqn, ins: list[str], model: str, calls: tuple) -> list[str]:
    prim = eqn.primitive.name
    if prim in _CALL_PRIMITIVES:
        inner = eqn.params[_CALL_PRIMITIVES[prim]]
        named = NAMED_CALLS.get(eqn.params.get("name", ""))
        if named is not None and len(ins) == 1 and len(eqn.outvars) == 1:
            return [emit.op(named, ins)]
        return _inline(emit, inner, ins, model, (*calls, eqn))
    rule = RULES.get(prim)
    if rule is None:
        raise UnsupportedOpError(
            prim,
            describe(eqn, *calls),
            source=f"JAX model {model!r}",
            hint="rewrite it with supported lax/jnp operations or add a translation rule",
        )
    return rule(emit, eqn, ins)


def _inline(emit: Emitter, inner: Any, ins: list[str], model: str, calls: tuple) -> list[str]:
    jaxpr = getattr(inner, "jaxpr", inner)
    for var, value in zip(jaxpr.constvars, getattr(inner, "consts", ())):
        emit.bind(var, emit.graph.add_const("captured", np.asarray(value)).name)
    for var, name in zip(jaxpr.invars, ins):
        emit.bind(var, name)
    return _translate(emit, jaxpr, model, calls)


def _param_name(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".") or "param"
