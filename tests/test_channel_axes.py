"""Per-channel means per channel in every layout: the cut records each crossing tensor's
channel axis, and every path that quantises per channel takes its ranges along it.

The NHWC model is a Flax module (Flax's default layout) built so that the axis matters: a
1x1 convolution scales its four channels by 100, 1, 0.01 and 0.0001 and the dense head
scales them back before the argmax. Ranges taken per channel keep every channel's detail;
ranges taken along another axis (the old NCHW-only rule read axis 1, the rows) are set by
the largest channel and wipe out the small ones, so the predictions change.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import conv_bn_relu_graph
from dyno_compile.artifact.plan import candidate_cuts, plan_build
from dyno_compile.configs import Config
from dyno_compile.frontend.jax_import import from_jax
from dyno_compile.ir import Graph, Interpreter
from dyno_compile.packing import decode_packed, dequantize, pack, quantize
from dyno_compile.passes import find_cuts, run_passes
from dyno_compile.passes.insert_pack import insert_pack
from dyno_compile.passes.split import split
from dyno_compile.search.accuracy import AccuracySimulator
from dyno_compile.search.calibration import CalibrationSet
from dyno_compile.search.wire_bytes import WireBytes, packed_cut

SCALES = np.array([100.0, 1.0, 0.01, 0.0001], np.float32)
#: Input [1, H, W, C] with H != C, so a range taken along the wrong axis has the wrong length.
SHAPE = (1, 6, 6, 4)
NHWC_AXIS = 3
#: The cut after the ReLU: one post-ReLU NHWC tensor crosses.
RELU_CUT = 2


class _ScaledChannels(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (1, 1), use_bias=False)(x))
        return nn.Dense(4, use_bias=False)(jnp.mean(x, axis=(1, 2)))


@pytest.fixture(scope="module")
def nhwc() -> Graph:
    model = _ScaledChannels()
    x = np.zeros(SHAPE, np.float32)
    model.init(jax.random.key(0), x)
    variables = {
        "params": {
            "Conv_0": {"kernel": jnp.asarray(np.diag(SCALES)[None, None])},
            "Dense_0": {"kernel": jnp.asarray(np.diag(1 / SCALES))},
        }
    }
    return run_passes(from_jax(model.apply, variables, x, name="nhwc"))


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, size=(48, *SHAPE[1:])).astype(np.float32)


def _run(graph: Graph, *args) -> tuple:
    out = Interpreter(graph, jit=False)(*args)
    return out if isinstance(out, tuple) else (out,)


def test_cuts_record_the_channel_axis_of_each_crossing_tensor(nhwc, rng):
    cuts = find_cuts(nhwc)
    assert nhwc.node(cuts[RELU_CUT].tensors[0]).shape == SHAPE
    # the input (placed by the convolution that reads it), the conv and ReLU outputs: NHWC's
    # last axis; the pooled [1, C] features: axis 1; device-only crosses nothing
    assert [c.channel_axes for c in cuts] == [(3,), (3,), (3,), (1,), ()]
    assert cuts[RELU_CUT].to_dict()["channel_axes"] == [NHWC_AXIS]
    nchw = find_cuts(run_passes(conv_bn_relu_graph(rng, residual=True)))
    assert {c.channel_axes for c in nchw} == {(1,), (1, 1), ()}


def test_insert_pack_takes_nhwc_ranges_per_channel(nhwc, samples):
    model = insert_pack(split(nhwc, RELU_CUT), 8, granularity="channel")
    assert {n.attrs["axis"] for n in model.device.compute_nodes if n.op in ("quant_range", "quantize")} == {3}
    x = samples[:1]
    (crossing,) = _run(split(nhwc, RELU_CUT).device, x)
    packed, rng = _run(model.device, x)
    codes, params = quantize(np.asarray(crossing), 8, granularity="channel", axis=NHWC_AXIS)
    assert np.asarray(rng).shape == (2, SHAPE[NHWC_AXIS])
    assert np.array_equal(np.asarray(rng), np.stack([params.lo, params.scale]))
    assert np.asarray(packed).tobytes() == pack(codes, 8)
    (logits,) = _run(model.cloud, packed, rng)
    (expected,) = _run(split(nhwc, RELU_CUT).cloud, dequantize(codes, params))
    assert np.allclose(logits, expected, rtol=1e-6)


def test_accuracy_simulation_quantises_nhwc_cuts_per_channel(nhwc, samples):
    simulator = AccuracySimulator(nhwc, CalibrationSet(samples, None, "uniform"), [RELU_CUT])
    crossing = simulator.activations(RELU_CUT)[0]
    cloud = split(nhwc, RELU_CUT).cloud
    expected = [
        int(np.argmax(_run(cloud, dequantize(*quantize(a, 8, granularity="channel", axis=NHWC_AXIS)))[0]))
        for a in crossing
    ]
    assert simulator.predictions(RELU_CUT, 8, "channel").tolist() == expected
    assert simulator.evaluate(RELU_CUT, 8, "channel")[1] == 1.0
    assert simulator.evaluate(RELU_CUT, 8, "tensor")[1] < 0.6  # the model does punish one shared range


def test_wire_frames_carry_nhwc_ranges_per_channel(nhwc, samples):
    simulator = AccuracySimulator(nhwc, CalibrationSet(samples[:4], None, "uniform"), [RELU_CUT])
    config = Config(RELU_CUT, "4", "channel", "bitplane", "zstd")
    (tensor,) = packed_cut(simulator, config, 0)
    assert (tensor.params.axis, tensor.params.lo.size) == (NHWC_AXIS, SHAPE[NHWC_AXIS])
    codes, params = quantize(simulator.activations(RELU_CUT)[0][0], 4, granularity="channel", axis=NHWC_AXIS)
    assert tensor.params == params and tensor.data == pack(codes, 4)
    assert WireBytes(simulator, samples=2).measure(config).bytes > 0


def test_build_plan_records_channel_axes_and_keys_kernels_by_axis(nhwc):
    plan = plan_build(nhwc, candidate_cuts(nhwc), bits=(4,), granularity="channel")
    entry = plan.cut_table[RELU_CUT]
    assert entry["channel_axes"] == [NHWC_AXIS]
    (kernel,) = entry["kernels"]["4"]
    assert kernel["pack"].endswith("_axis3")
    ranges = [n for n in plan.device_functions[kernel["pack"]].compute_nodes if n.op == "quant_range"]
    assert [n.attrs["axis"] for n in ranges] == [NHWC_AXIS]
    pooled = plan.cut_table[3]  # the [1, 4] pooled features: channels on axis 1
    assert pooled["channel_axes"] == [1] and pooled["kernels"]["4"][0]["pack"].endswith("_axis1")


def test_frames_of_a_built_nhwc_artifact_are_per_channel(nhwc, samples, tmp_path):
    """The runtime's two sides (runtime/sides.py) on a compiled host artifact: the device's
    frame carries one range per NHWC channel, and the cloud rebuilds the tensor from it."""
    from dyno_compile.artifact.build import build_artifact
    from dyno_compile.artifact.load import load_artifact
    from dyno_compile.runtime.sides import CloudSide, DeviceSide

    plan = plan_build(nhwc, candidate_cuts(nhwc), bits=("float32", 8), granularity="channel")
    root, _ = build_artifact(plan, tmp_path / "nhwc", device_targets=("host",), cloud_targets=("host",))
    artifact = load_artifact(root)
    device, cloud = DeviceSide(artifact), CloudSide(artifact)
    x = samples[:1]
    env = device.start(x, RELU_CUT)
    (tensor,) = decode_packed(device.frame(env, Config(RELU_CUT, "8", "channel", "bitplane", "lz4"), 7)).tensors
    crossing = np.asarray(env[artifact.cuts[RELU_CUT]["tensors"][0]].numpy())
    codes, params = quantize(crossing, 8, granularity="channel", axis=NHWC_AXIS)
    assert tensor.params == params and tensor.relayout("stream").data == pack(codes, 8)
    (rebuilt,) = cloud.unpack(RELU_CUT, [tensor]).values()
    # the compiled unpack kernel: the NumPy formula to 1 ulp (LLVM may fuse q * scale + lo)
    np.testing.assert_array_max_ulp(rebuilt.numpy(), dequantize(codes, params), maxulp=1)
    assert cloud.run(RELU_CUT, [tensor]).argmax() == np.argmax(_run(nhwc, x)[0])
