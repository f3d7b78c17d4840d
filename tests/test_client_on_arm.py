"""The device client on ARM, end to end: ``DeviceClient`` runs inside the emulated board's
Python (aarch64 code under QEMU, TVM's runtime library only, the lean install), with the
artifact's arm64 device library, against a real ``serve`` process on this machine.

* Real CIFAR-10 images answered through the cloud at a pinned split configuration (8-bit
  codes, so the arm64 pack kernel makes the frame) get the predictions of the host's split
  run at that configuration (host device and cloud libraries, the runtime in-process), the
  same frame size, and outputs within 1e-5; the board's Python loaded nothing of the
  compiler side.
* The server SIGKILLed mid-run: the board finishes every remaining image on the device
  (the first as a fallback with the transport's error, the rest device-only), every image
  is answered, each with the host's answer for where it was computed.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grpc")

from test_lean_device import HEAVY  # noqa: E402
from test_runtime_faults import ServeProcess  # noqa: E402

from conftest import board_sysroot, rel_err, shared_data  # noqa: E402
from dyno_compile.artifact.load import Artifact, load_artifact  # noqa: E402
from dyno_compile.cli import main  # noqa: E402
from dyno_compile.configs import Config, Evaluation  # noqa: E402
from dyno_compile.errors import InputError  # noqa: E402
from dyno_compile.packing import bits_value, decode_packed  # noqa: E402
from dyno_compile.runtime.protocol import encode_request, model_id  # noqa: E402
from dyno_compile.runtime.selector import Pinned, Selector  # noqa: E402
from dyno_compile.runtime.sides import CloudSide, DeviceSide  # noqa: E402
from dyno_compile.search.calibration import load_calibration  # noqa: E402

IMAGES = 8
#: Cloud answers the board gets before the server is killed.
KILL_AFTER = 3
TOLERANCE = 1e-5
#: Longest wait for the emulated client's next line (start-up: ~10 s emulated ``import tvm``
#: and artifact load; a request: well under a second).
LINE_TIMEOUT_S = 180.0

pytestmark = pytest.mark.board


@pytest.fixture(scope="module")
def sysroot():
    """The emulated board's userland (skips, or fails under DYNO_REQUIRE_BOARD=1, without one)."""
    return board_sysroot()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """resnet20 for an arm64 device and a host cloud, widths float32 and 8, with a short
    search on real CIFAR-10 images (its configurations are what the client can pin)."""
    out = tmp_path_factory.mktemp("arm-client") / "resnet20"
    calibration = ("--calibration", shared_data("cifar10", "test_932.npz"), "--preprocess", "cifar10")
    args = ["build", "resnet20", "--device", "arm64", "--cloud", "host", "--bits", "float32,8", "--out", out]
    search = ("--cloud-batch", 1, "--evaluations", 10, "--calibration-limit", 100, *calibration)
    assert main([str(a) for a in (*args, *search)]) == 0
    return out


@pytest.fixture(scope="module")
def artifact(built) -> Artifact:
    return load_artifact(built)


@pytest.fixture(scope="module")
def config(artifact) -> Config:
    """The deepest split configuration with integer codes that the search measured and the
    selector admits (within the accuracy budget): the device runs segments and packs."""
    search = artifact.manifest["search"]
    evaluations = [Evaluation.from_dict(d) for d in json.loads((artifact.root / "search/evaluations.json").read_text())]
    splits = {c["position"] for c in artifact.cuts if c["kind"] == "split"}
    candidates = [
        e.config for e in evaluations if e.config.cut in splits and not isinstance(bits_value(e.config.bits), str)
    ]
    for c in sorted(candidates, reverse=True):
        try:
            Selector(
                evaluations,
                Pinned(c),
                accuracy_baseline=search["baseline_accuracy"],
                accuracy_budget=search["accuracy_budget"],
            )
        except InputError:  # outside the accuracy budget: the next
            continue
        return c
    pytest.fail(f"the search measured no admissible split configuration with integer codes: {candidates}")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[np.ndarray, Path]:
    """The first IMAGES real CIFAR-10 test images, preprocessed, and the .npz the board reads."""
    x = load_calibration(
        shared_data("cifar10", "test_932.npz"), input_shape=(1, 3, 32, 32), preprocess="cifar10", limit=IMAGES
    ).x
    path = tmp_path_factory.mktemp("images") / "images.npz"
    np.savez(path, x=x)
    return x, path


@pytest.fixture(scope="module")
def host(artifact, config, images) -> dict:
    """The host's answers: the split run at ``config`` through the runtime's own device and
    cloud sides (frame and all), and the device finishing alone from the cut (a fallback)."""
    x, _ = images
    device, cloud = DeviceSide(artifact, "host"), CloudSide(artifact, "host")
    split, alone, request = [], [], []
    for i in range(len(x)):
        frame = device.frame(device.start(x[i : i + 1], config.cut), config, request_id=i + 1)
        split.append(cloud.run(config.cut, decode_packed(frame).tensors))
        alone.append(device.finish(device.start(x[i : i + 1], config.cut), config.cut))
        request.append(len(encode_request(frame, model=model_id(artifact.model_hash))))
    return {"cloud": split, "device": alone, "request_bytes": request}


