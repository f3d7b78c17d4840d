"""Compile IR graphs with TVM for named targets (host CPU, 64-bit ARM, CUDA GPUs).

Usage::

    from dyno_compile.targets import compile_graph, get_target, export, run

    c = compile_graph(graph, get_target("host"))      # or "arm64", "cuda-sm80", ...
    y = run(c, [x])                                    # host builds only
    export(c, "model.so")                              # cross-linked for arm64

TVM sizes its thread pool from ``TVM_NUM_THREADS`` when the pool first starts and, on
x86, otherwise assumes hyper-threading and uses half the cores; importing this package
sets it to this process's core count unless it is already set.
"""
from __future__ import annotations

import os

from dyno_compile.targets.spec import TargetError, TargetSpec, get_target, host_cpu_count, list_targets

os.environ.setdefault("TVM_NUM_THREADS", str(host_cpu_count()))

from dyno_compile.targets.compile import (Compiled, CompiledModule, FunctionInfo, HostRunner,  # noqa: E402
                                          ModuleRunner, TensorSpec, compile_functions, compile_graph, export, run)
from dyno_compile.targets.lower import LoweringError, supported_ops, to_relax  # noqa: E402

__all__ = ["Compiled", "CompiledModule", "FunctionInfo", "ModuleRunner", "TensorSpec", "compile_functions",
           "HostRunner", "LoweringError", "TargetError", "TargetSpec", "compile_graph", "export",
           "get_target", "host_cpu_count", "list_targets", "run", "supported_ops", "to_relax"]
