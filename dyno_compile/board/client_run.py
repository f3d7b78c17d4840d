"""Run :class:`~dyno_compile.runtime.client.DeviceClient` over a file of images, as an app on
a board would, and write what came back: the script the emulated board's Python runs.

The client is the part of the project that lives on the device, so it must be shown to
work where a device runs it: on ARM code, with TVM's runtime library only (what the lean
device install has), its device half from the artifact's arm64 library, talking to a real
``serve`` process. This script is that app. It imports nothing beyond the device side
(the emulated Python has only the lean install), announces each answered image on stdout
as one JSON line as soon as it has it (a test can act between two requests, e.g. kill the
server), and writes every output at the end.

Usage (the board's Python: ``Sysroot.command`` with ``Sysroot.env``)::

    python -m dyno_compile.board.client_run ARTIFACT IMAGES.npz OUT.npz --endpoint grpc://HOST:PORT \\
        --config '{"cut": 6, "bits": "8"}' [--target arm64] [--timeout-s 20]

``IMAGES.npz`` holds ``x``: float32 ``[N, ...]``, image ``i`` being the batch-1 input
``x[i:i+1]``. ``OUT.npz`` gets ``outputs`` ``[N, ...]`` and ``where`` (``cloud``,
``device`` or ``fallback`` per image); the last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from dyno_compile.artifact.load import load_artifact
from dyno_compile.configs import Config
from dyno_compile.runtime.client import DeviceClient


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dyno_compile.board.client_run", description=__doc__)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("images", type=Path, help="an .npz with x: float32 [N, ...] model inputs")
    parser.add_argument("out", type=Path, help="where to write outputs and where each was computed (.npz)")
    parser.add_argument("--endpoint", action="append", default=[], help="a cloud endpoint (repeatable; none: local)")
    parser.add_argument("--config", required=True, help="the pinned configuration, as JSON (Config fields)")
    parser.add_argument("--target", default="arm64", help="the device library's target (default arm64)")
    parser.add_argument("--timeout-s", type=float, default=20.0, help="how long a request waits for the cloud")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    started = time.perf_counter()
    with np.load(args.images) as npz:
        x = np.asarray(npz["x"], dtype=np.float32)
    config = Config.from_dict(json.loads(args.config))
    client = DeviceClient(
        load_artifact(args.artifact),
        args.endpoint,
        policy="pinned",
        policy_options={"config": config},
        device_target=args.target,
        timeout_s=args.timeout_s,
        probe_every_s=60.0,  # no link probes: every request's fate is its own
    )
    ready_s = time.perf_counter() - started
    outputs, where = [], []
    try:
        for i in range(len(x)):
            result = client.run(x[i : i + 1])
            outputs.append(result.output)
            where.append(result.where)
            line = {
                "image": i,
                "where": result.where,
                "cut": result.decision.evaluation.config.cut,
                "bits": result.decision.evaluation.config.bits,
                "bytes_sent": result.bytes_sent,
                "latency_s": result.latency_s,
                "error": result.error,
            }
            print(json.dumps(line), flush=True)
    finally:
        client.close()
    np.savez(args.out, outputs=np.concatenate(outputs), where=np.asarray(where))
    summary = {
        "images": len(x),
        "machine": platform.machine(),
        "runtime_only": os.environ.get("TVM_USE_RUNTIME_LIB") == "1",
        "modules": sorted(sys.modules),
        "ready_s": ready_s,
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
