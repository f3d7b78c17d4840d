"""The cloud side on a GPU: every cut through the CUDA cloud library, checked against the
host, and every cloud function timed on the GPU.

Builds MODEL (default resnet20, real weights) with host device and cloud libraries and
the cloud library for ``--cloud`` (default ``cuda-sm90``: H100/H200), or opens
``--artifact``. Then:

1. every cut at each ``--bits``: device segments and pack on the host, unpack and the
   cloud segments on the GPU, for ``--images`` real test images; the output must equal
   the same split run wholly on the host (max abs error <= 1e-4 of the output's scale);
2. every function of the cloud library timed on the GPU (TVM's time evaluator, which
   synchronises the device), beside the same function of the host's cloud library.

Figures go to ``--out`` as JSON and Markdown (default ``docs/gpu/<model>-<target>.*``).
With no GPU here it says so and exits 2; ``--cloud host`` runs the same steps with the
host's cloud library (how the script is tested without a GPU).

    .venv/bin/python benchmarks/cloud_on_gpu.py                     # on a GPU machine
    .venv/bin/python benchmarks/cloud_on_gpu.py --cloud cuda-sm80   # A100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOL = 1e-4


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="resnet20")
    p.add_argument("--cloud", default="cuda-sm90", help="cloud target to run on this machine's GPU")
    p.add_argument("--artifact", type=Path, help="an artifact with host libraries and the --cloud library")
    p.add_argument("--bits", nargs="+", default=["float32", "8", "4"])
    p.add_argument("--images", type=int, default=4, help="real test images per cut (resnet20/56: CIFAR-10)")
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON and Markdown figures")
    return p.parse_args(argv)


def _inputs(graph, count: int) -> np.ndarray:
    """Real CIFAR-10 test images for the CIFAR models, else the zoo's seeded random input."""
    from dyno_compile.datasets import cifar10

    shape = tuple(graph.inputs[0].shape[1:])
    if shape == (3, 32, 32):
        try:
            return cifar10.load_test(count)[0]
        except Exception:  # noqa: BLE001 - no data here: a random input serves
            pass
    return np.random.default_rng(0).standard_normal((count, *shape)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    from dyno_compile.errors import DynoError

    try:
        return _run(_parse(argv))
    except DynoError as exc:  # a bad target, width, model or artifact: say which, no traceback
        print(f"cloud_on_gpu: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from dyno_compile.artifact.build import build_artifact
    from dyno_compile.artifact.load import load_artifact, run_split
    from dyno_compile.artifact.plan import candidate_cuts, plan_build
    from dyno_compile.board.check import rel_error
    from dyno_compile.errors import InputError
    from dyno_compile.frontend.resolve import load_model
    from dyno_compile.packing import bits_key, bits_value, refused_as
    from dyno_compile.passes import run_passes
    from dyno_compile.search.profile import profile_library
    from dyno_compile.targets import get_target
    from dyno_compile.targets.runner import gpu_available

    if args.images < 1:
        raise InputError(f"--images must be at least 1, got {args.images}")
    with refused_as(InputError):
        wanted = {bits_key(b) for b in args.bits}
    spec = get_target(args.cloud)
    if spec.is_gpu and not gpu_available(spec):
        print(f"no GPU for {spec.name} on this machine: run this where one is (or --cloud host to check the steps)")
        return 2
    root = args.artifact
    if root is None:
        graph = run_passes(load_model(args.model))
        bits = [bits_value(b) for b in args.bits]
        root = Path(tempfile.mkdtemp(prefix="cloud_on_gpu_")) / args.model
        t = time.perf_counter()
        build_artifact(
            plan_build(graph, candidate_cuts(graph), bits=bits),
            root,
            device_targets=("host",),
            cloud_targets=(spec.name,),
        )
        print(f"built {root} in {time.perf_counter() - t:.1f} s")
    art = load_artifact(root)
    graph = art.graph
    x = _inputs(graph, args.images)

    device = art.runner("device", "host")
    runners = {"host": (device, art.runner("cloud", "host")), spec.name: (device, art.runner("cloud", spec.name))}
    worst = 0.0
    checked = 0
    for cut in art.cuts:
        for b in art.manifest["bits"] if cut["kind"] != "device-only" else ["float32"]:
            if str(b) not in wanted:
                continue
            for i in range(len(x)):
                want = run_split(art, x[i : i + 1], cut["position"], str(b), runners=runners["host"])
                got = run_split(art, x[i : i + 1], cut["position"], str(b), runners=runners[spec.name])
                err = rel_error(want, got)
                worst = max(worst, err)
                checked += 1
                if err > TOL:
                    print(f"cut {cut['position']} bits {b} image {i}: {spec.name} differs from the host by {err:.2e}")
                    return 1
    print(f"{checked} splits (cuts x bits x images) on {spec.name} equal the host's: worst relative error {worst:.1e}")

    gpu = profile_library(art, "cloud", spec.name)
    host = profile_library(art, "cloud", "host")
    times = [
        {"function": f, f"{spec.name}_us": gpu.seconds[f] * 1e6, "host_us": host.seconds[f] * 1e6} for f in gpu.seconds
    ]
    rows = [t for t in times if t["function"].startswith("segment")]
    kernels = [t for t in times if not t["function"].startswith("segment")]
    result = {
        "model": args.model,
        "target": spec.name,
        "source": gpu.source,
        "checked_splits": checked,
        "worst_rel_err": worst,
        "segments": rows,
        "cut_kernels": kernels,
        "total_segments_us": {
            spec.name: sum(r[f"{spec.name}_us"] for r in rows),
            "host": sum(r["host_us"] for r in rows),
        },
    }
    out = args.out or Path(__file__).resolve().parent.parent / "docs" / "gpu"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.model}-{spec.name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# {args.model}: cloud segments on {spec.name} ({gpu.source}) vs the host",
        "",
        f"{checked} splits checked against the host: worst relative error {worst:.1e}.",
        "",
        f"| segment | {spec.name} us | host us |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['function']} | {r[f'{spec.name}_us']:.1f} | {r['host_us']:.1f} |" for r in rows]
    tot = result["total_segments_us"]
    lines += [f"| all segments | {tot[spec.name]:.1f} | {tot['host']:.1f} |", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
