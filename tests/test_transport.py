"""The transports' one vocabulary of failure: each maps its own codes (gRPC status codes;
HTTP statuses and socket errors) to a :class:`Reason`, keeps its own words in the
message, and the modules that define them import each other without a cycle."""

from __future__ import annotations

import ast
import http.server
import socket
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import dyno_compile.runtime as runtime
from dyno_compile.runtime.endpoint import connect
from dyno_compile.runtime.grpc_transport import INFER_METHOD, SERVICE_NAME
from dyno_compile.runtime.transport import Reason, TransportError

RUNTIME = Path(runtime.__file__).parent


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers ``POST /<status>`` with that HTTP status."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b"because"
        self.send_response(int(self.path.strip("/")))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_base():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "status, reason",
    [
        (429, Reason.BUSY),
        (503, Reason.BUSY),
        (408, Reason.TIMEOUT),
        (504, Reason.TIMEOUT),
        (502, Reason.UNREACHABLE),
        (401, Reason.REJECTED),
        (404, Reason.REJECTED),
        (500, Reason.PROTOCOL),
    ],
)
def test_http_statuses_map_to_reasons(http_base, status, reason):
    transport = connect(f"{http_base}/{status}")
    with pytest.raises(TransportError) as e:
        transport.call(b"x", 5.0)
    transport.close()
    assert e.value.reason is reason
    assert f"HTTP {status}" in str(e.value) and "because" in str(e.value)


@pytest.fixture(scope="module")
def grpc_endpoint():
    """A gRPC server whose Infer method aborts with the status named in the request, or,
    asked for ``SLOW``, answers after the caller's deadline."""
    release = threading.Event()

    def infer(request: bytes, context) -> bytes:
        name = request.decode()
        if name == "SLOW":
            release.wait(10)
            return b""
        context.abort(grpc.StatusCode[name], f"asked for {name}")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(infer)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE_NAME, {INFER_METHOD.rsplit("/", 1)[1]: handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"grpc://127.0.0.1:{port}"
    release.set()
    server.stop(0).wait()


@pytest.mark.parametrize(
    "asked, reason",
    [
        ("RESOURCE_EXHAUSTED", Reason.BUSY),
        ("UNAVAILABLE", Reason.UNREACHABLE),
        ("UNAUTHENTICATED", Reason.REJECTED),
        ("UNIMPLEMENTED", Reason.REJECTED),
        ("INTERNAL", Reason.PROTOCOL),
        ("SLOW", Reason.TIMEOUT),
    ],
)
def test_grpc_statuses_map_to_reasons(grpc_endpoint, asked, reason):
    transport = connect(grpc_endpoint)
    with pytest.raises(TransportError) as e:
        transport.call(asked.encode(), 0.5)
    transport.close()
    assert e.value.reason is reason
    assert ("DEADLINE_EXCEEDED" if asked == "SLOW" else asked) in str(e.value)


def _free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_no_listener_is_unreachable_and_a_closed_transport_says_so(scheme):
    transport = connect(f"{scheme}://127.0.0.1:{_free_port()}/dyno")
    with pytest.raises(TransportError) as e:
        transport.call(b"x", 2.0)
    assert e.value.reason is Reason.UNREACHABLE
    transport.close()
    with pytest.raises(TransportError) as e:
        transport.call(b"x", 2.0)
    assert e.value.reason is Reason.CLOSED


def _runtime_imports(module: str) -> set[str]:
    """The ``dyno_compile.runtime`` modules ``module`` imports anywhere in its body (inside
    functions too: a lazy import is still a dependency)."""
    tree = ast.parse((RUNTIME / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    prefix = "dyno_compile.runtime."
    return {name.removeprefix(prefix) for name in found if name.startswith(prefix)}


def test_the_transport_modules_import_without_a_cycle():
    """The vocabulary imports no transport; each transport imports only the vocabulary;
    only ``endpoint`` knows both."""
    assert _runtime_imports("transport") == set()
    assert _runtime_imports("grpc_transport") == {"transport"}
    assert _runtime_imports("http_transport") == {"transport"}
    assert _runtime_imports("endpoint") == {"transport", "grpc_transport", "http_transport"}
