"""The layering contracts in pyproject.toml (checked by ``lint-imports`` in .ci/run) hold
for the package, and a deliberate violation of each breaks them: data flowing backwards
(runtime importing search), a leaf importing a layer (packing importing the IR), and an
import cycle inside a package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the test extra (pip install -e '.[test]')")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )


def test_the_package_keeps_its_layers():
    proc = _lint(ROOT)
    assert proc.returncode == 0 and "BROKEN" not in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("runtime/selector.py", "from dyno_compile.search import pareto", "Data flows one way"),
        ("packing/codec.py", "from dyno_compile.ir import graph", "leaves"),
        ("configs.py", "from dyno_compile.search import pareto", "leaves"),
        ("ir/types.py", "from dyno_compile.ir import graph", "No import cycle"),
    ],
)
def test_a_deliberate_violation_breaks_a_contract(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "dyno_compile", tmp_path / "dyno_compile", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "dyno_compile" / module
    path.write_text(path.read_text() + f"\n{line}  # deliberate violation\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert contract in proc.stdout.split("Broken contracts")[-1], proc.stdout[-3000:]
