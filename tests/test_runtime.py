"""The runtime end to end on loopback: protocol, engine refusals, the gRPC server, the
device client, TLS and the shared token, and the accuracy a real server delivers."""

from __future__ import annotations

import datetime
import json
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dyno_compile.artifact.load import load_artifact, run_split
from dyno_compile.configs import Config, Evaluation
from dyno_compile.errors import InputError
from dyno_compile.runtime import make_policy
from dyno_compile.runtime.client import DeviceClient
from dyno_compile.runtime.endpoint import connect
from dyno_compile.runtime.engine import CloudEngine, EngineOptions, ReplayGuard
from dyno_compile.runtime.grpc_transport import INFER_METHOD, status_reason
from dyno_compile.runtime.protocol import (
    Kind,
    ProtocolError,
    Status,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    model_id,
    now_us,
)
from dyno_compile.runtime.server import CloudServer, ServerOptions
from dyno_compile.runtime.sides import DeviceSide
from dyno_compile.runtime.transport import TransportError
from dyno_compile.search.calibration import load_calibration
from tests.conftest import rel_err, shared_data


@pytest.fixture(scope="module")
def artifact(searched_resnet20):
    return load_artifact(searched_resnet20)


@pytest.fixture(scope="module")
def cifar():
    return load_calibration(shared_data("cifar10", "test_932.npz"), input_shape=(1, 3, 32, 32), preprocess="cifar10")


@pytest.fixture(scope="module")
def engine(artifact):
    return CloudEngine(artifact, EngineOptions(workers=2))


@pytest.fixture(scope="module")
def server(engine):
    with CloudServer(engine) as srv:
        yield srv


@pytest.fixture(scope="module")
def device(artifact):
    return DeviceSide(artifact)


def _offloaded(artifact) -> list[Evaluation]:
    pareto = [Evaluation.from_dict(d) for d in artifact.manifest["search"]["pareto"]]
    return [e for e in pareto if e.bytes > 0]


def _request(artifact, device, x, config: Config, request_id: int, **kw) -> bytes:
    frame = device.frame(device.start(x, config.cut), config, request_id)
    return encode_request(frame, model=model_id(artifact.model_hash), **kw)


# --- protocol ---------------------------------------------------------------------------


def test_reply_round_trip_and_error_reply():
    out = np.arange(10, dtype=np.float32).reshape(1, 10)
    reply = decode_reply(
        encode_reply(Status.OK, request_id=7, output=out, queue_s=0.001, compute_s=0.002, in_flight=3, workers=2)
    )
    assert reply.ok and reply.request_id == 7 and np.array_equal(reply.output.reshape(1, 10), out)
    assert reply.server_s == pytest.approx(0.003) and (reply.in_flight, reply.workers) == (3, 2)
    error = decode_reply(encode_reply(Status.OVERLOADED, message="x" * 5000))
    assert error.status is Status.OVERLOADED and error.output is None and len(error.message) == 1024


