"""Fuzzing the cloud server over real gRPC: more than 10,000 random and mutated request
frames (hypothesis) from three threads at once, while a real device client keeps being
served. No frame may crash the server, hang a call or make it answer anything but a reply
envelope that decodes (a gRPC RESOURCE_EXHAUSTED under load is the only other allowed
answer), and every valid request — the client's, and the fresh valid frames among the
fuzz — must be answered OK with the right output.

Mutations are of valid envelopes built the way a device builds them (``DeviceSide.frame``
+ ``protocol.encode_request``) for several cuts, widths, layouts and codecs (the image
codecs' cut-0 uploads among them, so hostile bytes reach JPEG, WebP, AVIF and JPEG XL
decoders in the server): bit flips,
truncation, extension, splices of two frames, and overwrites of named header fields (the
envelope's, the frame's fixed header, each tensor header's) with edge values — most with
the frame's CRC32 recomputed, so the fuzz reaches the parser, the cut checks and the
compiled cloud segments instead of stopping at the checksum.
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

grpc = pytest.importorskip("grpc")
hypothesis = pytest.importorskip("hypothesis")

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import rel_err, shared_data  # noqa: E402
from dyno_compile.artifact.load import load_artifact, run_split  # noqa: E402
from dyno_compile.configs import Config  # noqa: E402
from dyno_compile.packing import decode_packed  # noqa: E402
from dyno_compile.packing.vocab import get_codec  # noqa: E402
from dyno_compile.runtime import protocol  # noqa: E402
from dyno_compile.runtime.client import DeviceClient  # noqa: E402
from dyno_compile.runtime.engine import CloudEngine, EngineOptions  # noqa: E402
from dyno_compile.runtime.grpc_transport import INFER_METHOD, SERVICE_NAME  # noqa: E402
from dyno_compile.runtime.protocol import Kind, Status  # noqa: E402
from dyno_compile.runtime.server import CloudServer, ServerOptions  # noqa: E402
from dyno_compile.runtime.sides import DeviceSide  # noqa: E402
from dyno_compile.search.calibration import load_calibration  # noqa: E402

#: Frames sent over the wire: EXAMPLES hypothesis examples of BATCH frames each.
BATCH = 16
EXAMPLES = 640
MIN_FRAMES = 10_000
FUZZ_THREADS = 3
#: Fixed examples by default (reproducible CI); DYNO_FUZZ_SEED=N explores other ones.
SEED = int(os.environ["DYNO_FUZZ_SEED"]) if os.environ.get("DYNO_FUZZ_SEED") else None
#: A call taking longer than this is a hang.
CALL_TIMEOUT_S = 10.0
#: Cuts, widths, layouts and codecs the valid templates cover (the artifact is built with
#: tensor granularity and widths float32, 8, 4, 2).
TEMPLATE_CONFIGS = [
    Config(0, "float32"),
    Config(1, "8"),
    Config(6, "4", layout="bitplane", codec="lz4"),
    Config(17, "2", codec="zstd"),
    Config(29, "float16", codec="zstd"),
    Config(52, "8", layout="bitplane"),
    # The image uploads (issue 18 item 3): cut 0's 8-bit codes through each lossy image codec.
    *(Config(0, "8", codec=codec, level=50) for codec in ("jpeg", "webp", "avif", "jpegxl")),
]
_ENV = 24  # envelope header bytes; the frame follows
_U = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_EDGE = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    17,
    31,
    32,
    53,
    0x7F,
    0x80,
    0x90,
    0xA0,
    0xFF,
    0x100,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0xFFFFFFFF,
    (1 << 63),
    (1 << 64) - 1,
]


class Template:
    """One valid request envelope and where its fields lie (offsets in the envelope)."""

    def __init__(self, name: str, envelope: bytes, *, infer: bool) -> None:
        self.name, self.envelope, self.infer = name, envelope, infer
        self.expected: np.ndarray | None = None  # the engine's answer to it (INFER), set by the fixture
        self.fields: dict[str, tuple[int, int]] = {
            "env.version": (4, 2),
            "env.kind": (6, 2),
            "env.model": (8, 8),
            "env.sent_at": (16, 8),
        }
        self.header_end = _ENV
        if not infer:
            return
        f = _ENV
        self.fields.update(
            {
                "frame.magic": (f, 4),
                "frame.version": (f + 4, 2),
                "frame.flags": (f + 6, 2),
                "frame.cut_id": (f + 8, 4),
                "frame.request_id": (f + 12, 8),
                "frame.n_tensors": (f + 20, 2),
            }
        )
        frame = decode_packed(envelope[_ENV:])
        pos = f + 22
        for i, h in enumerate(frame.headers):
            rank, nlo = len(h.shape), h.params.lo.size
            self.fields.update({f"t{i}.dtype": (pos, 1), f"t{i}.rank": (pos + 1, 1)})
            self.fields.update({f"t{i}.dim{d}": (pos + 2 + 4 * d, 4) for d in range(rank)})
            c = pos + 2 + 4 * rank
            self.fields.update(
                {
                    f"t{i}.mode": (c, 1),
                    f"t{i}.granularity": (c + 1, 1),
                    f"t{i}.axis": (c + 2, 1),
                    f"t{i}.layout": (c + 3, 1),
                    f"t{i}.codec": (c + 4, 1),
                }
            )
            if nlo:
                self.fields.update({f"t{i}.lo": (c + 5, 4), f"t{i}.scale": (c + 5 + 4 * nlo, 4)})
            lengths = c + 5 + 8 * nlo
            self.fields.update({f"t{i}.raw_len": (lengths, 4), f"t{i}.comp_len": (lengths + 4, 4)})
            pos = lengths + 8
        self.header_end = pos

    def fresh(self, request_id: int | None = None) -> bytearray:
        """The template with the current time and a new request id (CRC recomputed): a
        request the server has not seen, so a valid one is answered OK."""
        buf = bytearray(self.envelope)
        struct.pack_into("<Q", buf, 16, protocol.now_us())
        if self.infer:
            struct.pack_into("<Q", buf, _ENV + 12, secrets.randbits(64) if request_id is None else request_id)
            fix_crc(buf)
        return buf


def fix_crc(buf: bytearray) -> None:
    """Recompute the frame's trailing CRC32 over whatever the frame now holds."""
    if len(buf) >= _ENV + 4:
        struct.pack_into("<I", buf, len(buf) - 4, zlib.crc32(bytes(buf[_ENV:-4])))


