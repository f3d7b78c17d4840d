"""Print, per cut, the fewest bits that keep top-1 within a budget: DynO's per-cut observation.

    python examples/fewest_bits.py                      # ResNet-20, all 932 CIFAR-10 images
    python examples/fewest_bits.py --limit 200 --budget 0.5

For each candidate cut: where it is (last device node -> first cloud node), the tensor it
sends, and for per-tensor and per-channel ranges the fewest bits within the budget, the
top-1 at that width and the mean bytes of a real wire frame at that width (plain packing,
and bit planes + zstd). Accuracy runs on real weights and real images; bytes are measured
by packing the real activations.
"""

from __future__ import annotations

import argparse

from dyno_compile.configs import Config
from dyno_compile.frontend.resolve import load_model
from dyno_compile.packing import GRANULARITIES
from dyno_compile.passes import run_passes
from dyno_compile.search.accuracy import AccuracySimulator, fewest_bits
from dyno_compile.search.calibration import default_calibration
from dyno_compile.search.wire_bytes import WireBytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="zoo name or .onnx path (default resnet20)")
    parser.add_argument("--limit", type=int, default=None, help="use the first LIMIT calibration images")
    parser.add_argument("--budget", type=float, default=1.0, help="allowed top-1 loss in points (default 1)")
    parser.add_argument("--samples", type=int, default=32, help="frames packed per configuration (default 32)")
    args = parser.parse_args()

    graph = run_passes(load_model(args.model))
    calibration = default_calibration(args.model, graph.inputs[0].shape)
    if args.limit is not None:
        calibration = calibration.head(args.limit)
    simulator = AccuracySimulator(graph, calibration)
    wire = WireBytes(simulator, samples=args.samples)
    tables = {g: fewest_bits(simulator, budget=args.budget, granularity=g) for g in GRANULARITIES}

    print(f"{args.model}: {len(calibration)} images from {calibration.source}")
    print(
        f"float top-1 {simulator.float_accuracy:.2%}; fewest bits within {args.budget:g} point(s); "
        "bytes: mean frame, plain / bit planes + zstd\n"
    )
    print(
        f"{'cut':>4}  {'device -> cloud':44s} {'tensor':16s}"
        + "".join(f" | {g + ' bits':>12s} {'top-1':>7s} {'bytes':>15s}" for g in GRANULARITIES)
    )
    for position in tables["tensor"]:
        cut = simulator.cut(position)
        nodes = f"{cut.after or '(input)'} -> {cut.before}"
        shape = (
            "x".join(str(d) for d in graph.node(cut.tensors[0]).shape)
            if cut.single_tensor
            else f"{len(cut.tensors)} tensors"
        )
        cells = "".join(_cell(simulator, wire, position, g, tables[g][position]) for g in GRANULARITIES)
        print(f"{position:4d}  {nodes:44s} {shape:16s}{cells}")


def _cell(simulator: AccuracySimulator, wire: WireBytes, position: int, granularity: str, bits: int | None) -> str:
    """One granularity's columns: bits, top-1 and both frame sizes at that width."""
    if bits is None:
        return f" | {'none fits':>12s} {'':>7s} {'':>15s}"
    top1 = simulator.evaluate(position, bits, granularity)[0]
    plain = wire.measure(Config(position, str(bits), granularity)).bytes
    packed = wire.measure(Config(position, str(bits), granularity, "bitplane", "zstd")).bytes
    return f" | {bits:>12d} {top1:>7.2%} {plain:>7.0f}/{packed:<7.0f}"


if __name__ == "__main__":
    main()
