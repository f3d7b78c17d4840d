"""Command line: ``inspect MODEL``, ``build MODEL --out DIR``, ``search ARTIFACT``, ``serve ARTIFACT`` and
``board setup|start|stop|status|check`` (the emulated aarch64 board)."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dyno_compile.artifact.archive import write_archive
from dyno_compile.artifact.build import build_artifact
from dyno_compile.artifact.load import load_artifact
from dyno_compile.artifact.plan import DEFAULT_BITS, candidate_cuts, plan_build
from dyno_compile.artifact.store import amend
from dyno_compile.board import server as board_server
from dyno_compile.board import sysroot as board_sysroot
from dyno_compile.board.check import check_artifact
from dyno_compile.cli_progress import ProgressDisplay, stderr_console
from dyno_compile.errors import DynoError, DynoWarning, InputError
from dyno_compile.frontend.onnx_bind import parse_input_shape
from dyno_compile.frontend.resolve import load_model
from dyno_compile.inspect_report import inspect_report
from dyno_compile.packing import GRANULARITIES, bits_value, refused_as
from dyno_compile.packing.vocab import check_level
from dyno_compile.passes import run_passes
from dyno_compile.search.calibration import PRESETS, default_calibration, load_calibration
from dyno_compile.search.pareto import DEFAULT_QUALITIES, IMAGE_CODEC_NAMES
from dyno_compile.search.pipeline import (
    DEFAULT_MINUTES,
    DEFAULT_SHARE,
    SIMULATORS,
    SearchOptions,
    finish_with_search,
)
from dyno_compile.search.study import DEFAULT_SAMPLER, SAMPLERS
from dyno_compile.targets import get_target, list_targets
from dyno_compile.zoo import list_models

#: Requests the cloud's batched segments take at once by default: on the host CPU four
#: resnet20 requests in one call cost 1.9x less each than four calls, and 32 clients got
#: 1.8x the throughput of an unbatched server (benchmarks/serve_clients.py).
DEFAULT_CLOUD_BATCH = 4


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Text, not markup, so a message holding "[...]" prints as written.
    stderr = stderr_console()
    with warnings.catch_warnings():
        warnings.simplefilter("always", DynoWarning)
        plain_show = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
            if issubclass(category, DynoWarning):
                stderr.print(Text.assemble(("warning: ", "bold yellow"), str(message)))
            else:
                plain_show(message, category, *rest, **kw)

        warnings.showwarning = show
        try:
            return args.run(args)
        except DynoError as exc:
            stderr.print(Text.assemble(("error: ", "bold red"), str(exc)))
            return 2
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (artifact.build turns it into this)
            stderr.print(Text.assemble(("interrupted", "bold red"), ": nothing half-written is left behind"))
            return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dyno_compile", description="Compile CNNs split between a device and the cloud."
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    p = sub.add_parser("inspect", help="print layers, costs and cut points of a model")
    p.add_argument(
        "model", metavar="MODEL", help=f"zoo name ({', '.join(list_models())}), a .onnx file, or module:function"
    )
    _model_shape_options(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    p.add_argument(
        "--all-cuts", action="store_true", help="list every cut point (default: single-tensor cuts and the two ends)"
    )
    p.set_defaults(run=_inspect)

    b = sub.add_parser("build", help="compile the device and cloud libraries of a model into an artifact")
    b.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        default="resnet20",
        help="zoo name, .onnx file or module:function (default: resnet20, real CIFAR-10 weights)",
    )
    b.add_argument(
        "--device",
        action="append",
        metavar="TARGET",
        help=f"device target(s), repeatable (default arm64; known: {', '.join(list_targets())})",
    )
    b.add_argument("--cloud", action="append", metavar="TARGET", help="cloud target(s), repeatable (default cuda)")
    b.add_argument("--out", metavar="DIR", help="artifact directory (default out/MODEL)")
    b.add_argument(
        "--cuts",
        choices=("single", "all"),
        default="single",
        help="candidate cuts: single-tensor cuts and both ends (default), or every position",
    )
    b.add_argument(
        "--bits",
        default=",".join(map(str, DEFAULT_BITS)),
        help="transfer widths to build kernels for: 1-16, float16, float32 (comma-separated)",
    )
    b.add_argument(
        "--granularity", choices=GRANULARITIES, default="tensor", help="quantization range per tensor or per channel"
    )
    _model_shape_options(b)
    b.add_argument(
        "--cloud-batch",
        type=int,
        metavar="B",
        help="also compile the cloud segments for B requests at once, which the server uses for "
        f"requests that arrive together (default {DEFAULT_CLOUD_BATCH} where the model can be "
        "batched; 1: none)",
    )
    b.add_argument(
        "--records",
        metavar="DIR",
        help="MetaSchedule records for the host target (from targets.tune); shipped in the artifact",
    )
    b.add_argument(
        "--archive", metavar="FILE", help="also write the artifact as one .tar.gz file (opens like the directory)"
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing artifact directory (and archive)")
    b.add_argument(
        "--no-search", action="store_true", help="skip profiling and the search (the artifact then has no Pareto set)"
    )
    _search_options(b)
    b.set_defaults(run=_build)

    s = sub.add_parser("search", help="profile an artifact, search its configurations and store the Pareto set in it")
    s.add_argument("artifact", metavar="ARTIFACT", help="artifact directory (from build)")
    _search_options(s)
    s.set_defaults(run=_search)

    v = sub.add_parser("serve", help="serve the cloud half of an artifact over gRPC")
    v.add_argument("artifact", metavar="ARTIFACT", help="artifact directory or archive (from build)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    v.add_argument("--port", type=int, default=8470, help="port (default 8470; 0 picks a free one)")
    v.add_argument("--target", help="cloud library to run (default: a CUDA build where a GPU is present, else host)")
    v.add_argument("--workers", type=int, default=1, help="requests run at once, one VM each (default 1)")
    v.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting before the server answers OVERLOADED (default 64)"
    )
    v.add_argument("--max-batch", type=int, default=8, help="queued requests one worker takes at once (default 8)")
    v.add_argument("--max-request-mb", type=float, default=64.0, help="largest request accepted, MiB (default 64)")
    v.add_argument(
        "--token-file",
        metavar="FILE",
        help="require clients to present the token in FILE (or set DYNO_TOKEN); never on the command line",
    )
    v.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    v.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    v.add_argument("--grace", type=float, default=5.0, help="seconds in-flight requests get at shutdown (default 5)")
    v.set_defaults(run=_serve)

    e = sub.add_parser("evaluate", help="replay real traces through DynO and the baselines; write a report")
    e.add_argument("--out", default="out/evaluation", help="report folder (default out/evaluation)")
    e.add_argument(
        "--models",
        default="resnet20,resnet56,squeezenet,efficientnet_lite2,resnet50,mobilenet_v2",
        help="comma-separated models (default: all six)",
    )
    e.add_argument(
        "--devices",
        default="rpi4,jetson-nano,phone,rpi5,host",
        help="comma-separated device classes, the first one the headline's goals are for "
        "(default rpi4,jetson-nano,phone,rpi5,host)",
    )
    e.add_argument("--sets", default="3g,lte,5g", help="trace sets (default 3g,lte,5g)")
    e.add_argument("--traces-per-set", type=int, default=2, help="traces per set, measured uplinks first (default 2)")
    e.add_argument("--requests", type=int, default=1000, help="requests replayed per policy and trace (default 1000)")
    e.add_argument("--minutes", type=float, default=1.0, help="search minutes per model (default 1)")
    e.add_argument("--cache", metavar="DIR", help="built and measured models (default OUT/artifacts); reused")
    e.add_argument(
        "--live",
        default="resnet20:lte:1",
        metavar="MODEL:SET[:N]",
        help="the live run over the real server and link shaper that checks the replay, on trace N of "
        "the set (default resnet20:lte:1; 'none' to skip)",
    )
    e.set_defaults(run=_evaluate)

    _board_parser(sub)
    _rate_accuracy_parser(sub)
    return parser


def _model_shape_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch",
        type=int,
        help="input batch size; binds a dynamic batch dimension (default: an ONNX file's fixed batch, else 1)",
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=DxDx...",
        help="whole shape of an ONNX input, binding its dynamic dimensions, e.g. input=1x3x224x224 (repeatable)",
    )


def _search_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("search (profiles, accuracy, Pareto set)")
    g.add_argument(
        "--calibration",
        metavar="PATH",
        help="calibration data: an .npz (x, optional y) or a folder of images (optional labels.tsv); "
        "default: the real shared data that fits the model",
    )
    g.add_argument("--preprocess", choices=sorted(PRESETS), help="preprocessing of raw calibration images")
    g.add_argument("--calibration-limit", type=int, metavar="N", help="use the first N calibration samples")
    g.add_argument(
        "--no-labels", action="store_true", help="ignore calibration labels: accuracy is agreement with the float model"
    )
    g.add_argument(
        "--simulate",
        choices=SIMULATORS,
        default="auto",
        help="run the model in the accuracy simulation with JAX, or with the artifact's compiled host "
        "library (much faster for 224x224 models); auto: by model size (default)",
    )
    g.add_argument(
        "--budget",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="accuracy loss allowed, in points of top-1 (default 1.0)",
    )
    g.add_argument(
        "--evaluations",
        type=int,
        metavar="N",
        help=f"configurations to measure (default {100 * DEFAULT_SHARE:.0f} %% of the space)",
    )
    g.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        metavar="M",
        help=f"start no measurement after M minutes of searching (default {DEFAULT_MINUTES:g}; 0: no limit)",
    )
    g.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: sqlite:///file.db (default: beside the artifact) or postgresql://... for many workers",
    )
    g.add_argument("--study", metavar="NAME", help="study name (default: model, hash and targets); resumes if present")
    g.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER, help="Optuna sampler")
    g.add_argument("--seed", type=int, default=0, help="sampler seed (give each worker its own)")
    g.add_argument(
        "--profile-device",
        metavar="TARGET",
        help="device target whose times the search uses (default: the first non-host device target)",
    )
    g.add_argument("--profile-cloud", metavar="TARGET", help="cloud target whose times the search uses")
    g.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure the device side on a TVM RPC server")
    g.add_argument("--rpc-key", metavar="KEY", help="the device's key at the RPC tracker")
    g.add_argument(
        "--emulated-times",
        action="store_true",
        help="rank by an emulated board's times (keys 'emulated-*'; default: record them, rank by the estimate)",
    )
    g.add_argument(
        "--image-codecs",
        default="auto",
        metavar="LIST",
        help=f"image codecs whose cut-0 uploads of the input are searched, comma-separated from "
        f"{','.join(IMAGE_CODEC_NAMES)}; 'none' for no image uploads; auto (default): every one for a "
        "model whose input is an image",
    )
    g.add_argument(
        "--image-qualities",
        default=",".join(map(str, DEFAULT_QUALITIES)),
        metavar="LIST",
        help=f"qualities (1-100) each image codec is searched at (default {','.join(map(str, DEFAULT_QUALITIES))})",
    )
    g.add_argument(
        "--verbose",
        action="store_true",
        help="log every trial and measured configuration (default: progress bars only)",
    )


def _load(args: argparse.Namespace, batch: int | None = None):
    """The model with its passes run; ``batch`` overrides ``--batch`` (the cloud's batched
    segments), also in the ``--input-shape`` shapes."""
    if args.batch is not None and args.batch < 1:
        raise DynoError(f"--batch must be at least 1, got {args.batch}")
    shapes = dict(parse_input_shape(text) for text in args.input_shape)
    if batch is not None:
        shapes = {name: (batch, *shape[1:]) for name, shape in shapes.items()}
    return run_passes(load_model(args.model, batch=batch or args.batch, input_shapes=shapes))


def _inspect(args: argparse.Namespace) -> int:
    graph = _load(args)
    report = inspect_report(graph)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _print_report(report, all_cuts=args.all_cuts)
    return 0


def _stdout_console() -> Console:
    """Tables at 160 columns in pipes and CI logs; lines of text never wrapped (soft_wrap)."""
    return Console(width=None if sys.stdout.isatty() else 160, soft_wrap=True)


def _print_report(report: dict[str, Any], *, all_cuts: bool) -> None:
    console = _stdout_console()
    layers = Table(title=f"{report['model']}: layers", title_justify="left")
    for col in ("#", "name", "op", "output", "MMACs", "weights KiB", "out KiB"):
        layers.add_column(col, justify="right" if col not in ("name", "op") else "left")
    for x in report["layers"]:
        layers.add_row(
            str(x["index"]),
            x["name"],
            x["op"],
            f"{x['dtype']}{x['shape']}",
            f"{x['macs'] / 1e6:.2f}",
            f"{x['weight_bytes'] / 1024:.1f}",
            f"{x['out_bytes'] / 1024:.1f}",
        )
    console.print(layers)

    cuts = Table(title=f"{report['model']}: cut points (device runs layers before the cut)", title_justify="left")
    for col in ("cut", "kind", "after layer", "crossing tensors", "KiB sent"):
        cuts.add_column(col, justify="right" if col in ("cut", "KiB sent") else "left")
    for c in report["cuts"]:
        if all_cuts or c["kind"] != "split" or len(c["tensors"]) == 1:
            cuts.add_row(
                str(c["position"]),
                c["kind"],
                c["after"] or "-",
                ", ".join(c["tensors"]) or "-",
                f"{c['bytes'] / 1024:.1f}",
            )
    console.print(cuts)

    t = report["totals"]
    ins = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in report["inputs"])
    console.print(
        f"[bold]{report['model']}[/]: input {ins}; {t['layers']} layers, {t['macs'] / 1e6:.1f} MMACs, "
        f"{t['weight_bytes'] / 2**20:.2f} MiB weights; {t['cuts']} cut points, "
        f"{t['single_tensor_cuts']} crossing a single tensor"
        + ("" if all_cuts else " (shown; --all-cuts lists every one)"),
        highlight=False,
    )


def _parse_bits(text: str) -> list:
    with refused_as(InputError):
        return [bits_value(item, "--bits") for item in filter(None, (t.strip() for t in text.split(",")))]


def _build(args: argparse.Namespace) -> int:
    console = stderr_console()
    bits = _parse_bits(args.bits)
    device, cloud = args.device or ["arm64"], args.cloud or ["cuda"]
    for t in device + cloud:
        get_target(t)  # fail before any work on a misspelt target
    if args.archive and Path(args.archive).exists() and not args.overwrite:
        raise DynoError(f"{args.archive} already exists; choose another --archive or pass --overwrite")
    t0 = time.perf_counter()
    with ProgressDisplay(f"importing and optimising {args.model}", console=console, verbose=args.verbose) as progress:
        graph = _load(args)
        out = Path(args.out or Path("out") / graph.name)
        finish = None
        if not args.no_search:  # bad calibration data fails here, before anything is compiled
            options = _options(args, args.model, graph.inputs[0].shape)
            finish = finish_with_search(options, default_storage=_storage_beside(out), progress=progress)
        plan = _plan(args, graph, bits, console)
        root, built = build_artifact(
            plan,
            out,
            device_targets=device,
            cloud_targets=cloud,
            overwrite=args.overwrite,
            records=args.records,
            finish=finish,
            progress=progress,
        )
    table = Table(title=f"{graph.name}: artifact {root}", title_justify="left")
    for col in ("side", "target", "functions", "compile s", "MiB"):
        table.add_column(col, justify="left" if col in ("side", "target") else "right")
    for lib in built:
        size = (root / lib.path).stat().st_size / 2**20
        table.add_row(lib.side, lib.target, str(lib.functions), f"{lib.seconds:.1f}", f"{size:.1f}")
    _stdout_console().print(table)
    _stdout_console().print(
        f"{len(plan.cuts)} cuts x {len(bits)} widths, {len(plan.segments)} segments, "
        f"{len(plan.device_functions) - len(plan.segments)} pack kernels; "
        f"built in {time.perf_counter() - t0:.0f} s",
        highlight=False,
    )
    if finish is not None:
        _print_search(load_artifact(root))
    if args.archive:
        archive = write_archive(root, args.archive, overwrite=args.overwrite)
        _stdout_console().print(f"archive {archive} ({archive.stat().st_size / 2**20:.1f} MiB)", highlight=False)
    return 0


def _plan(args: argparse.Namespace, graph, bits: list, console: Console):
    """The build plan, with the cloud segments also imported at ``--cloud-batch``. Asked
    for explicitly, a model that cannot be batched is an error; by default it is built
    without batched segments, and the console says so."""
    cuts = candidate_cuts(graph, args.cuts)
    own = graph.inputs[0].shape[0] if graph.inputs[0].shape else 1
    batch = args.cloud_batch if args.cloud_batch is not None else (DEFAULT_CLOUD_BATCH if own == 1 else 1)
    if batch < 1 or (batch > 1 and own != 1):
        raise DynoError(f"--cloud-batch must be >= 1, and needs batch 1; got {batch} with batch {own}")
    if batch == 1:
        return plan_build(graph, cuts, bits=bits, granularity=args.granularity)
    try:
        batched = _load(args, batch)
        return plan_build(graph, cuts, bits=bits, granularity=args.granularity, batched=batched)
    except DynoError as e:
        if args.cloud_batch is not None:
            raise
        console.print(Text.assemble(("note: ", "yellow"), f"no batched cloud segments ({e})"))
        return plan_build(graph, cuts, bits=bits, granularity=args.granularity)


def _storage_beside(out: Path) -> str:
    """The default study database: next to the artifact, so rebuilding resumes the study."""
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out.resolve().parent / (out.name + '.study.db')}"


def _image_codecs(text: str) -> tuple[str, ...] | None:
    """``--image-codecs``: None for auto, () for none, else the named image codecs."""
    text = text.strip()
    if text == "auto":
        return None
    if text == "none":
        return ()
    names = tuple(filter(None, (t.strip() for t in text.split(","))))
    unknown = [n for n in names if n not in IMAGE_CODEC_NAMES]
    if unknown or not names:
        raise InputError(f"--image-codecs takes auto, none or a list from {','.join(IMAGE_CODEC_NAMES)}; got {text!r}")
    return names


def _image_qualities(text: str) -> tuple[int, ...]:
    """``--image-qualities``: integers every image codec takes (the codec table's levels)."""
    items = tuple(filter(None, (t.strip() for t in text.split(","))))
    if not items or not all(i.isdecimal() for i in items):
        raise InputError(f"--image-qualities takes comma-separated integers, got {text!r}")
    qualities = tuple(int(i) for i in items)
    with refused_as(InputError):
        for codec in IMAGE_CODEC_NAMES:
            for q in qualities:
                check_level(codec, q, "--image-qualities")
    return qualities


def _options(args: argparse.Namespace, model: str, model_input: Sequence[int]) -> SearchOptions:
    """The search's options, checked before anything is compiled."""
    input_shape = tuple(model_input)
    if input_shape[:1] != (1,):
        raise InputError(
            f"the search measures one request per calibration sample, so it needs a model of batch 1, "
            f"not input {list(input_shape)}: build with --batch 1 (batched cloud segments come from "
            f"--cloud-batch), or pass --no-search"
        )
    if args.calibration:
        calibration = load_calibration(
            args.calibration,
            input_shape=input_shape,
            preprocess=args.preprocess,
            limit=args.calibration_limit,
            labels=not args.no_labels,
        )
    else:
        calibration = default_calibration(model, input_shape)
        if args.calibration_limit:
            calibration = calibration.head(args.calibration_limit)
        if args.no_labels:
            calibration = replace(calibration, labels=None)
    for t in filter(None, (args.profile_device, args.profile_cloud)):
        get_target(t)
    return SearchOptions(
        calibration,
        accuracy_budget=args.budget,
        device_target=args.profile_device,
        cloud_target=args.profile_cloud,
        rpc_tracker=args.rpc_tracker,
        rpc_key=args.rpc_key,
        emulated_times=args.emulated_times,
        evaluations=args.evaluations,
        minutes=args.minutes or None,
        storage=args.storage,
        study_name=args.study,
        sampler=args.sampler,
        seed=args.seed,
        simulate=args.simulate,
        image_codecs=_image_codecs(args.image_codecs),
        image_qualities=_image_qualities(args.image_qualities),
    )


def _search(args: argparse.Namespace) -> int:
    if Path(args.artifact).is_file():
        raise DynoError(
            f"{args.artifact}: search stores its result in the artifact; give the artifact directory, "
            "not an archive (re-archive it afterwards with build --archive)"
        )
    artifact = load_artifact(args.artifact)
    options = _options(args, artifact.manifest["model"], artifact.manifest["inputs"][0]["shape"])
    with ProgressDisplay("searching", verbose=args.verbose) as progress:
        amend(
            artifact.root,
            finish_with_search(options, default_storage=_storage_beside(artifact.root), progress=progress),
        )
    _print_search(load_artifact(artifact.root))
    return 0


def _print_search(artifact) -> None:
    s = artifact.manifest["search"]
    table = Table(
        title=f"{artifact.manifest['model']}: Pareto set ({len(s['pareto'])} of {s['evaluated']} "
        f"configurations measured, space {s['space_size']}; budget {s['accuracy_budget']} points)",
        title_justify="left",
    )
    for col in ("cut", "bits", "granularity", "layout", "codec", "device ms", "cloud ms", "KiB", s["metric"]):
        table.add_column(col, justify="right" if col not in ("granularity", "layout", "codec") else "left")
    for e in sorted(s["pareto"], key=lambda e: (e["config"]["cut"], e["bytes"])):
        c = e["config"]
        table.add_row(
            str(c["cut"]),
            c["bits"],
            c["granularity"],
            c["layout"],
            c["codec"] if c.get("level") is None else f"{c['codec']} q{c['level']}",
            f"{e['device_s'] * 1e3:.3f}",
            f"{e['cloud_s'] * 1e3:.3f}",
            f"{e['bytes'] / 1024:.2f}",
            f"{100 * e['accuracy']:.2f} %",
        )
    console = _stdout_console()
    console.print(table)
    console.print(
        f"float model: {100 * s['baseline_accuracy']:.2f} % {s['metric']} on {s['calibration']['samples']} "
        f"samples ({s['calibration']['source']}); times: {s['profiles']['device']}, "
        f"{s['profiles']['cloud']}; plots in {artifact.root / 'search'}",
        highlight=False,
        markup=False,
    )


def _serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    import os
    import signal
    import threading

    from dyno_compile.runtime.engine import CloudEngine, EngineOptions
    from dyno_compile.runtime.server import CloudServer, ServerOptions

    token = os.environ.get("DYNO_TOKEN")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise DynoError(f"--token-file {args.token_file}: {e.strerror}") from None
    artifact = load_artifact(args.artifact)
    engine = CloudEngine(
        artifact,
        EngineOptions(
            target=args.target,
            token=token,
            workers=args.workers,
            max_request_bytes=int(args.max_request_mb * (1 << 20)),
        ),
    )
    server = CloudServer(
        engine,
        ServerOptions(
            host=args.host,
            port=args.port,
            max_queue=args.max_queue,
            max_batch=args.max_batch,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            grace_s=args.grace,
        ),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    endpoint = server.start()
    stderr_console().print(
        f"serving {artifact.manifest.get('model', '?')} ({artifact.model_hash[:12]}) on "
        f"{endpoint} with the {engine.target} cloud library, {args.workers} worker(s)"
        f"{', token required' if token else ''}",
        highlight=False,
    )
    print(endpoint, flush=True)
    stop.wait()
    server.stop()
    stderr_console().print("stopped", highlight=False)
    return 0


def _live_option(value: str) -> tuple[str, str, int] | None:
    if value == "none":
        return None
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and not parts[2].isdigit()):
        raise InputError(f"--live takes MODEL:SET[:N] (e.g. resnet20:lte:1) or none, got {value!r}")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 0


def _evaluate(args: argparse.Namespace) -> int:
    from dyno_compile.evaluate.report import run_evaluation

    console = stderr_console()
    out = Path(args.out)
    results = run_evaluation(
        out,
        models=[m for m in args.models.split(",") if m],
        devices=[d for d in args.devices.split(",") if d],
        sets=[s for s in args.sets.split(",") if s],
        traces_per_set=args.traces_per_set,
        requests=args.requests,
        minutes=args.minutes,
        cache=Path(args.cache) if args.cache else None,
        live=_live_option(args.live),
        progress=lambda m: console.print(str(m), highlight=False),
    )
    console.print(f"report: {out / 'report.md'} ({results['seconds'] / 60:.1f} min)", highlight=False)
    for device, h in results["headline"]["devices"].items():
        best = h["best"]
        console.print(
            f"  {device}: throughput vs device-only {best['throughput_vs_device_only']:.1f}x, vs Neurosurgeon "
            f"{best['throughput_vs_neurosurgeon']:.1f}x; {len(h['below_contained'])} of {h['cells']} cells below "
            f"a contained baseline; {len(h['onloading_missed'])} of {h['onloading_runs']} onloading runs below "
            "the SLO target",
            highlight=False,
        )
    return 0


def _board_parser(sub) -> None:
    """``board setup|start|stop|status|check``: the emulated aarch64 board (dyno_compile.board)."""
    board = sub.add_parser(
        "board", help="an emulated aarch64 board (QEMU) to check the ARM library on: setup, start, check, stop"
    )
    actions = board.add_subparsers(required=True, metavar="ACTION")
    actions.add_parser(
        "setup", help="install QEMU and an aarch64 userland with the device's packages (once; needs root for apt)"
    ).set_defaults(run=_board_setup)
    start = actions.add_parser("start", help="start a loopback RPC tracker and the emulated RPC server")
    start.add_argument(
        "--key",
        default=board_server.DEFAULT_KEY,
        help=f"the server's key at the tracker (default {board_server.DEFAULT_KEY}; must start with "
        f"{board_server.EMULATED_KEY_PREFIX!r})",
    )
    start.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="seconds to wait for the server (default 120)"
    )
    start.set_defaults(run=_board_start)
    actions.add_parser("stop", help="stop the emulated board").set_defaults(run=_board_stop)
    actions.add_parser("status", help="say whether the board runs (exit 1 when not)").set_defaults(run=_board_status)
    check = actions.add_parser(
        "check", help="run every function of an artifact's ARM library on the board against the host library"
    )
    check.add_argument("artifact", metavar="ARTIFACT", help="artifact directory or archive (with arm64 and host)")
    images = inspect.signature(check_artifact).parameters["images"].default
    check.add_argument(
        "--images", type=int, default=images, metavar="N", help=f"real calibration images to run (default {images})"
    )
    check.add_argument("--target", default="arm64", help="the device target to check (default arm64)")
    check.add_argument("--rpc-tracker", metavar="HOST:PORT", help="another board's tracker (default: the running one)")
    check.add_argument("--rpc-key", metavar="KEY", help="that board's key at the tracker")
    check.set_defaults(run=_board_check)