def maybe_fix_crc(draw, buf: bytearray) -> str:
    """Half the time, recompute the CRC so the mutation reaches the decoder's later checks;
    the label's suffix says which."""
    if draw(st.booleans()):
        fix_crc(buf)
        return " crc"
    return ""


# --- the mutations, as hypothesis strategies: each draws one Fuzz -----------------------------


class Fuzz:
    """One frame to send: its kind, how it was made, and the status it must get (None: any)."""

    def __init__(self, kind: str, frame: bytes | bytearray, expected: Status | None = None, how: str = "") -> None:
        self.kind, self.frame, self.expected, self.how = kind, bytes(frame), expected, how

    def __repr__(self) -> str:  # short: hypothesis prints failing examples
        head = self.frame[:80].hex() + ("..." if len(self.frame) > 80 else "")
        return f"Fuzz({self.kind} {self.how}, {len(self.frame)} B, expect {self.expected}, {head})"


def mutations(templates: list[Template], model: int) -> st.SearchStrategy:
    pick = st.sampled_from(templates)
    infer = st.sampled_from([t for t in templates if t.infer])

    @st.composite
    def raw(draw):
        return Fuzz("raw", draw(st.binary(max_size=600)))

    @st.composite
    def envelope_then_random(draw):
        head = protocol.encode_request(b"", model=model)
        body = draw(st.binary(max_size=800))
        if draw(st.booleans()):  # a frame magic and a CRC that matches: into the header parser
            body = b"DYNO" + body
            body += struct.pack("<I", zlib.crc32(body))
        return Fuzz("envelope+random", head + body)

    @st.composite
    def valid(draw):
        t = draw(pick)
        return Fuzz("valid", t.fresh(), Status.OK, t.name)

    @st.composite
    def refused(draw):
        t, how = draw(infer), draw(st.sampled_from(["model", "stale", "future", "kind", "version"]))
        buf = t.fresh()
        if how == "model":
            struct.pack_into("<Q", buf, 8, model ^ (1 << draw(st.integers(0, 63))))
            return Fuzz("wrong-model", buf, Status.WRONG_MODEL, t.name)
        if how in ("stale", "future"):
            shift = draw(st.integers(301, 10**9)) * 1_000_000
            struct.pack_into("<Q", buf, 16, max(0, protocol.now_us() + (shift if how == "future" else -shift)))
            return Fuzz("stale", buf, Status.REPLAYED, f"{t.name} {how} {shift / 1e6:.0f} s")
        if how == "kind":
            struct.pack_into("<H", buf, 6, draw(st.sampled_from([0, 3, 4, 0x100, 0xFFFF])))
            return Fuzz("bad-kind", buf, Status.BAD_REQUEST, t.name)
        struct.pack_into("<H", buf, 4, draw(st.integers(2, 0xFFFF)))
        return Fuzz("bad-version", buf, Status.BAD_REQUEST, t.name)

    @st.composite
    def bit_flips(draw):
        t = draw(pick)
        buf = t.fresh()
        flips = [(draw(st.integers(0, len(buf) - 1)), draw(st.integers(0, 7))) for _ in range(draw(st.integers(1, 8)))]
        for pos, bit in flips:
            buf[pos] ^= 1 << bit
        return Fuzz("bit-flips", buf, how=f"{t.name} {flips}{maybe_fix_crc(draw, buf)}")

    @st.composite
    def truncated(draw):
        t = draw(pick)
        n = draw(st.integers(0, len(t.envelope) - 1))
        return Fuzz("truncated", t.fresh()[:n], how=f"{t.name} to {n}")

    @st.composite
    def extended(draw):
        t = draw(pick)
        buf = t.fresh()
        if draw(st.integers(0, 9)) == 0:  # now and then a big tail (hypothesis draws are small)
            n = draw(st.integers(1, 1 << 20))
            tail = np.random.default_rng(draw(st.integers(0, 2**32))).bytes(n)
        else:
            tail = draw(st.binary(min_size=1, max_size=256))
        buf += tail
        return Fuzz("extended", buf, how=f"{t.name} +{len(tail)}{maybe_fix_crc(draw, buf)}")

    @st.composite
    def spliced(draw):
        ta, tb = draw(pick), draw(pick)
        a, b = ta.fresh(), tb.fresh()
        i, j = draw(st.integers(0, len(a))), draw(st.integers(0, len(b)))
        buf = a[:i] + b[j:]
        return Fuzz("spliced", buf, how=f"{ta.name}[:{i}] + {tb.name}[{j}:]{maybe_fix_crc(draw, buf)}")

    @st.composite
    def field_overwrite(draw):
        t = draw(pick)
        buf = t.fresh()
        done = []
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(sorted(t.fields)))
            offset, width = t.fields[name]
            top = (1 << (8 * width)) - 1
            value = draw(st.one_of(st.sampled_from([v for v in _EDGE if v <= top]), st.integers(0, top)))
            if name == "env.sent_at" and draw(st.booleans()):
                value = protocol.now_us()
            struct.pack_into(_U[width], buf, offset, value)
            done.append(f"{name}={value:#x}")
        crc = draw(st.integers(0, 3)) > 0  # mostly a matching CRC: past the checksum, into the checks after it
        if crc:
            fix_crc(buf)
        return Fuzz("field-overwrite", buf, how=f"{t.name} {' '.join(done)}{' crc' if crc else ''}")

    @st.composite
    def header_overwrite(draw):
        t = draw(infer)
        buf = t.fresh()
        width = draw(st.sampled_from([1, 2, 4, 8]))
        offset = draw(st.integers(0, t.header_end - width))
        value = draw(st.integers(0, (1 << (8 * width)) - 1))
        struct.pack_into(_U[width], buf, offset, value)
        fix_crc(buf)
        return Fuzz("header-overwrite", buf, how=f"{t.name} @{offset}:{width}={value:#x} crc")

    return st.one_of(
        raw(),
        envelope_then_random(),
        valid(),
        refused(),
        bit_flips(),
        truncated(),
        extended(),
        spliced(),
        field_overwrite(),
        header_overwrite(),
    )


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(searched_resnet20):
    return load_artifact(searched_resnet20)


