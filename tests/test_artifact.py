"""Artifacts end to end: build resnet20 (real weights) for arm64 + cuda (+ host), run every cut
at every width from the host libraries, and refuse tampered, mismatched or partial artifacts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import rel_err
from dyno_compile import zoo
from dyno_compile.artifact.build import SearchIncomplete, build_artifact, model_hash
from dyno_compile.artifact.load import load_artifact, run_split
from dyno_compile.artifact.plan import candidate_cuts, plan_build
from dyno_compile.artifact.store import ArtifactError, amend
from dyno_compile.frontend.jax_import import from_jax
from dyno_compile.ir import Interpreter
from dyno_compile.passes import run_passes
from dyno_compile.passes.insert_pack import insert_pack, pack_graph
from dyno_compile.passes.split import split
from dyno_compile.search.profile import ProfileError
from dyno_compile.targets import compile as compile_mod
from dyno_compile.targets.libraries import JOBS_ENV

BITS = ("float32", "float16", 16, 8, 4, 2)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    m = zoo.get_model("resnet20")
    graph = run_passes(from_jax(m.fn, m.params, m.random_input()))
    plan = plan_build(graph, candidate_cuts(graph), bits=BITS)
    out = tmp_path_factory.mktemp("art") / "resnet20"
    root, libs = build_artifact(plan, out, device_targets=["arm64"], cloud_targets=["cuda"])
    return graph, root, libs


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _check_against_ir(graph, x, position, bits, record, got) -> None:
    """The JAX reference with the same quantization: the IR reaches the same crossing
    tensors, the IR's pack ops put the same bytes on the wire from them, and the IR's cloud
    graph fed the artifact's wire gives the same answer."""
    plain = split(graph, position)
    for t, ref in zip(plain.cut.tensors, _as_tuple(Interpreter(plain.device, jit=False)(x))):
        crossing = record["crossing"][t]
        assert rel_err(crossing, ref) <= 1e-5, ("device segments", position)
        ir_wire = _as_tuple(Interpreter(pack_graph(graph.node(t).type, bits), jit=False)(crossing))
        for tvm_part, ir_part in zip(record["wire"][t], ir_wire):
            np.testing.assert_array_equal(tvm_part, np.asarray(ir_part), err_msg=f"pack at {position}, {bits}")
    wire = [w for t in plain.cut.tensors for w in record["wire"][t]]
    expected = np.asarray(Interpreter(insert_pack(plain, bits).cloud, jit=False)(*wire))
    assert rel_err(got, expected) <= 1e-4, ("cloud segments", position, bits)


