"""``check_artifact``: every function of a device library run on an RPC server against the
host library, on real images.

* Loopback (a TVM RPC server on this machine running the host library): every function
  equal, the report's table and summary say so.
* A library built from different weights (one bias of one segment moved) is caught: that
  segment's row, and only it, differs. A remote whose pack kernel answers one code off,
  or whose range row is one ulp off, is caught on its codes and on its frame bytes, while
  a segment one ulp off passes as within ``rtol`` (and fails with ``rtol=0``).
* Errors are one clear ``DynoError`` line: no such library, no host reference, a tracker
  nobody answers at, a key no server has, a server that cannot load the library, bad
  ``images``.
* On the emulated board (``board`` fixture): resnet20's arm64 library, every cut and width
  the default build has, all equal; slow: mobilenet_v2 (depthwise) and SqueezeNet (real
  ImageNet weights).
"""

from __future__ import annotations

import gc
import json
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data
from dyno_compile.artifact.build import build_artifact
from dyno_compile.artifact.load import Artifact, load_artifact
from dyno_compile.artifact.plan import candidate_cuts, plan_build
from dyno_compile.artifact.store import ArtifactError
from dyno_compile.board import check
from dyno_compile.board.check import CheckReport, check_artifact
from dyno_compile.errors import InputError
from dyno_compile.frontend.resolve import load_model
from dyno_compile.passes import run_passes
from dyno_compile.search.rpc import RPCError, local_rpc
from dyno_compile.targets import get_target
from dyno_compile.targets.compile import compile_functions, export

#: How long a board test waits for the board's one server, which another user may hold.
BOARD_WAIT_S = 300.0
#: The segment whose weights the tampered library changes, and the weight.
TAMPERED_SEGMENT, TAMPERED_WEIGHT = "segment_10", "layer2.1.conv2.bias"


@pytest.fixture(scope="module")
def loopback():
    with local_rpc("dyno-check") as rpc:
        yield rpc


def _build(model: str, out: Path) -> Artifact:
    """``model`` with its candidate cuts and the default widths, arm64 and host device libraries."""
    graph = run_passes(load_model(model))
    root, _ = build_artifact(
        plan_build(graph, candidate_cuts(graph)), out, device_targets=("arm64", "host"), cloud_targets=("host",)
    )
    return load_artifact(root)


@pytest.fixture(scope="module")
def resnet20_arm64(tmp_path_factory) -> Artifact:
    """resnet20 as the default build makes it for a board (arm64 device library), ~15 s."""
    return _build("resnet20", tmp_path_factory.mktemp("arm") / "resnet20")


def _pack_functions(art: Artifact) -> set[str]:
    return {k["pack"] for c in art.cuts for kernels in c.get("kernels", {}).values() for k in kernels}


def _assert_all_equal(report: CheckReport, art: Artifact, target: str) -> None:
    functions = art.manifest["libraries"][f"device/{target}.so"]["module"]["functions"]
    assert [r.name for r in report.rows] == list(functions)
    assert {r.name for r in report.rows if r.kind == "pack"} == _pack_functions(art)
    assert {r.name for r in report.rows if r.kind == "segment"} == {s["function"] for s in art.segments}
    bad = [(r.name, r.note) for r in report.rows if not r.ok]
    assert report.ok and not bad, bad
    assert all(r.calls >= report.images for r in report.rows)
    integer_packs = [r for r in report.rows if r.kind == "pack" and not r.name.endswith("float16")]
    assert integer_packs and all(r.bytes_equal is True for r in integer_packs)


# --- loopback: the same code path as a board, on this machine ---------------------------------


def test_loopback_host_library_is_equal_everywhere(artifact, loopback):
    report = check_artifact(artifact, tracker=loopback.tracker, key=loopback.key, target="host")
    _assert_all_equal(report, artifact, "host")
    assert all(r.identical and r.max_rel_error == 0.0 for r in report.rows)
    n = len(report.rows)
    assert report.summary() == (
        f"{n} functions of device/host.so on dyno-check@{loopback.tracker} (2 real images): {n} equal, 0 differ"
    )
    table = report.table()
    assert table.row_count == n and [c.header for c in table.columns][:2] == ["function", "kind"]


