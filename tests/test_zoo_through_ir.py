"""Every zoo model through the JAX frontend and every pass, against the original JAX function;
real CIFAR-10 weights reach their published accuracy through the IR; ResNet-50 cut points."""

from __future__ import annotations

from functools import cache

import jax
import numpy as np
import pytest

from conftest import rel_err
from dyno_compile import zoo
from dyno_compile.datasets import cifar10
from dyno_compile.frontend.jax_import import from_jax
from dyno_compile.ir import Graph, Interpreter
from dyno_compile.passes import STANDARD_PASSES, find_cuts, infer_shapes, run_passes


@cache
def _imported(name: str) -> tuple[zoo.ZooModel, Graph]:
    model = zoo.get_model(name, weights=None if name in ("resnet20", "resnet56") else zoo.RANDOM, random_bn=True)
    return model, from_jax(model.fn, model.params, model.random_input(), name=name)


#: vgg16 (15 GMACs) takes ~25 s op by op through six passes; its ops are all covered by
#: the others, so it runs in the slow job.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "vgg16" else n for n in zoo.list_models()]
)
def test_ir_matches_jax_before_and_after_every_pass(name):
    model, graph = _imported(name)
    x = model.random_input(seed=1)
    ref = np.asarray(jax.jit(model.fn)(model.params, x))
    assert rel_err(Interpreter(graph, jit=False)(x), ref) <= 1e-4, "frontend"
    for p in STANDARD_PASSES:
        graph = run_passes(graph, [p])
        assert rel_err(Interpreter(graph, jit=False)(x), ref) <= 1e-4, p.__name__
    assert not any(n.op in ("sub", "rsqrt") for n in graph.compute_nodes)
    # a batch norm stays (one node) only where no conv or dense layer before it can take it
    producers = {graph.node(n.inputs[0]).op for n in graph.compute_nodes if n.op == "batch_norm"}
    assert not producers & {"conv2d", "dense"}, producers


@pytest.mark.parametrize("name, correct", [("resnet20", 854), ("resnet56", 863)])
def test_real_cifar_weights_reach_published_accuracy_through_the_ir(name, correct):
    x, y = cifar10.load_test()
    graph = infer_shapes(run_passes(_imported(name)[1]), {"x": x.shape})
    logits = np.asarray(Interpreter(graph)(x))
    hits = int((logits.argmax(axis=1) == y).sum())
    assert abs(hits - correct) / len(y) <= 0.002, f"{name}: {hits}/{len(y)}"


def test_resnet50_block_boundaries_are_single_tensor_cuts():
    graph = run_passes(_imported("resnet50")[1])
    cuts = {c.after: c for c in find_cuts(graph)}
    blocks = [f"layer{s}.{i}" for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3)) for i in range(n)]
    for block in blocks:
        out = f"{block}.relu_2"  # the ReLU after the residual add ends the block
        cut = cuts[out]
        assert cut.tensors == (out,), block
        assert cut.nbytes == graph.node(out).type.nbytes == int(np.prod(graph.node(out).shape)) * 4
    # inside a block (after its first ReLU) the branch and the shortcut both cross
    inner = cuts["layer2.1.relu"]
    assert set(inner.tensors) == {"layer2.1.relu", "layer2.0.relu_2"}
    assert inner.nbytes == sum(graph.node(t).type.nbytes for t in inner.tensors) == (128 * 28 * 28 + 512 * 28 * 28) * 4
