"""Each pass alone, checked through the reference interpreter before and after."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import conv_bn_relu_graph, rel_err
from dyno_compile.errors import GraphError
from dyno_compile.frontend.jax_import import from_jax
from dyno_compile.ir import Graph, Interpreter, validate
from dyno_compile.passes import (
    annotate_costs,
    eliminate_dead_code,
    find_cuts,
    fold_bn,
    fold_constants,
    infer_shapes,
    run_passes,
    simplify,
)

X = np.random.default_rng(1).normal(size=(2, 4, 8, 8)).astype(np.float32)


def _ops(g: Graph) -> list[str]:
    return [n.op for n in g.compute_nodes]


@pytest.mark.parametrize("p", [fold_constants, simplify, fold_bn, eliminate_dead_code, annotate_costs])
def test_every_pass_preserves_meaning_and_leaves_input_untouched(rng, p):
    g = conv_bn_relu_graph(rng, residual=True)
    before = [(n.name, n.op, n.inputs) for n in g.nodes]
    h = p(g)
    validate(h)
    assert [(n.name, n.op, n.inputs) for n in g.nodes] == before
    assert rel_err(Interpreter(h)(X), Interpreter(g)(X)) <= 1e-5


def test_fold_bn_removes_batch_norm_into_conv(rng):
    g = conv_bn_relu_graph(rng)
    h = fold_bn(g)
    assert _ops(h) == ["conv2d", "relu"]
    assert h.node("conv1").inputs == ("x", "w1", "conv1.bias")
    assert rel_err(Interpreter(h)(X), Interpreter(g)(X)) <= 1e-5


def test_fold_bn_folds_chains_of_channel_affine_ops(rng):
    g = Graph()
    g.add_input("x", (1, 3, 5, 5))
    g.add_const("w", rng.normal(size=(6, 3, 3, 3)).astype(np.float32))
    g.add_const("m", rng.normal(size=(1, 6, 1, 1)).astype(np.float32))
    g.add_const("s", rng.uniform(1, 2, size=(6, 1, 1)).astype(np.float32))
    g.add_const("t", np.float32(0.5))
    y = g.add("conv2d", ["x", "w"], name="conv").name
    for op, operand in (("sub", "m"), ("div", "s"), ("mul", "s"), ("add", "t")):
        y = g.add(op, [y, operand]).name
    g.set_outputs([y])
    h = fold_bn(g)
    assert _ops(h) == ["conv2d"]
    x = rng.normal(size=(1, 3, 5, 5)).astype(np.float32)
    assert rel_err(Interpreter(h)(x), Interpreter(g)(x)) <= 1e-5


def test_fold_bn_declines_when_conv_has_other_readers(rng):
    g = conv_bn_relu_graph(rng)
    g.set_outputs(["relu1", "conv1"])
    assert _ops(fold_bn(g)) == _ops(g)


def test_fold_bn_declines_non_channel_operand(rng):
    g = Graph()
    g.add_input("x", (1, 2, 4, 4))
    g.add_const("w", rng.normal(size=(2, 2, 1, 1)).astype(np.float32))
    g.add_const("spatial", rng.normal(size=(1, 1, 4, 4)).astype(np.float32))
    c = g.add("conv2d", ["x", "w"])
    g.set_outputs([g.add("mul", [c.name, "spatial"]).name])
    assert _ops(fold_bn(g)) == ["conv2d", "mul"]


def test_fold_constants_evaluates_weight_arithmetic(rng):
    g = Graph()
    g.add_input("x", (2, 4))
    g.add_const("v", rng.uniform(1, 2, 4).astype(np.float32))
    r = g.add("rsqrt", ["v"])
    m = g.add("mul", ["x", r.name])
    g.set_outputs([m.name])
    h = fold_constants(g)
    assert _ops(h) == ["mul"]
    x = rng.normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(Interpreter(h)(x), Interpreter(g)(x), rtol=1e-6)


def test_dead_code_elimination_drops_unread_nodes_but_keeps_inputs(rng):
    g = conv_bn_relu_graph(rng)
    g.add("sigmoid", ["relu1"], name="unused")
    g.add_input("extra", (3,))
    h = eliminate_dead_code(g)
    assert "unused" not in h and "extra" in h
    assert len(h.compute_nodes) == len(g.compute_nodes) - 1


def test_simplify_recognises_global_average_pool(rng):
    g = Graph()
    g.add_input("x", (1, 3, 4, 4))
    s = g.add("reduce_sum", ["x"], {"axes": (2, 3), "keepdims": False})
    g.add_const("n", np.float32(16))
    g.set_outputs([g.add("div", [s.name, "n"]).name])
    h = eliminate_dead_code(simplify(g))
    assert _ops(h) == ["global_avg_pool2d"]
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(Interpreter(h)(x), Interpreter(g)(x), rtol=1e-6)


def test_simplify_declines_a_mean_with_the_wrong_divisor():
    g = Graph()
    g.add_input("x", (1, 3, 4, 4))
    s = g.add("reduce_sum", ["x"], {"axes": (2, 3), "keepdims": False})
    g.add_const("n", np.float32(15))
    g.set_outputs([g.add("div", [s.name, "n"]).name])
    assert _ops(simplify(g)) == ["reduce_sum", "div"]


def test_simplify_bypasses_broadcasts_into_binary_ops(rng):
    g = Graph()
    g.add_input("x", (2, 3, 4, 4))
    g.add_const("b", rng.normal(size=(1, 3, 1, 1)).astype(np.float32))
    bc = g.add("broadcast_to", ["b"], {"shape": (2, 3, 4, 4)})
    g.set_outputs([g.add("add", ["x", bc.name]).name])
    h = simplify(g)
    assert _ops(h) == ["add"]


def test_infer_shapes_rebatches_a_graph(rng):
    g = run_passes(conv_bn_relu_graph(rng, residual=True))
    h = infer_shapes(g, {"x": (5, 4, 8, 8)})
    assert h.node(h.outputs[0]).shape == (5, 4, 8, 8)
    x = rng.normal(size=(5, 4, 8, 8)).astype(np.float32)
    assert np.asarray(Interpreter(h)(x)).shape == (5, 4, 8, 8)
    with pytest.raises(GraphError, match="no input"):
        infer_shapes(g, {"y": (1,)})


def test_annotate_costs_counts_conv_macs_and_bytes(rng):
    g = annotate_costs(conv_bn_relu_graph(rng))
    conv = g.node("conv1")
    assert conv.meta["macs"] == 2 * 4 * 8 * 8 * (4 * 3 * 3)
    assert conv.meta["weight_bytes"] == 4 * 4 * 3 * 3 * 4
    assert conv.meta["in_bytes"] == conv.meta["out_bytes"] == 2 * 4 * 8 * 8 * 4


def test_find_cuts_reports_both_tensors_inside_a_residual_block(rng):
    g = run_passes(conv_bn_relu_graph(rng, residual=True))
    cuts = find_cuts(g)
    assert [c.kind for c in cuts] == ["cloud-only"] + ["split"] * 4 + ["device-only"]
    by_after = {c.after: c for c in cuts}
    act = 2 * 4 * 8 * 8 * 4
    assert cuts[0].tensors == ("x",) and cuts[0].nbytes == act
    assert set(by_after["relu1"].tensors) == {"x", "relu1"} and by_after["relu1"].nbytes == 2 * act
    assert by_after["add"].tensors == ("add",) and by_after["add"].nbytes == act
    assert cuts[-1].tensors == () and cuts[-1].nbytes == 0


def test_pipeline_names_the_failing_pass(rng):
    def breaks(graph: Graph) -> Graph:
        graph = graph.copy()
        graph.outputs = []
        return graph

    with pytest.raises(GraphError, match="pass breaks failed \\(passes run before it: fold_constants\\)"):
        run_passes(conv_bn_relu_graph(rng), [fold_constants, breaks])


def test_infer_shapes_refuses_a_node_that_pins_the_batch():
    g = Graph()
    g.add_input("x", (1, 4))
    s = g.add("slice", ["x"], {"starts": (0, 0), "limits": (1, 4)})  # keeps only the first row
    g.set_outputs([g.add("add", ["x", s.name]).name])
    with pytest.raises(GraphError, match="'slice' \\(slice\\) pins the batch size"):
        infer_shapes(g, {"x": (3, 4)})


@pytest.mark.parametrize(
    ("clamp", "want"),
    [
        (lambda x: jnp.clip(x, 0, 6), ("relu6", {})),
        (jax.nn.relu6, ("relu6", {})),
        (lambda x: jnp.minimum(jax.nn.relu(x), 6.0), ("relu6", {})),
        (lambda x: jnp.clip(x, -1.0, 1.0), ("clip", {"min": -1.0, "max": 1.0})),
        (lambda x: jnp.maximum(jnp.minimum(x, 3.0), -2.0), ("clip", {"min": -2.0, "max": 3.0})),
        (lambda x: jnp.clip(jnp.clip(x, -1.0, 4.0), 0.0, 6.0), ("clip", {"min": 0.0, "max": 4.0})),
        (lambda x: jnp.clip(jnp.clip(x, 7.0, 9.0), 0.0, 6.0), ("clip", {"min": 6.0, "max": 6.0})),
    ],
)
def test_simplify_makes_one_clamp_of_a_clip_written_as_max_and_min(clamp, want):
    """``jnp.clip`` traces to a max and a min: one user-level op must be one node, so that
    ``inspect`` shows one layer and no cut falls between its halves."""
    g = run_passes(from_jax(lambda p, x: clamp(x * 3.0), {}, X))
    ops = [(n.op, dict(n.attrs)) for n in g.compute_nodes]
    assert ops == [("mul", {}), want]
    assert len(find_cuts(g)) == 3  # before the mul, between mul and clamp, after the clamp
    assert rel_err(Interpreter(g)(X), np.asarray(clamp(X * 3.0))) == 0.0


def test_simplify_keeps_a_clamp_whose_inner_half_has_other_readers():
    def fn(p, x):
        low = jnp.maximum(x, 0.5)
        return jnp.minimum(low, 2.0) + low

    g = run_passes(from_jax(fn, {}, X))
    assert [n.op for n in g.compute_nodes] == ["maximum", "minimum", "add"]
    assert rel_err(Interpreter(g)(X), np.asarray(fn({}, X))) == 0.0


@pytest.mark.parametrize(
    ("gelu", "approximate"),
    [
        (jax.nn.gelu, True),  # JAX's default: the tanh form
        (lambda x: jax.nn.gelu(x, approximate=False), False),  # written with erfc
        (lambda x: x * 0.5 * (1 + jax.lax.erf(x / np.sqrt(2.0))), False),  # the TorchScript spelling
        (lambda x: 0.5 * x * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), True),
    ],
)
def test_simplify_makes_one_gelu_of_each_way_jax_and_exporters_write_it(gelu, approximate):
    g = run_passes(from_jax(lambda p, x: gelu(x * 3.0), {}, X))
    assert [(n.op, dict(n.attrs)) for n in g.compute_nodes] == [("mul", {}), ("gelu", {"approximate": approximate})]
    assert rel_err(Interpreter(g)(X), np.asarray(gelu(X * 3.0))) < 1e-6


def test_simplify_leaves_a_near_gelu_alone():
    """A tanh GELU with the wrong cubic coefficient is not a GELU."""

    def near(p, x):
        return 0.5 * x * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (x + 0.05 * x**3)))

    g = run_passes(from_jax(near, {}, X))
    assert "gelu" not in [n.op for n in g.compute_nodes]
    assert rel_err(Interpreter(g)(X), np.asarray(near({}, X))) < 1e-6


def test_fold_bn_merges_a_batch_norm_spelt_as_sub_mul_add_after_a_concat(rng):
    """DenseNet's pre-activation norm follows a concat, so no conv can take it: it stays one
    layer (a batch_norm), not three nodes a cut could fall between."""
    g = Graph()
    g.add_input("x", (2, 4, 8, 8))
    g.add_input("y", (2, 2, 8, 8))
    cat = g.add("concat", ["x", "y"], {"axis": 1})
    mean, scale, shift = (g.add_const(k, rng.normal(size=(1, 6, 1, 1)).astype(np.float32)) for k in "msb")
    sub = g.add("sub", [cat.name, mean.name])
    mul = g.add("mul", [sub.name, scale.name])
    add = g.add("add", [shift.name, mul.name])
    g.set_outputs([g.add("relu", [add.name]).name])
    h = fold_bn(g)
    validate(h)
    assert _ops(h) == ["concat", "batch_norm", "relu"]
    y = rng.normal(size=(2, 2, 8, 8)).astype(np.float32)
    assert rel_err(Interpreter(h)(X, y), Interpreter(g)(X, y)) <= 1e-6


def test_fold_bn_keeps_steps_along_different_axes_apart(rng):
    g = Graph()
    g.add_input("x", (2, 4, 8, 8))
    per_channel = g.add_const("c", rng.normal(size=(1, 4, 1, 1)).astype(np.float32))
    per_row = g.add_const("r", rng.normal(size=(1, 1, 8, 1)).astype(np.float32))
    a = g.add("mul", ["x", per_channel.name])
    g.set_outputs([g.add("add", [a.name, per_row.name]).name])
    assert _ops(fold_bn(g)) == ["mul", "add"]