def test_library_from_other_weights_is_caught_in_that_segment_only(artifact, loopback, tmp_path):
    """A real library, compiled from the same plan with one bias of one segment moved by
    0.05, uploaded and run on the server: that segment differs, everything else is equal."""
    graph = run_passes(load_model("resnet20"))
    plan = plan_build(graph, candidate_cuts(graph))
    params = plan.device_functions[TAMPERED_SEGMENT].params
    bias = params[TAMPERED_WEIGHT].copy()
    bias[0] += 0.05
    params[TAMPERED_WEIGHT] = bias
    module = compile_functions(plan.device_functions, get_target("host"))
    tampered = _with_library(artifact, tmp_path / "art", "tampered", module)
    report = check_artifact(tampered, tracker=loopback.tracker, key=loopback.key, target="tampered")
    assert not report.ok
    assert [r.name for r in report.failed] == [TAMPERED_SEGMENT]
    row = report.failed[0]
    assert row.kind == "segment" and not row.identical and row.max_rel_error > 1e-3 and row.bytes_equal is None
    assert "1 differ" in report.summary()


def _with_library(art: Artifact, root: Path, target: str, module) -> Artifact:
    """A copy of ``art`` with ``module`` exported as its device library for ``target``."""
    shutil.copytree(art.root, root)
    export(module, root / "device" / f"{target}.so")
    manifest = json.loads(json.dumps(art.manifest))
    manifest["libraries"][f"device/{target}.so"] = {
        **manifest["libraries"]["device/host.so"],
        "target": target,
        "module": module.describe(),
    }
    return Artifact(root, manifest)


class _Skewed:
    """A remote runner whose answers from some functions are changed after the server ran them."""

    def __init__(self, runner, skew: dict) -> None:
        self.runner, self.skew = runner, skew

    def run(self, function: str, inputs) -> list[np.ndarray]:
        outputs = self.runner.run(function, inputs)
        if function in self.skew:
            self.skew[function](outputs)
        return outputs


