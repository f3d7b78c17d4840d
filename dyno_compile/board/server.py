"""Start and stop the emulated board: a TVM RPC tracker on this machine and the emulated
``tvm.exec.rpc_server`` registered with it, the way a real board serves the project.

Both run in the background, each in its own session and process group (``setsid``), so
:func:`stop` ends each whole group: the RPC server runs sessions in child processes that
killing the parent alone would orphan. What runs is recorded in ``home/state.json`` and
the logs are in ``home/logs/``; :func:`status` believes the file only while its
processes live. Every wait is bounded; the emulated ``import tvm`` alone takes seconds
(more under load), so starting waits generously and, failing, quotes the log.

The key must start with :data:`~dyno_compile.search.rpc.EMULATED_KEY_PREFIX`: the
profiler labels such a server's timings ``emulated:rpc:<key>``, so an emulated time can
never be stored as a real board's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dyno_compile.board.sysroot import STATE_FILE, BoardError, board_home, locked, require
from dyno_compile.progress import Progress, silent
from dyno_compile.search.rpc import EMULATED_KEY_PREFIX, SERVER_PORTS, RPCError, tracker_keys

DEFAULT_KEY = f"{EMULATED_KEY_PREFIX}aarch64"
#: How long a stopped process group gets to end on SIGTERM before SIGKILL, and after it.
TERM_GRACE_S = 10.0
KILL_GRACE_S = 5.0
#: What each process's command line holds, so a recycled pid is never taken for ours.
TRACKER_MARK = "tvm.exec.rpc_tracker"
SERVER_MARK = "tvm.exec.rpc_server"
START_HINT = "python -m dyno_compile board start"


@dataclass(frozen=True)
class BoardState:
    """A running board: its tracker (``"127.0.0.1:PORT"``), the server's key there, and the
    process (and process group) ids of the tracker and the emulated server."""

    tracker: str
    key: str
    tracker_pid: int
    server_pid: int
    started: float

    def __str__(self) -> str:
        pids = f"tracker pid {self.tracker_pid}, server pid {self.server_pid}"
        return f"key {self.key} at tracker {self.tracker} ({pids})"


def _state_path(home: Path) -> Path:
    return home / STATE_FILE


def _logs(home: Path) -> Path:
    return home / "logs"


def status(home: Path | None = None) -> BoardState | None:
    """The running board, or None; a state file whose processes died is cleaned up (any
    survivor of the pair is stopped: half a board serves nobody)."""
    home = home or board_home()
    state = _read_state(home)
    if state is None:
        return None
    if _alive(state.tracker_pid, TRACKER_MARK) and _alive(state.server_pid, SERVER_MARK):
        return state
    _stop_state(home, state)
    return None


def start(
    home: Path | None = None, *, key: str = DEFAULT_KEY, timeout: float = 120.0, progress: Progress = silent
) -> BoardState:
    """Start the board (or return the running one) and wait, at most ``timeout`` seconds,
    until the tracker lists its server under ``key``."""
    if not key.startswith(EMULATED_KEY_PREFIX) or key == EMULATED_KEY_PREFIX:
        raise BoardError(
            f"an emulated board's key must start with {EMULATED_KEY_PREFIX!r} (got {key!r}), so its "
            f"times are never taken for a real board's: use e.g. {DEFAULT_KEY!r}"
        )
    home = home or board_home()
    sysroot = require(home)
    with locked(home):
        running = status(home)
        if running is not None:
            if running.key != key:
                raise BoardError(
                    f"a board is already running with key {running.key!r}; stop it first "
                    "(python -m dyno_compile board stop)"
                )
            return running
        logs = _logs(home)
        logs.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        tracker = f"127.0.0.1:{port}"
        progress(f"starting the RPC tracker at {tracker}")
        tracker_cmd = [sys.executable, "-m", TRACKER_MARK, "--host", "127.0.0.1", "--port", str(port)]
        tracker_pid = _spawn([*tracker_cmd, "--port-end", str(port + 1)], logs / "tracker.log", dict(os.environ))
        server_args = ("--tracker", tracker, "--key", key, "--host", "127.0.0.1")
        ports = ("--port", str(SERVER_PORTS[0]), "--port-end", str(SERVER_PORTS[1]))
        server_cmd = sysroot.command("-m", SERVER_MARK, *server_args, *ports)
        server_pid = _spawn(server_cmd, logs / "server.log", sysroot.env())
        state = BoardState(tracker, key, tracker_pid, server_pid, time.time())
        _write_state(home, state)  # before the wait: an interrupted start is still stopped by stop()
        progress(f"starting the emulated RPC server (key {key}; importing TVM emulated takes a while)")
        try:
            _wait_registered(home, state, timeout)
        except BaseException:
            _stop_state(home, state)
            raise
        return state


def stop(home: Path | None = None) -> bool:
    """Stop the board's processes (their whole groups) and forget it; False when none ran."""
    home = home or board_home()
    with locked(home):
        state = _read_state(home)
        if state is None:
            return False
        return _stop_state(home, state)


