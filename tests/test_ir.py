"""Graph IR: building, validation errors, deterministic order, save/load, interpreter."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import conv_bn_relu_graph
from dyno_compile.errors import GraphError, InputError
from dyno_compile.ir import Graph, Interpreter, load, save, validate
from dyno_compile.ir.ops import registered_ops


def test_types_are_inferred_on_add(rng):
    g = conv_bn_relu_graph(rng)
    assert g.node("conv1").shape == (2, 4, 8, 8)
    assert g.node("relu1").dtype == "float32"
    validate(g)


def test_required_op_set_is_registered():
    needed = {
        "conv2d",
        "dense",
        "batch_norm",
        "relu",
        "relu6",
        "clip",
        "sigmoid",
        "hardswish",
        "silu",
        "add",
        "mul",
        "concat",
        "max_pool2d",
        "avg_pool2d",
        "global_avg_pool2d",
        "pad",
        "flatten",
        "reshape",
        "softmax",
    }
    assert needed <= set(registered_ops())


def test_dangling_input_is_refused():
    g = Graph()
    g.add_input("x", (1, 3))
    with pytest.raises(GraphError, match="'nope' does not exist"):
        g.add("relu", ["nope"])


def test_unknown_op_is_refused():
    g = Graph()
    g.add_input("x", (1, 3))
    with pytest.raises(GraphError, match="unknown op 'frobnicate'"):
        g.add("frobnicate", ["x"])


def test_shape_mismatch_is_refused_naming_the_node():
    g = Graph()
    g.add_input("x", (1, 3))
    g.add_input("y", (1, 4))
    with pytest.raises(GraphError, match="node 'bad' \\(add\\)"):
        g.add("add", ["x", "y"], name="bad")


def test_unknown_and_missing_attributes_are_refused():
    g = Graph()
    g.add_input("x", (1, 3))
    with pytest.raises(GraphError, match="unknown attribute"):
        g.add("relu", ["x"], {"alpha": 1})
    with pytest.raises(GraphError, match="missing attribute 'axis'"):
        g.add("concat", ["x", "x"])


def test_wrong_arity_is_refused():
    g = Graph()
    g.add_input("x", (1, 3))
    with pytest.raises(GraphError, match="takes 2 inputs, got 1"):
        g.add("add", ["x"])


def test_cycle_is_detected_on_load(tmp_path, rng):
    g = conv_bn_relu_graph(rng)
    json_path, _ = save(g, tmp_path / "m")
    data = json.loads(json_path.read_text())
    conv = next(n for n in data["nodes"] if n["name"] == "conv1")
    conv["inputs"][0] = "relu1"
    json_path.write_text(json.dumps(data))
    with pytest.raises(GraphError, match="cycle"):
        load(tmp_path / "m")


def test_declared_type_mismatch_is_detected_on_load(tmp_path, rng):
    json_path, _ = save(conv_bn_relu_graph(rng), tmp_path / "m")
    data = json.loads(json_path.read_text())
    next(n for n in data["nodes"] if n["name"] == "relu1")["shape"] = [2, 4, 9, 9]
    json_path.write_text(json.dumps(data))
    with pytest.raises(GraphError, match="shape mismatch"):
        load(tmp_path / "m")


@pytest.mark.parametrize("damage", ["truncate_json", "drop_npz", "garbage_npz", "wrong_format", "missing_field"])
def test_bad_files_give_clear_errors(tmp_path, rng, damage):
    json_path, npz_path = save(conv_bn_relu_graph(rng), tmp_path / "m")
    if damage == "truncate_json":
        json_path.write_text(json_path.read_text()[:100])
    elif damage == "drop_npz":
        npz_path.unlink()
    elif damage == "garbage_npz":
        npz_path.write_bytes(b"not a zip file")
    elif damage == "wrong_format":
        json_path.write_text(json.dumps({"format": "other", "version": 1}))
    else:
        data = json.loads(json_path.read_text())
        del data["nodes"][1]["op"]
        json_path.write_text(json.dumps(data))
    with pytest.raises(GraphError):
        load(tmp_path / "m")


def test_save_load_round_trip_is_exact(tmp_path, rng):
    g = conv_bn_relu_graph(rng, residual=True)
    g.node("conv1").meta["macs"] = 123
    save(g, tmp_path / "m")
    h = load(tmp_path / "m")
    assert [(n.name, n.op, n.inputs, n.attrs, n.type) for n in g.nodes] == [
        (n.name, n.op, n.inputs, n.attrs, n.type) for n in h.nodes
    ]
    assert h.node("conv1").meta == {"macs": 123}
    x = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(Interpreter(g)(x), Interpreter(h)(x))


def test_save_never_leaves_partial_files(tmp_path, rng):
    g = conv_bn_relu_graph(rng)
    g.node("conv1").meta["bad"] = object()  # not JSON-able
    with pytest.raises(TypeError):
        save(g, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_topological_order_is_deterministic_program_order(rng):
    g = conv_bn_relu_graph(rng, residual=True)
    names = [n.name for n in g.compute_nodes]
    assert names == ["conv1", "bn1", "relu1", "conv2", "add", "relu2"]
    assert [n.name for n in g.copy().compute_nodes] == names


def test_copy_is_independent_and_takes_types_as_they_are(rng, monkeypatch):
    g = conv_bn_relu_graph(rng, residual=True)
    g.node("conv1").meta["cost"] = {"macs": 1}
    import dyno_compile.ir.graph as graph_module

    def no_inference(*args, **kwargs):
        raise AssertionError("copy re-inferred a type")

    monkeypatch.setattr(graph_module, "infer_type", no_inference)
    c = g.copy()
    monkeypatch.undo()
    assert [(n.name, n.op, n.inputs, n.type) for n in c.nodes] == [(n.name, n.op, n.inputs, n.type) for n in g.nodes]
    assert c.outputs == g.outputs and c.params["w1"] is g.params["w1"]
    c.node("conv1").meta["cost"]["macs"] = 2
    c.node("relu2").meta["tag"] = "copy"
    assert g.node("conv1").meta["cost"] == {"macs": 1} and "tag" not in g.node("relu2").meta
    c.add("neg", ["relu2"], name="tail")
    c.set_outputs(["tail"])
    assert "tail" not in g and g.outputs == ["relu2"] and c.nodes[-1].name == "tail"


def test_erase_refuses_a_node_with_users(rng):
    g = conv_bn_relu_graph(rng)
    with pytest.raises(GraphError, match="still read by"):
        g.erase("conv1")


def test_interpreter_is_jittable_and_checks_inputs(rng):
    g = conv_bn_relu_graph(rng)
    x = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    eager = Interpreter(g, jit=False)(x)
    np.testing.assert_allclose(Interpreter(g)(x), eager, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="expects shape \\(2, 4, 8, 8\\), got \\(1, 4, 8, 8\\)"):
        Interpreter(g)(x[:1])
    with pytest.raises(InputError, match="takes 1 input"):
        Interpreter(g)(x, x)


def test_interpreter_matches_hand_computation():
    g = Graph()
    g.add_input("x", (1, 2, 2, 2))
    g.add_const("w", np.ones((3, 2, 1, 1), np.float32))
    c = g.add("conv2d", ["x", "w"])
    g.set_outputs([g.add("global_avg_pool2d", [c.name], {"keepdims": False}).name])
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    expected = np.full((1, 3), x.sum() / 4, np.float32)
    np.testing.assert_allclose(Interpreter(g)(x), expected)
    assert isinstance(Interpreter(g)(x), jax.Array)