def _board_setup(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    with ProgressDisplay("checking the emulated board") as progress:
        sysroot = board_sysroot.setup(progress=progress)
    print(f"board ready: {sysroot.root} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


def _board_start(args: argparse.Namespace) -> int:
    with ProgressDisplay("starting the emulated board") as progress:
        state = board_server.start(key=args.key, timeout=args.timeout, progress=progress)
    print(f"board running: {state}", flush=True)
    return 0


def _board_stop(args: argparse.Namespace) -> int:
    print("board stopped" if board_server.stop() else "no board was running", flush=True)
    return 0


def _board_status(args: argparse.Namespace) -> int:
    state = board_server.status()
    print(f"board running: {state}" if state else f"no board running ({board_server.START_HINT} starts one)")
    return 0 if state else 1


def _board_check(args: argparse.Namespace) -> int:
    """Exit 0 when every function agrees, 1 on any difference (2, from main, on an error)."""
    if (args.rpc_tracker is None) != (args.rpc_key is None):
        raise InputError("--rpc-tracker and --rpc-key go together")
    if args.rpc_tracker is None:
        state = board_server.status()
        if state is None:
            raise board_sysroot.BoardError(f"no board running: run {board_server.START_HINT} (or give --rpc-tracker)")
        tracker, key = state.tracker, state.key
    else:
        tracker, key = args.rpc_tracker, args.rpc_key
    with ProgressDisplay(f"checking {args.artifact} on {key}@{tracker}") as progress:
        report = check_artifact(
            args.artifact, tracker=tracker, key=key, target=args.target, images=args.images, progress=progress
        )
    console = _stdout_console()
    console.print(report.table())
    console.print(report.summary(), highlight=False, markup=False)
    return 0 if report.ok else 1


# --- rate-accuracy (issue 18 item 2) ----------------------------------------------------------


def _rate_accuracy_parser(sub) -> None:
    r = sub.add_parser(
        "rate-accuracy",
        help="bytes per image against top-1 on real images: our cut configurations, image codecs, float32 and "
        "JALAD; a PNG per model, a Markdown table and a JSON of every point",
    )
    r.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="resnet20, resnet56, squeezenet, efficientnet_lite2 (default: all four)",
    )
    r.add_argument("--out", default="docs/rate-accuracy", help="output folder (default docs/rate-accuracy)")
    r.add_argument("--limit", type=int, metavar="N", help="the first N images only (the table says how many)")
    r.add_argument(
        "--quick",
        action="store_true",
        help="a small sweep for a check: widths 2,4,8 per tensor, stream layout, the last 2 cuts, JPEG and WebP "
        "at 3 qualities, 16 images' frames",
    )
    r.add_argument("--cuts", default="model", help="model (its default), candidates, frontier or spread")
    r.add_argument("--max-cuts", type=int, metavar="K", help="keep only the last K cuts of the selection")
    r.add_argument("--widths", help="comma-separated code widths 1-16 and float16 (default 1-6,8,float16)")
    r.add_argument(
        "--image-codec",
        action="append",
        metavar="NAME=Q,Q",
        help="image codec and qualities, repeatable (replaces the default set; NAME=none drops it)",
    )
    r.add_argument("--thresholds", default="0.5,1,2", help="top-1 losses in points (default 0.5,1,2)")
    r.add_argument("--byte-images", type=int, metavar="N", help="images whose frames are encoded (default 64)")
    r.add_argument(
        "--fresh", action="store_true", help="drop the other models' results already in --out (default: keep them)"
    )
    r.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rewrite the table and redraw the figures from the JSON already in --out",
    )
    r.set_defaults(run=_rate_accuracy)


