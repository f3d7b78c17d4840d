"""Command line: ``python -m dyno_compile inspect MODEL`` and ``build MODEL --out DIR``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from dyno_compile.artifact.archive import write_archive
from dyno_compile.artifact.build import build_artifact
from dyno_compile.artifact.plan import DEFAULT_BITS, candidate_cuts, plan_build
from dyno_compile.errors import DynoError
from dyno_compile.frontend.resolve import load_model
from dyno_compile.inspect_report import inspect_report
from dyno_compile.passes import run_passes
from dyno_compile.passes.insert_pack import check_bits
from dyno_compile.targets import get_target, list_targets
from dyno_compile.zoo import list_models


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except DynoError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dyno_compile",
                                     description="Compile CNNs split between a device and the cloud.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    p = sub.add_parser("inspect", help="print layers, costs and cut points of a model")
    p.add_argument("model", metavar="MODEL",
                   help=f"zoo name ({', '.join(list_models())}), a .onnx file, or module:function")
    p.add_argument("--batch", type=int, default=1, help="input batch size (default 1)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    p.add_argument("--all-cuts", action="store_true",
                   help="list every cut point (default: single-tensor cuts and the two ends)")
    p.set_defaults(run=_inspect)

    b = sub.add_parser("build", help="compile the device and cloud libraries of a model into an artifact")
    b.add_argument("model", metavar="MODEL", nargs="?", default="resnet20",
                   help="zoo name, .onnx file or module:function (default: resnet20, real CIFAR-10 weights)")
    b.add_argument("--device", action="append", metavar="TARGET",
                   help=f"device target(s), repeatable (default arm64; known: {', '.join(list_targets())})")
    b.add_argument("--cloud", action="append", metavar="TARGET", help="cloud target(s), repeatable (default cuda)")
    b.add_argument("--out", metavar="DIR", help="artifact directory (default out/MODEL)")
    b.add_argument("--cuts", choices=("single", "all"), default="single",
                   help="candidate cuts: single-tensor cuts and both ends (default), or every position")
    b.add_argument("--bits", default=",".join(map(str, DEFAULT_BITS)),
                   help="transfer widths to build kernels for: 1-16, float16, float32 (comma-separated)")
    b.add_argument("--granularity", choices=("tensor", "channel"), default="tensor",
                   help="quantization range per tensor or per channel")
    b.add_argument("--batch", type=int, default=1, help="input batch size (default 1)")
    b.add_argument("--records", metavar="DIR",
                   help="MetaSchedule records for the host target (from targets.tune); shipped in the artifact")
    b.add_argument("--archive", metavar="FILE",
                   help="also write the artifact as one .tar.gz file (opens like the directory)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing artifact directory (and archive)")
    b.set_defaults(run=_build)
    return parser


def _load(args: argparse.Namespace):
    if args.batch < 1:
        raise DynoError(f"--batch must be at least 1, got {args.batch}")
    return run_passes(load_model(args.model, batch=args.batch))


def _inspect(args: argparse.Namespace) -> int:
    graph = _load(args)
    report = inspect_report(graph)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _print_report(report, all_cuts=args.all_cuts)
    return 0


def _print_report(report: dict[str, Any], *, all_cuts: bool) -> None:
    console = Console(width=None if sys.stdout.isatty() else 160)  # pipes and CI logs: no wrapping
    layers = Table(title=f"{report['model']}: layers", title_justify="left")
    for col in ("#", "name", "op", "output", "MMACs", "weights KiB", "out KiB"):
        layers.add_column(col, justify="right" if col not in ("name", "op") else "left")
    for x in report["layers"]:
        layers.add_row(str(x["index"]), x["name"], x["op"], f"{x['dtype']}{x['shape']}", f"{x['macs'] / 1e6:.2f}",
                       f"{x['weight_bytes'] / 1024:.1f}", f"{x['out_bytes'] / 1024:.1f}")
    console.print(layers)

    cuts = Table(title=f"{report['model']}: cut points (device runs layers before the cut)", title_justify="left")
    for col in ("cut", "kind", "after layer", "crossing tensors", "KiB sent"):
        cuts.add_column(col, justify="right" if col in ("cut", "KiB sent") else "left")
    for c in report["cuts"]:
        if all_cuts or c["kind"] != "split" or len(c["tensors"]) == 1:
            cuts.add_row(str(c["position"]), c["kind"], c["after"] or "-", ", ".join(c["tensors"]) or "-",
                         f"{c['bytes'] / 1024:.1f}")
    console.print(cuts)

    t = report["totals"]
    ins = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in report["inputs"])
    console.print(f"[bold]{report['model']}[/]: input {ins}; {t['layers']} layers, {t['macs'] / 1e6:.1f} MMACs, "
                  f"{t['weight_bytes'] / 2**20:.2f} MiB weights; {t['cuts']} cut points, "
                  f"{t['single_tensor_cuts']} crossing a single tensor"
                  + ("" if all_cuts else " (shown; --all-cuts lists every one)"), highlight=False)


def _parse_bits(text: str) -> list:
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        out.append(int(item) if item.isdigit() else item)
    return [check_bits(b) for b in out]


def _build(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    bits = _parse_bits(args.bits)
    device, cloud = args.device or ["arm64"], args.cloud or ["cuda"]
    for t in device + cloud:
        get_target(t)  # fail before any work on a misspelt target
    if args.archive and Path(args.archive).exists() and not args.overwrite:
        raise DynoError(f"{args.archive} already exists; choose another --archive or pass --overwrite")
    t0 = time.perf_counter()
    with console.status(f"importing and optimising {args.model}") as status:
        graph = _load(args)
        plan = plan_build(graph, candidate_cuts(graph, args.cuts), bits=bits, granularity=args.granularity)
        out = Path(args.out or Path("out") / graph.name)
        root, built = build_artifact(plan, out, device_targets=device, cloud_targets=cloud,
                                     overwrite=args.overwrite, records=args.records, progress=status.update)
    table = Table(title=f"{graph.name}: artifact {root}", title_justify="left")
    for col in ("side", "target", "functions", "compile s", "MiB"):
        table.add_column(col, justify="left" if col in ("side", "target") else "right")
    for lib in built:
        size = (root / lib.path).stat().st_size / 2**20
        table.add_row(lib.side, lib.target, str(lib.functions), f"{lib.seconds:.1f}", f"{size:.1f}")
    Console().print(table)
    Console().print(f"{len(plan.cuts)} cuts x {len(bits)} widths, {len(plan.segments)} segments, "
                    f"{len(plan.device_functions) - len(plan.segments)} pack kernels; "
                    f"built in {time.perf_counter() - t0:.0f} s", highlight=False)
    if args.archive:
        archive = write_archive(root, args.archive, overwrite=args.overwrite)
        Console().print(f"archive {archive} ({archive.stat().st_size / 2**20:.1f} MiB)", highlight=False)
    return 0