class BoardClient:
    """``python -m dyno_compile.board.client_run`` in the emulated board's Python, its stdout
    read line by line as the board answers."""

    def __init__(self, sysroot, artifact: Path, images: Path, out: Path, endpoint: str, config: Config) -> None:
        command = sysroot.command(
            "-m",
            "dyno_compile.board.client_run",
            str(artifact),
            str(images),
            str(out),
            "--endpoint",
            endpoint,
            "--config",
            json.dumps(config.to_dict()),
        )
        self.out = out
        self.stderr = out.with_suffix(".log")
        with open(self.stderr, "w") as log:
            self.proc = subprocess.Popen(command, env=sysroot.env(), stdout=subprocess.PIPE, stderr=log, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next(self) -> dict:
        """The board's next line: one answered image, or the final summary."""
        try:
            line = self.lines.get(timeout=LINE_TIMEOUT_S)
        except queue.Empty:
            self.proc.kill()
            pytest.fail(f"the board said nothing for {LINE_TIMEOUT_S} s; log:\n{self.stderr.read_text()[-3000:]}")
        if line is None:
            self.proc.wait(30)
            pytest.fail(f"the board's client ended ({self.proc.returncode}); log:\n{self.stderr.read_text()[-3000:]}")
        return json.loads(line)

    def finish(self) -> tuple[dict, np.ndarray, list[str]]:
        """The summary line, the outputs and where each was computed."""
        summary = self.next()
        assert self.proc.wait(60) == 0, self.stderr.read_text()[-3000:]
        with np.load(self.out) as npz:
            return summary, npz["outputs"], [str(w) for w in npz["where"]]


def _check_answer(output: np.ndarray, where: str, k: int, host: dict) -> None:
    """Image ``k`` answered by ``where`` has the host's answer for that place."""
    ref = host["cloud" if where == "cloud" else "device"][k]
    output = output.reshape(ref.shape)
    assert int(output.argmax()) == int(ref.argmax()), f"image {k} ({where}): prediction differs from the host's"
    assert rel_err(output, ref) <= TOLERANCE, f"image {k} ({where}): relative error {rel_err(output, ref):.2e}"


def _lean(summary: dict) -> None:
    """The board ran aarch64 code on TVM's runtime library, with nothing of the compiler side."""
    assert summary["machine"] == "aarch64" and summary["runtime_only"], summary
    loaded = set(summary["modules"])
    assert not [m for m in HEAVY if m in loaded], [m for m in HEAVY if m in loaded]


def test_board_client_answers_like_the_host(sysroot, built, config, images, host, tmp_path):
    server = ServeProcess(built, tmp_path / "serve.log")
    server.start()
    t0 = time.perf_counter()
    try:
        client = BoardClient(sysroot, built, images[1], tmp_path / "out.npz", server.endpoint, config)
        lines = [client.next() for _ in range(IMAGES)]
        summary, outputs, where = client.finish()
    finally:
        status = server.close()
    assert status == 0, server.log.read_text()[-2000:]
    _lean(summary)
    assert where == ["cloud"] * IMAGES, [(line["where"], line["error"]) for line in lines]
    assert [(line["cut"], line["bits"]) for line in lines] == [(config.cut, config.bits)] * IMAGES
    assert [line["bytes_sent"] for line in lines] == host["request_bytes"]
    for k in range(IMAGES):
        _check_answer(outputs[k], "cloud", k, host)
    exact = sum(np.array_equal(outputs[k].reshape(host["cloud"][k].shape), host["cloud"][k]) for k in range(IMAGES))
    print(
        f"\nboard client, {config.label}: {IMAGES} images through the cloud in {time.perf_counter() - t0:.1f} s "
        f"(ready after {summary['ready_s']:.1f} s emulated); {exact}/{IMAGES} outputs bit-identical to the host's"
    )


def test_server_killed_mid_run_the_board_finishes_on_the_device(sysroot, built, config, images, host, tmp_path):
    server = ServeProcess(built, tmp_path / "serve.log")
    server.start()
    try:
        client = BoardClient(sysroot, built, images[1], tmp_path / "out.npz", server.endpoint, config)
        lines = [client.next() for _ in range(KILL_AFTER)]
        assert [line["where"] for line in lines] == ["cloud"] * KILL_AFTER, lines
        server.kill()  # SIGKILL while the board goes on with the next image
        lines += [client.next() for _ in range(IMAGES - KILL_AFTER)]
        summary, outputs, where = client.finish()
    finally:
        server.close()
    _lean(summary)
    assert len(where) == IMAGES == len(outputs), "an image went unanswered"
    first = next((k for k, w in enumerate(where) if w != "cloud"), None)
    assert first is not None and first < IMAGES - 1, f"the kill went unnoticed: {where}"
    assert where[first] == "fallback" and lines[first]["error"], lines[first]
    assert all(w in ("device", "fallback") for w in where[first:]), where  # nothing answered by a dead server
    for k in range(IMAGES):
        _check_answer(outputs[k], where[k], k, host)
    print(f"\nserver killed after {KILL_AFTER} answers: {where}; first failure: {lines[first]['error']}")
