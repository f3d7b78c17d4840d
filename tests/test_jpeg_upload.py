"""The JPEG-upload cloud-only baseline, measured on real CIFAR-10 images with a real
ResNet-20 artifact's host library."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import host_build_args
from dyno_compile.artifact.load import load_artifact
from dyno_compile.datasets import cifar10
from dyno_compile.datasets.imagenet import load_samples
from dyno_compile.errors import InputError
from dyno_compile.evaluate.jpeg import measure_jpeg_upload, measure_jpeg_uploads, model_view, raw_images
from dyno_compile.runtime.sides import DeviceSide
from dyno_compile.search.calibration import PRESETS

SAMPLES = 100


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """ResNet-20 with its real weights, float32 only, host device and cloud (~6 s)."""
    from dyno_compile.cli import main

    out = tmp_path_factory.mktemp("jpeg") / "resnet20"
    assert main(host_build_args(out, "--cloud-batch", 1, "--no-search", bits="float32")) == 0
    return load_artifact(out)


@pytest.fixture(scope="module")
def cifar():
    return raw_images("cifar10", limit=SAMPLES)


@pytest.fixture(scope="module")
def measured(artifact, cifar):
    images, labels = cifar
    return measure_jpeg_uploads(artifact, images, labels, "cifar10", qualities=(90, 10))


def test_quality_90_is_small_and_keeps_accuracy(measured, artifact):
    q90 = measured[90]
    assert q90.samples == SAMPLES and q90.labelled and q90.input_bytes == 3 * 32 * 32 * 4 == 12288
    assert q90.bytes < q90.input_bytes / 4  # ~1.1 kB against 12 kB
    assert q90.accuracy >= q90.float_accuracy - 0.08  # measured: 0.88 against 0.94 (932 images: 86.9 vs 91.6 %)
    assert q90.agreement >= 0.85
    assert q90.encode_s > 0 and q90.decode_s > 0
    # the float reference is the model on the preset's own input: the README's preprocessing
    x, y = cifar10.load_test(SAMPLES)
    side = DeviceSide(artifact)
    cut = artifact.cuts[-1]["position"]
    top1 = np.array([np.argmax(side.finish(side.start(x[i : i + 1], cut), cut)) for i in range(SAMPLES)])
    assert q90.float_accuracy == pytest.approx(np.mean(top1 == y))


def test_low_quality_loses_more(measured):
    q90, q10 = measured[90], measured[10]
    assert q10.bytes < q90.bytes
    assert q10.accuracy < q90.accuracy - 0.2  # measured: 0.47 against 0.88
    assert q10.agreement < q90.agreement


def test_single_quality_and_unlabelled_inputs(artifact, cifar, measured):
    images, labels = cifar
    one = measure_jpeg_upload(artifact, images, labels, "cifar10", quality=90, limit=20)
    assert one.samples == 20 and one.quality == 90
    arrays = np.stack([np.asarray(img) for img in images[:20]])
    unlabelled = measure_jpeg_upload(artifact.root, arrays, None, "cifar10", quality=90)
    assert not unlabelled.labelled and unlabelled.float_accuracy == 1.0
    assert unlabelled.accuracy == unlabelled.agreement == one.agreement  # JPEG coding is deterministic
    assert unlabelled.bytes == one.bytes


def test_crops_are_what_the_model_sees():
    images, labels = raw_images("imagenet", limit=3)
    assert labels.tolist() == load_samples(3)[1].tolist()
    for img in images:
        for preset, size in (("squeezenet", (224, 224)), ("imagenet", (224, 224)), ("imagenet", (96, 96))):
            crop, x = model_view(img, preset, size)
            assert crop.size == (size[1], size[0]) and crop.mode == "RGB"
            assert np.array_equal(x, PRESETS[preset][0](img, size))


def test_bad_inputs_raise_input_error(artifact, cifar):
    images, labels = cifar
    with pytest.raises(InputError, match="quality"):
        measure_jpeg_upload(artifact, images, labels, "cifar10", quality=0)
    with pytest.raises(InputError, match="unknown preprocessing preset"):
        measure_jpeg_upload(artifact, images, labels, "caffe", limit=2)
    with pytest.raises(InputError, match="labels"):
        measure_jpeg_upload(artifact, images, labels[:5], "cifar10", limit=2)
    with pytest.raises(InputError, match="does not resize"):
        measure_jpeg_upload(artifact, np.zeros((2, 40, 40, 3), np.uint8), None, "cifar10")
    with pytest.raises(InputError, match="uint8"):
        measure_jpeg_upload(artifact, np.zeros((2, 32, 32, 3), np.float32), None, "cifar10")
    with pytest.raises(InputError, match="unknown image set"):
        raw_images("mnist")
