"""A throw-away PostgreSQL server for the multi-worker search tests.

The search's many-worker mode is only real against a real database server, so the tests
start one: ``initdb`` into a temporary folder, ``pg_ctl start`` on a free loopback port
with a private socket folder, trust authentication (nothing but this machine can reach
it), durability switched off (a test database is thrown away, so fsync only costs time).
PostgreSQL refuses to run as root; when we are root the server runs as the ``postgres``
system user (or ``nobody``) and its folder is handed to that user.

Two ways to use it, sharing this code:

* ``.ci/run`` starts one server for the whole run and exports its URL::

      eval "$(.venv/bin/python -m tests.postgres start)"   # sets DYNO_TEST_POSTGRES_URL/_DIR
      .venv/bin/python -m tests.postgres stop "$DYNO_TEST_POSTGRES_DIR"

* a test fixture with no such variable starts its own with :func:`start` and :func:`stop`.

Every failure raises :class:`PostgresUnavailable` with the tool's own output, so a machine
without PostgreSQL fails the tests loudly rather than skipping them.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

URL_ENV = "DYNO_TEST_POSTGRES_URL"
DIR_ENV = "DYNO_TEST_POSTGRES_DIR"
SUPERUSER = "dyno"
START_TIMEOUT_S = 60
#: Server settings for a disposable test database: no durability, small and quiet.
SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 -c shared_buffers=32MB"
)


class PostgresUnavailable(RuntimeError):
    """The test PostgreSQL server could not be started or reached."""


@dataclass(frozen=True)
class Server:
    """A running server: its folder (data, socket, log) and a superuser URL."""

    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"


def _binary(name: str) -> str:
    """``name`` on PATH, else from the newest ``/usr/lib/postgresql/<version>/bin``."""
    packaged = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    found = shutil.which(name) or (packaged[-1] if packaged else None)
    if found is None:
        raise PostgresUnavailable(
            f"PostgreSQL's {name!r} is not installed (not on PATH, not in "
            "/usr/lib/postgresql/*/bin); the multi-worker search test needs a real server"
        )
    return found


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root (PostgreSQL refuses
    root); ``None`` when we are not root and can run it ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable(
        "running as root and neither a 'postgres' nor a 'nobody' user exists; PostgreSQL refuses to run as root"
    )


def _run(args: list[str], root: Path, user: pwd.struct_passwd | None, timeout: float) -> None:
    """Run a PostgreSQL tool as ``user``; its output goes into the error if it fails."""
    ids = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    try:
        done = subprocess.run(
            args,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
            **ids,
        )
    except subprocess.TimeoutExpired as e:
        raise PostgresUnavailable(f"{Path(args[0]).name} did not finish in {timeout:.0f} s") from e
    if done.returncode != 0:
        raise PostgresUnavailable(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def _free_port() -> int:
    """A loopback port nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start() -> Server:
    """Create and start a server in a new temporary folder; stops and removes it again if
    starting fails part-way, so nothing is left behind."""
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="dyno-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = Server(root, _free_port())
    try:
        _run(
            [_binary("initdb"), "-D", str(server.data), "-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8"],
            root,
            user,
            START_TIMEOUT_S,
        )
        options = f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 {SERVER_OPTIONS}"
        _run(
            [
                _binary("pg_ctl"),
                "-D",
                str(server.data),
                "-l",
                str(server.log),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ],
            root,
            user,
            START_TIMEOUT_S + 10,
        )
    except BaseException as e:
        log = server.log.read_text(errors="replace") if server.log.exists() else ""
        stop(root)
        if isinstance(e, PostgresUnavailable) and log:
            raise PostgresUnavailable(f"{e}\nserver log:\n{log}") from e
        raise
    return server


def _postmaster_pid(data: Path) -> int | None:
    """The server's process id from ``postmaster.pid`` (first line), if it is running."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data / "postmaster.pid").read_text().split()[0])
    return None


def stop(root: str | Path) -> None:
    """Stop the server in ``root`` (fast shutdown) and delete the folder. Safe to call on a
    folder whose server never started or is already gone."""
    root = Path(root)
    data = root / "data"
    pid = _postmaster_pid(data)
    if pid is not None:
        with contextlib.suppress(PostgresUnavailable):
            _run([_binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], root, _server_user(), 40)
        if _postmaster_pid(data) == pid:  # pg_ctl could not stop the server we started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def create_database(url: str) -> str:
    """A new empty database on the server at ``url``; returns its URL. Each test gets its
    own, so tests sharing one CI server never see each other's studies."""
    import psycopg2

    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg2.connect(url, connect_timeout=10)
    except psycopg2.OperationalError as e:
        raise PostgresUnavailable(f"cannot connect to the test server {url}: {e}") from e
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return f"{url.rsplit('/', 1)[0]}/{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.postgres", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start", help="start a server; print shell 'export' lines for its URL and folder")
    stop_parser = sub.add_parser("stop", help="stop the server in a folder printed by 'start' and remove it")
    stop_parser.add_argument("root")
    args = parser.parse_args(argv)
    if args.command == "stop":
        stop(args.root)
        return 0
    try:
        server = start()
    except PostgresUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"export {DIR_ENV}={shlex.quote(str(server.root))}")
    print(f"export {URL_ENV}={shlex.quote(server.url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
