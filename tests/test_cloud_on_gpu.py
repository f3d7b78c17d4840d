"""``benchmarks/cloud_on_gpu.py``: its steps (every split checked against the host, every
cloud function timed, figures written) run here with the host's cloud library; with no
GPU, a CUDA target is a clear refusal, not a crash."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import cloud_on_gpu  # noqa: E402

from dyno_compile.targets import get_target  # noqa: E402
from dyno_compile.targets.runner import gpu_available  # noqa: E402


def test_checks_and_times_every_cloud_segment(resnet20_host, tmp_path, capsys):
    assert (
        cloud_on_gpu.main(
            [
                "resnet20",
                "--artifact",
                str(resnet20_host),
                "--cloud",
                "host",
                "--bits",
                "float32",
                "8",
                "--images",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "resnet20-host.json").read_text())
    cuts = json.loads((resnet20_host / "manifest.json").read_text())["cuts"]
    splits = sum(1 if c["kind"] == "device-only" else 2 for c in cuts)
    assert result["checked_splits"] == splits and result["worst_rel_err"] == 0.0  # same library both ways
    segments = [r["function"] for r in result["segments"]]
    assert segments and all(r["host_us"] > 0 for r in result["segments"])
    assert len(segments) == len(
        {s["function"] for s in json.loads((resnet20_host / "manifest.json").read_text())["segments"]}
    )
    assert result["source"] == "measured:host"
    assert "all segments" in (tmp_path / "resnet20-host.md").read_text()


@pytest.mark.skipif(gpu_available(get_target("cuda-sm90")), reason="a GPU is present: the script would run")
def test_without_a_gpu_it_says_so(tmp_path, capsys):
    assert cloud_on_gpu.main(["--cloud", "cuda-sm90", "--out", str(tmp_path)]) == 2
    assert "no GPU" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--cloud", "nope"], "unknown target 'nope'"),
        (["--cloud", "host", "--bits", "x"], "bits must be an int in 1..16"),
        (["--cloud", "host", "--images", "0"], "--images must be at least 1"),
        (["--cloud", "host", "--artifact", "/nonexistent"], "no such artifact"),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, tmp_path, capsys):
    assert cloud_on_gpu.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
