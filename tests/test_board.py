"""The emulated aarch64 board (dyno_compile.board): setting it up and starting it.

* Setup refuses what it cannot do in one line that says what to do: not Linux x86-64, QEMU
  or mmdebstrap missing without root (the apt-get command to run), the network down
  (whichever step meets it), and leaves no half-built sysroot behind (the system is
  simulated here: platform, euid, the tools on PATH and the commands' results).
* A second setup does no work (no command run); a changed requirements file makes the
  board out of date, and a rebuild that fails leaves the ready one as it was.
* The real board starts (the tracker lists the key), reports its status, starts again as
  the same board, and stops with every process gone; a key without the emulated prefix is
  refused; stopping or asking with nothing running is safe, and a state file naming
  someone else's process never makes stop kill it.
* The CLI: status without a board (exit 1), check with no board (exit 2, says to start
  one), check over a loopback server (exit 0, the table), and exit 1 on a difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from conftest import board_sysroot
from dyno_compile.board import server, sysroot
from dyno_compile.board.check import CheckReport, FunctionCheck
from dyno_compile.board.server import BoardState
from dyno_compile.board.sysroot import BoardError
from dyno_compile.cli import main
from dyno_compile.search.rpc import EMULATED_KEY_PREFIX, local_rpc, tracker_keys


def _no_commands(monkeypatch) -> list[list[str]]:
    """Record every command setup or start would run, and run none."""
    calls: list[list[str]] = []

    def record(cmd, *args, **kwargs):
        calls.append(list(cmd))
        raise AssertionError(f"ran {cmd}")

    monkeypatch.setattr(subprocess, "run", record)
    monkeypatch.setattr(subprocess, "Popen", record)
    return calls


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message, message
    return message


@pytest.mark.parametrize(("system", "machine"), [("Darwin", "arm64"), ("Linux", "aarch64"), ("Windows", "AMD64")])
def test_setup_needs_linux_on_x86_64(monkeypatch, tmp_path, system, machine):
    calls = _no_commands(monkeypatch)
    monkeypatch.setattr(sysroot.platform, "system", lambda: system)
    monkeypatch.setattr(sysroot.platform, "machine", lambda: machine)
    with pytest.raises(BoardError) as exc:
        sysroot.setup(tmp_path / "home")
    assert "Linux on x86-64" in _one_line(exc) and f"{system} {machine}" in str(exc.value)
    assert calls == [] and not (tmp_path / "home").exists()


def _linux(monkeypatch, *, euid: int, tools: bool) -> None:
    monkeypatch.setattr(sysroot.platform, "system", lambda: "Linux")
    monkeypatch.setattr(sysroot.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(sysroot.os, "geteuid", lambda: euid)
    monkeypatch.setattr(sysroot.shutil, "which", lambda name: f"/usr/bin/{name}" if tools else None)


def test_setup_without_root_names_the_apt_command(monkeypatch, tmp_path):
    calls = _no_commands(monkeypatch)
    _linux(monkeypatch, euid=1000, tools=False)
    with pytest.raises(BoardError) as exc:
        sysroot.setup(tmp_path)
    message = _one_line(exc)
    assert "needs root" in message
    assert "apt-get install -y --no-install-recommends mmdebstrap qemu-user-static" in message
    assert "board setup" in message and calls == []
    assert not (tmp_path / "sysroot").exists()


def _fake_step(fail: str, output: str):
    """subprocess.run for setup: mmdebstrap unpacks a stand-in tree (a few files), pip
    writes some of a package; the step named ``fail`` fails with ``output`` instead."""
    seen: list[str] = []

    def run(cmd, *args, **kwargs):
        step = "mmdebstrap" if cmd[0] == "mmdebstrap" else "pip" if "pip" in cmd else cmd[0]
        seen.append(step)
        if step == fail:
            return subprocess.CompletedProcess(cmd, 1, "", output)
        if step == "mmdebstrap":
            (Path(cmd[-2]) / "usr" / "bin").mkdir(parents=True)
            (Path(cmd[-2]) / "usr" / "bin" / "python3.11").write_bytes(b"\x7fELF")
        if step == "pip":
            target = Path(cmd[cmd.index("--target") + 1])
            (target / "tvm").mkdir(parents=True)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run, seen


@pytest.mark.parametrize(
    ("fail", "output", "source"),
    [
        (
            "mmdebstrap",
            "I: downloading packages with apt...\nE: Failed to fetch http://deb.debian.org/debian/pool/main/p/"
            "python3.11/python3.11_3.11.2-6_arm64.deb  Temporary failure resolving 'deb.debian.org'\n",
            "deb.debian.org",
        ),
        (
            "pip",
            "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(': Failed to "
            "establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/numpy/\n"
            "ERROR: No matching distribution found for apache-tvm==0.27.0.post1\n",
            "the package index",
        ),
        ("apt-get", "Err:1 http://deb.debian.org/debian bookworm InRelease\n  Temporary failure resolving\n", "Debian"),
    ],
)
def test_a_network_failure_is_one_line_and_leaves_no_half_built_sysroot(monkeypatch, tmp_path, fail, output, source):
    _linux(monkeypatch, euid=0, tools=fail != "apt-get")
    if fail == "apt-get":  # missing tools make setup install them, and apt-get meets the network first
        monkeypatch.setattr(sysroot.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    run, seen = _fake_step(fail, output)
    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(BoardError) as exc:
        sysroot.setup(tmp_path)
    message = _one_line(exc)
    assert "no network access" in message and "board setup" in message and source in message
    assert seen[-1] == fail
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # no sysroot, no build folder
    with pytest.raises(BoardError, match="no board set up"):
        sysroot.require(tmp_path)


def test_a_failing_step_that_is_not_the_network_says_which_step(monkeypatch, tmp_path):
    _linux(monkeypatch, euid=0, tools=True)
    run, _ = _fake_step("pip", "ERROR: Could not find a version that satisfies the requirement numpy>=99\n")
    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(BoardError) as exc:
        sysroot.setup(tmp_path)
    assert _one_line(exc).startswith("pip install (the aarch64 wheels) failed (exit 1): ERROR: Could not find")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_require_without_a_board_says_to_set_one_up(tmp_path):
    with pytest.raises(BoardError) as exc:
        sysroot.require(tmp_path)
    assert _one_line(exc) == f"no board set up in {tmp_path}: run python -m dyno_compile board setup"


def test_board_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNO_BOARD_HOME", str(tmp_path))
    assert sysroot.board_home() == tmp_path
    monkeypatch.delenv("DYNO_BOARD_HOME")
    assert sysroot.board_home() == Path.home() / ".cache" / "dyno-compile" / "board"


@pytest.fixture
def alias(tmp_path) -> Path:
    """A board home of this test's own whose sysroot is the set-up board's (a link): its
    state, logs and lock are separate from the board a user or the session runs."""
    ready = board_sysroot()
    (tmp_path / "sysroot").symlink_to(ready.root)
    return tmp_path


@pytest.mark.board
def test_a_second_setup_does_no_work(monkeypatch, alias):
    calls = _no_commands(monkeypatch)
    t0 = time.perf_counter()
    ready = sysroot.setup(alias)
    assert calls == [] and time.perf_counter() - t0 < 2.0
    assert ready == sysroot.require(alias) and ready.python.is_file()
    env = ready.env(EXTRA="1")
    assert env["PYTHONPATH"] == str(sysroot.CHECKOUT) and env["TVM_USE_RUNTIME_LIB"] == "1" and env["EXTRA"] == "1"
    assert ready.command("-c", "pass") == [str(ready.python), "-c", "pass"]


@pytest.mark.board
def test_changed_requirements_rebuild_and_a_failed_rebuild_keeps_the_ready_board(monkeypatch, alias):
    before = sysroot.require(alias)
    monkeypatch.setattr(sysroot, "device_requirements", lambda: ["apache-tvm==0.27.0.post1", "numpy>=2.1"])
    with pytest.raises(BoardError, match="set up for other requirements"):
        sysroot.require(alias)
    (alias / "state.json").write_text("{}")  # a board may run from it: not rebuilt under it
    with pytest.raises(BoardError, match="may be running: stop it first"):
        sysroot.setup(alias)
    (alias / "state.json").unlink()
    run, seen = _fake_step("mmdebstrap", "E: Failed to fetch ... Temporary failure resolving 'deb.debian.org'")
    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(BoardError, match="no network access"):
        sysroot.setup(alias)
    assert seen == ["mmdebstrap"]  # the changed requirements started a rebuild
    monkeypatch.undo()
    assert sysroot.require(alias) == before
    assert sorted(p.name for p in alias.iterdir()) == [".lock", "sysroot"]


@pytest.mark.board
def test_the_emulated_board_starts_reports_and_stops(alias):
    t0 = time.perf_counter()
    state = server.start(alias, timeout=300.0)
    started = time.perf_counter() - t0
    try:
        assert state.key == server.DEFAULT_KEY and state.key.startswith(EMULATED_KEY_PREFIX)
        assert state.tracker.startswith("127.0.0.1:") and tracker_keys(state.tracker).get(state.key) == 1
        assert server.status(alias) == state
        assert json.loads((alias / "state.json").read_text())["server_pid"] == state.server_pid
        assert "qemu-aarch64" in Path(f"/proc/{state.server_pid}/cmdline").read_text()
        t1 = time.perf_counter()
        assert server.start(alias) == state and time.perf_counter() - t1 < 2.0  # the same board, not a second
        with pytest.raises(BoardError, match="already running with key 'emulated-aarch64'"):
            server.start(alias, key="emulated-other")
    finally:
        assert server.stop(alias)
    assert server.status(alias) is None and not (alias / "state.json").exists()
    for pgid in (state.tracker_pid, state.server_pid):
        assert server._members(pgid) == []
    assert (alias / "logs" / "server.log").read_text()
    print(f"board started in {started:.1f} s")


@pytest.mark.board
def test_a_start_that_times_out_says_so_and_leaves_nothing_running(alias):
    with pytest.raises(BoardError) as exc:
        server.start(alias, timeout=0.5)
    message = _one_line(exc)
    assert "did not register with the tracker within 0.5 s" in message and "--timeout" in message
    assert str(alias / "logs" / "server.log") in message
    assert server.status(alias) is None and not (alias / "state.json").exists()
    ours = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(alias).encode() in _cmdline(p)]
    assert ours == []


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("key", ["rpi5", "emulated-", "aarch64-emulated"])
def test_start_refuses_a_key_without_the_emulated_prefix(tmp_path, key):
    with pytest.raises(BoardError) as exc:
        server.start(tmp_path, key=key)
    assert EMULATED_KEY_PREFIX in _one_line(exc) and "never taken for a real board" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_stop_and_status_with_nothing_running(tmp_path):
    assert server.stop(tmp_path) is False
    assert server.status(tmp_path) is None


def test_a_stale_state_is_cleaned_and_never_kills_another_program(tmp_path):
    """A state file left by a board that died, whose pids now belong to other programs (this
    test's own Python, a finished process): status is None, the file goes, nobody is killed."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    state = BoardState("127.0.0.1:1", server.DEFAULT_KEY, os.getpid(), finished.pid, 0.0)
    (tmp_path / "state.json").write_text(json.dumps(asdict(state)))
    assert server.status(tmp_path) is None
    assert not (tmp_path / "state.json").exists()
    (tmp_path / "state.json").write_text(json.dumps(asdict(state)))
    assert server.stop(tmp_path) is False and not (tmp_path / "state.json").exists()
    assert Path(f"/proc/{os.getpid()}").exists()  # still here


def test_cli_status_and_check_without_a_board(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DYNO_BOARD_HOME", str(tmp_path))
    assert main(["board", "status"]) == 1
    assert "no board running (python -m dyno_compile board start starts one)" in capsys.readouterr().out
    assert main(["board", "check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: no board running: run python -m dyno_compile board start" in err and err.count("\n") == 1
    assert main(["board", "start", "--key", "rpi5"]) == 2
    assert "must start with 'emulated-'" in capsys.readouterr().err
    assert main(["board", "stop"]) == 0 and "no board was running" in capsys.readouterr().out


def test_cli_check_over_a_loopback_server(resnet20_host, capsys):
    """The command's wiring on a TVM RPC server on this machine (the host library both
    sides: all equal, exit 0); the emulated board runs the same code path with arm64."""
    with local_rpc("dyno-board-cli") as rpc:
        args = ["board", "check", str(resnet20_host), "--target", "host", "--images", "1"]
        assert main([*args, "--rpc-tracker", rpc.tracker, "--rpc-key", rpc.key]) == 0
    out = capsys.readouterr().out
    assert "segment_0" in out and "0 differ" in out
    assert main([*args, "--rpc-tracker", rpc.tracker]) == 2
    assert "--rpc-tracker and --rpc-key go together" in capsys.readouterr().err


def test_cli_check_exits_1_on_a_difference(monkeypatch, tmp_path, capsys):
    row = FunctionCheck("segment_3", "segment", 0.5, False, None, False, 1, "max rel error 0.5 > 1e-05")
    report = CheckReport("device/arm64.so", "emulated-x@127.0.0.1:1", 1, 1e-5, [row])
    calls = []

    def check_artifact(artifact, *, tracker, key, target="arm64", images=2, progress=None):
        calls.append((artifact, tracker, key, target, images))
        return report

    monkeypatch.setattr("dyno_compile.cli.check_artifact", check_artifact)
    assert main(["board", "check", str(tmp_path), "--rpc-tracker", "127.0.0.1:1", "--rpc-key", "emulated-x"]) == 1
    assert calls == [(str(tmp_path), "127.0.0.1:1", "emulated-x", "arm64", 2)]
    assert "segment_3" in capsys.readouterr().out
