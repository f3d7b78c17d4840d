"""Calibration data, the accuracy simulation and bytes on the wire, on real models and data.

The headline (DynO's observation): on ResNet-20 with its real CIFAR-10 weights, the fewest
bits a cut tolerates within one point of float top-1 differs from cut to cut. The table
is computed on the first ``TABLE_IMAGES`` of the 932 test images to keep this file near
three minutes on two shared cores (``examples/fewest_bits.py`` prints it on all 932);
the float-exactness test uses all 932.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from dyno_compile.configs import Config
from dyno_compile.datasets import cifar10
from dyno_compile.datasets.imagenet import load_samples, squeezenet_batch
from dyno_compile.errors import InputError
from dyno_compile.frontend.resolve import load_model
from dyno_compile.ir import Graph, Interpreter
from dyno_compile.packing import PackConfig, decode, encode
from dyno_compile.passes import run_passes
from dyno_compile.passes.insert_pack import insert_pack
from dyno_compile.passes.split import split
from dyno_compile.search.accuracy import AccuracySimulator, fewest_bits, round_trip
from dyno_compile.search.calibration import CalibrationSet, default_calibration, load_calibration
from dyno_compile.search.wire_bytes import WireBytes

TABLE_IMAGES = 400
FLOAT_CORRECT = 854  # ResNet-20 on the 932 images, as the data README measured
SQUEEZENET = ("imagenet", "squeezenet1.1_fp16.onnx")


@pytest.fixture(scope="module")
def resnet20() -> Graph:
    return run_passes(load_model("resnet20"))


@pytest.fixture(scope="module")
def cifar(resnet20: Graph) -> CalibrationSet:
    shared_data("cifar10", "test_932.npz")
    return default_calibration("resnet20", resnet20.inputs[0].shape)


@pytest.fixture(scope="module")
def full(resnet20: Graph, cifar: CalibrationSet) -> AccuracySimulator:
    return AccuracySimulator(resnet20, cifar)


@pytest.fixture(scope="module")
def table_sim(resnet20: Graph, cifar: CalibrationSet) -> AccuracySimulator:
    return AccuracySimulator(resnet20, cifar.head(TABLE_IMAGES))


# --- (a) the DynO observation ----------------------------------------------------------


def test_fewest_bits_differ_between_cuts(table_sim: AccuracySimulator) -> None:
    table = fewest_bits(table_sim, budget=1.0, granularity="tensor")
    print(
        f"\nResNet-20, first {TABLE_IMAGES} CIFAR-10 images, float top-1 {table_sim.float_accuracy:.2%}; "
        "fewest bits within 1 point (per-tensor range):"
    )
    for position, bits in table.items():
        cut = table_sim.cut(position)
        print(
            f"  cut {position:2d}  {str(cut.tensors):24s}  {bits} bits  "
            f"top-1 {table_sim.evaluate(position, bits)[0]:.2%}"
        )
    assert set(table) == {c.position for c in table_sim.cuts if c.kind != "device-only"}
    assert None not in table.values()
    assert len(set(table.values())) > 1, f"the same width at every cut: {table}"
    for position, bits in table.items():  # each answer is the first width meeting the budget
        floor = table_sim.float_accuracy - 0.01 - 1e-12
        assert table_sim.evaluate(position, bits)[0] >= floor
        assert bits == 1 or table_sim.evaluate(position, bits - 1)[0] < floor


# --- (b) float32 is exact at every cut -------------------------------------------------


def test_float32_at_every_cut_reproduces_the_float_model(full: AccuracySimulator, cifar: CalibrationSet) -> None:
    assert len(cifar) == 932 and int((full.float_predictions == cifar.labels).sum()) == FLOAT_CORRECT
    for k, cut in enumerate(full.cuts[:-1]):
        # The simulator answers float32 with the float model's predictions without running
        # anything; this is why: the tensors at each cut, run on unchanged, give just those.
        continued = full._predict(k, lambda xs, rows: xs)
        assert np.array_equal(continued, full.float_predictions), f"cut {cut.position}"
        assert full.evaluate(cut.position, "float32") == (FLOAT_CORRECT / 932, 1.0)


def test_default_calibration_is_the_cifar_loader(cifar: CalibrationSet) -> None:
    x, y = cifar10.load_test()
    assert np.array_equal(cifar.x, x) and np.array_equal(cifar.labels, y)


# --- (c) the simulation is what the split graphs compute -------------------------------


def _ir_predictions(resnet20: Graph, position: int, bits: int | str, granularity: str, x: np.ndarray) -> list[int]:
    """Top-1 per sample through the device graph, the wire values, then the cloud graph."""
    model = insert_pack(split(resnet20, position), bits, granularity=granularity)
    device, cloud = Interpreter(model.device), Interpreter(model.cloud)
    predictions = []
    for i in range(len(x)):
        sent = device(x[i : i + 1])
        sent = sent if isinstance(sent, tuple) else (sent,)
        by_name = {name.removesuffix(".send"): value for name, value in zip(model.device.outputs, sent)}
        predictions.append(int(np.argmax(cloud(*(by_name[n.name] for n in model.cloud.inputs)))))
    return predictions


@pytest.mark.parametrize(
    "position, bits, granularity",
    [  # harsh widths, so that predictions change
        (2, 2, "tensor"),
        (6, 1, "channel"),
        (23, 2, "tensor"),
        (40, 1, "channel"),
        (12, 1, "tensor"),
        (17, "float16", "tensor"),
    ],
)
def test_simulation_matches_the_split_graphs(
    resnet20: Graph, table_sim: AccuracySimulator, position: int, bits: int | str, granularity: str
) -> None:
    count = 24
    simulated = table_sim.predictions(position, bits, granularity)[:count]
    assert simulated.tolist() == _ir_predictions(resnet20, position, bits, granularity, table_sim.calibration.x[:count])
    if bits != "float16":
        assert (simulated != table_sim.float_predictions[:count]).any()


def test_round_trip_matches_the_packing_reference(full: AccuracySimulator) -> None:
    """The JAX cut ops the simulation uses and the NumPy quantiser the frames use agree."""
    a = full.activations(17)[0][0]
    for bits, granularity in ((3, "tensor"), (6, "channel")):
        frame = decode(encode([a], PackConfig(bits=bits, granularity=granularity), cut_id=17, request_id=0))
        simulated = np.asarray(round_trip(jnp.asarray(a), bits, granularity))
        np.testing.assert_allclose(frame.tensors[0], simulated, rtol=0, atol=1e-6 * float(a.max() - a.min()))


# --- (d) bytes on the wire -------------------------------------------------------------


@pytest.fixture(scope="module")
def wire(full: AccuracySimulator) -> WireBytes:
    return WireBytes(full, samples=16)


def test_frames_decode_to_the_cut_tensor(full: AccuracySimulator, wire: WireBytes) -> None:
    config = Config(17, "4", "channel", "bitplane", "zstd")
    cost = wire.measure(config)
    assert cost.samples == 16 and cost.bytes > 0 and cost.encode_s > 0 and cost.decode_s > 0
    assert wire.measure(config) is cost  # cached
    a = full.activations(17)[0][3]
    frame = decode(
        encode([a], PackConfig(bits=4, granularity="channel", layout="bitplane", codec="zstd"), cut_id=17, request_id=3)
    )
    assert frame.cut_id == 17 and frame.tensors[0].shape == a.shape == (1, 16, 32, 32)
    assert np.abs(frame.tensors[0] - a).max() <= (a.max() - a.min()) / 15  # within one 4-bit step


def test_bytes_shrink_with_bits(wire: WireBytes) -> None:
    sizes = [wire.measure(Config(17, b)).bytes for b in ("float32", "float16", "8", "4", "2", "1")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), sizes
    assert sizes[0] > 16 * 32 * 32 * 4 > sizes[1]  # float32 carries every value whole; float16 half


@pytest.mark.parametrize("position", [2, 17, 34, 51])  # ReLU outputs: mostly zeros
def test_codecs_beat_plain_packing_after_relu(wire: WireBytes, position: int) -> None:
    plain = wire.measure(Config(position, "8")).bytes
    assert wire.measure(Config(position, "8", codec="zstd")).bytes < plain
    assert wire.measure(Config(position, "8", layout="bitplane", codec="zstd")).bytes < plain


def test_cloud_only_sends_the_input_and_device_only_nothing(full: AccuracySimulator, wire: WireBytes) -> None:
    assert wire.measure(Config(0, "float32")).bytes > 3 * 32 * 32 * 4
    device_only = full.cuts[-1]
    assert device_only.kind == "device-only"
    assert wire.measure(Config(device_only.position, "8")).bytes == 0
    assert full.evaluate(device_only.position, 1) == (FLOAT_CORRECT / 932, 1.0)


# --- (e) bad input -----------------------------------------------------------------------


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "cal.npz"
    np.savez(path, **arrays)
    return path


CIFAR_INPUT = (1, 3, 32, 32)


@pytest.mark.parametrize(
    "arrays, preset, match",
    [
        ({"x": np.zeros((0, 32, 32, 3), np.uint8)}, "cifar10", "empty"),
        ({"x": np.zeros((2, 3, 16, 16), np.float32)}, None, r"do not fit the model input"),
        ({"x": np.zeros((2, 16, 16, 3), np.uint8)}, "cifar10", "does not resize"),
        ({"x": np.zeros((2, 32, 32, 1), np.uint8)}, "cifar10", r"uint8 \[N, H, W, 3\]"),
        ({"x": np.zeros((2, 32, 32, 3), np.uint8), "y": np.zeros(3, np.int64)}, "cifar10", "3 labels for 2"),
        ({"x": np.zeros((2, 32, 32, 3), np.uint8)}, "cifar100", "unknown preprocessing preset"),
        ({"x": np.zeros((2, 32, 32, 3), np.uint8)}, None, "name their preprocessing"),
        ({"y": np.zeros(2, np.int64)}, "cifar10", "lacks the array 'x'"),
        ({"x": np.full((1, 3, 32, 32), np.nan, np.float32)}, None, "NaN"),
    ],
)
def test_bad_npz_is_refused(tmp_path: Path, arrays: dict, preset: str | None, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_calibration(_npz(tmp_path, **arrays), input_shape=CIFAR_INPUT, preprocess=preset)


def test_npz_sources(tmp_path: Path, cifar: CalibrationSet) -> None:
    raw = load_calibration(
        shared_data("cifar10", "test_932.npz"), input_shape=CIFAR_INPUT, preprocess="cifar10", limit=5
    )
    assert np.array_equal(raw.x, cifar.x[:5]) and np.array_equal(raw.labels, cifar.labels[:5])
    ready = load_calibration(_npz(tmp_path, x=cifar.x[:3], y=cifar.labels[:3]), input_shape=CIFAR_INPUT, labels=False)
    assert np.array_equal(ready.x, cifar.x[:3]) and ready.labels is None


def test_unreadable_sources_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="cannot read calibration file"):
        load_calibration(junk, input_shape=CIFAR_INPUT)
    with pytest.raises(InputError, match="does not exist"):
        load_calibration(tmp_path / "missing.npz", input_shape=CIFAR_INPUT)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="cannot be decoded"):
        load_calibration(tmp_path, input_shape=CIFAR_INPUT, preprocess="cifar10")


def test_image_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no images"):
        load_calibration(empty, input_shape=CIFAR_INPUT, preprocess="cifar10")
    folder = tmp_path / "imgs"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(folder / f"{i}.png")
    got = load_calibration(folder, input_shape=CIFAR_INPUT, preprocess="cifar10")
    assert got.labels is None and np.array_equal(got.x, cifar10.preprocess(pixels))
    (folder / "labels.tsv").write_text("0.png\t7\tn0\n1.png\t3\tn1\n")
    assert load_calibration(folder, input_shape=CIFAR_INPUT, preprocess="cifar10").labels.tolist() == [7, 3]
    with pytest.raises(InputError, match="preset 'squeezenet' makes 224x224"):
        load_calibration(folder, input_shape=CIFAR_INPUT, preprocess="squeezenet")
    with pytest.raises(InputError, match="RGB NCHW"):
        load_calibration(folder, input_shape=(1, 1, 32, 32), preprocess="cifar10")
    with pytest.raises(InputError, match="input_shape must be the batch-1"):
        load_calibration(folder, input_shape=(4, 3, 32, 32), preprocess="cifar10")
    with pytest.raises(InputError, match="no default calibration"):
        default_calibration("mystery", (1, 3, 64, 64))


def test_calibration_set_checks_itself() -> None:
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(InputError, match="3 labels for 2"):
        CalibrationSet(x, np.zeros(3, np.int64), "t")
    with pytest.raises(InputError, match="empty"):
        CalibrationSet(x[:0], None, "t")
    with pytest.raises(InputError, match="subset size"):
        CalibrationSet(x, None, "t").head(5)


def test_simulator_refuses_bad_requests(resnet20: Graph, table_sim: AccuracySimulator) -> None:
    with pytest.raises(InputError, match="do not fit the model input"):
        AccuracySimulator(resnet20, CalibrationSet(np.zeros((2, 3, 16, 16), np.float32), None, "t"))
    with pytest.raises(InputError, match="out of range"):
        AccuracySimulator(resnet20, table_sim.calibration, [999])
    with pytest.raises(InputError, match="batch must be"):
        AccuracySimulator(resnet20, table_sim.calibration, batch=0)
    with pytest.raises(InputError, match="not one of the simulator's cuts"):
        table_sim.evaluate(3, 8)  # inside a residual block: two tensors cross, not a candidate
    with pytest.raises(InputError, match="bits must be"):
        table_sim.evaluate(17, 17)
    with pytest.raises(InputError, match="granularity"):
        table_sim.evaluate(17, 8, "row")
    with pytest.raises(InputError, match="budget"):
        fewest_bits(table_sim, [17], budget=-1)
    with pytest.raises(InputError, match="widths"):
        fewest_bits(table_sim, [17], widths=["float16"])
    with pytest.raises(InputError, match="samples"):
        WireBytes(table_sim, samples=0)
    with pytest.raises(InputError, match="Config"):
        WireBytes(table_sim).measure((17, 8))  # type: ignore[arg-type]


# --- (f) the 224x224 path: SqueezeNet (real fp16 ONNX, real images) ---------------------


def test_squeezenet_smoke_within_the_memory_bound() -> None:
    path = shared_data(*SQUEEZENET)
    shared_data("imagenet", "samples")
    graph = run_passes(load_model(str(path)))
    calibration = default_calibration(str(path), graph.inputs[0].shape)
    names, labels = load_samples()
    assert len(calibration) == 200 and np.array_equal(calibration.labels, labels)
    assert np.array_equal(calibration.x[:2], squeezenet_batch(names[:2]))
    budget = 16 << 20
    sim = AccuracySimulator(graph, calibration.head(24), batch=8, cache_bytes=budget)
    assert 0.3 < sim.float_accuracy <= 1.0
    for cut in sim.cuts[1:4] + sim.cuts[-3:-1]:
        accuracy, agreement = sim.evaluate(cut.position, 8)
        assert agreement >= 0.9 and accuracy >= sim.float_accuracy - 0.1
        assert sim.cached_bytes <= budget
    cost = WireBytes(sim, samples=4).measure(Config(sim.cuts[3].position, "4", codec="zstd"))
    assert 0 < cost.bytes < sim.cuts[3].nbytes


def test_mobilenet_default_calibration_has_no_labels() -> None:
    folder = shared_data("imagenet", "samples")
    calibration = default_calibration("mobilenet_v2", (1, 3, 224, 224))
    assert calibration.labels is None and calibration.x.shape == (200, 3, 224, 224)
    name = load_samples(1)[0][0]
    img = Image.open(folder / name).convert("RGB")
    w, h = img.size
    img = img.resize((256, round(256 * h / w)) if w <= h else (round(256 * w / h), 256), Image.Resampling.BILINEAR)
    left, top = (img.size[0] - 224) // 2, (img.size[1] - 224) // 2
    crop = np.asarray(img.crop((left, top, left + 224, top + 224)))[None]
    np.testing.assert_array_equal(calibration.x[:1], cifar10.preprocess(crop))


def test_a_head_computes_only_its_samples_or_slices_the_parents(resnet20: Graph, cifar: CalibrationSet) -> None:
    sim = AccuracySimulator(resnet20, cifar.head(64))
    position = sim.cuts[3].position
    alone = sim.head(8).activations(position)  # the parent has nothing cached: computed
    whole = sim.activations(position)  # one batch of 64: the parent's cached batch itself
    assert all(np.allclose(a, w[:8], rtol=1e-5, atol=1e-6) for a, w in zip(alone, whole))
    sliced = sim.head(8).activations(position)  # now the parent's, sliced
    assert all(np.shares_memory(s, w) and s.shape[0] == 8 for s, w in zip(sliced, whole))
    assert sim.head(8)._segment_fns is sim._segment_fns  # compiled once, shared
