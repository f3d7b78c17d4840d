"""Profile an artifact's library on a remote device over TVM RPC, as a real board runs it.

A board runs ``python -m tvm.exec.rpc_server --tracker=HOST:PORT --key=KEY`` and this
machine asks the tracker for a server with that key, uploads the library built for the
board's target, loads it there and times each function with the remote time evaluator
(the timed loop runs on the board; the network is not in the figures). The profile is
labelled ``measured:rpc:<key>``.

:func:`local_rpc` starts a loopback tracker and a server registered with a key, each in
its own process (TVM's ``Tracker``/``Server``), for tests and for trying the flow here.

Every wait is bounded. ``tvm.rpc.TrackerSession`` has no timeouts: it retries a refused
tracker for 60 s and waits forever in ``request`` for a key no server has, so the
tracker's small JSON protocol is spoken here over sockets with a deadline, and the
session itself is opened with a ``session_timeout`` after which the server ends it.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dyno_compile.errors import DynoError, InputError
from dyno_compile.search.profile import (
    MIN_REPEAT_MS,
    REPEAT,
    LibraryProfile,
    ProfileError,
    check_side,
    profile_runner,
    tvm_message,
)

if TYPE_CHECKING:
    from dyno_compile.artifact.load import Artifact
    from dyno_compile.targets.runner import ModuleRunner

#: Keys of emulated boards start with this; their timings are labelled ``emulated:rpc:<key>``.
EMULATED_KEY_PREFIX = "emulated-"

#: Port ranges searched for a free port by the loopback tracker and server (several
#: users of one machine each get their own).
TRACKER_PORTS = (9190, 9690)
SERVER_PORTS = (9700, 10200)


class RPCError(ProfileError):
    """The tracker or remote server is unreachable, has no server for the key, or failed."""


@dataclass(frozen=True)
class LocalRPC:
    """A running loopback tracker and server: pass ``tracker`` and ``key`` to
    :func:`profile_library_rpc`."""

    tracker: str
    key: str


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"tracker address must be 'host:port', got {address!r}")
    return host, int(port)


def _tracker_call(address: str, message: list[Any], timeout: float) -> Any:
    """Send one message to the tracker and return its reply, all within ``timeout`` seconds."""
    from tvm.rpc import base

    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
            if magic != base.RPC_TRACKER_MAGIC:
                raise RPCError(f"{address} is not a TVM RPC tracker (handshake {magic:#x})")
            base.sendjson(sock, message)
            return base.recvjson(sock)
    except TimeoutError:
        raise RPCError(f"TVM RPC tracker {address}: no answer to {message[0]!r} within {timeout:g} s") from None
    except (OSError, RuntimeError) as exc:  # refused, reset, unresolvable; recvall raises RuntimeError on EOF
        raise RPCError(f"cannot reach TVM RPC tracker {address}: {exc}") from None


def tracker_keys(address: str, *, timeout: float = 5.0) -> dict[str, int]:
    """The keys the tracker has servers for, with how many are free now."""
    from tvm.rpc.base import TrackerCode

    reply = _tracker_call(address, [TrackerCode.SUMMARY], timeout)
    if reply[0] != TrackerCode.SUCCESS:
        raise RPCError(f"TVM RPC tracker {address} refused a summary: {reply!r}")
    registered = {item["key"].split(":", 1)[-1] for item in reply[1]["server_info"] if "key" in item}
    queues = reply[1]["queue_info"]
    return {k: int(queues.get(k, {}).get("free", 0)) for k in registered}


def request_session(address: str, key: str, *, timeout: float = 10.0, session_timeout: float = 600.0):
    """An ``RPCSession`` to a free server registered under ``key``.

    Fails within about ``timeout`` seconds when the tracker is unreachable, knows no server
    with ``key``, or has none free; the server ends the session after
    ``session_timeout`` seconds so a stuck board cannot hold the caller forever.
    """
    from tvm import rpc
    from tvm.rpc.base import TrackerCode

    keys = tracker_keys(address, timeout=timeout)
    if key not in keys:
        raise RPCError(
            f"TVM RPC tracker {address} has no server with key {key!r}; registered keys: "
            f"{', '.join(sorted(keys)) or 'none'} (start one with python -m tvm.exec.rpc_server "
            f"--tracker={address} --key={key})"
        )
    try:
        reply = _tracker_call(address, [TrackerCode.REQUEST, key, "", 1], timeout)
    except RPCError as exc:
        raise RPCError(
            f"no free server with key {key!r} at tracker {address} ({keys[key]} free a moment ago): {exc}"
        ) from None
    if reply[0] != TrackerCode.SUCCESS:
        raise RPCError(f"TVM RPC tracker {address} refused a server for key {key!r}: {reply!r}")
    host, port, matchkey = reply[1]
    try:
        return rpc.connect(host, port, matchkey, session_timeout=session_timeout)
    except Exception as exc:  # noqa: BLE001 - TVM raises plain RuntimeError/TVMError kinds
        raise RPCError(
            f"server {host}:{port} for key {key!r} (from tracker {address}) refused a session: {exc}"
        ) from None


def rpc_source(key: str) -> str:
    """The provenance label of a timing taken on the server registered under ``key``."""
    return f"{'emulated' if key.startswith(EMULATED_KEY_PREFIX) else 'measured'}:rpc:{key}"


def open_library_rpc(
    artifact: Artifact,
    side: str,
    target: str,
    *,
    tracker: str,
    key: str,
    timeout: float = 10.0,
    session_timeout: float = 600.0,
) -> ModuleRunner:
    """A ``ModuleRunner`` over the artifact's ``side`` library for ``target``, uploaded to and
    loaded on a server registered with ``key`` at ``tracker``: its functions run there.

    The library must be in the artifact (``ArtifactError`` otherwise) and must load on the
    server (an arm64 library on an x86 server is an ``RPCError``). ``timeout`` bounds
    reaching the tracker and getting a server; the server ends the session after
    ``session_timeout`` seconds.
    """
    from dyno_compile.targets.module import CompiledModule
    from dyno_compile.targets.runner import ModuleRunner, device_for

    rel = artifact.library(side, target)
    description = artifact.manifest["libraries"][rel]["module"]
    session = request_session(tracker, key, timeout=timeout, session_timeout=session_timeout)
    remote_name = f"{artifact.model_hash[:12]}-{rel.replace('/', '-')}"
    try:
        session.upload(str(artifact.root / rel), target=remote_name)
        module = CompiledModule.from_description(description, session.load_module(remote_name))
        return ModuleRunner(module, device=device_for(module.target, session))
    except Exception as exc:  # noqa: BLE001 - any failure to load remotely, named with the library
        reason = tvm_message(exc)
    # Raised out here, with the session dropped: an error raised in the handler would keep
    # TVM's error as its context, whose traceback holds the session, and so the server busy.
    session = None
    raise RPCError(
        f"server with key {key!r} could not load {rel}; it is built for {target!r}: does the "
        f"server run that target? ({reason})"
    )


def profile_library_rpc(
    artifact: Artifact,
    side: str,
    target: str,
    *,
    tracker: str,
    key: str,
    timeout: float = 10.0,
    session_timeout: float = 600.0,
    repeat: int = REPEAT,
    min_repeat_ms: int = MIN_REPEAT_MS,
) -> LibraryProfile:
    """Time every function of the artifact's ``side`` library for ``target`` on a server
    registered with ``key`` at ``tracker`` (``"host:port"``); labelled by :func:`rpc_source`.

    Loads it with :func:`open_library_rpc` (its errors); ``session_timeout`` bounds the
    whole remote run.
    """
    check_side(side)
    rel = artifact.library(side, target)
    runner = open_library_rpc(
        artifact, side, target, tracker=tracker, key=key, timeout=timeout, session_timeout=session_timeout
    )
    try:
        return profile_runner(runner, side, rpc_source(key), repeat=repeat, min_repeat_ms=min_repeat_ms)
    except DynoError:
        raise
    except Exception as exc:  # noqa: BLE001 - a remote failure or the session expiring
        raise RPCError(
            f"timing {rel} on the server with key {key!r} failed (session_timeout "
            f"{session_timeout:g} s): {tvm_message(exc)}"
        ) from None


@contextmanager
def local_rpc(key: str = "dyno-local", *, host: str = "127.0.0.1", timeout: float = 60.0) -> Iterator[LocalRPC]:
    """A loopback tracker and one server registered with ``key``, each in its own process;
    both are stopped on exit. Waits (at most ``timeout`` s) until the server is registered."""
    from tvm.rpc import Server
    from tvm.rpc.tracker import Tracker

    # Importing dyno_compile.targets (above) set TVM_NUM_THREADS to this machine's cores, and
    # the server process inherits it: local and loopback timings use the same thread count.
    tracker = Tracker(host, port=TRACKER_PORTS[0], port_end=TRACKER_PORTS[1], silent=True)
    server = None
    try:
        address = f"{host}:{tracker.port}"
        server = Server(
            host,
            port=SERVER_PORTS[0],
            port_end=SERVER_PORTS[1],
            tracker_addr=(host, tracker.port),
            key=key,
            silent=True,
        )
        _wait_for_key(address, key, timeout)
        yield LocalRPC(address, key)
    finally:  # the tracker first: a server killed under it makes it log a connection reset
        tracker.terminate()
        if server is not None:
            server.terminate()


def _wait_for_key(address: str, key: str, timeout: float) -> None:
    """A server registers with the tracker shortly after it starts; wait until it has."""
    deadline = time.monotonic() + timeout
    while tracker_keys(address).get(key, 0) < 1:
        if time.monotonic() > deadline:
            raise RPCError(
                f"the RPC server with key {key!r} did not register with tracker {address} within {timeout:g} s"
            )
        time.sleep(0.1)
