"""Command line: ``python -m dyno_compile inspect MODEL [--json]``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from dyno_compile.errors import DynoError
from dyno_compile.frontend.resolve import load_model
from dyno_compile.inspect_report import inspect_report
from dyno_compile.passes import run_passes
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
    return parser


def _inspect(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise DynoError(f"--batch must be at least 1, got {args.batch}")
    graph = run_passes(load_model(args.model, batch=args.batch))
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
