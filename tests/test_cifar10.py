"""CIFAR-10 test-set loader: preprocessing as the README states, clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from dyno_compile.datasets import cifar10, data_root
from dyno_compile.errors import InputError


def test_load_test_shapes_and_preprocessing() -> None:
    x, y = cifar10.load_test()
    assert x.shape == (932, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (932,) and y.dtype == np.int64 and set(np.unique(y)) <= set(range(10))
    with np.load(data_root() / "cifar10" / "test_932.npz") as npz:
        raw = npz["x"][5]  # HWC uint8
    expected = (raw[10, 20, 1] / 255 - 0.456) / 0.224  # green channel of pixel (10, 20)
    assert x[5, 1, 10, 20] == pytest.approx(expected, abs=1e-6)


def test_limit_keeps_the_first_images() -> None:
    x_all, y_all = cifar10.load_test()
    x, y = cifar10.load_test(limit=10)
    assert x.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(x, x_all[:10])
    np.testing.assert_array_equal(y, y_all[:10])


@pytest.mark.parametrize("limit", [0, -3, 933, 2.0])
def test_bad_limit(limit) -> None:
    with pytest.raises(InputError, match="limit must be an integer in 1..932"):
        cifar10.load_test(limit=limit)


def _data_dir(tmp_path, monkeypatch):
    (tmp_path / "cifar10").mkdir()
    monkeypatch.setenv("DYNO_DATA", str(tmp_path))
    return tmp_path / "cifar10" / "test_932.npz"


def test_missing_file(tmp_path, monkeypatch) -> None:
    _data_dir(tmp_path, monkeypatch)
    with pytest.raises(InputError, match="test_932.npz does not exist"):
        cifar10.load_test()


def test_not_an_npz(tmp_path, monkeypatch) -> None:
    _data_dir(tmp_path, monkeypatch).write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read CIFAR-10 test file"):
        cifar10.load_test()


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((2, 32, 32, 3), np.uint8)}, r"lacks array\(s\) \['y'\]"),
        ({"x": np.zeros((2, 3, 32, 32), np.uint8), "y": np.zeros(2, np.uint8)}, "'x' must be uint8"),
        ({"x": np.zeros((2, 32, 32, 3), np.float32), "y": np.zeros(2, np.uint8)}, "'x' must be uint8"),
        ({"x": np.zeros((2, 32, 32, 3), np.uint8), "y": np.zeros(3, np.uint8)}, "'y' must be 2 integer labels"),
        ({"x": np.zeros((2, 32, 32, 3), np.uint8), "y": np.array([0, 10], np.uint8)}, "labels must lie in 0..9"),
    ],
)
def test_malformed_file(tmp_path, monkeypatch, arrays, message: str) -> None:
    np.savez(_data_dir(tmp_path, monkeypatch), **arrays)
    with pytest.raises(InputError, match=message):
        cifar10.load_test()
