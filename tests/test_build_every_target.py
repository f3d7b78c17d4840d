"""Every model that imports builds for every target (issue 20 item 5): a squeeze-excite
block whose batched cloud form dlight's GPU ``Matmul`` rule cannot schedule falls back to a
simpler rule (recorded in the module's description) instead of failing the build; tiny
MobileNetV3- and DenseNet-style networks build for host, arm64 and cuda, in artifacts
whose libraries compile in parallel worker processes (``DYNO_COMPILE_JOBS``)."""

from __future__ import annotations

import json
from functools import partial

import jax
import numpy as np
import pytest

from conftest import rel_err
from dyno_compile.errors import InputError
from dyno_compile.frontend.jax_import import from_jax
from dyno_compile.ir import Graph, Interpreter
from dyno_compile.passes import run_passes
from dyno_compile.targets import CompiledModule, ModuleRunner, TargetError, compile_functions, compile_graph, run
from dyno_compile.targets.compile import fused_module
from dyno_compile.targets.gpu_schedule import schedule_gpu, unbound_stores
from dyno_compile.targets.libraries import JOBS_ENV, LibraryJob, compile_libraries, compile_workers
from dyno_compile.zoo import densenet, mobilenet_v3, param_specs
from dyno_compile.zoo.layers import conv2d, init_params

#: A MobileNetV3-style network small enough to build in seconds: a block with SE and
#: ReLU, one without SE that expands, one with SE and hard-swish and a residual.
TINY_MNV3 = (
    mobilenet_v3.BlockConfig(16, 3, 16, 16, True, "RE", 2),
    mobilenet_v3.BlockConfig(16, 3, 32, 24, False, "RE", 2),
    mobilenet_v3.BlockConfig(24, 5, 48, 24, True, "HS", 1),
)
TINY_DENSENET = densenet.DenseConfig((2, 2), growth=8, stem=16, bn_size=2)


def _se_block(params, x):
    """conv -> ReLU -> squeeze-excite (pool, 1x1 conv, ReLU, 1x1 conv, hard-sigmoid, multiply)."""
    y = jax.nn.relu(conv2d(x, params["conv.weight"], params["conv.bias"], padding=1))
    return mobilenet_v3.squeeze_excite(params, y, "se")


def se_graph(batch: int) -> Graph:
    rng = np.random.default_rng(0)
    params = {
        "conv.weight": rng.standard_normal((16, 8, 3, 3), dtype=np.float32) * 0.3,
        "conv.bias": rng.standard_normal(16, dtype=np.float32),
        "se.fc1.weight": rng.standard_normal((8, 16, 1, 1), dtype=np.float32) * 0.3,
        "se.fc1.bias": rng.standard_normal(8, dtype=np.float32),
        "se.fc2.weight": rng.standard_normal((16, 8, 1, 1), dtype=np.float32) * 0.3,
        "se.fc2.bias": rng.standard_normal(16, dtype=np.float32),
    }
    return run_passes(from_jax(_se_block, params, np.zeros((batch, 8, 12, 12), np.float32), name=f"se_b{batch}"))


def _tiny_mnv3(batch: int) -> Graph:
    params = init_params(mobilenet_v3.param_specs(TINY_MNV3, num_classes=10), 0, random_bn=True)
    x = np.zeros((batch, 3, 32, 32), np.float32)
    return run_passes(from_jax(partial(mobilenet_v3.forward, TINY_MNV3), params, x, name="tiny_mnv3"))


def _tiny_densenet(batch: int) -> Graph:
    params = init_params(densenet.param_specs(TINY_DENSENET, num_classes=10), 0, random_bn=True)
    x = np.zeros((batch, 3, 32, 32), np.float32)
    return run_passes(from_jax(partial(densenet.forward, TINY_DENSENET), params, x, name="tiny_densenet"))


@pytest.mark.parametrize("batch", [1, 4])
def test_squeeze_excite_runs_on_the_host_as_the_interpreter(batch):
    g = se_graph(batch)
    x = np.random.default_rng(1).standard_normal((batch, 8, 12, 12), dtype=np.float32)
    c = compile_graph(g, "host")
    (got,) = run(c, [x])
    want = np.asarray(Interpreter(g)(x))
    assert rel_err(got, want) <= 1e-4
    assert not c.schedule_report.fallbacks, c.schedule_report.fallbacks


