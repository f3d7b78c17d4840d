"""The one runner (``ModuleRunner``): every function of a compiled module called the same
way here and over TVM RPC (multi-output functions included), ``time`` returning every
repeat's seconds, and inputs checked against each function's shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from dyno_compile.errors import InputError
from dyno_compile.ir import Graph
from dyno_compile.targets import CompiledModule, ModuleRunner, compile_functions, export

SHAPE = (1, 8, 6, 6)
BITS = 4


def _graphs() -> dict[str, Graph]:
    """``pack`` has two outputs (the bit stream and the range), ``unpack`` one."""
    q = {"bits": BITS, "granularity": "channel", "axis": 1}
    pack = Graph("pack")
    pack.add_input("x", SHAPE)
    pack.add("quant_range", ["x"], q, name="range")
    pack.add("quantize", ["x", "range"], q, name="codes")
    pack.add("bitpack", ["codes"], {"bits": BITS}, name="packed")
    pack.set_outputs(["packed", "range"])
    unpack = Graph("unpack")
    unpack.add_input("packed", (int(np.prod(SHAPE)) * BITS // 8,), "uint8")
    unpack.add_input("range", (2, SHAPE[1]))
    unpack.add("bitunpack", ["packed"], {"bits": BITS, "shape": SHAPE}, name="codes")
    unpack.add("dequantize", ["codes", "range"], {"granularity": "channel", "axis": 1}, name="x")
    unpack.set_outputs(["x"])
    return {"pack": pack, "unpack": unpack}


@pytest.fixture(scope="module")
def module() -> CompiledModule:
    return compile_functions(_graphs(), "host", name="runner_test")


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def rpc_session():
    """A TVM RPC server on loopback (its own process) and a session to it."""
    from tvm import rpc

    from dyno_compile.search.rpc import SERVER_PORTS

    server = rpc.Server("127.0.0.1", port=SERVER_PORTS[0], port_end=SERVER_PORTS[1], silent=True)
    try:
        yield rpc.connect("127.0.0.1", server.port, session_timeout=300)
    finally:
        server.terminate()


def test_multi_output_function_runs_over_rpc(module, x, rpc_session, tmp_path):
    """The library uploaded to an RPC server and run there: a two-output function comes
    back as two arrays equal, bit for bit, to the local run's; timing runs remotely."""
    local = ModuleRunner(module)
    packed, rng = local.run("pack", [x])
    lib = export(module, tmp_path / "runner_test.so")
    rpc_session.upload(str(lib))
    remote_module = CompiledModule.from_description(module.describe(), rpc_session.load_module(lib.name))
    remote = ModuleRunner(remote_module, device=rpc_session.cpu(0))

    got = remote.run("pack", [x])
    assert [a.tobytes() for a in got] == [packed.tobytes(), rng.tobytes()]
    assert [a.dtype for a in got] == [np.uint8, np.float32]
    (back,) = remote.run("unpack", got)
    assert back.tobytes() == local.run("unpack", [packed, rng])[0].tobytes()
    on_device = remote.invoke("pack", [x])
    assert len(on_device) == 2 and all(t.device == remote.device for t in on_device)
    times = remote.time("pack", [x], repeat=3, min_repeat_ms=1)
    assert times.shape == (3,) and np.all(times > 0)


def test_time_returns_every_repeat(module, x):
    times = ModuleRunner(module).time("pack", {"x": x}, repeat=4, min_repeat_ms=1)
    assert isinstance(times, np.ndarray) and times.shape == (4,) and np.all((times > 0) & (times < 1))


def test_inputs_are_checked_against_shape_and_dtype(module, x):
    import tvm

    runner = ModuleRunner(module)
    packed, rng = runner.run("pack", [x])
    # a widening of the same kind is converted: float64 activations run as float32
    assert runner.run("pack", [x.astype(np.float64)])[0].tobytes() == packed.tobytes()
    with pytest.raises(InputError, match=r"function 'unpack': input 'packed' expects uint8\[144\], got float32\[144\]"):
        runner.run("unpack", [packed.astype(np.float32), rng])
    with pytest.raises(InputError, match=r"input 'x' expects float32\[1, 8, 6, 6\], got int64"):
        runner.run("pack", [np.zeros(SHAPE, np.int64)])
    with pytest.raises(InputError, match=r"input 'range' expects float32\[2, 8\], got float16\[2, 8\]"):
        runner.run("unpack", [packed, tvm.runtime.tensor(rng.astype(np.float16))])
    with pytest.raises(InputError, match=r"input 'x' expects float32\[1, 8, 6, 6\], got float32\[8, 6, 6\]"):
        runner.run("pack", [x[0]])
    with pytest.raises(InputError, match=r"takes 2 input\(s\), got 1"):
        runner.run("unpack", [packed])
    with pytest.raises(InputError, match="missing input.*range"):
        runner.run("unpack", {"packed": packed})
