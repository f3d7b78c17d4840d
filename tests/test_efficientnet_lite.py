"""EfficientNet-Lite2 with its real ImageNet weights: the architecture read off the weights file,
its preprocessing, and the data README's 184/200 top-1 on the ImageNet samples measured through
our IR (frontend, every pass, the reference interpreter)."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import rel_err, shared_data
from dyno_compile.datasets.imagenet import load_samples, samples_dir
from dyno_compile.errors import InputError
from dyno_compile.frontend.resolve import load_model
from dyno_compile.ir import Graph, Interpreter
from dyno_compile.passes import infer_shapes, run_passes
from dyno_compile.search.calibration import CalibrationSet, default_calibration, load_calibration
from dyno_compile.zoo import RANDOM, get_model, param_specs
from dyno_compile.zoo.efficientnet_lite import INPUT_CHW, NAME, blocks, specs_from_shapes
from dyno_compile.zoo.layers import same_padding
from dyno_compile.zoo.weights import read_shapes

ROOT = Path(__file__).resolve().parents[1]
README_CORRECT = 184
"""Top-1 hits on the 200 samples with a plain JAX float32 forward pass (../shared/data/README.md)."""
BATCH = 25
"""Images per interpreter call: one compiled shape for all 200, and a quick subset for CI."""


@pytest.fixture(autouse=True)
def _weights_present() -> None:
    shared_data("imagenet", f"{NAME}.npz")


@cache
def _samples() -> CalibrationSet:
    return default_calibration(NAME, (1, *INPUT_CHW))


@cache
def _graph() -> Graph:
    """The model as the compiler sees it: JAX frontend then every standard pass, batch BATCH."""
    graph = run_passes(load_model(NAME))
    return infer_shapes(graph, {graph.inputs[0].name: (BATCH, *INPUT_CHW)})


def _ir_logits(x: np.ndarray) -> np.ndarray:
    run = Interpreter(_graph())
    return np.concatenate([np.asarray(run(x[i : i + BATCH])) for i in range(0, len(x), BATCH)])


def test_same_padding_is_tensorflow_same() -> None:
    """Output length ceil(size / stride); an odd total puts the extra row after."""
    assert same_padding(260, 3, 2) == (0, 1)
    assert same_padding(65, 5, 2) == (2, 2)
    assert same_padding(130, 3, 1) == (1, 1)
    assert same_padding(17, 5, 1) == (2, 2)
    assert same_padding(8, 1, 1) == (0, 0)
    assert same_padding(4, 3, 2) == (0, 1)


def test_architecture_read_off_the_weights_matches_the_readme() -> None:
    shapes = read_shapes(shared_data("imagenet", f"{NAME}.npz"), NAME)
    found = blocks(shapes)
    stages = [(0, 16), (1, 24), (4, 48), (7, 88), (11, 120), (15, 208), (20, 352)]
    ends = [s for s, _ in stages[1:]] + [len(found)]
    assert len(found) == 21
    for (start, channels), end in zip(stages, ends, strict=True):
        assert {b.out for b in found[start:end]} == {channels}, start
    assert [b.index for b in found if b.stride == 2] == [1, 4, 7, 15]
    assert [b.kernel for b in found] == [3] * 4 + [5] * 3 + [3] * 4 + [5] * 9 + [3]
    assert not found[0].expands and all(b.expands for b in found[1:])
    assert {k: s.shape for k, s in param_specs(NAME).items()} == shapes


def test_a_file_of_another_layout_fails_by_name() -> None:
    shapes = read_shapes(shared_data("imagenet", f"{NAME}.npz"), NAME)
    no_expand = {k: v for k, v in shapes.items() if k != "_blocks.5._expand_conv.weight"}
    with pytest.raises(InputError, match="block 5 takes 288 channels, the one before it gives 48"):
        specs_from_shapes(no_expand)
    with pytest.raises(InputError, match="lack '_conv_head.weight'"):
        specs_from_shapes({k: v for k, v in shapes.items() if k != "_conv_head.weight"})


def test_missing_weights_file_is_a_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DYNO_DATA", str(tmp_path))
    expected = f"{NAME}: weights file {tmp_path / 'imagenet' / f'{NAME}.npz'} does not exist"
    for build in (lambda: get_model(NAME), lambda: get_model(NAME, weights=RANDOM), lambda: load_model(NAME)):
        with pytest.raises(InputError) as err:
            build()
        assert str(err.value) == expected


def test_default_calibration_is_the_200_labelled_samples_preprocessed_for_it() -> None:
    cal = _samples()
    names, labels = load_samples()
    assert cal.x.shape == (200, *INPUT_CHW) and cal.x.dtype == np.float32
    assert np.array_equal(cal.labels, labels)
    # the first image by hand: RGB, short side 292 (bilinear), centre 260 crop, (x - 127) / 128
    img = Image.open(samples_dir() / names[0]).convert("RGB")
    w, h = img.size
    size = (292, round(292 * h / w)) if w <= h else (round(292 * w / h), 292)
    left, top = (size[0] - 260) // 2, (size[1] - 260) // 2
    crop = np.asarray(img.resize(size, Image.Resampling.BILINEAR).crop((left, top, left + 260, top + 260)))
    assert np.array_equal(cal.x[0], ((crop.astype(np.float32) - 127) / 128).transpose(2, 0, 1))


def test_preset_refuses_another_input_size() -> None:
    with pytest.raises(InputError, match="preset 'efficientnet_lite' makes 260x260 inputs"):
        load_calibration(samples_dir(), input_shape=(1, 3, 224, 224), preprocess="efficientnet_lite", limit=1)


def test_ir_agrees_with_the_jax_forward_on_real_samples() -> None:
    """The first BATCH samples: logits within 1e-4 relative, the same top-1 classes."""
    cal, model = _samples(), get_model(NAME)
    x = cal.x[:BATCH]
    ref = np.asarray(jax.jit(model.fn)(model.params, x))
    got = _ir_logits(x)
    assert rel_err(got, ref) <= 1e-4
    assert np.array_equal(got.argmax(axis=1), ref.argmax(axis=1))


@pytest.mark.slow
def test_top1_through_the_ir_is_the_readmes_184_of_200() -> None:
    cal = _samples()
    hits = int((_ir_logits(cal.x).argmax(axis=1) == cal.labels).sum())
    assert hits == README_CORRECT, f"{hits}/{len(cal)}"


def test_inspect_lists_layers_and_cut_points() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dyno_compile", "inspect", NAME],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "_blocks.20._project_conv" in out.stdout and "device-only" in out.stdout and "cloud-only" in out.stdout
    assert "123 layers, 872.2 MMACs" in out.stdout and "124 cut points" in out.stdout
