"""The ``inspect`` command, end to end in a subprocess, as a user runs it."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dyno_compile", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_inspect_zoo_model_prints_layers_and_cuts():
    out = _run("inspect", "resnet20")
    assert out.returncode == 0, out.stderr
    assert "layer3.2.conv2" in out.stdout and "cloud-only" in out.stdout and "device-only" in out.stdout
    assert "53 layers" in out.stdout


def test_inspect_json_is_machine_readable_and_consistent():
    out = _run("inspect", "examples.tiny_cnn:build", "--json", "--batch", "2")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["inputs"] == [{"name": "x", "shape": [2, 3, 32, 32], "dtype": "float32"}]
    assert report["totals"]["macs"] == sum(layer["macs"] for layer in report["layers"])
    assert len(report["cuts"]) == len(report["layers"]) + 1
    assert report["cuts"][0]["bytes"] == 2 * 3 * 32 * 32 * 4


@pytest.mark.parametrize(
    "args, message",
    [
        (("inspect", "no_such_model"), "is not a zoo model"),
        (("inspect", "missing.onnx"), "no such ONNX file"),
        (("inspect", "no_such_module:build"), "cannot import module"),
        (("inspect", "resnet20", "--batch", "0"), "--batch must be at least 1"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2(args, message):
    out = _run(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_errors_and_warnings_are_one_line_each_and_print_brackets_as_written(tmp_path):
    """A script reading stderr gets one line per message, whatever the terminal width, and
    text in square brackets (profile labels hold some) is not taken for markup."""
    (tmp_path / "warner.py").write_text(
        "import warnings\n"
        "from dyno_compile.errors import DynoWarning\n"
        "from examples.tiny_cnn import build as tiny\n"
        "def build(*args, **kwargs):\n"
        "    warnings.warn(DynoWarning('figures taken under load [measured:host] ' + 'x' * 200))\n"
        "    return tiny(*args, **kwargs)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "COLUMNS": "80"}
    run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    out = run([sys.executable, "-m", "dyno_compile", "inspect", "warner:build"])
    assert out.returncode == 0, out.stderr
    warned = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert warned == ["warning: figures taken under load [measured:host] " + "x" * 200]
    missing = tmp_path / ("[deep]" + "d" * 120) / "missing.onnx"
    out = run([sys.executable, "-m", "dyno_compile", "inspect", str(missing)])
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and str(missing) in out.stderr, out.stderr
