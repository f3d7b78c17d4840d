"""ImageNet sample loader and SqueezeNet preprocessing: shapes, values, and clear failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from dyno_compile.datasets.imagenet import SQUEEZENET_MEAN_BGR, load_samples, preprocess_squeezenet, squeezenet_batch
from dyno_compile.errors import InputError


@pytest.fixture
def shared_samples() -> Path:
    return shared_data("imagenet", "samples")


def test_load_samples_reads_all_200_labels(shared_samples: Path) -> None:
    names, labels = load_samples()
    assert len(names) == 200 and labels.shape == (200,) and labels.dtype == np.int64
    assert (labels % 5 == 0).all() and len(set(labels.tolist())) == 200
    assert names[0] == "n01440764_tench.JPEG" and labels[0] == 0


@pytest.mark.parametrize("limit", [0, 1, 7])
def test_load_samples_limit(shared_samples: Path, limit: int) -> None:
    names, labels = load_samples(limit=limit)
    assert len(names) == len(labels) == limit


def test_squeezenet_batch_layout_and_values(shared_samples: Path) -> None:
    names, _ = load_samples(limit=2)
    x = squeezenet_batch(names)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    img = Image.open(shared_samples / names[0]).convert("RGB")
    w, h = img.size
    new = (256, round(256 * h / w)) if w <= h else (round(256 * w / h), 256)
    resized = np.asarray(img.resize(new, Image.Resampling.BILINEAR), np.float32)
    top, left = (new[1] - 224) // 2, (new[0] - 224) // 2
    crop = resized[top : top + 224, left : left + 224]
    expected = (crop[:, :, ::-1] - np.array(SQUEEZENET_MEAN_BGR, np.float32)).transpose(2, 0, 1)
    np.testing.assert_array_equal(x[0], expected)


def test_preprocess_converts_grayscale_and_small_side(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((300, 240), 128, np.uint8), mode="L").save(path)
    x = preprocess_squeezenet(path)
    assert x.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(x[0, :, 100, 100], 128 - np.array(SQUEEZENET_MEAN_BGR))


def test_missing_folder_raises_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNO_DATA", str(tmp_path))
    with pytest.raises(InputError, match="imagenet/samples"):
        load_samples()


def test_bad_image_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.JPEG"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="broken.JPEG"):
        preprocess_squeezenet(path)


def test_missing_image_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        preprocess_squeezenet(tmp_path / "nope.JPEG")


def test_bad_label_line_raises_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imagenet" / "samples"
    folder.mkdir(parents=True)
    (folder / "labels.tsv").write_text("# header\na.JPEG\tnot-a-number\tn0\n")
    monkeypatch.setenv("DYNO_DATA", str(tmp_path))
    with pytest.raises(InputError, match="labels.tsv:2"):
        load_samples()
