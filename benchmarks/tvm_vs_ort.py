"""Batch-1 CPU latency: TVM tuning-free and MetaSchedule-tuned vs ``jax.jit`` and ONNX Runtime.

All in one process on the same cores (``--threads``, default 2: the process is pinned to
that many cores, TVM gets ``TVM_NUM_THREADS``, ONNX Runtime ``intra_op_num_threads``,
XLA sizes its pool from the pinned cores). Per model (``resnet18`` at 224x224,
``resnet20`` at 32x32 by default):

``tvm``        ``compile_graph`` with the tuning-free schedule;
``tvm-tuned``  the same build with the MetaSchedule records of ``--records/<model>``
               applied (only when that directory holds records; ``--tune N`` tunes first
               up to N trials per model, resumably);
``jax``        ``jax.jit`` of the zoo function;
``ort``        ONNX Runtime (CPU provider, all graph optimisations) on the graph exported
               by ``benchmarks/onnx_export.py``.

Every variant's output is checked against the IR interpreter. Each is warmed up, then
timed in ``--repeat`` rounds that visit the variants in turn (so drift on a shared
machine hits all alike), at least ``--min-ms`` per round; the table shows medians and
the ratios to JAX and to ONNX Runtime.

    .venv/bin/python benchmarks/tvm_vs_ort.py --records records --tune 200 --tune-models resnet20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_process import pin_threads, run_main


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=["resnet18", "resnet20"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7, help="timing rounds per variant (median reported)")
    p.add_argument("--min-ms", type=int, default=300, help="least milliseconds per round")
    p.add_argument("--records", type=Path, default=None, help="records root: one directory per model")
    p.add_argument("--tune", type=int, default=0, metavar="N", help="tune each model up to N trials first")
    p.add_argument("--tune-models", nargs="*", default=None, help="models to tune (default: all)")
    p.add_argument("--trials-per-iter", type=int, default=16)
    p.add_argument("--population", type=int, default=256)
    p.add_argument("--min-task-share", type=float, default=0.01)
    p.add_argument("--cost-model", default="xgb")
    return p.parse_args()


def main() -> int:
    args = _parse()
    pin_threads(args.threads)
    if args.tune and args.records is None:
        sys.exit("--tune needs --records DIR")

    import jax
    import numpy as np
    import tvm
    from onnx_export import export_onnx, ort_session

    from dyno_compile import zoo
    from dyno_compile.frontend.jax_import import from_jax
    from dyno_compile.ir import Interpreter
    from dyno_compile.passes import run_passes
    from dyno_compile.targets import ModuleRunner, compile_graph, get_target
    from dyno_compile.targets.compile import fused_module
    from dyno_compile.targets.records import RECORD_FILE, match_records
    from dyno_compile.targets.tune import tune

    host = get_target("host")
    print(f"host: {host.target}, threads {args.threads}, TVM {tvm.__version__}, jax {jax.__version__}", end="")
    import onnxruntime

    print(f", onnxruntime {onnxruntime.__version__}")

    def loop_timer(fn):
        """Seconds per call of ``fn``, one round of at least ``--min-ms``."""
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-6)
        number = max(1, int(args.min_ms / 1e3 / one))

        def measure() -> float:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            return (time.perf_counter() - t0) / number

        return measure

    def tvm_timer(runner: ModuleRunner, x):
        """Seconds per call of the build's ``main``, one round of at least ``--min-ms``."""
        inputs = runner.args("main", [x])
        return lambda: float(runner.time("main", inputs, repeat=1, min_repeat_ms=args.min_ms)[0])

    rows = []
    for name in args.models:
        m = zoo.get_model(name)
        x = m.random_input(1)
        g = run_passes(from_jax(m.fn, m.params, m.random_input()))
        ref = np.asarray(Interpreter(g)(x))

        def err(y) -> float:
            return float(np.max(np.abs(np.asarray(y) - ref)) / np.max(np.abs(ref)))

        records = args.records / name if args.records else None
        if args.tune and (args.tune_models is None or name in args.tune_models):
            mod = fused_module(g, host)

            def show(p):
                best = sum(1 for v in p.best_us.values() if v is not None)
                print(
                    f"  [{p.elapsed_s:6.0f} s] {p.trials_done:4d}/{p.trials_budget} trials, {best} tasks measured,"
                    f" last {p.task} ({p.batch_failed}/{p.batch} failed)",
                    flush=True,
                )

            print(f"{name}: tuning up to {args.tune} trials in {records}", flush=True)
            r = tune(
                mod,
                host,
                records,
                trials=args.tune,
                trials_per_iter=args.trials_per_iter,
                population=args.population,
                cost_model=args.cost_model,
                min_task_share=args.min_task_share,
                progress=show,
            )
            print(f"{name}: {r.summary()}", flush=True)
            nan = float("nan")
            for t in r.tasks:
                free, rec = r.paired_us.get(t, (None, None))
                used = "  <- record used" if t in r.improved else ""
                print(
                    f"    {t:40s} before tuning {r.baseline_us.get(t) or nan:9.1f} us; side by side: tuning-free "
                    f"{free or nan:9.1f} us, best record {rec or nan:9.1f} us{used}"
                )

        variants: dict[str, tuple] = {}
        c = compile_graph(g, host)
        runner = ModuleRunner(c)
        variants["tvm"] = (tvm_timer(runner, x), err(runner.run("main", [x])[0]), f"compile {c.timings['total']:.1f} s")
        if records is not None and (records / RECORD_FILE).is_file():
            ct = compile_graph(g, host, records=records)
            rt = ModuleRunner(ct)
            mt = match_records(fused_module(g, host), records)
            total = len(mt.tuned) + len(mt.slower) + len(mt.untuned)
            note = (
                f"compile {ct.timings['total']:.1f} s, {len(mt.tuned)}/{total} functions from records"
                f" ({len(mt.slower)} records slower than tuning-free)"
            )
            variants["tvm-tuned"] = (tvm_timer(rt, x), err(rt.run("main", [x])[0]), note)
        jfn = jax.jit(m.fn)
        params, xj = jax.device_put(m.params), jax.device_put(x)
        yj = jfn(params, xj).block_until_ready()
        variants["jax"] = (loop_timer(lambda: jfn(params, xj).block_until_ready()), err(yj), "")
        sess = ort_session(export_onnx(g), args.threads)
        feed = {next(n.name for n in g.nodes if n.op == "input"): x}
        yo = sess.run(None, feed)[0]
        variants["ort"] = (loop_timer(lambda: sess.run(None, feed)), err(yo), "")

        for _name, (measure, _, _) in variants.items():  # warm-up
            measure()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeat):
            for k, (measure, _, _) in variants.items():
                times[k].append(measure())
        med = {k: float(np.median(v)) for k, v in times.items()}
        for k, (_, e, note) in variants.items():
            spread = (max(times[k]) - min(times[k])) / med[k]
            rows.append(
                (
                    name,
                    "x".join(map(str, m.input_shape[2:])),
                    k,
                    med[k],
                    med[k] / med["jax"],
                    med[k] / med["ort"],
                    spread,
                    e,
                    note,
                )
            )
            print(f"{name:9s} {k:10s} {med[k] * 1e3:9.3f} ms  rel err {e:.1e}  {note}", flush=True)

    print(f"\nmedian of {args.repeat} rounds, >= {args.min_ms} ms each, {args.threads} threads")
    print(
        f"{'model':9s} {'input':7s} {'variant':10s} {'ms':>9s} {'vs jax':>7s} {'vs ort':>7s} {'spread':>7s}"
        f" {'rel err':>8s}"
    )
    for name, size, k, t, rj, ro, spread, e, note in rows:
        print(f"{name:9s} {size:7s} {k:10s} {t * 1e3:9.3f} {rj:7.2f} {ro:7.2f} {spread:6.0%} {e:8.1e}  {note}")
    return 0


if __name__ == "__main__":
    run_main(main)
