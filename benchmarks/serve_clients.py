"""Many device clients against one cloud server on loopback: errors, throughput, latency.

A :class:`~dyno_compile.runtime.server.CloudServer` serves an artifact (``--workers``
VMs, ``--max-queue``, ``--max-batch``); by default it runs as its own ``python -m
dyno_compile serve`` process, as deployed, so the clients' Python does not share its
GIL (``--in-process-server`` to compare). Then ``--clients`` concurrent clients, each
its own :class:`~dyno_compile.runtime.client.DeviceClient` (own VM, own gRPC channel)
pinned to one offloaded configuration of the Pareto set (``--cut``; default the offloaded
one with the fewest bytes), send ``--requests`` real CIFAR-10 test images each, back to
back. Clients are threads, spread over ``--processes`` processes (default 1: all threads
in this one) to see whether the clients' GIL is the limit.

Printed per phase, in the same run: total throughput (requests/s over the phase's wall
time), p50/p99 latency (each request's ``Result.latency_s``: device part, network,
server), errors (a result not answered by the cloud, or an output that differs from the
device-only output of the same image beyond 1e-4 relative error or in its top-1 class),
and top-1 against the labels. Phases: 1 client (the baseline the ratios divide by), the
``--clients`` clients, and device-only (no server) with 1 and with ``--clients`` threads
for reference: on loopback the device and the cloud are the same CPU, so device-only is
the ceiling offloading is compared with, not a competitor.

    .venv/bin/python benchmarks/serve_clients.py                      # builds resnet20 first (~45 s)
    .venv/bin/python benchmarks/serve_clients.py --artifact out/resnet20 --workers 2 --processes 4
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: An output is wrong when it differs from the device-only output by more than this,
#: relative to the largest logit (the device and cloud libraries are separate builds).
TOLERANCE = 1e-4
WARMUP = 3


def _parse() -> argparse.Namespace:
    from served_artifact import add_artifact_option

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_artifact_option(p)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=100, help="requests per client (default 100)")
    p.add_argument("--workers", type=int, default=1, help="server VMs (default 1)")
    p.add_argument("--max-queue", type=int, default=64, help="server queue bound (default 64)")
    p.add_argument("--max-batch", type=int, default=8, help="requests a worker takes at once (default 8)")
    p.add_argument("--processes", type=int, default=1, help="client processes the threads are spread over (default 1)")
    p.add_argument(
        "--cut",
        type=int,
        help="the pinned configuration's cut (default: the offloaded Pareto configuration with the fewest bytes)",
    )
    p.add_argument("--in-process-server", action="store_true", help="run the server in this process")
    args = p.parse_args()
    for name in ("clients", "requests", "workers", "max_queue", "max_batch", "processes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    args.processes = min(args.processes, args.clients)
    return args


# --- the artifact and the server -------------------------------------------------------------


def pinned_config(artifact: Any, cut: int | None) -> dict[str, Any]:
    from dyno_compile.configs import Evaluation
    from dyno_compile.runtime.selector import is_device_only

    offloaded = [
        e
        for e in (Evaluation.from_dict(d) for d in artifact.manifest["search"]["pareto"])
        if not is_device_only(e) and (cut is None or e.config.cut == cut)
    ]
    if not offloaded:
        sys.exit(f"the Pareto set has no offloaded configuration{'' if cut is None else f' at cut {cut}'}")
    return min(offloaded, key=lambda e: e.bytes).config.to_dict()


class Server:
    """``python -m dyno_compile serve`` in its own process (or a CloudServer in this one)."""

    def __init__(self, artifact: Path, args: argparse.Namespace) -> None:
        self._proc: subprocess.Popen | None = None
        self._server = None
        if args.in_process_server:
            from dyno_compile.artifact.load import load_artifact
            from dyno_compile.runtime.engine import CloudEngine, EngineOptions
            from dyno_compile.runtime.server import CloudServer, ServerOptions

            self._server = CloudServer(
                CloudEngine(load_artifact(artifact), EngineOptions(workers=args.workers)),
                ServerOptions(max_queue=args.max_queue, max_batch=args.max_batch),
            )
            self.endpoint = self._server.start()
            return
        command = [
            sys.executable,
            "-m",
            "dyno_compile",
            "serve",
            str(artifact),
            "--port",
            "0",
            "--workers",
            str(args.workers),
            "--max-queue",
            str(args.max_queue),
            "--max-batch",
            str(args.max_batch),
        ]
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline().strip()
        if not line.startswith("grpc://"):
            self._proc.kill()
            sys.exit(f"serve did not start: {line}\n{self._proc.stderr.read()[-3000:]}")
        self.endpoint = line

    def cpu_s(self) -> float | None:
        """CPU seconds the server process has used (None in this process: not separable)."""
        if self._proc is None:
            return None
        import psutil

        times = psutil.Process(self._proc.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace_s=1)
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


# --- the clients -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """One client's phase: per-request latencies, what went wrong, top-1 hits, and when it
    started and ended (``time.monotonic``, comparable across processes on one machine)."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    correct: int = 0
    start: float = 0.0
    end: float = 0.0


