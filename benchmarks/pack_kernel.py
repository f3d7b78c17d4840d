"""Quantize + pack at a cut: the TVM kernels vs the NumPy implementation of ``dyno_compile.packing``.

For each tensor shape and width, the device side of a cut, ``x -> quant_range -> quantize
-> bitpack -> (packed bytes, range)``, compiled for the host (all shapes and widths in ONE
module, ``compile_functions``) and timed with ``time_evaluator``, against the NumPy
reference doing the same work (``packing.quantize`` then ``packing.pack``). The cloud side
(``bitunpack -> dequantize``) vs ``packing.unpack`` + ``packing.dequantize`` is timed too.
Outputs are checked equal first (bytes and range bit for bit).

Tensors are post-ReLU maps: ``max(N(0, 1), 0)``, about half zeros, as after a conv + ReLU.
TVM runs on ``--threads`` cores (default 2; the process is pinned to that many cores,
which TVM's pool follows); NumPy runs these ops on one thread. Each side is warmed up, then
timed as the median of ``--repeat`` repeats of at least ``--min-ms`` each. Timings on a
shared VM vary 10-15 % from run to run; compare the ratios printed by one run.

    .venv/bin/python benchmarks/pack_kernel.py
    .venv/bin/python benchmarks/pack_kernel.py --bits 8 4 2 1 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys

SHAPES = ((1, 16, 32, 32), (1, 64, 56, 56), (1, 256, 28, 28))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2])
    p.add_argument(
        "--shapes", nargs="+", default=["x".join(map(str, s)) for s in SHAPES], help="NCHW shapes as 1x64x56x56"
    )
    p.add_argument("--granularity", choices=["tensor", "channel"], default="tensor")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--min-ms", type=int, default=200)
    return p.parse_args()


def main() -> int:
    args = _parse()
    cores = sorted(os.sched_getaffinity(0))
    threads = min(args.threads, len(cores))
    if threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import numpy as np
    from timing import median_seconds

    from dyno_compile import packing
    from dyno_compile.ir import Graph
    from dyno_compile.targets import ModuleRunner, compile_functions

    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes]
    gran = args.granularity
    q = lambda bits: {"bits": bits, "granularity": gran, "axis": 1}  # noqa: E731

    def key(shape, bits) -> str:
        return f"{'x'.join(map(str, shape))}_{bits}"

    graphs = {}
    for shape in shapes:
        for bits in args.bits:
            g = Graph(f"pack_{key(shape, bits)}")
            g.add_input("x", shape)
            g.add("quant_range", ["x"], q(bits), name="range")
            g.add("quantize", ["x", "range"], q(bits), name="codes")
            g.add("bitpack", ["codes"], {"bits": bits}, name="packed")
            g.set_outputs(["packed", "range"])
            graphs[g.name] = g
            u = Graph(f"unpack_{key(shape, bits)}")
            u.add_input("packed", ((int(np.prod(shape)) * bits + 7) // 8,), "uint8")
            u.add_input("range", (2,) if gran == "tensor" else (2, shape[1]))
            u.add("bitunpack", ["packed"], {"bits": bits, "shape": shape}, name="codes")
            u.add("dequantize", ["codes", "range"], {"granularity": gran, "axis": 1}, name="x")
            u.set_outputs(["x"])
            graphs[u.name] = u
    module = compile_functions(graphs, "host", name="pack_kernels")
    runner = ModuleRunner(module)
    print(
        f"compiled {len(graphs)} functions in one module in {module.timings['total']:.1f} s "
        f"({', '.join(f'{k} {v:.2f}' for k, v in module.timings.items() if k != 'total')}); "
        f"TVM threads {threads}, granularity {gran}"
    )

    def time_numpy(fn) -> float:
        return median_seconds(fn, repeat=args.repeat, min_ms=args.min_ms)

    def time_tvm(name, inputs) -> float:
        return float(np.median(runner.time(name, inputs, repeat=args.repeat, min_repeat_ms=args.min_ms)))

    header = (
        f"{'shape':>16} {'bits':>4} | {'pack TVM us':>11} {'NumPy us':>9} {'ratio':>6} | "
        f"{'unpack TVM us':>13} {'NumPy us':>9} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0)
        for bits in args.bits:
            k = key(shape, bits)
            packed, rng_ = runner.run(f"pack_{k}", [x])
            codes, params = packing.quantize(x, bits, granularity=gran, axis=1)
            if (
                packed.tobytes() != packing.pack(codes, bits)
                or rng_[0].tobytes() != params.lo.tobytes()
                or rng_[1].tobytes() != params.scale.tobytes()
            ):
                print(f"MISMATCH at {k}: TVM and NumPy disagree", file=sys.stderr)
                return 1
            buf = packed.tobytes()

            def np_pack():
                c, _ = packing.quantize(x, bits, granularity=gran, axis=1)
                packing.pack(c, bits)

            def np_unpack():
                packing.dequantize(packing.unpack(buf, bits, x.size).reshape(shape), params)

            t_pack, n_pack = time_tvm(f"pack_{k}", [x]), time_numpy(np_pack)
            t_unpack, n_unpack = time_tvm(f"unpack_{k}", [packed, rng_]), time_numpy(np_unpack)
            print(
                f"{'x'.join(map(str, shape)):>16} {bits:>4} | {t_pack * 1e6:>11.1f} {n_pack * 1e6:>9.1f} "
                f"{n_pack / t_pack:>5.1f}x | {t_unpack * 1e6:>13.1f} {n_unpack * 1e6:>9.1f} "
                f"{n_unpack / t_unpack:>5.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
