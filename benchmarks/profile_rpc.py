"""Function times over TVM RPC (loopback tracker + server) vs the same functions timed locally.

Both are TVM's time evaluator over the same library on the same cores; over RPC the timed
loop runs in the server process, so the two should agree within the machine's noise.
Local and RPC profiles are taken in alternating rounds (``--rounds``) and each function's
figure is its median over the rounds, so a burst of load from other users hits both
sides alike. Prints each segment's local and RPC time and their ratio, then the sums.

    .venv/bin/python benchmarks/profile_rpc.py                      # builds resnet20 (host) first
    .venv/bin/python benchmarks/profile_rpc.py --artifact out/resnet20 --side cloud --rounds 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, help="an artifact directory (default: build resnet20 for the host)")
    p.add_argument("--side", choices=["device", "cloud"], default="device")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--min-ms", type=int, default=10)
    return p.parse_args()


def _artifact(path: Path | None, scratch: Path):
    from dyno_compile.artifact.load import load_artifact

    if path is None:
        from dyno_compile.artifact.build import build_artifact
        from dyno_compile.artifact.plan import candidate_cuts, plan_build
        from dyno_compile.frontend.resolve import load_model
        from dyno_compile.passes import run_passes

        graph = run_passes(load_model("resnet20"))
        path, _ = build_artifact(
            plan_build(graph, candidate_cuts(graph)),
            scratch / "resnet20",
            device_targets=("host",),
            cloud_targets=("host",),
        )
    return load_artifact(path)


def main() -> int:
    from dyno_compile.search.profile import profile_library
    from dyno_compile.search.rpc import local_rpc, profile_library_rpc

    args = _parse()
    timing = {"repeat": args.repeat, "min_repeat_ms": args.min_ms}
    with tempfile.TemporaryDirectory() as scratch:
        art = _artifact(args.artifact, Path(scratch))
        local, remote = [], []
        with local_rpc() as rpc:
            for _ in range(args.rounds):
                local.append(profile_library(art, args.side, **timing))
                remote.append(profile_library_rpc(art, args.side, "host", tracker=rpc.tracker, key=rpc.key, **timing))
    segments = [s["function"] for s in art.segments]
    loc = {f: float(np.median([p.time(f) for p in local])) for f in segments}
    rem = {f: float(np.median([p.time(f) for p in remote])) for f in segments}
    print(
        f"{args.side} library, host, median of {args.rounds} alternating rounds "
        f"({local[0].source} vs {remote[0].source})"
    )
    print(f"{'function':<12} {'local us':>10} {'rpc us':>10} {'rpc/local':>10}")
    for f in segments:
        print(f"{f:<12} {loc[f] * 1e6:>10.1f} {rem[f] * 1e6:>10.1f} {rem[f] / loc[f]:>10.2f}")
    total_l, total_r = sum(loc.values()), sum(rem.values())
    print(f"{'sum':<12} {total_l * 1e6:>10.1f} {total_r * 1e6:>10.1f} {total_r / total_l:>10.2f}")
    print(
        "per-round segment sums, ms: local",
        [round(p.total(segments) * 1e3, 3) for p in local],
        "rpc",
        [round(p.total(segments) * 1e3, 3) for p in remote],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