@pytest.mark.parametrize("batch", [1, 4])
def test_squeeze_excite_compiles_for_arm64(batch):
    c = compile_graph(se_graph(batch), "arm64")
    assert not c.schedule_report.fallbacks, c.schedule_report.fallbacks


def test_batched_squeeze_excite_builds_for_cuda_with_a_recorded_fallback():
    """Batch 1 takes dlight's first choices; at batch 4 the SE's second 1x1 conv (a 4x16x8
    GEMM fused with the broadcast multiply) makes ``Matmul`` assert, and the function gets
    ``Fallback``, every store bound to a GPU thread, recorded in the description."""
    single = compile_functions({"segment_0": se_graph(1)}, "cuda")
    assert not single.schedule_report.fallbacks, single.schedule_report.fallbacks
    m = compile_functions({"segment_0": se_graph(1), "segment_0_b4": se_graph(4)}, "cuda")
    fallbacks = m.describe()["schedule"]["fallbacks"]
    assert len(fallbacks) == 1, fallbacks
    ((name, how),) = fallbacks.items()
    assert "multiply" in name and how.startswith("dlight.Fallback (after: Matmul: AssertionError"), fallbacks
    assert "dlight.Matmul" in json.loads(json.dumps(m.describe()))["schedule"]["summary"]


