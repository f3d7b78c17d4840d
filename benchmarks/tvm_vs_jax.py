"""Batch-1 CPU latency: TVM (tuning-free schedule) vs ``jax.jit`` of the zoo function.

Both use the same cores (``--threads``, default: all this process may use; fewer pins
the process to that many cores, which both XLA's and TVM's pools follow; TVM also gets
``TVM_NUM_THREADS``). Each side is warmed up, then timed as the median of ``--repeat``
repeats of at least ``--min-ms`` each (TVM: ``time_evaluator``; JAX: the same loop by
hand with ``block_until_ready``). Timings on a shared VM vary 10-15 % from run to run;
compare the ratios printed by one run.

    .venv/bin/python benchmarks/tvm_vs_jax.py                  # resnet20 and resnet18
    .venv/bin/python benchmarks/tvm_vs_jax.py resnet20 --no-schedule
"""

from __future__ import annotations

import argparse
import os
import time

from bench_process import pin_threads, run_main


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=["resnet20", "resnet18"])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--min-ms", type=int, default=300)
    p.add_argument("--no-schedule", action="store_true", help="also time TVM's unscheduled default build")
    return p.parse_args()


def main() -> int:
    args = _parse()
    pin_threads(args.threads)
    import jax
    import numpy as np
    from timing import median_seconds

    from dyno_compile import zoo
    from dyno_compile.frontend.jax_import import from_jax
    from dyno_compile.ir import Interpreter
    from dyno_compile.passes import run_passes
    from dyno_compile.targets import ModuleRunner, compile_graph, get_target

    host = get_target("host")
    print(f"host: {host.target}, threads {args.threads}")
    rows = []
    for name in args.models:
        m = zoo.get_model(name)
        x = m.random_input(1)
        t0 = time.perf_counter()
        g = run_passes(from_jax(m.fn, m.params, m.random_input()))
        t_import = time.perf_counter() - t0
        variants = [("tvm", True)] + ([("tvm-default", False)] if args.no_schedule else [])
        jax_fn = jax.jit(m.fn)
        params = jax.device_put(m.params)
        xj = jax.device_put(x)
        t_jax = median_seconds(lambda: jax_fn(params, xj).block_until_ready(), repeat=args.repeat, min_ms=args.min_ms)
        ref = np.asarray(Interpreter(g)(x))
        for label, sched in variants:
            c = compile_graph(g, host, schedule=sched)
            runner = ModuleRunner(c)
            y = runner.run("main", [x])[0]
            err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
            t_tvm = float(np.median(runner.time("main", [x], repeat=args.repeat, min_repeat_ms=args.min_ms)))
            comp = ", ".join(f"{k} {v:.2f}" for k, v in c.timings.items())
            print(
                f"{name:10s} {label:12s} {t_tvm * 1e3:9.3f} ms   jax {t_jax * 1e3:9.3f} ms   "
                f"tvm/jax {t_tvm / t_jax:5.2f}   rel err {err:.1e}   compile s: {comp} (import {t_import:.2f})"
            )
            if c.schedule_report is not None and c.schedule_report.fallbacks:
                print(f"  schedule fallbacks: {c.schedule_report.fallbacks}")
            rows.append((name, label, t_tvm, t_jax))
    print("\nsummary (ms):")
    for name, label, t_tvm, t_jax in rows:
        print(f"  {name:10s} {label:12s} tvm {t_tvm * 1e3:9.3f}  jax {t_jax * 1e3:9.3f}  ratio {t_tvm / t_jax:5.2f}")
    return 0


if __name__ == "__main__":
    run_main(main)
