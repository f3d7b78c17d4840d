"""Segments, split and pack insertion: every cut of resnet20 (real weights) against the whole
model and against a NumPy reference of the same input-specific quantization."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from conftest import rel_err
from dyno_compile import zoo
from dyno_compile.errors import GraphError
from dyno_compile.frontend.jax_import import from_jax
from dyno_compile.ir import Graph, Interpreter
from dyno_compile.ir.ops.quant import bitpack, bitunpack, dequantize, quant_range, quantize
from dyno_compile.passes import find_cuts, run_passes
from dyno_compile.passes.insert_pack import insert_pack
from dyno_compile.passes.segment import segment
from dyno_compile.passes.split import split


@cache
def _resnet20() -> tuple[Graph, np.ndarray]:
    m = zoo.get_model("resnet20")
    return run_passes(from_jax(m.fn, m.params, m.random_input())), m.random_input(seed=3)


def _run(graph: Graph, *args) -> tuple:
    out = Interpreter(graph, jit=False)(*args)
    return out if isinstance(out, tuple) else (out,)


def _fake_quant(x: np.ndarray, bits: int, granularity: str, axis: int = 1) -> np.ndarray:
    """Independent NumPy statement of the documented formula."""
    x = x.astype(np.float32)
    axes = tuple(range(x.ndim)) if granularity == "tensor" else tuple(a for a in range(x.ndim) if a != axis)
    lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    scale = ((hi - lo) * np.float32(1 / (2**bits - 1))).astype(np.float32)
    scale = np.where(scale < np.float32(2.0**-126), np.float32(1), scale).astype(np.float32)
    q = np.clip(np.round((x - lo) * (np.float32(1) / scale)), 0, 2**bits - 1)
    return (q.astype(np.float32) * scale + lo).astype(np.float32)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 9, 12, 16])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_quant_ops_match_numpy_reference_and_pack_exactly(rng, bits, granularity):
    x = np.maximum(rng.normal(size=(2, 5, 3, 7)), 0).astype(np.float32)
    x[1, 2] = 0.7  # a constant channel
    attrs = {"bits": bits, "granularity": granularity, "axis": 1}
    r = quant_range(x, **attrs)
    q = quantize(x, r, **attrs)
    np.testing.assert_array_equal(dequantize(q, r, granularity=granularity, axis=1), _fake_quant(x, bits, granularity))
    packed = bitpack(q, bits=bits)
    assert packed.shape == ((x.size * bits + 7) // 8,)
    np.testing.assert_array_equal(bitunpack(packed, bits=bits, shape=x.shape), q)


def test_bitpack_layout_is_lsb_first_stream():
    codes = np.array([1, 2, 3, 0, 7], np.uint8)  # 3 bits each: 001 010 011 000 111
    stream = "".join(format(int(c), "03b")[::-1] for c in codes)  # LSB first
    stream += "0" * (-len(stream) % 8)
    expected = [int(stream[i : i + 8][::-1], 2) for i in range(0, len(stream), 8)]
    np.testing.assert_array_equal(bitpack(codes, bits=3), np.array(expected, np.uint8))


def test_segments_chain_to_the_whole_model():
    graph, x = _resnet20()
    segs = segment(graph, [c.position for c in find_cuts(graph)])
    assert len(segs) == len(graph.compute_nodes)
    env = {"x": x}
    for s in segs:
        env.update(zip(s.outputs, _run(s.graph, *[env[i] for i in s.inputs])))
    assert rel_err(env[graph.outputs[0]], _run(graph, x)[0]) <= 1e-5


def test_segment_rejects_out_of_range_cuts():
    graph, _ = _resnet20()
    with pytest.raises(GraphError, match="out of range"):
        segment(graph, [999])


def test_segment_refuses_an_early_output_that_no_later_node_reads():
    g = Graph("two_outputs")  # x -> relu (an output) -> neg -> exp (an output)
    g.add_input("x", (1, 4))
    g.add("relu", ["x"], name="r")
    g.add("neg", ["r"], name="n")
    g.add("exp", ["n"], name="e")
    g.set_outputs(["r", "e"])
    with pytest.raises(GraphError, match=r"outputs \['r'\] are computed before cut position 2.*not read after"):
        segment(g, [2])
    # Cut at 1 the relu crosses into the last segment (the neg reads it), which returns it.
    assert [s.outputs for s in segment(g, [1])] == [("r",), ("r", "e")]


def test_segment_passes_an_early_output_that_a_later_node_reads_through_to_the_end():
    g = Graph("read_later")
    g.add_input("x", (1, 4))
    g.add("relu", ["x"], name="r")
    g.add("neg", ["r"], name="n")
    g.add("add", ["n", "r"], name="a")
    g.set_outputs(["r", "a"])
    segs = segment(g, [1, 2])
    assert segs[-1].inputs == ("r", "n") and segs[-1].outputs == ("r", "a")
    x = np.array([[-1.0, 0.5, 2.0, -3.0]], np.float32)
    env = {"x": x}
    for s in segs:
        env.update(zip(s.outputs, _run(s.graph, *[env[i] for i in s.inputs])))
    np.testing.assert_array_equal(env["r"], np.maximum(x, 0))
    np.testing.assert_array_equal(env["a"], np.zeros_like(x))


def test_every_float32_split_equals_the_unsplit_model():
    graph, x = _resnet20()
    ref = _run(graph, x)[0]
    for cut in find_cuts(graph):
        model = split(graph, cut.position)
        sent = _run(model.device, x)
        if model.cloud is None:
            assert rel_err(sent[0], ref) <= 1e-6
            continue
        assert [n.name for n in model.cloud.inputs] == list(cut.tensors)
        assert sum(np.asarray(s).nbytes for s in sent) == cut.nbytes
        assert rel_err(_run(model.cloud, *sent)[0], ref) <= 1e-5, cut


@pytest.mark.parametrize("bits", ["float16", 8, 4, 2])
def test_every_packed_split_equals_the_reference_with_the_same_quantization(bits):
    graph, x = _resnet20()
    for cut in find_cuts(graph)[:-1]:
        plain = split(graph, cut.position)
        crossing = _run(plain.device, x)
        if bits == "float16":
            received = [c.astype(np.float16).astype(np.float32) for c in map(np.asarray, crossing)]
        else:
            received = [_fake_quant(np.asarray(c), bits, "tensor") for c in crossing]
        expected = _run(plain.cloud, *received)[0]
        packed = insert_pack(plain, bits)
        sent = _run(packed.device, x)
        if bits != "float16":  # the packed payload is the dense size
            assert sum(np.asarray(s).size for s in sent[0::2]) == sum(
                (np.asarray(c).size * bits + 7) // 8 for c in crossing
            )
        assert rel_err(_run(packed.cloud, *sent)[0], expected) <= 1e-4, (bits, cut.position)


def test_per_channel_packing_and_bad_widths():
    graph, x = _resnet20()
    plain = split(graph, 20)
    crossing = _run(plain.device, x)
    expected = _run(plain.cloud, *[_fake_quant(np.asarray(c), 4, "channel") for c in crossing])[0]
    packed = insert_pack(plain, 4, granularity="channel")
    assert rel_err(_run(packed.cloud, *_run(packed.device, x))[0], expected) <= 1e-4
    for bad in (0, 17, "int8", True):
        with pytest.raises(GraphError, match="bits must be"):
            insert_pack(plain, bad)


@pytest.mark.parametrize("bits", ["float16", 1, 6, 8, 16])
def test_standalone_pack_and_unpack_kernels_round_trip(rng, bits):
    from dyno_compile.ir import TensorType
    from dyno_compile.passes.insert_pack import pack_graph, unpack_graph

    t = TensorType((1, 8, 5, 5), "float32")
    x = np.maximum(rng.normal(size=t.shape), 0).astype(np.float32)
    wire = _run(pack_graph(t, bits, granularity="channel"), x)
    back = _run(unpack_graph(t, bits, granularity="channel"), *wire)[0]
    expected = x.astype(np.float16).astype(np.float32) if bits == "float16" else _fake_quant(x, bits, "channel")
    np.testing.assert_allclose(back, expected, rtol=1e-6, atol=1e-6)