@pytest.fixture(scope="module")
def images():
    calib = load_calibration(
        shared_data("cifar10", "test_932.npz"), input_shape=(1, 3, 32, 32), preprocess="cifar10", limit=16
    )
    return calib.x


@pytest.fixture(scope="module")
def server(artifact):
    """One in-process server with the options ``serve`` uses by default."""
    with CloudServer(CloudEngine(artifact, EngineOptions()), ServerOptions(port=0)) as srv:
        yield srv


@pytest.fixture(scope="module")
def templates(artifact, images, server):
    """Valid envelopes (INFER for each template config, two PINGs), each checked to be
    answered OK by the engine with the output run_split computes."""
    device = DeviceSide(artifact)
    model = protocol.model_id(artifact.model_hash)
    out = []
    for k, config in enumerate(TEMPLATE_CONFIGS):
        x = images[k : k + 1]
        env = device.start(x, config.cut)
        t = Template(config.label, protocol.encode_request(device.frame(env, config, 1), model=model), infer=True)
        reply = protocol.decode_reply(server.engine.handle(bytes(t.fresh())))
        assert reply.ok, (config.label, reply.message)
        if get_codec(config.codec).lossy:  # the model on what the cloud decodes, not on x
            decoded = decode_packed(t.envelope[_ENV:]).tensors[0].values()
            assert rel_err(reply.output, run_split(artifact, decoded, 0, "float32")) <= 1e-5, config.label
        elif config.bits != "float16":  # run_split knows the built integer widths and float32
            assert rel_err(reply.output, run_split(artifact, x, config.cut, config.bits)) <= 1e-5, config.label
        t.expected = reply.output.copy()
        out.append(t)
    for padding in (0, 300):
        out.append(
            Template(
                f"ping+{padding}", protocol.encode_request(b"\0" * padding, model=model, kind=Kind.PING), infer=False
            )
        )
    return out