def _images(count: int) -> tuple[np.ndarray, np.ndarray]:
    from dyno_compile.datasets.cifar10 import load_test

    x, y = load_test()
    picks = np.arange(count) % len(y)
    return x[picks], y[picks]


def drive(
    artifact_path: str,
    endpoint: str | None,
    config: dict[str, Any] | None,
    client_ids: list[int],
    requests: int,
    ready: Any,
    go: Any,
) -> tuple[list[Outcome], float]:
    """Run ``client_ids`` as threads, each its own client: warm up, report ready, wait for
    ``go``, send ``requests`` images back to back. ``endpoint`` None: device-only. Returns
    the outcomes and this process's CPU seconds from ``go`` to the last client's end."""
    from dyno_compile.artifact.load import load_artifact
    from dyno_compile.runtime.client import DeviceClient

    artifact = load_artifact(artifact_path)
    total = (max(client_ids) + 1) * requests
    x, y = _images(total)
    with DeviceClient(artifact) as local:  # the device-only output of every image, the reference
        reference = {i: local.infer(x[i][None]) for c in client_ids for i in range(c * requests, (c + 1) * requests)}
    outcomes = [Outcome() for _ in client_ids]

    def one(slot: int, cid: int) -> None:
        out = outcomes[slot]
        options = {"policy": "pinned", "policy_options": {"config": config}} if endpoint else {}
        with DeviceClient(artifact, [endpoint] if endpoint else [], **options) as client:
            for k in range(WARMUP):
                client.run(x[k][None])
            ready.put(1)
            go.wait()
            out.start = time.monotonic()
            for i in range(cid * requests, (cid + 1) * requests):
                result = client.run(x[i][None])
                out.latencies.append(result.latency_s)
                wanted = "cloud" if endpoint else "device"
                if result.where == "fallback":
                    out.errors.append(f"fallback: {result.error}")
                elif result.where != wanted:
                    out.errors.append(f"{result.where}: no endpoint up (marked down by an earlier failure)")
                elif not _same(result.output, reference[i]):
                    out.errors.append(f"wrong output for image {i}")
                out.correct += int(np.argmax(result.output) == y[i])
            out.end = time.monotonic()

    threads = [threading.Thread(target=one, args=(slot, cid)) for slot, cid in enumerate(client_ids)]
    for t in threads:
        t.start()
    go.wait()
    cpu = time.process_time()
    for t in threads:
        t.join()
    return outcomes, time.process_time() - cpu


def _same(output: np.ndarray, reference: np.ndarray) -> bool:
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    return float(np.max(np.abs(output - reference))) / scale <= TOLERANCE and int(np.argmax(output)) == int(
        np.argmax(reference)
    )


def _child(results: Any, *drive_args: Any) -> None:
    """A client process: :func:`drive` with ``drive_args``, its outcomes put on ``results``
    (a module-level function, so the spawn start method can find it)."""
    results.put(drive(*drive_args))


@dataclass
class Phase:
    outcomes: list[Outcome]
    client_cpu_s: float
    server_cpu_s: float | None


def phase(
    artifact: Path,
    endpoint: str | None,
    config: dict[str, Any] | None,
    clients: int,
    requests: int,
    processes: int,
    server: Server | None = None,
) -> Phase:
    """``clients`` clients over ``processes`` processes (1: threads of this one), all
    released together once every one has warmed up; with the CPU time the clients'
    processes and the server's took meanwhile."""
    ids = list(range(clients))
    if processes == 1:
        import queue

        ready, go = queue.Queue(), threading.Event()
        box: list[tuple[list[Outcome], float]] = []
        runner = threading.Thread(
            target=lambda: box.append(drive(str(artifact), endpoint, config, ids, requests, ready, go))
        )
        runner.start()
        for _ in ids:
            ready.get()
        server_cpu = server.cpu_s() if server else None
        go.set()
        runner.join()
        return Phase(box[0][0], box[0][1], server.cpu_s() - server_cpu if server_cpu is not None else None)
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    groups = [ids[p::processes] for p in range(processes)]
    children = [
        ctx.Process(target=_child, args=(results, str(artifact), endpoint, config, g, requests, ready, go))
        for g in groups
    ]
    for c in children:
        c.start()
    for _ in ids:
        ready.get(timeout=300)
    server_cpu = server.cpu_s() if server else None
    go.set()
    returned = [results.get(timeout=600) for _ in children]
    server_cpu = server.cpu_s() - server_cpu if server_cpu is not None else None
    for c in children:
        c.join()
    return Phase([o for outcomes, _ in returned for o in outcomes], sum(cpu for _, cpu in returned), server_cpu)