def _rate_accuracy_sweep(args: argparse.Namespace, model: str):
    """The model's default sweep with the command line's changes."""
    from dyno_compile.evaluate.rate_accuracy import QUICK, default_sweep

    sweep = replace(default_sweep(model), **(QUICK if args.quick else {}))
    changes: dict[str, Any] = {"cuts": args.cuts, "limit": args.limit}
    if args.max_cuts is not None:
        changes["max_cuts"] = args.max_cuts
    if args.widths:
        changes["widths"] = tuple(w.strip() for w in args.widths.split(",") if w.strip())
    if args.byte_images is not None:
        changes["byte_images"] = args.byte_images
    try:
        changes["thresholds"] = tuple(float(t) for t in args.thresholds.split(","))
    except ValueError:
        raise InputError(f"--thresholds must be comma-separated numbers of points, got {args.thresholds!r}") from None
    if args.image_codec:
        codecs: dict[str, tuple[int, ...]] = {}
        for item in args.image_codec:
            name, _, qualities = item.partition("=")
            if qualities.strip() == "none":
                continue
            try:
                codecs[name.strip()] = tuple(int(q) for q in qualities.split(","))
            except ValueError:
                raise InputError(f"--image-codec wants NAME=Q,Q,... with integer qualities, got {item!r}") from None
        changes["image_codecs"] = codecs
    return replace(sweep, **changes).checked()