@pytest.mark.parametrize(
    "bad, why",
    [
        (b"", "shorter"),
        (b"DYRQ" + b"\0" * 10, "shorter"),
        (b"XXXX" + b"\0" * 20, "magic"),
        (b"DYRQ\x02\x00\x01\x00" + b"\0" * 16, "version"),
        (b"DYRQ\x01\x00\x09\x00" + b"\0" * 16, "kind"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(bad, why):
    with pytest.raises(ProtocolError, match=why) as e:
        decode_request(bad)
    assert e.value.status is Status.BAD_REQUEST


def test_reply_decoding_is_strict():
    good = encode_reply(Status.OK, request_id=1, output=np.ones((1, 10), np.float32))
    for bad in (good[:10], good[:-1], b"DYRP\x01\x00\x63\x00" + good[8:]):
        with pytest.raises(ProtocolError):
            decode_reply(bad)


def test_replay_guard_refuses_repeats_and_stale_timestamps():
    guard = ReplayGuard(window_s=10.0, capacity=3)
    now = now_us()
    guard.admit(1, now)
    with pytest.raises(ProtocolError, match="already served"):
        guard.admit(1, now)
    with pytest.raises(ProtocolError, match="replay window"):
        guard.admit(2, now - 60_000_000)
    for rid in (3, 4, 5):
        guard.admit(rid, now + rid)
    with pytest.raises(ProtocolError, match="replay window"):  # older than what capacity forgot
        guard.admit(6, now)


# --- the engine --------------------------------------------------------------------------


def test_engine_answers_exactly_what_the_split_model_computes(artifact, engine, device, cifar):
    x = cifar.x[:1]
    for evaluation in _offloaded(artifact)[:4]:
        c = evaluation.config
        reply = decode_reply(engine.handle(_request(artifact, device, x, c, request_id=hash(c) & 0xFFFF_FFFF)))
        assert reply.ok, reply.message
        assert rel_err(reply.output.reshape(1, 10), run_split(artifact, x, c.cut, c.bits)) <= 1e-6, c.label


def test_engine_refuses_without_raising(artifact, device, cifar):
    engine = CloudEngine(artifact, EngineOptions(token="s3cret", max_request_bytes=1 << 16))
    x, config = cifar.x[:1], _offloaded(artifact)[0].config
    good = _request(artifact, device, x, config, request_id=99)

    def status(body, token="s3cret"):
        return decode_reply(engine.handle(body, token=token)).status

    assert status(good, token=None) is Status.UNAUTHENTICATED
    assert status(good, token="wrong") is Status.UNAUTHENTICATED
    assert status(good) is Status.OK
    assert status(good) is Status.REPLAYED  # the same bytes again
    stale = _request(artifact, device, x, config, request_id=100, sent_at_us=now_us() - 3_600_000_000)
    assert status(stale) is Status.REPLAYED
    other = encode_request(device.frame(device.start(x, config.cut), config, 101), model=model_id("ab" * 32))
    assert status(other) is Status.WRONG_MODEL
    assert status(good[:-3]) is Status.BAD_REQUEST  # truncated frame
    assert status(good + b"\0" * (1 << 16)) is Status.BAD_REQUEST  # over the size limit
    assert status(b"\xff" * 40) is Status.BAD_REQUEST
    ping = decode_reply(engine.handle(encode_request(b"", model=0, kind=Kind.PING), token="s3cret"))
    assert ping.ok and ping.output.size == 0


def test_engine_refuses_frames_that_fit_no_built_cut(artifact, device, cifar):
    from dyno_compile.packing import PackConfig, encode

    engine = CloudEngine(artifact)
    model = model_id(artifact.model_hash)
    built = {c["position"] for c in artifact.cuts}
    missing = next(p for p in range(1, 100) if p not in built)
    x = cifar.x[:1]
    cases = {
        Status.UNSUPPORTED: encode([x], PackConfig(bits=8), cut_id=missing, request_id=1),
        Status.BAD_REQUEST: encode([x[:, :2]], PackConfig(bits=8), cut_id=0, request_id=2),  # wrong shape
    }
    last = max(built)
    cases_device_only = encode([x], PackConfig(bits=8), cut_id=last, request_id=3)
    for expected, frame in cases.items():
        reply = decode_reply(engine.handle(encode_request(frame, model=model)))
        assert reply.status is expected, reply.message
    reply = decode_reply(engine.handle(encode_request(cases_device_only, model=model)))
    assert reply.status is Status.BAD_REQUEST and "device-only" in reply.message


# --- the gRPC server and the client ------------------------------------------------------------


def test_health_endpoint_reports_serving(server):
    with grpc.insecure_channel(server.endpoint.removeprefix("grpc://")) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "dyno.Cloud"):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_client_over_grpc_matches_the_split_model(artifact, server, cifar):
    config = _offloaded(artifact)[0].config
    with DeviceClient(artifact, [server.endpoint], policy=make_policy("pinned", config=config)) as client:
        for i in range(5):
            result = client.run(cifar.x[i : i + 1])
            assert result.where == "cloud" and result.endpoint == server.endpoint and result.bytes_sent > 0
            assert rel_err(result.output, run_split(artifact, cifar.x[i : i + 1], config.cut, config.bits)) <= 1e-6


def test_loopback_accuracy_equals_the_pareto_entry(artifact, server, cifar):
    """The issue's bar: over the real server, top-1 on all 932 test images equals what the
    search recorded for the configuration."""
    entries = _offloaded(artifact)
    for evaluation in (entries[0], min(entries, key=lambda e: e.bytes)):
        policy = make_policy("pinned", config=evaluation.config)
        with DeviceClient(artifact, [server.endpoint], policy=policy) as client:
            results = [client.run(cifar.x[i : i + 1]) for i in range(len(cifar.x))]
        assert {r.where for r in results} == {"cloud"}
        correct = sum(int(np.argmax(r.output)) == int(y) for r, y in zip(results, cifar.labels))
        assert correct == round(evaluation.accuracy * len(cifar.x)), evaluation.config.label


def test_device_only_needs_no_server(artifact, cifar):
    with DeviceClient(artifact) as client:
        result = client.run(cifar.x[:1])
    last = max(c["position"] for c in artifact.cuts)
    assert result.where == "device" and result.bytes_sent == 0
    assert rel_err(result.output, run_split(artifact, cifar.x[:1], last)) == 0.0


def test_unreachable_endpoint_falls_back_to_the_device(artifact, cifar):
    config = _offloaded(artifact)[0].config
    float_model = run_split(artifact, cifar.x[:1], max(c["position"] for c in artifact.cuts))
    with DeviceClient(
        artifact, ["grpc://127.0.0.1:1"], policy=make_policy("pinned", config=config), timeout_s=0.5
    ) as client:
        results = [client.run(cifar.x[:1]) for _ in range(3)]
    # The first request fails over to the device, unless the prober's first ping already
    # found the endpoint down; after that the endpoint is skipped until a ping gets through.
    assert results[0].where == "device" or "UNAVAILABLE" in results[0].error
    assert [r.where for r in results[1:]] == ["device", "device"]
    assert all(rel_err(r.output, float_model) <= 1e-6 for r in results)


def test_an_error_reply_falls_back_to_the_device(artifact, cifar):
    """A server that answers pings but refuses the work (here: another model's build)."""
    from dataclasses import replace

    other = CloudEngine(replace(artifact, manifest={**artifact.manifest, "model_hash": "ab" * 32}))
    config = _offloaded(artifact)[0].config
    float_model = run_split(artifact, cifar.x[:1], max(c["position"] for c in artifact.cuts))
    with (
        CloudServer(other) as srv,
        DeviceClient(artifact, [srv.endpoint], policy=make_policy("pinned", config=config)) as client,
    ):
        result = client.run(cifar.x[:1])
    assert result.where == "fallback" and "WRONG_MODEL" in result.error
    assert rel_err(result.output, float_model) <= 1e-6


def test_grpc_refusing_a_call_for_load_keeps_the_endpoint(artifact, server, cifar):
    """RESOURCE_EXHAUSTED (gRPC's own concurrency limit) means busy, as OVERLOADED does:
    the request finishes on the device and the next one goes to the cloud again."""
    config = _offloaded(artifact)[0].config
    with DeviceClient(artifact, [server.endpoint], policy=make_policy("pinned", config=config)) as client:
        transport = client._endpoints[0].transport
        real_call = transport.call

        def refused(request, timeout_s):
            transport.call = real_call
            raise TransportError(
                server.endpoint,
                status_reason("RESOURCE_EXHAUSTED"),
                "gRPC RESOURCE_EXHAUSTED: Concurrent RPC limit exceeded!",
            )

        transport.call = refused
        first, second = client.run(cifar.x[:1]), client.run(cifar.x[1:2])
        assert client.endpoints_up == [server.endpoint]
    assert first.where == "fallback" and "RESOURCE_EXHAUSTED" in first.error
    assert second.where == "cloud"


def test_requests_rotate_over_several_endpoints(artifact, engine, cifar):
    config = _offloaded(artifact)[0].config
    with CloudServer(engine) as a, CloudServer(engine) as b:
        with DeviceClient(artifact, [a.endpoint, b.endpoint], policy=make_policy("pinned", config=config)) as c:
            used = [c.run(cifar.x[i : i + 1]).endpoint for i in range(4)]
    assert used == [a.endpoint, b.endpoint, a.endpoint, b.endpoint]


def test_a_full_queue_answers_overloaded_at_once(artifact, device, cifar):
    """Back-pressure: with the only worker held busy and a queue of one, further requests
    get OVERLOADED at once instead of waiting."""
    engine = CloudEngine(artifact)
    release = threading.Event()
    held = engine._side  # hold the only worker VM until released

    def slow_side():
        release.wait(20)
        return held()

    engine._side = slow_side
    config = _offloaded(artifact)[0].config
    with CloudServer(engine, ServerOptions(max_queue=1)) as srv:
        call = connect(srv.endpoint)
        requests = [_request(artifact, device, cifar.x[:1], config, request_id=500 + i) for i in range(6)]
        replies: list = []

        def send(r):
            replies.append(decode_reply(call.call(r, 20)).status)

        threads = [threading.Thread(target=send, args=(r,)) for r in requests]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while Status.OVERLOADED not in replies and time.monotonic() < deadline:  # answered while held
            time.sleep(0.02)
        overloaded_before_release = replies.count(Status.OVERLOADED)
        release.set()
        for t in threads:
            t.join()
    assert overloaded_before_release >= 1
    assert set(replies) <= {Status.OK, Status.OVERLOADED} and Status.OK in replies


def test_graceful_shutdown_finishes_calls_in_flight(artifact, device, cifar):
    engine = CloudEngine(artifact)
    release = threading.Event()
    held = engine._side

    def slow_side():
        release.wait(10)
        return held()

    engine._side = slow_side
    srv = CloudServer(engine, ServerOptions(grace_s=5))
    endpoint = srv.start()
    call = connect(endpoint)
    config = _offloaded(artifact)[0].config
    replies = []
    t = threading.Thread(
        target=lambda: replies.append(call.call(_request(artifact, device, cifar.x[:1], config, request_id=900), 10))
    )
    t.start()
    while engine.in_flight == 0:
        threading.Event().wait(0.01)
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    threading.Event().wait(0.2)
    with pytest.raises(TransportError):  # no new calls once stopping
        call.call(_request(artifact, device, cifar.x[:1], config, request_id=901), 2)
    release.set()
    stopper.join(10)
    t.join(10)
    assert not stopper.is_alive() and decode_reply(replies[0]).ok


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def test_tls_and_token(artifact, cifar, tmp_path):
    cert, key = _self_signed(tmp_path)
    engine = CloudEngine(artifact, EngineOptions(token="t0ken"))
    config = _offloaded(artifact)[0].config
    policy = make_policy("pinned", config=config)
    with CloudServer(engine, ServerOptions(host="localhost", tls_cert=cert, tls_key=key)) as srv:
        assert srv.endpoint.startswith("grpcs://localhost:")
        with DeviceClient(artifact, [srv.endpoint], policy=policy, token="t0ken", tls_ca=cert) as client:
            assert client.run(cifar.x[:1]).where == "cloud"
        # Refused either by the request itself (fallback) or already by the prober's first
        # ping (the endpoint is then down and the request runs on the device).
        with DeviceClient(artifact, [srv.endpoint], policy=policy, token="nope", tls_ca=cert) as client:
            refused = client.run(cifar.x[:1])
        assert refused.where == "device" or "UNAUTHENTICATED" in refused.error
        plain = srv.endpoint.replace("grpcs://", "grpc://")
        with DeviceClient(artifact, [plain], policy=policy, token="t0ken", timeout_s=1) as client:
            assert client.run(cifar.x[:1]).where in ("fallback", "device")  # no plaintext on a TLS port


def test_bad_options_are_clear_errors(artifact, engine, tmp_path):
    with pytest.raises(InputError, match="endpoint"):
        DeviceClient(artifact, ["localhost:80"])
    with pytest.raises(InputError, match="timeout_s"):
        DeviceClient(artifact, [], timeout_s=0)
    with pytest.raises(InputError, match="both a certificate"):
        ServerOptions(tls_cert=tmp_path / "c.pem")
    with pytest.raises(InputError, match="workers"):
        EngineOptions(workers=0)
    with pytest.raises(InputError, match="CA file"):
        connect("grpcs://localhost:1", tls_ca=tmp_path / "missing.pem")
    with CloudServer(engine) as srv:
        with pytest.raises(InputError, match="cannot listen"):
            CloudServer(engine, ServerOptions(port=srv.port)).start()


def test_the_wire_carries_no_pickles(artifact):
    """Nothing in the runtime deserialises objects from the network."""
    from pathlib import Path

    import dyno_compile.runtime as runtime

    for path in Path(runtime.__file__).parent.glob("*.py"):
        text = path.read_text()
        for banned in ("import pickle", "cloudpickle", "pickle.load", "marshal", "eval(", "exec(", "yaml.load"):
            assert banned not in text, f"{path.name} uses {banned}"
    assert json.loads(json.dumps(artifact.manifest["search"]["pareto"]))  # only JSON on disk


def test_raw_grpc_call_gets_a_reply_envelope(server):
    with grpc.insecure_channel(server.endpoint.removeprefix("grpc://")) as channel:
        reply = decode_reply(channel.unary_unary(INFER_METHOD)(b"junk", timeout=5))
    assert reply.status is Status.BAD_REQUEST


def test_requests_that_arrive_together_run_as_one_batch(artifact, engine, device, cifar):
    """Six requests at one cut (a batch of 4 and a padded one of 2) plus a refused one:
    each answer equals the request run alone; the refusal stays with its request."""
    assert artifact.manifest["cloud_batch"] == 4
    config = _offloaded(artifact)[0].config
    bodies = [
        (_request(artifact, device, cifar.x[i : i + 1], config, request_id=7000 + i), None, 0.0) for i in range(6)
    ]
    bodies.insert(3, (b"junk", None, 0.0))
    replies = [decode_reply(r) for r in engine.handle_batch(bodies)]
    assert replies[3].status is Status.BAD_REQUEST
    answered = replies[:3] + replies[4:]
    for i, reply in enumerate(answered):
        assert reply.ok and reply.request_id == 7000 + i
        assert (
            rel_err(reply.output.reshape(1, 10), run_split(artifact, cifar.x[i : i + 1], config.cut, config.bits))
            <= 1e-5
        )