@dataclass
class Summary:
    requests: int
    throughput: float
    p50_ms: float
    p99_ms: float
    errors: int
    top1: float
    kinds: dict[str, tuple[int, str]]
    client_cpu_ms: float
    server_cpu_ms: float | None
    cores_busy: float


def summarise(run: Phase) -> Summary:
    outcomes = run.outcomes
    latencies = np.array([s for o in outcomes for s in o.latencies])
    wall = max(o.end for o in outcomes) - min(o.start for o in outcomes)
    errors = [e for o in outcomes for e in o.errors]
    n = len(latencies)
    return Summary(
        n,
        n / wall,
        1e3 * float(np.percentile(latencies, 50)),
        1e3 * float(np.percentile(latencies, 99)),
        len(errors),
        sum(o.correct for o in outcomes) / n,
        _kinds(errors),
        1e3 * run.client_cpu_s / n,
        None if run.server_cpu_s is None else 1e3 * run.server_cpu_s / n,
        (run.client_cpu_s + (run.server_cpu_s or 0.0)) / wall,
    )


def _kinds(errors: list[str]) -> dict[str, tuple[int, str]]:
    """Errors by kind (the text before the first colon): count and first message."""
    kinds: dict[str, tuple[int, str]] = {}
    for e in errors:
        kind = e.split(":", 1)[0]
        count, first = kinds.get(kind, (0, e))
        kinds[kind] = (count + 1, first)
    return kinds


def main() -> None:
    from served_artifact import served_artifact

    args = _parse()
    from dyno_compile.artifact.load import load_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = served_artifact(args.artifact, tmp)
        config = pinned_config(load_artifact(path), args.cut)
        server = Server(path, args)
        try:
            label = f"cut {config['cut']} {config['bits']} {config['codec']}"
            print(
                f"server: {server.endpoint} ({'in this process' if args.in_process_server else 'own process'}), "
                f"{args.workers} worker(s), max queue {args.max_queue}, max batch {args.max_batch}; clients pinned "
                f"to {label}; {args.requests} CIFAR-10 test images per client; client threads over "
                f"{args.processes} process(es); {os.cpu_count()} CPUs",
                flush=True,
            )
            rows = [
                ("1 client", phase(path, server.endpoint, config, 1, args.requests, 1, server)),
                (
                    f"{args.clients} clients",
                    phase(path, server.endpoint, config, args.clients, args.requests, args.processes, server),
                ),
            ]
        finally:
            server.stop()
        rows += [
            ("device-only, 1 thread", phase(path, None, None, 1, args.requests, 1)),
            (
                f"device-only, {args.clients} threads",
                phase(path, None, None, args.clients, args.requests, args.processes),
            ),
        ]
    summaries = [(name, summarise(o)) for name, o in rows]
    base = summaries[0][1]
    print(
        f"\n{'phase':<28}{'requests':>9}{'req/s':>9}{'x 1 client':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'top-1':>8}   CPU ms/request: clients, server; cores busy"
    )
    for name, s in summaries:
        server_cpu = "-" if s.server_cpu_ms is None else f"{s.server_cpu_ms:.2f}"
        print(
            f"{name:<28}{s.requests:>9}{s.throughput:>9.0f}{s.throughput / base.throughput:>11.2f}{s.p50_ms:>9.2f}"
            f"{s.p99_ms:>9.2f}{s.errors:>8}{100 * s.top1:>7.1f}%   {s.client_cpu_ms:.2f}, {server_cpu}; "
            f"{s.cores_busy:.2f} of {os.cpu_count()}"
        )
    for name, s in summaries:
        for _kind, (count, first) in s.kinds.items():
            print(f"{name}: {count} x {first[:300]}")
    offloaded = summaries[1][1]
    verdict = "met" if offloaded.errors == 0 else "MISSED"
    print(f"\n{args.clients} concurrent clients, zero errors: {verdict} ({offloaded.errors} of {offloaded.requests})")


if __name__ == "__main__":
    main()
