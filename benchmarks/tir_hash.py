"""SHA-256 of the scheduled host build of zoo models, and how long the build took.

A refactor of the compiler (lowering, cut kernels, schedules) must leave the code it
generates alone: this script prints, per model, the digest of the IRModule that
:func:`dyno_compile.targets.compile_graph` hands to ``tvm.compile`` (fused, scheduled,
before TIR lowering and LLVM code generation) as TVMScript text, and the build's
seconds. Run it before and after a change (the old tree with ``PYTHONPATH`` set to it)
and compare: equal digests mean the same schedule; build times are only comparable
within one session (alternate the two trees where the machine is noisy).

The scheduled module is caught by wrapping ``tvm.compile`` for the duration of one
``compile_graph`` call, so the script goes through the real pipeline (lower, bind, fuse,
schedule) and needs no hook in the compiler; the seconds spent printing and hashing the
module are taken out of the reported times.

    .venv/bin/python benchmarks/tir_hash.py                        # the four models and the cut kernels
    .venv/bin/python benchmarks/tir_hash.py resnet20 --repeat 3    # build 3 times: the best time, one digest
    .venv/bin/python benchmarks/tir_hash.py cut-kernels

``cut-kernels`` is one module of cut kernels (quant_range, quantize, bitpack, bitunpack,
dequantize: every width 1-16, per tensor and per channel, shapes whose loops split
evenly and shapes that do not) built for the host and for ``cuda-sm80`` (a CUDA build
needs no GPU): the zoo models cross no cut, so they do not exercise those schedules.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench_process import run_main

if TYPE_CHECKING:
    from dyno_compile.ir import Graph

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "resnet20")
CUT_KERNELS = "cut-kernels"
#: Shape and channel axis of the tensors the cut-kernel module quantises and packs.
CUT_SHAPES = (((1, 16, 9, 9), 1), ((3, 11), -1), ((37,), 0), ((1, 3, 61, 67), 1))
CUT_TARGETS = ("host", "cuda-sm80")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=[*MODELS, CUT_KERNELS], help=f"zoo models, or {CUT_KERNELS!r}")
    p.add_argument("--repeat", type=int, default=1, help="builds per model (the fastest is reported)")
    return p.parse_args()


def scheduled_digest(compile_fn: Callable[..., Any], *args: Any) -> tuple[str, dict[str, float]]:
    """``(sha256 of the scheduled module's script, step timings)`` of the one build that
    ``compile_fn(*args)`` makes (``compile_graph`` or ``compile_functions``)."""
    import tvm

    build = tvm.compile
    seen: dict[str, Any] = {}

    def capture(mod, *args, **kwargs):
        t = time.perf_counter()
        seen["sha256"] = hashlib.sha256(mod.script().encode()).hexdigest()
        seen["hook_s"] = time.perf_counter() - t
        return build(mod, *args, **kwargs)

    tvm.compile = capture
    try:
        c = compile_fn(*args)
    finally:
        tvm.compile = build
    timings = dict(c.timings)
    for step in ("build", "total"):
        timings[step] -= seen["hook_s"]
    return seen["sha256"], timings


def cut_chain(
    name: str, shape: tuple[int, ...], axis: int, granularity: str, bits: int, dtype: str = "float32"
) -> Graph:
    """A graph of the cut ops a tensor ``x`` passes through, outputs not yet set: ``range``,
    ``codes``, ``packed``, ``unpacked`` and ``deq`` (dequantized). The cut kernels' tests
    build the same chain, so what they check is what this script hashes."""
    from dyno_compile.ir import Graph

    g = Graph(name)
    g.add_input("x", shape, dtype)
    q = {"bits": bits, "granularity": granularity, "axis": axis}
    g.add("quant_range", ["x"], q, name="range")
    g.add("quantize", ["x", "range"], q, name="codes")
    g.add("bitpack", ["codes"], {"bits": bits}, name="packed")
    g.add("bitunpack", ["packed"], {"bits": bits, "shape": shape}, name="unpacked")
    g.add("dequantize", ["unpacked", "range"], {"granularity": granularity, "axis": axis}, name="deq")
    return g


def cut_kernel_graphs() -> dict[str, Any]:
    """One graph per shape, granularity and width: range, quantize, pack, unpack, dequantize."""
    graphs = {}
    for shape, axis in CUT_SHAPES:
        for granularity in ("tensor", "channel"):
            for bits in range(1, 17):
                g = cut_chain(f"cut_{'x'.join(map(str, shape))}_{granularity}_{bits}", shape, axis, granularity, bits)
                g.set_outputs(["packed", "deq"])
                graphs[g.name] = g
    return graphs


def _report(name: str, builds: list[tuple[str, dict[str, float]]]) -> bool:
    """Print one line: the digest and the fastest build; False when the builds differ."""
    digests = {d for d, _ in builds}
    if len(digests) != 1:
        print(f"{name}: the scheduled module differs from build to build: {sorted(digests)}", file=sys.stderr)
        return False
    best = min((t for _, t in builds), key=lambda t: t["total"])
    steps = ", ".join(f"{k} {v:.2f}" for k, v in best.items() if k != "total")
    totals = ", ".join(f"{t['total']:.2f}" for _, t in builds)
    print(f"{name:22s} {digests.pop()}  build {best['total']:7.2f} s  ({steps}; all: {totals})", flush=True)
    return True


def main() -> int:
    args = _parse()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import dyno_compile
    from dyno_compile import zoo
    from dyno_compile.frontend.jax_import import from_jax
    from dyno_compile.passes import run_passes
    from dyno_compile.targets import compile_functions, compile_graph

    print(f"dyno_compile from {os.path.dirname(dyno_compile.__file__)}", flush=True)
    ok = True
    for name in args.models:
        if name == CUT_KERNELS:
            graphs = cut_kernel_graphs()
            for target in CUT_TARGETS:
                ok &= _report(
                    f"{name}/{target}",
                    [scheduled_digest(compile_functions, graphs, target) for _ in range(args.repeat)],
                )
            continue
        m = zoo.get_model(name)
        graph = run_passes(from_jax(m.fn, m.params, m.random_input()))
        ok &= _report(name, [scheduled_digest(compile_graph, graph, "host") for _ in range(args.repeat)])
    return 0 if ok else 1


if __name__ == "__main__":
    run_main(main)