def _rate_accuracy(args: argparse.Namespace) -> int:
    from dyno_compile.evaluate.rate_accuracy import check_models, measure_model
    from dyno_compile.evaluate.rate_plots import plot_model
    from dyno_compile.evaluate.rate_report import merged, must_show, read_results, write_results

    if args.render_only:
        stored = read_results(args.out)
        if not stored:
            raise InputError(f"--render-only: no rate_accuracy.json in {args.out} to render")
        for result in stored:
            plot_model(result, Path(args.out) / f"{result.model}.png")
        print(write_results(stored, args.out)["markdown"])
        return 0
    models = check_models(args.models)
    sweeps = {m: _rate_accuracy_sweep(args, m) for m in models}  # every flag checked before any work
    if not args.fresh:
        read_results(args.out)  # an unreadable result file fails now, not after the measuring
    stderr = stderr_console()
    given = sys.argv[1:] if sys.argv[1:2] == ["rate-accuracy"] else ["rate-accuracy", *models]
    results = []
    for model in models:
        result = measure_model(model, sweeps[model], log=lambda msg: stderr.print(msg, markup=False))
        result.command = "python -m dyno_compile " + " ".join(given)
        results.append(result)
        # Read again at each write: another run may have added a model to --out meanwhile.
        kept = [] if args.fresh else read_results(args.out)
        paths = write_results(merged(kept, results), args.out)
        plot_model(result, Path(args.out) / f"{model}.png")
        m = must_show(result)
        stderr.print(
            f"{model}: {result.seconds['total']:.0f} s; at <= 1 point ours "
            f"{m.ours.bytes if m.ours else float('nan'):.0f} B, best image codec "
            f"{m.image.bytes if m.image else float('nan'):.0f} B, float32 at our cut "
            f"{m.float32.bytes if m.float32 else float('nan'):.0f} B",
            markup=False,
        )
    print(paths["markdown"])
    return 0