def test_layout_and_libraries(built):
    graph, root, libs = built
    manifest = json.loads((root / "manifest.json").read_text())
    assert sorted(manifest["libraries"]) == ["cloud/cuda-sm80.so", "cloud/host.so", "device/arm64.so", "device/host.so"]
    assert set(manifest["files"]) >= {"model.json", "model.npz", *manifest["libraries"]}
    assert manifest["model_hash"] == model_hash(graph)
    header = (root / "device/arm64.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    assert [c["position"] for c in manifest["cuts"]][0] == 0 and manifest["cuts"][-1]["kind"] == "device-only"
    assert all(len(c["tensors"]) <= 1 for c in manifest["cuts"])


def test_every_cut_and_width_matches_the_jax_reference(built):
    graph, root, _ = built
    art = load_artifact(root)
    x = zoo.get_model("resnet20").random_input(seed=5)
    whole = np.asarray(Interpreter(graph)(x))
    for cut in art.cuts:
        for bits in BITS:
            if cut["kind"] == "device-only" and bits != "float32":
                continue
            record: dict = {}
            got = run_split(art, x, cut["position"], str(bits), record=record)
            if bits == "float32":
                assert rel_err(got, whole) <= 1e-5, cut["position"]
            else:
                _check_against_ir(graph, x, cut["position"], bits, record, got)


def test_real_accuracy_through_the_artifact_at_8_bits(built):
    from dyno_compile.datasets import cifar10

    _, root, _ = built
    art = load_artifact(root)
    x, y = cifar10.load_test(limit=200)
    mid = art.cuts[len(art.cuts) // 2]["position"]
    hits = sum(int(run_split(art, x[i : i + 1], mid, "8").argmax() == y[i]) for i in range(len(y)))
    full = int(np.asarray(Interpreter(art.graph)(x[:1])).shape[0])  # graph built at batch 1
    assert full == 1 and hits >= 180  # 91.6 % on the full set; 8-bit costs < 1 point


@pytest.mark.parametrize("damage", ["flip_byte", "delete_file", "version", "outside_path"])
def test_tampered_artifacts_are_refused(built, tmp_path, damage):
    _, root, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if damage == "flip_byte":
        lib = copy / "cloud/host.so"
        data = bytearray(lib.read_bytes())
        data[len(data) // 2] ^= 0xFF
        lib.write_bytes(bytes(data))
        match = "cloud/host.so does not match its checksum"
    elif damage == "delete_file":
        (copy / "model.npz").unlink()
        match = "model.npz is missing"
    elif damage == "version":
        manifest["version"] = 99
        manifest_path.write_text(json.dumps(manifest))
        match = "format version 99"
    else:
        manifest["files"]["../../etc/passwd"] = "0" * 64
        manifest_path.write_text(json.dumps(manifest))
        match = "outside the artifact"
    with pytest.raises(ArtifactError, match=match):
        load_artifact(copy)


def test_mismatched_model_is_refused(built):
    _, root, _ = built
    with pytest.raises(ArtifactError, match="must run the same build"):
        load_artifact(root, expect_model_hash="f" * 64)


def test_failed_build_leaves_nothing_and_existing_out_is_kept(built, tmp_path, monkeypatch):
    graph, root, _ = built
    plan = plan_build(graph, candidate_cuts(graph)[:3], bits=("float32",))
    with pytest.raises(ArtifactError, match="already exists"):
        build_artifact(plan, root, device_targets=["host"], cloud_targets=["host"])

    def explode(*args, **kwargs):
        raise RuntimeError("compiler crashed")

    monkeypatch.setenv(JOBS_ENV, "1")  # compile in this process, where the patch is
    monkeypatch.setattr(compile_mod, "compile_functions", explode)
    with pytest.raises(RuntimeError):
        build_artifact(plan, tmp_path / "new", device_targets=["host"], cloud_targets=["host"])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_or_interrupted_search_keeps_the_compiled_artifact(built, tmp_path):
    """Compiling is the long part of a build: when the search after it fails (a DynoError)
    or is interrupted, the compiled artifact stays, loads, and a later finish completes it."""
    graph, _, _ = built
    plan = plan_build(graph, candidate_cuts(graph)[:3], bits=("float32",))
    calls = []

    def failing(root):
        calls.append(load_artifact(root).manifest["model"])
        raise ProfileError("4 timing passes disagree")

    out = tmp_path / "a"
    with pytest.raises(SearchIncomplete, match=f"disagree.*kept at {out}.*dyno_compile search {out}") as info:
        build_artifact(plan, out, device_targets=["host"], cloud_targets=["host"], finish=failing)
    assert isinstance(info.value.__cause__, ProfileError) and calls == [graph.name]
    assert "search" not in load_artifact(out).manifest

    def interrupted(root):
        raise KeyboardInterrupt

    def terminated(root):
        os.kill(os.getpid(), signal.SIGTERM)  # raised as an interrupt while the build runs

    for name, finish, signame in (("b", interrupted, "SIGINT"), ("c", terminated, "SIGTERM")):
        kept = f"interrupted \\({signame}\\).*kept at {tmp_path / name}"
        with pytest.raises(SearchIncomplete, match=kept) as info:
            build_artifact(plan, tmp_path / name, device_targets=["host"], cloud_targets=["host"], finish=finish)
        assert isinstance(info.value.__cause__, KeyboardInterrupt)
        assert load_artifact(tmp_path / name).manifest["model"] == graph.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no staging folder left behind

    amend(out, lambda root: {"search": {"done": load_artifact(root).manifest["model"]}})
    assert load_artifact(out).manifest["search"] == {"done": graph.name}


def test_build_cli_refuses_unknown_target(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dyno_compile", "build", "resnet20", "--device", "pdp11", "--out", str(tmp_path / "a")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "pdp11" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigterm_mid_compile_leaves_nothing_and_no_worker(tmp_path, jobs):
    """``kill`` while the libraries compile (in this process, or in two workers): the one
    line saying so, exit 130, no staging directory, and no worker left compiling into it.
    (A worker whose start the signal cut short may print its own EOFError.)"""
    env = {**os.environ, JOBS_ENV: jobs}
    argv = [sys.executable, "-m", "dyno_compile", "build", "resnet20", "--no-search", "--device", "host"]
    process = subprocess.Popen(
        [*argv, "--cloud", "host", "--out", str(tmp_path / "a")], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # the first "compiling" line: the compile has started
        lines.append(line)
        if line.startswith("compiling"):
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130, "".join(lines) + rest
    assert "interrupted: nothing half-written is left behind" in rest.splitlines()
    assert list(tmp_path.iterdir()) == []


def test_one_file_archive_opens_like_the_directory(built, tmp_path, monkeypatch):
    import io
    import tarfile

    from dyno_compile.artifact.archive import write_archive

    monkeypatch.setenv("DYNO_CACHE", str(tmp_path / "cache"))
    _, root, _ = built
    archive = write_archive(root, tmp_path / "resnet20.tar.gz")
    assert write_archive(root, tmp_path / "again.tar.gz").read_bytes() == archive.read_bytes()  # reproducible
    with pytest.raises(ArtifactError, match="already exists"):
        write_archive(root, archive)
    art = load_artifact(archive)
    assert art.root.is_relative_to(tmp_path / "cache") and art.model_hash == load_artifact(root).model_hash
    x = zoo.get_model("resnet20").random_input(seed=2)
    np.testing.assert_array_equal(
        run_split(art, x, art.cuts[5]["position"], "4"), run_split(load_artifact(root), x, art.cuts[5]["position"], "4")
    )
    assert load_artifact(archive).root == art.root  # unpacked once, reused

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escape.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ArtifactError, match="not a plain file inside"):
        load_artifact(evil)
    assert not (tmp_path / "escape.txt").exists()

    damaged = tmp_path / "damaged.tar.gz"
    blob = bytearray(archive.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError):
        load_artifact(damaged)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="neither an artifact directory nor an artifact archive"):
        load_artifact(tmp_path / "notes.txt")