def test_gpu_schedule_binds_every_store_and_skips_a_failing_rule():
    """Unscheduled TIR has stores outside any GPU binding; after :func:`schedule_gpu` none
    is left. A rule that raises, or returns a schedule with unbound loops, is passed over."""
    from tvm import tirx

    from dyno_compile.targets import get_target, gpu_schedule

    mod = fused_module(se_graph(4), "cuda")
    funcs = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert all(unbound_stores(f) > 0 for f in funcs)

    class Raises:
        def apply(self, func, target, tunable):
            raise RuntimeError("boom")

    class Unbound:
        def apply(self, func, target, tunable):
            from tvm import s_tir

            return s_tir.Schedule(func)  # nothing bound

    fallback = gpu_schedule._rules()[-1]
    target = get_target("cuda").tvm_target()
    with target:
        new, how = gpu_schedule._schedule_one(funcs[0], target, [Raises(), Unbound(), fallback])
        assert unbound_stores(new) == 0
        assert how.startswith("dlight.Fallback (after: Raises: RuntimeError: boom")
        with pytest.raises(TargetError, match="no GPU schedule applies: Raises: .*Unbound: .*not bound to GPU"):
            gpu_schedule._schedule_one(funcs[0], target, [Raises(), Unbound()])
    scheduled, report = schedule_gpu(mod, target)
    assert all(unbound_stores(f) == 0 for _, f in scheduled.functions_items() if isinstance(f, tirx.PrimFunc))
    assert set(report.functions) == {gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_tiny_networks_build_for_every_target_in_parallel(tmp_path, monkeypatch):
    """Host (run against the interpreter), arm64 and cuda libraries of a MobileNetV3- and a
    DenseNet-style network, the cloud ones with the batch-4 form, compiled by two workers."""
    monkeypatch.setenv(JOBS_ENV, "2")
    jobs, inputs = [], {}
    for make in (_tiny_mnv3, _tiny_densenet):
        g1, g4 = make(1), make(4)
        inputs[g1.name] = g1
        jobs += [
            LibraryJob({"segment_0": g1}, "host", tmp_path / f"{g1.name}_host.so"),
            LibraryJob({"segment_0": g1}, "arm64", tmp_path / f"{g1.name}_arm64.so"),
            LibraryJob({"segment_0": g1, "segment_0_b4": g4}, "cuda", tmp_path / f"{g1.name}_cuda.so"),
        ]
    results = {r.job.path.name: r for r in compile_libraries(jobs)}
    assert set(results) == {job.path.name for job in jobs}
    assert all(job.path.stat().st_size > 0 for job in jobs)
    for name, g in inputs.items():
        assert set(results[f"{name}_cuda.so"].description["functions"]) == {"segment_0", "segment_0_b4"}
        host = CompiledModule.from_description(
            results[f"{name}_host.so"].description, str(tmp_path / f"{name}_host.so")
        )
        x = np.random.default_rng(2).standard_normal(g.inputs[0].shape, dtype=np.float32)
        (got,) = ModuleRunner(host).run("segment_0", [x])
        assert rel_err(got, np.asarray(Interpreter(g)(x))) <= 1e-4, name


class _DiesInAWorker(dict):
    """A function mapping that kills the worker process unpickling it (as the OOM killer would)."""

    def __reduce__(self):
        return (_functions_or_die, (dict(self),))


def _functions_or_die(functions):
    import multiprocessing
    import os

    if multiprocessing.parent_process() is not None:
        os._exit(3)
    return functions


def test_a_dead_worker_leaves_its_libraries_to_this_process(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(JOBS_ENV, "2")
    g = se_graph(1)
    jobs = [LibraryJob(_DiesInAWorker(segment_0=g), "host", tmp_path / f"{i}.so") for i in range(2)]
    with caplog.at_level("WARNING", logger="dyno_compile.targets.libraries"):
        results = list(compile_libraries(jobs))
    assert sorted(r.job.path.name for r in results) == ["0.so", "1.so"]
    assert all(job.path.stat().st_size > 0 for job in jobs)
    assert "a compile worker died" in caplog.text and "compiling the 2 libraries left here" in caplog.text


def test_compile_workers_follow_the_free_cores_and_the_environment(monkeypatch, tmp_path):
    """By default one worker per core the load leaves free (this process's own share of
    the load counted as free), one on a busy machine; DYNO_COMPILE_JOBS overrides; never
    more workers than libraries."""
    from dyno_compile.targets import libraries

    jobs = [LibraryJob({}, "host", tmp_path / f"{k}.so") for k in range(4)]
    monkeypatch.delenv(JOBS_ENV, raising=False)
    monkeypatch.setattr(libraries, "host_cpu_count", lambda: 2)
    for load, workers in ((0.3, 2), (1.0, 2), (1.2, 1), (3.5, 1)):
        monkeypatch.setattr(libraries.os, "getloadavg", lambda load=load: (load, load, load))
        assert compile_workers(jobs) == workers, load
    assert compile_workers(jobs[:1]) == 1
    monkeypatch.setenv(JOBS_ENV, "3")
    assert compile_workers(jobs) == 3 and compile_workers(jobs[:2]) == 2
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(JOBS_ENV, bad)
        with pytest.raises(InputError, match=f"{JOBS_ENV} must be a positive integer"):
            compile_workers(jobs)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failing_library_raises_its_error(jobs, tmp_path, monkeypatch):
    """In this process or from a worker, a compile error arrives as raised (here: an unknown target)."""
    monkeypatch.setenv(JOBS_ENV, jobs)
    g = se_graph(1)
    bad = [
        LibraryJob({"segment_0": g}, "host", tmp_path / "a.so"),
        LibraryJob({"segment_0": g}, "tpu", tmp_path / "b.so"),
    ]
    with pytest.raises(TargetError, match="unknown target 'tpu'"):
        list(compile_libraries(bad))


@pytest.mark.parametrize("name, trainable", [("mobilenet_v3_small", 2_542_856), ("densenet121", 7_978_856)])
def test_zoo_mobilenet_v3_and_densenet_have_torchvision_parameter_counts(name, trainable):
    specs = param_specs(name)
    counted = sum(int(np.prod(s.shape)) for k, s in specs.items() if not k.endswith(("running_mean", "running_var")))
    assert counted == trainable


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_squeeze_excite_zoo_models_build_batched_for_cuda(name, tmp_path):
    """The models of the issue: their batch-4 cloud segments compile for cuda (minutes)."""
    from dyno_compile.frontend.resolve import load_model

    g1, g4 = run_passes(load_model(name)), run_passes(load_model(name, batch=4))
    m = compile_functions({"segment_0": g1, "segment_0_b4": g4}, "cuda")
    assert m.describe()["schedule"]["fallbacks"]
