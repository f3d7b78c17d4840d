"""ARM code quality without ARM hardware: instructions per inference of our arm64 device
library and of ONNX Runtime's aarch64 build, counted under QEMU, with the instruction mix.

Emulated *times* mean nothing (QEMU is about 400x slower than the host and not in any
fixed ratio to a board), but the instructions a program executes do not depend on the
emulator: QEMU's TCG plugins count every guest instruction. Both engines run the same
model on the same input in the same emulated aarch64 Python, one thread each, on QEMU's
Cortex-A76 model (the ``arm64`` target's board):

``ours``  the model's artifact (``build MODEL --device arm64``, cached per source tree):
          every device segment in order (the device-only cut) from the arm64 library,
          through the lean device path (``load_artifact``, ``ModuleRunner``, TVM's
          runtime-only library), as a board runs it;
``ORT``   ONNX Runtime (the host's version, aarch64 wheel), CPU provider, one intra-op
          thread, all graph optimisations, on the artifact's own graph exported to ONNX
          (``benchmarks/onnx_export.py``, as ``tvm_vs_ort.py`` does).

Each engine runs twice: one warm-up inference then 0 more, and one warm-up then ``N``
more (``--inferences``, default 1); the difference over ``N`` is instructions *per
inference*, free of process start, imports, loading and first-run planning. Outputs are
checked against the host device library's. The mix comes from a second plugin
(``arm_mix_plugin.c``) counting each instruction by form: vector floating point (``fmla
v.4s``: NEON lanes doing model arithmetic), scalar floating point, SIMD&FP loads/stores
(vector ``q`` or scalar ``s``/``d``), the rest; and, for ours, which library function
executed how much (``--hot``). Tools (QEMU plugins from Debian's source package, ONNX
Runtime's wheel) are made once: :mod:`arm_tools`. The aarch64 userland is the emulated
board's (``python -m dyno_compile board setup``).

    .venv/bin/python benchmarks/arm_instructions.py                     # resnet20 mobilenet_v2 resnet18
    .venv/bin/python benchmarks/arm_instructions.py --models resnet20 --json before.json
    .venv/bin/python benchmarks/arm_instructions.py --models resnet20 --baseline before.json

Instructions are not time: a load that misses cache and an FMA count one each, and a
board's pipelines overlap them differently.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arm_tools import CACHE, ToolError, Tools, emulation_prefix, ensure_ort, ensure_tools
from bench_process import run_main

MODELS = ("resnet20", "mobilenet_v2", "resnet18")
CHECKOUT = Path(__file__).resolve().parents[1]
INFER = Path(__file__).resolve().parent / "arm_infer.py"
LABEL = "instructions, emulated (QEMU TCG plugin), not a time"
#: Relative error (max abs difference / max abs reference) above which an engine's
#: emulated output is wrong, not rounded differently.
MAX_REL_ERROR = 1e-4
#: Classes of the mix, in table order.
CLASSES = ("vector fp", "scalar fp", "vector ld/st", "scalar fp ld/st", "other")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), help="zoo models (default: %(default)s)")
    p.add_argument("--inferences", type=int, default=1, help="inferences counted after the warm-up (default 1)")
    p.add_argument("--cpu", default="cortex-a76", help="QEMU CPU model (default: %(default)s)")
    p.add_argument("--hot", type=int, default=6, help="our library's busiest functions shown per model (0: none)")
    p.add_argument("--json", type=Path, help="write the counts to this file")
    p.add_argument("--baseline", type=Path, help="a --json file of an earlier run: show before and after")
    p.add_argument("--cache", type=Path, default=CACHE, help="tools and artifacts (default: %(default)s)")
    p.add_argument("--keep", type=Path, help="keep the plugin logs and outputs in this directory")
    return p.parse_args()


@dataclass
class Count:
    """One emulated run: total instructions (insn.c), instructions by form and per
    address of our library (arm_mix_plugin.c), the output, and where libraries lay."""

    total: int
    mix: Counter = field(default_factory=Counter)
    pcs: list[tuple[int, int, str]] = field(default_factory=list)
    maps: str = ""
    seconds: float = 0.0


def _source_hash() -> str:
    """Identity of the compiler that builds the artifact: every source file of the package."""
    digest = hashlib.sha256()
    for path in sorted((CHECKOUT / "dyno_compile").rglob("*.py")):
        digest.update(path.relative_to(CHECKOUT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def prepare_model(name: str, cache: Path) -> tuple[Path, Path, Path, Any]:
    """``(artifact, onnx, input.npy, reference output)`` for model ``name``: the artifact
    built for arm64 (cached per source tree), its graph as ONNX, the zoo's seeded input and
    the host device library's output for it."""
    import numpy as np

    from dyno_compile import zoo
    from dyno_compile.artifact.load import load_artifact, run_segments

    root = cache / "artifacts" / f"{name}-{_source_hash()}"
    if not (root / "manifest.json").is_file():
        print(f"{name}: building the artifact (arm64 device) in {root} ...", flush=True)
        cmd = [sys.executable, "-m", "dyno_compile", "build", name, "--device", "arm64", "--cloud", "host"]
        cmd += ["--bits", "float32", "--cloud-batch", "1", "--no-search", "--overwrite", "--out", str(root)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ToolError(f"building {name} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    onnx_path, input_path = root.with_suffix(".onnx"), root.with_suffix(".input.npy")
    artifact = load_artifact(root)
    if not onnx_path.is_file():
        from onnx_export import export_onnx

        export_onnx(artifact.graph, onnx_path)
    x = np.asarray(zoo.get_model(name).random_input(0), np.float32)
    np.save(input_path, x)
    env = {artifact.manifest["inputs"][0]["name"]: x}
    cut = next(c for c in artifact.cuts if c["kind"] == "device-only")
    run_segments(artifact, artifact.runner("device", "host").run, cut["device_segments"], env)
    return root, onnx_path, input_path, np.asarray(env[artifact.manifest["outputs"][0]["name"]])


def _read_log(path: Path) -> Count:
    count = Count(total=-1)
    for line in path.read_text().splitlines():
        if line.startswith("insns: "):
            count.total = int(line.split()[1])
        elif line.startswith("mix "):
            _, n, key = line.split(" ", 2)
            count.mix[key] += int(n)
        elif line.startswith("pc "):
            _, pc, n, key = line.split(" ", 3)
            count.pcs.append((int(pc, 16), int(n), key))
    if count.total < 0:
        raise ToolError(f"{path}: the instruction counter printed no total")
    return count


def emulate(
    tools: Tools, prefix: Path, env: dict[str, str], argv: list[str], work: Path, tag: str, cpu: str
) -> tuple[Count, Path]:
    """Run ``arm_infer.py argv`` (its output path appended) in the emulated Python with both
    plugins; the counts and the output file."""
    log, out = work / f"{tag}.log", work / f"{tag}.npy"
    # address randomisation off (setarch -R): the guest's addresses, and what ONNX Runtime's
    # allocator and kernels do with them, repeat from run to run
    norandom = ["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []
    cmd = [*norandom, tools.qemu, "-cpu", cpu, "-L", str(prefix)]
    cmd += ["-plugin", f"{tools.insn_plugin},inline=on", "-plugin", f"{tools.mix_plugin},pc=on,min=1000"]
    cmd += ["-d", "plugin", "-D", str(log), str(prefix / "usr" / "bin" / "python3.11"), str(INFER), *argv, str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolError(f"emulated {tag} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    count = _read_log(log)
    count.seconds = time.perf_counter() - t0
    count.maps = Path(f"{out}.maps").read_text()
    return count, out


def classify(key: str) -> tuple[str, int]:
    """``(class, lanes)`` of an instruction form ``"mnemonic kind"`` (arm_mix_plugin.c):
    lanes are the floating-point values one instruction computes (4 for ``fmla v.4s``)."""
    mnemonic, _, kind = key.partition(" ")
    vector = kind.startswith(".")
    memory = mnemonic.startswith(("ld", "st")) and mnemonic not in ("ldadd", "stadd")
    if memory and (vector or kind == "q"):
        return "vector ld/st", 0
    if memory and kind in ("s", "d", "h", "b"):
        return "scalar fp ld/st", 0
    if mnemonic.startswith("f") and not memory:
        if vector:
            lanes = int("".join(ch for ch in kind if ch.isdigit()) or 1)
            return "vector fp", lanes
        if kind in ("s", "d", "h"):
            return "scalar fp", 1
    return "other", 0


def mix_summary(mix: Counter) -> dict[str, float]:
    """Shares of the classes, fp lanes per fp arithmetic instruction, fmla/fmul count."""
    total = sum(mix.values()) or 1
    shares: Counter = Counter()
    fp_ops = fp_lanes = 0
    for key, n in mix.items():
        cls, lanes = classify(key)
        shares[cls] += n
        if cls in ("vector fp", "scalar fp"):
            fp_ops += n
            fp_lanes += n * lanes
    out = {cls: shares[cls] / total for cls in CLASSES}
    out["fp lanes/op"] = fp_lanes / fp_ops if fp_ops else 0.0
    out["fmla .4s"] = float(mix.get("fmla .4s", 0))
    return out


def _library_functions(tools: Tools, library: Path, maps: str) -> tuple[int, range, list[tuple[int, str]]]:
    """``(load address, executable address range, [(start, name)...])`` of ``library`` in a
    run's memory map, symbols sorted: nm's sizes of TVM's local ``*_compute_`` closures are
    short, so an address belongs to the last symbol at or below it."""
    mine = [line.split() for line in maps.splitlines() if line.endswith(str(library))]
    base = next((int(f[0].split("-")[0], 16) for f in mine if f[2] == "00000000"), None)
    text = [range(*(int(a, 16) for a in f[0].split("-"))) for f in mine if f[1].startswith("r-x")]
    if base is None or len(text) != 1:
        raise ToolError(f"{library} is not in the emulated process's memory map")
    nm = subprocess.run([tools.nm, "--defined-only", str(library)], capture_output=True, text=True)
    syms = []
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "Tt":
            syms.append((base + int(parts[0], 16), parts[2]))
    return base, text[0], sorted(syms)


def hot_functions(tools: Tools, library: Path, count: Count, inferences: int) -> list[dict[str, Any]]:
    """Instructions per inference in each function of our library, busiest first, with each
    one's mix (from the per-address counts of a run with ``inferences`` + the warm-up)."""
    import bisect

    _, text, syms = _library_functions(tools, library, count.maps)
    starts = [s for s, _ in syms]
    per: dict[str, Counter] = {}
    for pc, n, key in count.pcs:
        i = bisect.bisect_right(starts, pc) - 1
        if pc in text and i >= 0:
            per.setdefault(syms[i][1], Counter())[key] += n
    runs = inferences + 1
    rows = [
        {"function": name, "instructions": sum(mix.values()) / runs, **mix_summary(mix)} for name, mix in per.items()
    ]
    return sorted(rows, key=lambda r: -r["instructions"])


def _compile_bytecode(*trees: Path) -> None:
    """Byte-compile the Python the emulated runs import, here (the host's Python is the
    same 3.11: the same ``.pyc``), so that no run compiles, or writes, what another reads:
    the first run would otherwise pay for every module's compilation."""
    import compileall

    for tree in trees:
        if not compileall.compile_dir(str(tree), quiet=2, workers=1):
            raise ToolError(f"byte-compiling {tree} failed")


def measure(args: argparse.Namespace, tools: Tools, prefix: Path, ort_dir: Path, sysroot: Any) -> list[dict]:
    import numpy as np

    from dyno_compile.board.check import rel_error

    _compile_bytecode(CHECKOUT / "dyno_compile", sysroot.root / "usr" / "lib" / "python3" / "dist-packages", ort_dir)
    results = []
    for name in args.models:
        artifact, onnx_path, input_path, reference = prepare_model(name, args.cache)
        library = artifact / "device" / "arm64.so"
        row: dict[str, Any] = {"model": name, "artifact": str(artifact)}
        for engine, model_path, extra in (("ours", artifact, ""), ("ort", onnx_path, str(ort_dir))):
            env = sysroot.env(TVM_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
            if extra:
                env["PYTHONPATH"] = f"{env['PYTHONPATH']}{os.pathsep}{extra}"
            work = args.keep or Path(tempfile.mkdtemp(prefix="arm-instructions-"))
            work.mkdir(parents=True, exist_ok=True)
            runs = {}
            for n in (0, args.inferences):
                tag = f"{name}-{engine}-{n}"
                argv = ["tvm" if engine == "ours" else "ort", str(model_path), str(input_path), str(n)]
                runs[n], out = emulate(tools, prefix, env, argv, work, tag, args.cpu)
                err = rel_error(np.asarray(reference), np.load(out))
                if not err <= MAX_REL_ERROR:
                    raise ToolError(
                        f"{name}: {engine}'s emulated output differs from the host library's (rel {err:.1e})"
                    )
            base, more = runs[0], runs[args.inferences]
            per = (more.total - base.total) / args.inferences
            mix = Counter({k: (more.mix[k] - base.mix[k]) / args.inferences for k in set(more.mix) | set(base.mix)})
            row[engine] = {
                "instructions": per,
                "fixed": base.total,
                "rel_error": err,
                "seconds": base.seconds + more.seconds,
                "mix": mix_summary(mix),
            }
            if engine == "ours":
                hot = hot_functions(tools, library, more, args.inferences)
                row["ours"]["in_library"] = sum(h["instructions"] for h in hot)
                row["ours"]["hot"] = hot[: max(args.hot, 0)]
            print(
                f"{name:13s} {engine:4s} {per / 1e6:9.2f} M instr/inference (fixed {base.total / 1e6:8.0f} M,"
                f" rel err {err:.1e}, {row[engine]['seconds']:.0f} s emulated)",
                flush=True,
            )
        results.append(row)
    return results


def report(results: list[dict], args: argparse.Namespace, tools: Tools, ort_version: str) -> None:
    print(
        f"\n{LABEL}: per inference, batch 1, 1 thread, QEMU -cpu {args.cpu} ({tools.qemu_version}), "
        f"(warm-up + {args.inferences}) minus (warm-up alone), / {args.inferences}; ONNX Runtime {ort_version} aarch64"
    )
    print(f"{'model':13s} {'ours M':>9s} {'ORT M':>9s} {'ORT/ours':>9s} {'ours in kernels':>16s}")
    for r in results:
        ours, ort = r["ours"]["instructions"], r["ort"]["instructions"]
        kern = r["ours"]["in_library"] / ours
        print(f"{r['model']:13s} {ours / 1e6:9.2f} {ort / 1e6:9.2f} {ort / ours:9.2f} {kern:15.0%}")
    print(f"\ninstruction mix per inference (shares of all executed; {LABEL})")
    head = "".join(f"{c:>16s}" for c in CLASSES)
    print(f"{'model':13s} {'engine':6s}{head} {'fp lanes/op':>12s} {'fmla .4s M':>11s}")
    for r in results:
        for engine in ("ours", "ort"):
            m = r[engine]["mix"]
            cells = "".join(f"{m[c]:16.1%}" for c in CLASSES)
            print(f"{r['model']:13s} {engine:6s}{cells} {m['fp lanes/op']:12.2f} {m['fmla .4s'] / 1e6:11.2f}")
    if args.hot:
        print("\nour library's busiest functions (M instr/inference, share of the inference, mix)")
        for r in results:
            for h in r["ours"]["hot"]:
                share = h["instructions"] / r["ours"]["instructions"]
                print(
                    f"{r['model']:13s} {h['function'][:44]:44s} {h['instructions'] / 1e6:8.2f} {share:6.1%}"
                    f"  vector fp {h['vector fp']:5.1%}, scalar fp {h['scalar fp']:5.1%},"
                    f" scalar fp ld/st {h['scalar fp ld/st']:5.1%}, vector ld/st {h['vector ld/st']:5.1%}"
                )
    if args.baseline:
        before = {r["model"]: r for r in json.loads(args.baseline.read_text())["results"]}
        print(f"\nbefore ({args.baseline}) and after, ours, M instr/inference ({LABEL})")
        print(
            f"{'model':13s} {'before':>9s} {'after':>9s} {'after/before':>13s} {'ORT/ours before':>16s} {'after':>7s}"
        )
        for r in results:
            b = before.get(r["model"])
            if b is None:
                continue
            ob, oa = b["ours"]["instructions"], r["ours"]["instructions"]
            ort_b, ort_a = b["ort"]["instructions"], r["ort"]["instructions"]
            print(
                f"{r['model']:13s} {ob / 1e6:9.2f} {oa / 1e6:9.2f} {oa / ob:13.2f} {ort_b / ob:16.2f} {ort_a / oa:7.2f}"
            )


def main() -> int:
    args = _parse()
    if args.inferences < 1:
        sys.exit("--inferences must be at least 1")
    try:
        import onnx  # noqa: F401 - the export needs it
        import onnxruntime
    except ImportError as exc:
        raise ToolError(f"{exc.name} is not installed here: pip install onnx onnxruntime (the baseline)") from None

    from dyno_compile import zoo
    from dyno_compile.board.sysroot import require

    for name in args.models:
        zoo.get_model(name)  # an unknown name fails now, not after the tools are made
    sysroot = require()
    tools = ensure_tools(args.cache)
    ort_version = onnxruntime.__version__
    ort_dir = ensure_ort(ort_version, args.cache)
    prefix = emulation_prefix(sysroot.root, args.cache)
    results = measure(args, tools, prefix, ort_dir, sysroot)
    report(results, args, tools, ort_version)
    if args.json:
        meta = {"cpu": args.cpu, "qemu": tools.qemu_version, "onnxruntime": ort_version, "label": LABEL}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    run_main(main)