def _code_off_by_one(outputs) -> None:
    outputs[0][len(outputs[0]) // 2] ^= 1


def _range_one_ulp(outputs) -> None:
    outputs[1][0] = np.nextafter(outputs[1][0], np.float32(np.inf))


def _segment_one_ulp(outputs) -> None:
    flat = outputs[0].reshape(-1)
    k = int(np.argmax(np.abs(flat)))
    flat[k] = np.nextafter(flat[k], np.float32(np.inf))


def test_pack_kernel_off_by_one_code_or_ulp_is_caught(artifact, loopback, monkeypatch):
    code, rng, segment = "pack_float32_1x32x16x16_4", "pack_float32_1x64x8x8_8", "segment_5"
    skew = {code: _code_off_by_one, rng: _range_one_ulp, segment: _segment_one_ulp}
    opened = check.open_library_rpc
    monkeypatch.setattr(check, "open_library_rpc", lambda *a, **k: _Skewed(opened(*a, **k), skew))

    report = check_artifact(artifact, tracker=loopback.tracker, key=loopback.key, target="host")
    rows = {r.name: r for r in report.rows}
    assert sorted(r.name for r in report.failed) == sorted([code, rng])
    for name in (code, rng):
        assert not rows[name].identical and rows[name].bytes_equal is False, rows[name]
        assert "frame of cut" in rows[name].note
    assert 0 < rows[rng].max_rel_error < 1e-5  # one ulp is within rtol, yet a pack kernel must be exact
    # A segment one ulp off is within rtol: ok, but not reported as equal.
    assert rows[segment].ok and not rows[segment].identical and 0 < rows[segment].max_rel_error < 1e-6
    assert ", 1 within rtol 1e-05, 2 differ" in report.summary()

    strict = check_artifact(artifact, tracker=loopback.tracker, key=loopback.key, target="host", rtol=0.0, images=1)
    assert sorted(r.name for r in strict.failed) == sorted([code, rng, segment])


# --- errors: one clear line each ---------------------------------------------------------------


@contextmanager
def _fails(error: type[Exception], match: str) -> Iterator[None]:
    """``error`` is raised, its message matches and is one line."""
    with pytest.raises(error, match=match) as info:
        yield
    assert "\n" not in str(info.value), str(info.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_errors_are_one_clear_line(artifact, resnet20_arm64, loopback):
    nowhere = f"127.0.0.1:{_free_port()}"
    with _fails(ArtifactError, r"no device library for target 'arm64'; it has .*device/host\.so"):
        check_artifact(artifact, tracker=nowhere, key="k")  # before anything is reached
    with _fails(RPCError, rf"cannot reach TVM RPC tracker {nowhere}"):
        check_artifact(artifact, tracker=nowhere, key="k", target="host")
    with _fails(RPCError, r"has no server with key 'no-such-board'; registered keys: dyno-check"):
        check_artifact(artifact, tracker=loopback.tracker, key="no-such-board", target="host")
    gc.disable()  # a failed load must free the server by itself, not when a collection happens to run
    try:
        with _fails(RPCError, r"could not load device/arm64\.so; it is built for 'arm64'"):
            check_artifact(resnet20_arm64, tracker=loopback.tracker, key=loopback.key, timeout=5)  # an x86 server
        assert check_artifact(artifact, tracker=loopback.tracker, key=loopback.key, target="host", images=1).ok
    finally:
        gc.enable()
    for images, message in ((0, "images must be a positive integer"), (10_000, "holds 932 images; asked for 10000")):
        with _fails(InputError, message):
            check_artifact(artifact, tracker=loopback.tracker, key=loopback.key, target="host", images=images)
    # An artifact without the host device library has no reference to check against.
    manifest = json.loads(json.dumps(resnet20_arm64.manifest))
    del manifest["libraries"]["device/host.so"]
    with _fails(ArtifactError, r"no device library for target 'host'"):
        check_artifact(Artifact(resnet20_arm64.root, manifest), tracker=nowhere, key="k")


def _dies(outputs) -> None:
    raise RuntimeError("remote side went away\nsome TVM traceback")


def test_a_remote_failure_mid_check_is_one_line_and_frees_the_server(artifact, loopback, monkeypatch):
    opened = check.open_library_rpc
    monkeypatch.setattr(check, "open_library_rpc", lambda *a, **k: _Skewed(opened(*a, **k), {"segment_3": _dies}))
    gc.disable()
    try:
        with _fails(RPCError, rf"running device/host\.so on dyno-check@{loopback.tracker} failed .*some TVM traceback"):
            check_artifact(artifact, tracker=loopback.tracker, key=loopback.key, target="host", images=1)
        monkeypatch.undo()
        for _ in range(2):  # each check frees the server as it ends, with no collection to help
            assert check_artifact(artifact, tracker=loopback.tracker, key=loopback.key, target="host", images=1).ok
    finally:
        gc.enable()


# --- the emulated board --------------------------------------------------------------------------


@pytest.mark.board
def test_resnet20_arm64_library_on_the_board_is_equal(board, resnet20_arm64):
    t0 = time.perf_counter()
    report = check_artifact(resnet20_arm64, tracker=board.tracker, key=board.key, timeout=BOARD_WAIT_S)
    print(f"\n{report.summary()}; checked in {time.perf_counter() - t0:.0f} s")
    _assert_all_equal(report, resnet20_arm64, "arm64")
    assert report.library == "device/arm64.so" and report.server == f"{board.key}@{board.tracker}"
    assert set(resnet20_arm64.manifest["bits"]) == {"float32", "float16", "16", "8", "4", "2"}


@pytest.mark.slow
@pytest.mark.board
@pytest.mark.parametrize("model", ["mobilenet_v2", "squeezenet"])
def test_imagenet_models_on_the_board_are_equal(board, model, tmp_path):
    spec = str(shared_data("imagenet", "squeezenet1.1_fp16.onnx")) if model == "squeezenet" else model
    t0 = time.perf_counter()
    art = _build(spec, tmp_path / model)
    t1 = time.perf_counter()
    report = check_artifact(art, tracker=board.tracker, key=board.key, timeout=BOARD_WAIT_S)
    print(f"\n{report.summary()}; built in {t1 - t0:.0f} s, checked in {time.perf_counter() - t1:.0f} s")
    _assert_all_equal(report, art, "arm64")