class ValidClients:
    """Real device clients (two pinned Pareto configurations) sending real images in a
    loop until stopped; every result must come from the cloud and be right."""

    def __init__(self, artifact, endpoint: str, images: np.ndarray) -> None:
        pareto = [Config.from_dict(d["config"]) for d in artifact.manifest["search"]["pareto"] if d["bytes"] > 0]
        configs = sorted({min(pareto, key=lambda c: c.cut), max(pareto, key=lambda c: c.cut)})
        self.clients = [
            DeviceClient(
                artifact,
                [endpoint],
                policy="pinned",
                policy_options={"config": c},
                timeout_s=CALL_TIMEOUT_S,
                retry_after_s=0.1,
            )
            for c in configs
        ]
        self.refs = {
            c.cut: [run_split(artifact, images[i : i + 1], c.cut, c.bits) for i in range(len(images))] for c in configs
        }
        self.images = images
        self.results: list[tuple[int, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="valid-client", daemon=True)

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            client = self.clients[i % len(self.clients)]
            k = i % len(self.images)
            self.results.append((k, client.run(self.images[k : k + 1])))
            i += 1

    def __enter__(self) -> ValidClients:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        for c in self.clients:
            c.close()

    def check(self) -> None:
        assert not self._thread.is_alive()
        bad = [(k, r.where, r.error) for k, r in self.results if r.where != "cloud"]
        assert not bad, f"{len(bad)} of {len(self.results)} valid requests were not served by the cloud: {bad[:5]}"
        for k, r in self.results:
            assert rel_err(r.output, self.refs[r.decision.evaluation.config.cut][k]) <= 1e-5


# --- the test ------------------------------------------------------------------------------


def test_fuzzed_frames_never_crash_or_hang_and_valid_clients_keep_being_served(artifact, images, server, templates):
    model = protocol.model_id(artifact.model_hash)
    address = server.endpoint.split("://", 1)[1]
    local = threading.local()
    channels: list = []
    lock = threading.Lock()
    statuses: Counter = Counter()
    kinds: Counter = Counter()
    slowest = [0.0]
    by_name = {t.name: t for t in templates}

    def stub():
        if not hasattr(local, "infer"):
            channel = grpc.insecure_channel(address)
            with lock:
                channels.append(channel)
            local.infer = channel.unary_unary(INFER_METHOD)
        return local.infer

    def send(item: Fuzz) -> None:
        kind, frame, expected = item.kind, item.frame, item.expected
        start = time.perf_counter()
        try:
            raw_reply = stub()(frame, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, f"{item!r}: gRPC {e.code().name} {e.details()!r}"
            with lock:
                statuses["grpc RESOURCE_EXHAUSTED"] += 1
                kinds[kind] += 1
            return
        elapsed = time.perf_counter() - start
        reply = protocol.decode_reply(raw_reply)  # raises (fails the example) if the server sent garbage
        with lock:
            statuses[reply.status.name] += 1
            kinds[kind] += 1
            slowest[0] = max(slowest[0], elapsed)
        if expected is not None:
            assert reply.status is expected, (item, reply.status, reply.message)
        if reply.ok:
            assert reply.output is not None and reply.output.size in (0, 10), (item, reply.output)
        if kind == "valid" and reply.output.size:  # a fresh valid INFER: its template's answer too
            assert rel_err(reply.output, by_name[item.how].expected) <= 1e-5, (kind, item.how)

    def replayed() -> None:
        """The same valid request twice: OK, then REPLAYED."""
        t = by_name[TEMPLATE_CONFIGS[1].label]
        frame = bytes(t.fresh())
        send(Fuzz("valid", frame, Status.OK, t.name))
        send(Fuzz("replayed", frame, Status.REPLAYED, t.name))

    pool = ThreadPoolExecutor(FUZZ_THREADS, thread_name_prefix="fuzz")
    start = time.perf_counter()
    with ValidClients(artifact, server.endpoint, images) as clients:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=SEED is None,
            print_blob=True,
            phases=(Phase.explicit, Phase.generate, Phase.shrink),
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(mutations(templates, model), min_size=BATCH, max_size=BATCH))
        def fuzz(batch):
            list(pool.map(send, batch))

        if SEED is not None:
            fuzz = seed(SEED)(fuzz)

        fuzz()
        replayed()
        fuzz_s = time.perf_counter() - start
    pool.shutdown()
    clients.check()

    sent = sum(statuses.values())
    print(
        f"\nfuzz: {sent} frames over gRPC from {FUZZ_THREADS} threads in {fuzz_s:.1f} s "
        f"({sent / fuzz_s:.0f}/s), slowest call {1e3 * slowest[0]:.0f} ms; {len(clients.results)} valid client "
        f"requests all served by the cloud\nstatuses: {dict(statuses.most_common())}\nkinds: "
        f"{dict(kinds.most_common())}"
    )
    assert sent >= MIN_FRAMES
    assert statuses["OK"] > 0 and statuses["BAD_REQUEST"] > 0 and statuses["REPLAYED"] > 0
    assert len(clients.results) >= 20

    # Still healthy: the health service says SERVING, the workers live, a valid request is answered.
    channel = grpc.insecure_channel(address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert all(t.is_alive() for t in server._batcher._threads)
        t = templates[0]
        reply = protocol.decode_reply(channel.unary_unary(INFER_METHOD)(bytes(t.fresh()), timeout=CALL_TIMEOUT_S))
        assert reply.ok and rel_err(reply.output, t.expected) <= 1e-5
    finally:
        channel.close()
        for c in channels:
            c.close()
