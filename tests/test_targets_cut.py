"""TVM at a cut: DynO's quantize / pack ops lowered to TVM kernels equal the IR interpreter
(JAX, the semantics) and the NumPy packing reference bit for bit; segments and per-shape
pack/unpack functions compiled into ONE multi-function module per side run every cut of
resnet20 (real weights) and of mobilenet_v2 as the interpreter does; the same modules
export for arm64 and CUDA, and an exported library runs with the TVM runtime alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from functools import cache
from math import prod
from pathlib import Path

import numpy as np
import pytest
from tir_hash import cut_chain

from conftest import rel_err
from dyno_compile import packing
from dyno_compile.errors import InputError
from dyno_compile.ir import Graph, Interpreter, TensorType
from dyno_compile.passes import find_cuts, insert_pack
from dyno_compile.passes.segment import Segment, segment
from dyno_compile.targets import (
    CompiledModule,
    ModuleRunner,
    TargetError,
    compile_functions,
    compile_graph,
    export,
    run,
)

TOL = 1e-4  # whole-model outputs, relative to the output's scale
TOL_DEQ = 1e-6  # dequantised values: one float32 rounding at most (an FMA where a compiler contracts)
MODES = (16, 8, 4, 2, "float16")
#: The model-level references run the interpreter jitted (one XLA program per segment):
#: several times faster than op by op; dequantisation may then be one FMA (<= 1 ulp).
JIT = True


# --------------------------------------------------------------------------- helpers
def _key(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def pack_graph(shape, mode, name: str | None = None) -> Graph:
    """Device side of one crossing tensor, as builds make it (``insert_pack.pack_graph``)."""
    return insert_pack.pack_graph(TensorType(tuple(shape), "float32"), mode, name=name or f"pack_{_key(shape)}_{mode}")


def unpack_graph(shape, mode, name: str | None = None) -> Graph:
    """Cloud side: what came off the wire in, the tensor out (``insert_pack.unpack_graph``)."""
    return insert_pack.unpack_graph(
        TensorType(tuple(shape), "float32"), mode, name=name or f"unpack_{_key(shape)}_{mode}"
    )


_INTERPRETERS: dict[tuple[int, bool], Interpreter] = {}


def interp(graph: Graph, *args, jit: bool = False) -> list[np.ndarray]:
    """The IR interpreter. Eager (op by op) by default, rounding as the NumPy reference does;
    ``jit=True`` compiles the graph once (XLA may contract dequantisation into one FMA)."""
    it = _INTERPRETERS.get((id(graph), jit))
    if it is None or it.graph is not graph:
        it = _INTERPRETERS[(id(graph), jit)] = Interpreter(graph, jit=jit)
    out = it(*args)
    return [np.asarray(o) for o in (out if isinstance(out, tuple) else (out,))]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- op level
#: case -> (shape, channel axis, input maker); odd sizes, a channel axis other than 1,
#: constant tensors and channels, a float16 input, a range whose scale is subnormal.
def _post_relu(rng, shape):
    return np.maximum(rng.standard_normal(shape), 0).astype(np.float32)


def _signed(rng, shape):
    return (rng.standard_normal(shape) * 3 + 0.5).astype(np.float32)


def _const_channel(rng, shape):
    x = _post_relu(rng, shape)
    x[:, 2] = 0.7
    x[:, 3] = 0.0
    return x


CASES = {
    "odd": ((2, 5, 3, 7), 1, _const_channel, range(1, 17)),
    "img": ((1, 16, 9, 9), 1, _signed, (1, 2, 4, 6, 8, 10, 14, 16)),
    "last_axis": ((3, 11), -1, _signed, (1, 3, 7, 8, 9, 13, 16)),
    "vector": ((37,), 0, _post_relu, (1, 2, 5, 8, 11, 16)),
    "constant": ((4, 6), 1, lambda rng, s: np.full(s, -1.25, np.float32), (1, 4, 8, 12, 16)),
    "zeros": ((1, 8, 4, 4), 1, lambda rng, s: np.zeros(s, np.float32), (2, 8)),
    "subnormal_scale": ((64,), 0, lambda rng, s: (1e-37 + rng.uniform(0, 1e-37, s)).astype(np.float32), (8, 16)),
    "half_input": ((2, 6, 5), 1, lambda rng, s: _signed(rng, s).astype(np.float16), (3, 8, 10)),
    # odd and large: the range reduction's last chunk is short, packing's last period partial
    "large_odd": ((1, 3, 61, 67), 1, _post_relu, (3, 4, 8, 16)),
}


def _op_graph(case: str, granularity: str, bits: int) -> Graph:
    shape, axis, make, _ = CASES[case]
    dtype = "float16" if case == "half_input" else "float32"
    g = cut_chain(f"q_{case}_{granularity}_{bits}", shape, axis, granularity, bits, dtype)
    g.add("send", ["deq"], {"cut": 0, "slot": 0}, name="sent")
    g.set_outputs(["range", "codes", "packed", "unpacked", "sent"])
    return g


@cache
def _op_module():
    """Every op-level case in ONE module (also exercises compile_functions with ~100 functions)."""
    graphs = {}
    for case, (_, _, _, widths) in CASES.items():
        for granularity in ("tensor", "channel"):
            for bits in widths:
                g = _op_graph(case, granularity, bits)
                graphs[g.name] = g
    module = compile_functions(graphs, "host", name="cut_ops")
    return graphs, module, ModuleRunner(module)


#: Widths checked against the interpreter in the default run (all of them with -m slow);
#: every width is checked against the NumPy reference.
INTERP_WIDTHS = (1, 2, 3, 8, 9, 16)


def check_op_case(case: str, granularity: str, *, against_interpreter) -> None:
    graphs, module, runner = _op_module()
    shape, axis, make, widths = CASES[case]
    x = make(np.random.default_rng(len(case)), shape)
    for bits in widths:
        g = graphs[f"q_{case}_{granularity}_{bits}"]
        rng_, codes, packed, unpacked, deq = runner.run(g.name, [x])
        where = f"{case}/{granularity}/{bits} bits"
        assert codes.dtype == (np.uint8 if bits <= 8 else np.uint16) and codes.shape == shape
        assert packed.shape == ((prod(shape) * bits + 7) // 8,)
        # the NumPy reference of dyno_compile.packing: the same range, codes and stream
        ref_codes, params = packing.quantize(x, bits, granularity=granularity, axis=axis)
        lo = rng_[0].reshape(-1)
        scale = rng_[1].reshape(-1)
        assert same_bits(lo, params.lo) and same_bits(scale, params.scale), f"{where}: range differs from NumPy"
        np.testing.assert_array_equal(codes, ref_codes, err_msg=where)
        assert packed.tobytes() == packing.pack(ref_codes, bits), f"{where}: stream differs from NumPy"
        np.testing.assert_array_equal(packing.unpack(packed.tobytes(), bits, prod(shape)).reshape(shape), unpacked)
        assert rel_err(deq, packing.dequantize(ref_codes, params)) <= TOL_DEQ, where
        if against_interpreter(bits):
            # the interpreter: range, codes, bytes and unpacked codes exactly; dequantised to 1 ulp
            want = interp(g, x, jit=True)
            for name, got, ref in zip(("range", "codes", "packed", "unpacked"), (rng_, codes, packed, unpacked), want):
                assert same_bits(got, ref), f"{where}: {name} differs from the interpreter"
            assert rel_err(deq, want[4]) <= TOL_DEQ, (where, rel_err(deq, want[4]))


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("case", list(CASES))
def test_cut_ops_match_numpy_and_interpreter_bit_for_bit(case, granularity):
    widths = CASES[case][3]
    checked = [b for b in widths if b in INTERP_WIDTHS] or [widths[-1]]
    check_op_case(case, granularity, against_interpreter=lambda bits: bits in checked)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("case", list(CASES))
def test_cut_ops_match_interpreter_every_width(case, granularity):
    check_op_case(case, granularity, against_interpreter=lambda bits: True)


def test_constant_and_tiny_ranges_give_scale_one_and_code_zero():
    graphs, module, runner = _op_module()
    for case in ("constant", "zeros", "subnormal_scale"):
        shape, axis, make, widths = CASES[case]
        x = make(np.random.default_rng(0), shape)
        for granularity in ("tensor", "channel"):
            rng_, codes, _, _, deq = runner.run(f"q_{case}_{granularity}_{widths[-1]}", [x])
            assert np.all(rng_[1] == 1.0) and not codes.any()
            assert rel_err(deq, x) <= 1e-6


def test_cut_op_kernels_are_scheduled_and_deduplicated():
    graphs, module, runner = _op_module()
    kinds = {v for v in module.schedule_report.functions.values() if v.startswith("cut kernel")}
    assert kinds == {f"cut kernel ({k})" for k in ("quant_range", "quantize", "bitpack", "bitunpack", "dequantize")}
    assert not module.schedule_report.fallbacks, module.schedule_report.fallbacks
    assert set(module.functions) == set(graphs)
    info = module.functions["q_img_channel_4"]
    assert [t.name for t in info.inputs] == ["x"] and info.num_input == 1
    assert [(t.name, t.shape, t.dtype) for t in info.outputs] == [
        ("range", (2, 16), "float32"),
        ("codes", (1, 16, 9, 9), "uint8"),
        ("packed", (648,), "uint8"),
        ("unpacked", (1, 16, 9, 9), "uint8"),
        ("sent", (1, 16, 9, 9), "float32"),
    ]


def test_insert_pack_split_graphs_compile_and_match(resnet20):
    """A whole split with sends (insert_pack's device and cloud graphs), per channel at 4 bits."""
    from dyno_compile.passes.insert_pack import insert_pack
    from dyno_compile.passes.split import split

    graph, x, _ = resnet20
    model = insert_pack(split(graph, 20), 4, granularity="channel")
    assert len(model.cut.tensors) == 2
    sent = run(compile_graph(model.device, "host"), [x])
    want = interp(model.device, x)
    for slot, t in enumerate(model.cut.tensors):
        (packed, rng_), (packed_ref, rng_ref) = sent[2 * slot : 2 * slot + 2], want[2 * slot : 2 * slot + 2]
        assert rel_err(rng_, rng_ref) <= 1e-5
        count = prod(graph.node(t).shape)
        codes, codes_ref = (packing.unpack(p.tobytes(), 4, count).astype(int) for p in (packed, packed_ref))
        assert np.abs(codes - codes_ref).max() <= 1  # float noise before the cut may move a code by one step
    got = run(compile_graph(model.cloud, "host"), sent)[0]
    assert rel_err(got, interp(model.cloud, *sent)[0]) <= TOL


# --------------------------------------------------------------------------- multi-function modules
@dataclass
class SplitSetup:
    """A model cut into segments at ``positions``, with one device and one cloud module."""

    name: str
    graph: Graph
    x: np.ndarray
    segments: list[Segment]
    device_graphs: dict[str, Graph]
    cloud_graphs: dict[str, Graph]
    device: CompiledModule
    cloud: CompiledModule
    rd: ModuleRunner = field(repr=False)
    rc: ModuleRunner = field(repr=False)
    #: TVM's and the interpreter's values of every tensor crossing a segment boundary.
    tvm_values: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    ref_values: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def build_split(name: str, graph: Graph, x: np.ndarray, positions, *, cloud_bind_weights: bool) -> SplitSetup:
    segs = segment(graph, positions)
    shapes = sorted({tuple(graph.node(t).shape) for s in segs for t in s.start.tensors})
    seg_graphs = {f"segment_{s.index}": s.graph for s in segs}
    device_graphs, cloud_graphs = dict(seg_graphs), dict(seg_graphs)
    for shape in shapes:
        for mode in MODES:
            device_graphs[f"pack_{_key(shape)}_{mode}"] = pack_graph(shape, mode)
            cloud_graphs[f"unpack_{_key(shape)}_{mode}"] = unpack_graph(shape, mode)
    device = compile_functions(device_graphs, "host", name=f"{name}.device")
    cloud = compile_functions(cloud_graphs, "host", bind_weights=cloud_bind_weights, name=f"{name}.cloud")
    setup = SplitSetup(
        name, graph, x, segs, device_graphs, cloud_graphs, device, cloud, ModuleRunner(device), ModuleRunner(cloud)
    )
    # the device runs the segments in a chain; every boundary tensor is kept
    setup.tvm_values = {graph.inputs[0].name: x}
    setup.ref_values = {graph.inputs[0].name: x}
    for s in segs:
        outs = setup.rd.run(f"segment_{s.index}", [setup.tvm_values[i] for i in s.inputs])
        setup.tvm_values.update(zip(s.outputs, outs))
        setup.ref_values.update(zip(s.outputs, interp(s.graph, *[setup.ref_values[i] for i in s.inputs], jit=JIT)))
    return setup


def _cloud_chain(setup: SplitSetup, first: int, values: dict, runner: ModuleRunner | None) -> np.ndarray:
    """Run segments ``first..`` from ``values``, with the module runner or (None) the interpreter."""
    env = dict(values)
    for s in setup.segments[first:]:
        args = [env[i] for i in s.inputs]
        outs = runner.run(f"segment_{s.index}", args) if runner else interp(s.graph, *args, jit=JIT)
        env.update(zip(s.outputs, outs))
    return env[setup.graph.outputs[0]]


def check_every_cut(setup: SplitSetup, modes=(*MODES, "float32"), boundaries=None) -> dict:
    """Every segment boundary, every mode: device segments -> pack -> unpack -> cloud segments
    through the two modules equals the interpreter doing the same with the IR ops.

    The interpreter packs *the device tensors TVM computed*: a float difference of 1e-7
    between TVM and JAX before the cut may move a value across a rounding boundary and
    change its code by one step (at 8 bits, 1/255 of the range), which is not a kernel
    error. That the two independent chains agree up to that one step is checked too.
    """
    full = interp(setup.graph, setup.x, jit=JIT)[0]
    worst: dict = {}
    for index, seg in enumerate(setup.segments):
        cut = seg.start
        if boundaries is not None and index not in boundaries:
            continue
        for t in cut.tensors:  # the device segments themselves
            assert rel_err(setup.tvm_values[t], setup.ref_values[t]) <= 1e-5, (cut.position, t)
        for mode in modes:
            got, ref = {}, {}
            for t in cut.tensors:
                value = setup.tvm_values[t]
                if mode == "float32":
                    got[t] = ref[t] = value
                    continue
                fn = f"{_key(value.shape)}_{mode}"
                sent = setup.rd.run(f"pack_{fn}", [value])
                want_sent = interp(setup.device_graphs[f"pack_{fn}"], value, jit=JIT)
                for a, b in zip(sent, want_sent):
                    assert same_bits(a, b), (setup.name, cut.position, t, mode)
                got[t] = setup.rc.run(f"unpack_{fn}", sent)[0]
                ref[t] = interp(setup.cloud_graphs[f"unpack_{fn}"], *want_sent, jit=JIT)[0]
                assert rel_err(got[t], ref[t]) <= TOL_DEQ, (setup.name, cut.position, t, mode)
                if mode != "float16":  # independent chains: codes within one step
                    indep = interp(setup.device_graphs[f"pack_{fn}"], setup.ref_values[t], jit=JIT)
                    count = value.size
                    codes = packing.unpack(sent[0].tobytes(), mode, count).astype(np.int64)
                    codes_ref = packing.unpack(indep[0].tobytes(), mode, count).astype(np.int64)
                    assert np.abs(codes - codes_ref).max() <= 1, (setup.name, cut.position, t, mode)
                    assert rel_err(sent[1], indep[1]) <= 1e-5
            out = _cloud_chain(setup, index, got, setup.rc)
            err = rel_err(out, _cloud_chain(setup, index, ref, None))
            worst[mode] = max(worst.get(mode, 0.0), err)
            assert err <= TOL, (setup.name, cut.position, mode, err)
            if mode == "float32":
                assert rel_err(out, full) <= TOL, (setup.name, cut.position)
    return worst


def _zoo_graph(name: str, **kw):
    from dyno_compile import zoo
    from dyno_compile.frontend.jax_import import from_jax
    from dyno_compile.passes import run_passes

    m = zoo.get_model(name, **kw)
    return run_passes(from_jax(m.fn, m.params, m.random_input())), m.random_input(seed=3)


@pytest.fixture(scope="module")
def resnet20():
    graph, x = _zoo_graph("resnet20")
    cuts = find_cuts(graph)
    n = len(cuts) - 1
    single = [c.position for c in cuts if c.single_tensor and 0 < c.position < n]
    double = [c.position for c in cuts if len(c.tensors) == 2][::6][:3]
    return graph, x, sorted(single + double)


@pytest.fixture(scope="module")
def resnet20_split(resnet20):
    graph, x, positions = resnet20
    return build_split("resnet20", graph, x, positions, cloud_bind_weights=False)


def test_resnet20_modules(resnet20_split, capsys):
    s = resnet20_split
    n_seg = len(s.segments)
    assert n_seg >= 24 and any(len(seg.start.tensors) == 2 for seg in s.segments)
    assert {f"segment_{i}" for i in range(n_seg)} <= set(s.device.functions) & set(s.cloud.functions)
    assert any(f.startswith("pack_1x16x32x32_") for f in s.device.functions)
    assert not any(f.startswith("unpack_") for f in s.device.functions)
    for m in (s.device, s.cloud):
        assert not m.schedule_report.fallbacks, m.schedule_report.fallbacks
        for info in m.functions.values():
            assert info.num_input == len(m.describe()["functions"][info.name]["inputs"])
    # the cloud module keeps its weights apart: one param dict, each weight once, by name
    assert s.cloud.weight_specs and not s.device.weight_specs
    used = [w for info in s.cloud.functions.values() for w in info.weights]
    assert len(used) == len(set(used)) == len(s.cloud.weight_specs)
    assert set(s.cloud.weight_specs) == set(s.graph.params)
    with capsys.disabled():
        for m in (s.device, s.cloud):
            print(
                f"\n{m.name}: {len(m.functions)} functions, compile "
                + ", ".join(f"{k} {v:.2f}s" for k, v in m.timings.items())
            )


def test_resnet20_every_cut_and_width(resnet20_split, capsys):
    worst = check_every_cut(resnet20_split)
    with capsys.disabled():
        print("\nresnet20 worst rel. error per mode:", {k: f"{v:.1e}" for k, v in worst.items()})


def test_runner_timing_and_errors(resnet20_split):
    s = resnet20_split
    x = s.x
    times = s.rd.time("segment_0", [x], repeat=2, min_repeat_ms=1)
    assert times.shape == (2,) and np.all((0 < times) & (times < 1))
    with pytest.raises(InputError, match="has no function 'nope'.*segment_0"):
        s.rd.run("nope", [x])
    wrong_shape = r"function 'segment_0': input '\S+' expects float32\[1, 3, 32, 32\], got float32\[1, 2, 32, 32\]"
    with pytest.raises(InputError, match=wrong_shape):
        s.rd.run("segment_0", [x[:, :2]])
    with pytest.raises(InputError, match="missing weights"):
        ModuleRunner(s.cloud, {})
    arm = compile_functions({"p": pack_graph((1, 4, 4, 4), 4)}, "arm64")
    with pytest.raises(TargetError, match="does not run on this machine"):
        ModuleRunner(arm)


def test_weights_shared_by_name_are_stored_once(rng):
    w = rng.standard_normal((4, 8)).astype(np.float32)

    def dense(name, weight):
        g = Graph(name)
        g.add_input("x", (2, 8))
        g.add_const("shared.w", weight)
        g.add("dense", ["x", "shared.w"], name="y")
        g.set_outputs(["y"])
        return g

    graphs = {"a": dense("a", w), "b": dense("b", w.copy())}
    m = compile_functions(graphs, "host", bind_weights=False)
    assert list(m.weight_specs) == ["shared.w"] and m.functions["a"].weights == m.functions["b"].weights
    runner = ModuleRunner(m)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    for name in "ab":
        assert rel_err(runner.run(name, [x])[0], x @ w.T) <= 1e-6
    w2 = w * 2
    runner.set_weights({"shared.w": w2})
    assert rel_err(runner.run("b", {"x": x})[0], x @ w2.T) <= 1e-6
    with pytest.raises(InputError, match="shared by name must be equal"):
        compile_functions({"a": dense("a", w), "b": dense("b", w2)}, "host", bind_weights=False)


_LOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tvm
    from dyno_compile.targets.module import CompiledModule
    from dyno_compile.targets.runner import ModuleRunner

    root = sys.argv[1]
    desc = json.load(open(root + "/cloud.json"))
    module = CompiledModule.from_description(desc, tvm.runtime.load_module(root + "/cloud.so"))
    params = tvm.runtime.load_param_dict_from_file(root + "/cloud.params")
    runner = ModuleRunner(module, params)
    inputs = np.load(root + "/inputs.npz")
    received = runner.run(sys.argv[2], [inputs["packed"], inputs["range"]])[0]
    out = runner.run(sys.argv[3], [received])
    np.savez(root + "/outputs.npz", received=received, out=out[0])
    assert "jax" not in sys.modules and "dyno_compile.ir" not in sys.modules, "runtime side imported the compiler"
""")


def test_exported_module_runs_with_the_runtime_alone(resnet20_split, tmp_path):
    """The cloud module as a .so, its param file and its JSON description, loaded in a fresh
    process that imports neither JAX nor the IR."""
    s = resnet20_split
    export(s.cloud, tmp_path / "cloud.so")
    s.cloud.save_params(tmp_path / "cloud.params")
    (tmp_path / "cloud.json").write_text(json.dumps(s.cloud.describe()))
    seg = next(seg for seg in s.segments if seg.start.single_tensor and seg.start.position > 0)
    t = seg.start.tensors[0]
    fn = f"{_key(s.tvm_values[t].shape)}_4"
    packed, rng_ = s.rd.run(f"pack_{fn}", [s.tvm_values[t]])
    np.savez(tmp_path / "inputs.npz", packed=packed, range=rng_)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(tmp_path), f"unpack_{fn}", f"segment_{seg.index}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "outputs.npz")
    received = s.rc.run(f"unpack_{fn}", [packed, rng_])[0]
    assert same_bits(got["received"], received)
    assert same_bits(got["out"], s.rc.run(f"segment_{seg.index}", [received])[0])


def _elf_machine(path) -> int:
    head = Path(path).read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2 and int.from_bytes(head[16:18], "little") == 3  # 64-bit .so
    return int.from_bytes(head[18:20], "little")


def test_multi_function_modules_export_for_arm64_and_cuda(resnet20_split, tmp_path):
    s = resnet20_split
    arm = compile_functions(s.device_graphs, "arm64", name="resnet20.device")
    assert _elf_machine(export(arm, tmp_path / "device_arm64.so")) == 183  # EM_AARCH64
    assert arm.describe()["target"]["name"] == "arm64" and set(arm.functions) == set(s.device_graphs)
    gpu = compile_functions(s.cloud_graphs, "cuda-sm80", bind_weights=False, name="resnet20.cloud")
    so = export(gpu, tmp_path / "cloud_cuda.so")
    assert _elf_machine(so) == 62  # x86-64 host code, CUDA kernels inside as source
    data = so.read_bytes()
    assert b"bitunpack_kernel" in data and re.search(rb"dequantize\d*_kernel", data)
    pack = compile_functions({f"pack_{b}": pack_graph((1, 16, 32, 32), b) for b in (3, 4, 8, 16)}, "cuda-sm80")
    data = export(pack, tmp_path / "pack_cuda.so").read_bytes()
    assert b"quant_range_kernel" in data and b"bitpack_kernel" in data
    assert b"nearbyintf" in data  # round half to even on the GPU too (roundf rounds half away from zero)
    desc = gpu.describe()
    json.dumps(desc)
    assert desc["target"]["tvm"] == {"kind": "cuda", "arch": "sm_80", "max_shared_memory_per_block": 49152}
    assert desc["functions"]["unpack_1x16x32x32_4"]["inputs"] == [
        {"name": "x.packed", "shape": [8192], "dtype": "uint8"},
        {"name": "x.range", "shape": [2], "dtype": "float32"},
    ]


# --------------------------------------------------------------------------- mobilenet_v2
@pytest.fixture(scope="module")
def mobilenet_split():
    """Every single-tensor cut of mobilenet_v2 (the candidate cuts builds use) and one inside
    an inverted-residual block, which crosses two tensors."""
    graph, x = _zoo_graph("mobilenet_v2", random_bn=True)
    cuts = find_cuts(graph)
    single = [c.position for c in cuts if c.single_tensor and 0 < c.position < len(cuts) - 1]
    double = [c.position for c in cuts if len(c.tensors) == 2]
    return build_split("mobilenet_v2", graph, x, sorted(single + [double[len(double) // 2]]), cloud_bind_weights=False)


def _report_mobilenet(s: SplitSetup, worst: dict) -> None:
    print("\nmobilenet_v2 worst rel. error per mode:", {k: f"{v:.1e}" for k, v in worst.items()})
    for m in (s.device, s.cloud):
        print(
            f"{m.name}: {len(m.functions)} functions, compile "
            + ", ".join(f"{k} {v:.2f}s" for k, v in m.timings.items())
        )


@pytest.mark.slow  # ~80 s: the slow job runs it; resnet20's every cut and width runs in CI
def test_mobilenet_v2_every_cut_and_width(mobilenet_split, capsys):
    """Every boundary at fp32, 16, 8, 4 and 2 bits (and float16)."""
    s = mobilenet_split
    assert len(s.segments) >= 17 and any(len(seg.start.tensors) == 2 for seg in s.segments)
    worst = check_every_cut(s)
    with capsys.disabled():
        _report_mobilenet(s, worst)
