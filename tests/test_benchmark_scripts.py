"""The model benchmarks (``benchmarks/tvm_vs_jax.py``, ``tvm_vs_ort.py``) refuse an
unknown model with one line and exit 2, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", ["tvm_vs_jax.py", "tvm_vs_ort.py"])
def test_unknown_model_is_a_clear_error(script):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "no_such_model"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{script}: unknown model 'no_such_model'" in proc.stderr
    assert "Traceback" not in proc.stderr
