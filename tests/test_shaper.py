"""The user-space link shaper: byte-exact forwarding, pacing by rate and by a real trace,
propagation delay, step changes, prompt shutdown and input checks."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from conftest import shared_data
from dyno_compile.errors import InputError
from dyno_compile.evaluate.shaper import LinkShaper
from dyno_compile.runtime.link import UplinkTrace

#: A 3G uplink (~118 kB/s on average) whose first opportunity is at 637 ms.
TRACE = ("traces", "mahimahi_cellular", "TMobile-UMTS-driving.up")


class _Handler(socketserver.BaseRequestHandler):
    """``E`` + data: echo everything until EOF. ``S<n>\\n`` + n bytes: reply ``k`` once all
    n bytes are in, then again for the next request on the same connection."""

    #: Connections the server has accepted so far (the shaper connects one per client).
    accepted = 0
    _lock = threading.Lock()

    def setup(self) -> None:
        with _Handler._lock:
            _Handler.accepted += 1

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind = sock.recv(1)
        if kind == b"E":
            while data := sock.recv(65536):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return
        while kind == b"S":
            n = int(_read_line(sock))
            while n > 0:
                chunk = sock.recv(min(n, 65536))
                if not chunk:
                    return
                n -= len(chunk)
            sock.sendall(b"k")
            kind = sock.recv(1)


def _eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for ``condition`` (polled every few milliseconds), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.002)


def _read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        c = sock.recv(1)
        if not c:
            raise ConnectionError("closed mid-line")
        line += c
    return line


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[:2]
    srv.shutdown()
    srv.server_close()


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _sink(sock: socket.socket, nbytes: int) -> float:
    """Send a sink request of ``nbytes`` on ``sock``; seconds until the server's reply."""
    header = b"S%d\n" % nbytes
    t0 = time.monotonic()
    sock.sendall(header + bytes(nbytes))
    assert sock.recv(1) == b"k"
    return time.monotonic() - t0


def _echo(address: tuple[str, int], payload: bytes) -> bytes:
    """Send ``payload`` to the echo server (writing and reading at once), half-close, and
    return everything that comes back."""
    sock = _connect(address)
    received = bytearray()

    def read() -> None:
        while data := sock.recv(65536):
            received.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    sock.sendall(b"E" + payload)
    sock.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert not reader.is_alive(), "the echo did not end"
    sock.close()
    return bytes(received)


def test_forwards_bytes_exactly_both_ways(server):
    payload = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    with LinkShaper(server, uplink=None) as shaper:
        assert _echo(shaper.address, payload) == payload
        shaped = payload[:200_000]
        shaper.set_uplink(2e6)
        assert _echo(shaper.address, shaped) == shaped
        up, down = 2 + len(payload) + len(shaped), len(payload) + len(shaped)  # the two "E"s go up too
        _eventually(lambda: (shaper.bytes_up, shaper.bytes_down) == (up, down))


def test_constant_rate_paces_the_uplink(server):
    with LinkShaper(server, uplink=200_000.0) as shaper, _connect(shaper.address) as sock:
        took = _sink(sock, 100_000)
        assert took == pytest.approx(0.5, rel=0.25)
        _eventually(lambda: (shaper.bytes_up, shaper.bytes_down) == (len(b"S100000\n") + 100_000, 1))


def test_connections_share_one_uplink(server):
    """Two clients sending 50 kB each at once over 200 kB/s finish together at ~0.5 s."""
    with LinkShaper(server, uplink=200_000.0) as shaper:
        socks = [_connect(shaper.address) for _ in range(2)]
        times: list[float] = []
        threads = [threading.Thread(target=lambda s=s: times.append(_sink(s, 50_000))) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        for s in socks:
            s.close()
    assert max(times) == pytest.approx(0.5, rel=0.25)


def test_trace_pacing_matches_transfer_seconds(server):
    trace = UplinkTrace.read(shared_data(*TRACE))
    nbytes = 60_000
    header = b"S%d\n" % nbytes
    with LinkShaper(server, uplink=trace) as shaper, _connect(shaper.address) as sock:
        for _ in range(2):  # from trace time ~0 (waiting for the first opportunity at 0.64 s), then later
            start = time.monotonic() - shaper.uplink_origin
            took = _sink(sock, nbytes)
            expected = trace.transfer_seconds(start, len(header) + nbytes)
            assert abs(took - expected) <= max(0.03, 0.2 * expected), (start, took, expected)


def test_one_way_delay_doubles_into_the_round_trip(server):
    with LinkShaper(server, uplink=None, one_way_delay_s=0.05) as shaper, _connect(shaper.address) as sock:
        _sink(sock, 10)  # connection set-up out of the way
        rtts = [_sink(sock, 10) for _ in range(3)]
    assert np.median(rtts) == pytest.approx(0.1, abs=0.015)


def test_set_uplink_is_a_step_change(server):
    with LinkShaper(server, uplink=1_000_000.0) as shaper, _connect(shaper.address) as sock:
        fast = _sink(sock, 100_000)
        shaper.set_uplink(100_000.0)
        slow = _sink(sock, 50_000)
    assert fast == pytest.approx(0.1, rel=0.25)
    assert slow == pytest.approx(0.5, rel=0.25)


def test_stop_closes_open_connections_promptly(server):
    shaper = LinkShaper(server, uplink=1_000.0)  # 1 kB/s: the 200 kB below would take minutes
    shaper.start()
    before = _Handler.accepted
    socks = [_connect(shaper.address) for _ in range(3)]
    for s in socks:
        s.sendall(b"S200000\n" + bytes(200_000))
    _eventually(lambda: _Handler.accepted == before + 3)  # the shaper holds all three, both ways
    t0 = time.monotonic()
    shaper.stop()
    assert time.monotonic() - t0 < 1.0
    for s in socks:
        s.settimeout(2)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        s.close()
    with pytest.raises(RuntimeError):
        _ = shaper.address


def test_unreachable_target_closes_the_client():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    with LinkShaper(("127.0.0.1", free_port), uplink=None) as shaper, _connect(shaper.address) as sock:
        sock.settimeout(2)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        assert shaper.bytes_up == shaper.bytes_down == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"uplink": 0.0},
        {"uplink": -5.0},
        {"uplink": float("nan")},
        {"uplink": True},
        {"uplink": "fast"},
        {"uplink": None, "one_way_delay_s": -0.01},
        {"uplink": None, "one_way_delay_s": float("inf")},
        {"uplink": None, "listen_port": 70000},
    ],
)
def test_bad_inputs_raise_input_error(kwargs):
    with pytest.raises(InputError):
        LinkShaper(("127.0.0.1", 9), **kwargs)


@pytest.mark.parametrize("target", [("127.0.0.1",), ("127.0.0.1", 0), ("", 80), "127.0.0.1:80"])
def test_bad_targets_raise_input_error(target):
    with pytest.raises(InputError):
        LinkShaper(target, uplink=None)


def test_set_uplink_checks_its_input(server):
    with LinkShaper(server, uplink=None) as shaper, pytest.raises(InputError):
        shaper.set_uplink(0)
