"""Compile IR graphs with TVM for named targets (host CPU, 64-bit ARM, CUDA GPUs).

Usage::

    from dyno_compile.targets import compile_graph, get_target, export, run

    c = compile_graph(graph, get_target("host"))      # or "arm64", "cuda-sm80", ...
    y = run(c, [x])                                    # host builds only
    export(c, "model.so")                              # cross-linked for arm64

The modules, in the order data flows through them:

``spec``            named targets (``TargetSpec``); ``errors`` the package's errors;
``convert``         one converter per IR op (IR op -> Relax);
``cut_kernels``     the quantize / pack kernels at a cut: TE compute, CPU and GPU schedule per kind;
``lower``           the driver: IR graphs -> one Relax module;
``blocked_conv``, ``winograd_conv``, ``schedule``, ``schedule_common``: the tuning-free CPU schedule;
``records``         MetaSchedule tuning records: read, checked, applied;
``gpu_schedule``    dlight's GPU rules per function, with a fallback where one fails;
``compile``         lower, bind, fuse, schedule, build, export;
``libraries``       several libraries compiled at once, in worker processes on the free cores;
``tune``            MetaSchedule tuning, writing records;
``module``          what a build produces (``Compiled``, ``CompiledModule``), JSON-described;
``runner``          ``ModuleRunner``: runs a module's functions here or over TVM RPC.

TVM sizes its thread pool from ``TVM_NUM_THREADS`` when the pool first starts and, on
x86, otherwise assumes hyper-threading and uses half the cores; importing this package
sets it to this process's core count unless it is already set.
"""

from __future__ import annotations

import os

from dyno_compile.targets.errors import LoweringError, TargetError
from dyno_compile.targets.spec import TargetSpec, get_target, host_cpu_count, list_targets

os.environ.setdefault("TVM_NUM_THREADS", str(host_cpu_count()))

from dyno_compile.targets.compile import compile_functions, compile_graph, export  # noqa: E402
from dyno_compile.targets.convert import supported_ops  # noqa: E402
from dyno_compile.targets.lower import to_relax  # noqa: E402
from dyno_compile.targets.module import Compiled, CompiledModule, FunctionInfo, TensorSpec  # noqa: E402
from dyno_compile.targets.runner import ModuleRunner, gpu_available, run  # noqa: E402

__all__ = [
    "Compiled",
    "CompiledModule",
    "FunctionInfo",
    "LoweringError",
    "ModuleRunner",
    "TargetError",
    "TargetSpec",
    "TensorSpec",
    "compile_functions",
    "compile_graph",
    "export",
    "get_target",
    "gpu_available",
    "host_cpu_count",
    "list_targets",
    "run",
    "supported_ops",
    "to_relax",
]