def _wait_registered(home: Path, state: BoardState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for pid, mark, log in (
            (state.tracker_pid, TRACKER_MARK, "tracker.log"),
            (state.server_pid, SERVER_MARK, "server.log"),
        ):
            if not _alive(pid, mark):
                raise BoardError(f"the board's {mark} exited while starting; {_tail(_logs(home) / log)}")
        try:
            if tracker_keys(state.tracker, timeout=2.0).get(state.key, 0) >= 1:
                return
        except RPCError:
            pass  # the tracker is still starting
        if time.monotonic() > deadline:
            raise BoardError(
                f"the emulated RPC server did not register with the tracker within {timeout:g} s (emulation "
                f"is slow under load: retry with a longer --timeout); {_tail(_logs(home) / 'server.log')}"
            )
        time.sleep(0.5)


def _tail(log: Path, lines: int = 3) -> str:
    """The last lines of a log, on one line, for an error message."""
    try:
        text = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        text = []
    return f"{log} ends: {' | '.join(text[-lines:])[-600:]}" if text else f"{log} is empty"


#: The processes this Python started, so their exit is collected (not left as zombies).
_children: dict[int, subprocess.Popen] = {}


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> int:
    """Start ``cmd`` in its own session (and process group), output to ``log``; its pid."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    _children[proc.pid] = proc
    return proc.pid


def _free_port() -> int:
    """A loopback port free now (the tracker binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_state(home: Path, state: BoardState) -> bool:
    """End both process groups (TERM, then KILL after a bound) and remove the state file;
    True when any process was still running."""
    stopped = False
    # The tracker first: a server ended under it makes it log a connection reset instead.
    for pid, mark in ((state.tracker_pid, TRACKER_MARK), (state.server_pid, SERVER_MARK)):
        stopped |= _stop_group(pid, mark)
    _state_path(home).unlink(missing_ok=True)
    return stopped


def _stop_group(pgid: int, mark: str) -> bool:
    """SIGTERM the process group ``pgid`` (ours only if its leader, when alive, is ``mark``),
    SIGKILL what is left after :data:`TERM_GRACE_S`."""
    if _alive(pgid, "") and not _alive(pgid, mark):  # "": any program
        return False  # the pid now belongs to another program: not ours to stop
    if not _members(pgid):
        return False
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + grace
        while _members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _members(pgid):
            return True
    raise BoardError(f"process group {pgid} ({mark}) survived SIGKILL: check `ps -g {pgid}`")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of ``pid`` from /proc, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if this Python started it (a zombie would look alive)."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def _alive(pid: int, mark: str) -> bool:
    """``pid`` runs (not a zombie) and its command line contains ``mark``. An empty command
    line counts as alive: a process in the middle of an ``exec`` (the launcher script
    handing over to QEMU) reads as empty for a moment, and a CI run once failed a board
    start on exactly that ("exited while starting", with an empty log)."""
    _reap(pid)
    stat = _proc_stat(pid)
    if stat is None or stat[0] in "ZX":
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return not cmdline or mark.encode() in cmdline


def _members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of group ``pgid``."""
    _reap(pgid)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            stat = _proc_stat(pid)
            if stat is not None and stat[1] == pgid and stat[0] not in "ZX":
                found.append(pid)
    return found


def _read_state(home: Path) -> BoardState | None:
    try:
        return BoardState(**json.loads(_state_path(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(home: Path, state: BoardState) -> None:
    tmp = _state_path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    tmp.replace(_state_path(home))
