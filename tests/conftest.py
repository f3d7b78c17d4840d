"""Shared test helpers: tiny graphs, a relative-error check and the session's artifacts."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path

# The benchmark scripts' folder, for the helpers the tests share with them (as the scripts import them).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import numpy as np
import pytest
from served_artifact import host_build_args

from dyno_compile.datasets import data_root
from dyno_compile.ir import Graph


def shared_data(*parts: str) -> Path:
    """A path under ``../shared/data``; missing data fails the test loudly instead of skipping it,
    so a run without the real data cannot pass unnoticed."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.fail(f"real data {path} is missing; the test suite needs ../shared/data (or DYNO_DATA)")
    return path


ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: object, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m dyno_compile ARGS`` from the repository root, as a user runs it (output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "dyno_compile", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def rel_err(a, b) -> float:
    """Max abs error relative to the reference's scale (max abs value)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def conv_bn_relu_graph(rng: np.random.Generator, *, residual: bool = False) -> Graph:
    """x -> conv -> batch_norm -> relu (-> conv -> add x -> relu if residual)."""
    g = Graph("tiny")
    g.add_input("x", (2, 4, 8, 8))
    g.add_const("w1", rng.normal(size=(4, 4, 3, 3)).astype(np.float32))
    bn = [
        g.add_const(f"bn.{k}", rng.uniform(0.5, 1.5, 4).astype(np.float32)).name
        for k in ("gamma", "beta", "mean", "var")
    ]
    c = g.add("conv2d", ["x", "w1"], {"padding": ((1, 1), (1, 1))}, name="conv1")
    b = g.add("batch_norm", [c.name, *bn], name="bn1")
    r = g.add("relu", [b.name], name="relu1")
    if residual:
        g.add_const("w2", rng.normal(size=(4, 4, 3, 3)).astype(np.float32))
        c2 = g.add("conv2d", [r.name, "w2"], {"padding": ((1, 1), (1, 1))}, name="conv2")
        s = g.add("add", [c2.name, "x"], name="add")
        r = g.add("relu", [s.name], name="relu2")
    g.set_outputs([r.name])
    return g


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def resnet20_host(tmp_path_factory) -> Path:
    """resnet20 (real weights) with every candidate cut and the default widths, host device
    and cloud libraries, no search: what profiling and search tests measure (~12 s).
    Read-only."""
    from dyno_compile.artifact.build import build_artifact
    from dyno_compile.artifact.plan import candidate_cuts, plan_build
    from dyno_compile.frontend.resolve import load_model
    from dyno_compile.passes import run_passes

    graph = run_passes(load_model("resnet20"))
    root, _ = build_artifact(
        plan_build(graph, candidate_cuts(graph)),
        tmp_path_factory.mktemp("art") / "resnet20",
        device_targets=("host",),
        cloud_targets=("host",),
    )
    return root


@pytest.fixture(scope="module")
def artifact(resnet20_host):
    """``resnet20_host`` loaded, once per test module: the artifact a module's tests get unless
    the module defines its own ``artifact`` (the searched one, or one it builds)."""
    from dyno_compile.artifact.load import load_artifact

    return load_artifact(resnet20_host)


#: Configurations the session's searched resnet20 measured.
SEARCHED_EVALUATIONS = 10


@pytest.fixture(scope="session")
def searched_resnet20(tmp_path_factory) -> Path:
    """A resnet20 artifact (real weights; host device and cloud libraries; widths fp32, 8,
    4, 2; cloud segments also for batches of 4) with a short search on the real CIFAR-10
    test images: what the runtime tests serve, and what the build-with-search test checks.
    Built once per session through the CLI, as a user would (~35 s). Read-only: a test that
    changes it works on a copy."""
    from dyno_compile.cli import main

    out = tmp_path_factory.mktemp("served") / "resnet20"
    calibration = ("--calibration", shared_data("cifar10", "test_932.npz"), "--preprocess", "cifar10")
    # No image uploads: the runtime tests check each Pareto configuration against run_split,
    # which knows widths, not codecs; test_image_codec and test_server_fuzz serve them.
    search = ("--cloud-batch", 4, "--evaluations", SEARCHED_EVALUATIONS, "--image-codecs", "none", *calibration)
    assert main(host_build_args(out, *search, bits="float32,8,4,2")) == 0
    return out


def board_sysroot():
    """The set-up emulated board's sysroot; skips the test without one, or fails it where
    ``DYNO_REQUIRE_BOARD=1`` (CI, which sets the board up first)."""
    from dyno_compile.board import sysroot

    try:
        return sysroot.require()
    except sysroot.BoardError as exc:
        if os.environ.get("DYNO_REQUIRE_BOARD") == "1":
            pytest.fail(f"DYNO_REQUIRE_BOARD=1 but {exc}")
        pytest.skip("no emulated board: python -m dyno_compile board setup")


@pytest.fixture(scope="session")
def board():
    """The emulated aarch64 board (dyno_compile.board), running: a ``BoardState`` with its
    tracker and key. A board already running is used as it is; one started here is stopped
    at the end of the session. Without a set-up board: see :func:`board_sysroot`."""
    from dyno_compile.board import server

    board_sysroot()
    running = server.status()
    state = running or server.start(timeout=300.0)
    yield state
    if running is None:
        server.stop()


def pytest_collection_modifyitems(items):
    """Tests using the ``board`` fixture carry the ``board`` marker (``-m 'not board'`` leaves them out)."""
    for item in items:
        if "board" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.board)
