"""The tools ``benchmarks/arm_instructions.py`` counts with, made once and cached: QEMU's
user-mode emulator that loads TCG plugins, two instruction-counting plugins built from
source, ONNX Runtime's aarch64 wheel, and an emulation prefix that makes ONNX Runtime
start under QEMU.

Why each:

* Debian's ``qemu-user`` package has the *dynamic* ``qemu-aarch64``, the one that can load
  plugins (the static one cannot), but no plugin binaries and no ``qemu-plugin.h``; those
  are in QEMU's source package, from Debian's archive (a ``deb-src`` entry is added, a copy
  of this machine's Debian entry, if it has none). ``tests/plugin/insn.c`` from it counts
  instructions; ``arm_mix_plugin.c`` (beside this file) counts them by form, for the mix.
* ONNX Runtime's aarch64 wheel goes into a directory of its own (``--target``, no
  dependencies: NumPy comes from the sysroot), not into the board's packages, so the board
  stays what a device install is.
* ONNX Runtime reads the CPU's description at import (pytorch/cpuinfo: ``/proc/cpuinfo``,
  ``/sys/devices/system/cpu``); under QEMU user mode those are the x86 host's, and it
  crashes (SIGSEGV) on them. QEMU looks up every absolute path under its ``-L`` prefix
  first, so a prefix that links the sysroot's directories and adds one Cortex-A76's
  ``/proc/cpuinfo`` and a one-CPU ``/sys/devices/system/cpu`` gives it an A76 to read (the
  same CPU as ``qemu-aarch64 -cpu cortex-a76`` and the ``arm64`` target's board).

Everything lives under ``cache`` (default ``~/.cache/dyno-compile/arm-instructions``);
installing Debian packages needs root, and a missing piece that cannot be had raises
``ToolError`` with what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from dyno_compile.errors import DynoError

__all__ = ["CACHE", "Tools", "ToolError", "emulation_prefix", "ensure_ort", "ensure_tools"]

CACHE = Path(os.environ.get("DYNO_ARM_TOOLS", Path.home() / ".cache" / "dyno-compile" / "arm-instructions"))
#: Debian packages: the plugin-capable emulator, a C compiler with glib for the plugins,
#: aarch64 binutils (nm, objdump) to map hot addresses to functions and disassemble them.
APT_PACKAGES = {
    "qemu-aarch64": "qemu-user",
    "gcc": "gcc",
    "pkg-config": "pkg-config",
    "aarch64-linux-gnu-objdump": "binutils-aarch64-linux-gnu",
}
#: One Cortex-A76 as Linux describes it (Raspberry Pi 5's core; the features are QEMU's
#: ``cortex-a76`` model's HWCAPs: NEON, fp16 arithmetic, dot product).
A76_CPUINFO = (
    "processor\t: 0\nBogoMIPS\t: 108.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
)
_PLUGIN_SOURCE = Path(__file__).resolve().parent / "arm_mix_plugin.c"
_APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-q", "-y"]


class ToolError(DynoError):
    """A tool the count needs cannot be had here (the message says what to do)."""


@dataclass(frozen=True)
class Tools:
    qemu: str  #: the dynamic qemu-aarch64 (loads plugins)
    insn_plugin: Path  #: QEMU's tests/plugin/insn.c: total instructions
    mix_plugin: Path  #: arm_mix_plugin.c: instructions by form, per address on request
    nm: str
    objdump: str
    qemu_version: str


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise ToolError(f"{what} failed ({' '.join(argv[:4])} ...): {(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc.stdout


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        raise ToolError(f"missing Debian packages {', '.join(packages)}: install them as root (apt-get install ...)")
    _run([*_APT, "update"], "apt-get update")
    _run([*_APT, "install", "--no-install-recommends", *packages], f"apt-get install {' '.join(packages)}")


def _have_glib() -> bool:
    return subprocess.run(["pkg-config", "--exists", "glib-2.0"], capture_output=True).returncode == 0


def _ensure_packages() -> None:
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if shutil.which(tool) is None]
    if shutil.which("pkg-config") is None or not _have_glib():
        missing.append("libglib2.0-dev")
    if missing:
        _apt_install(sorted(set(missing)))


def _deb_src_entry() -> None:
    """Add a ``deb-src`` copy of this machine's Debian entry where apt has none."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    text = "\n".join(p.read_text(errors="replace") for p in sources if p.is_file())
    if re.search(r"^\s*(deb-src\s|Types:.*deb-src)", text, re.M):
        return
    stanza = next(
        (s for s in re.split(r"\n\s*\n", text) if re.search(r"^Types:.*\bdeb\b", s, re.M) and "/debian\n" in s + "\n"),
        None,
    )
    if stanza is None or os.geteuid() != 0:
        raise ToolError(
            "apt has no deb-src entry for Debian's archive: add one (Types: deb-src, this machine's "
            "URIs/Suites/Components) to fetch QEMU's source package"
        )
    src = "\n".join(line for line in stanza.splitlines() if not line.lstrip().startswith("#"))
    Path("/etc/apt/sources.list.d/dyno-deb-src.sources").write_text(
        re.sub(r"^Types:.*$", "Types: deb-src", src, flags=re.M) + "\n"
    )
    _run([*_APT, "update"], "apt-get update")


def _qemu_source(cache: Path) -> Path:
    """QEMU's source tree, as much of it as the plugins need (header and examples)."""
    tree = cache / "qemu-src"
    header = tree / "include" / "qemu" / "qemu-plugin.h"
    if header.is_file() and (tree / "tests" / "plugin" / "insn.c").is_file():
        return tree
    download = cache / "qemu-deb-src"
    download.mkdir(parents=True, exist_ok=True)
    if not list(download.glob("qemu_*.orig.tar.*")):
        _deb_src_entry()
        _run(["apt-get", "source", "--download-only", "qemu"], "apt-get source --download-only qemu", cwd=download)
    archive = next(iter(sorted(download.glob("qemu_*.orig.tar.*"))), None)
    if archive is None:
        raise ToolError(f"apt-get source qemu left no orig tarball in {download}")
    wanted = ("include/qemu/qemu-plugin.h", "tests/plugin/insn.c")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            rel = member.name.split("/", 1)[-1]
            if rel in wanted:
                data = tar.extractfile(member)
                assert data is not None
                (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                (tree / rel).write_bytes(data.read())
    if not header.is_file():
        raise ToolError(f"{archive.name} has no include/qemu/qemu-plugin.h")
    return tree


def _build_plugin(source: Path, out: Path, include: Path) -> Path:
    if out.is_file() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    glib = _run(["pkg-config", "--cflags", "--libs", "glib-2.0"], "pkg-config glib-2.0").split()
    tmp = out.with_suffix(".tmp.so")
    _run(
        ["gcc", "-shared", "-fPIC", "-O2", "-I", str(include), str(source), "-o", str(tmp), *glib], f"gcc {source.name}"
    )
    tmp.replace(out)
    return out


def ensure_tools(cache: Path = CACHE) -> Tools:
    """The emulator, both plugins (built once) and binutils; installs what is missing."""
    cache.mkdir(parents=True, exist_ok=True)
    _ensure_packages()
    tree = _qemu_source(cache)
    include = tree / "include" / "qemu"
    insn = _build_plugin(tree / "tests" / "plugin" / "insn.c", cache / "libinsn.so", include)
    mix = _build_plugin(_PLUGIN_SOURCE, cache / "libarmmix.so", include)
    qemu = shutil.which("qemu-aarch64")
    assert qemu is not None  # _ensure_packages
    version = _run([qemu, "--version"], "qemu-aarch64 --version").splitlines()[0]
    return Tools(qemu, insn, mix, "aarch64-linux-gnu-nm", "aarch64-linux-gnu-objdump", version)


def ensure_ort(version: str, cache: Path = CACHE) -> Path:
    """ONNX Runtime ``version``'s aarch64 wheel, unpacked into a directory of its own (for
    ``PYTHONPATH``), without its dependencies: the sysroot has NumPy."""
    target = cache / f"onnxruntime-{version}-aarch64"
    if (target / "onnxruntime" / "__init__.py").is_file():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    platforms = ["--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64"]
    _run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", *platforms,
         "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--target", str(tmp),
         f"onnxruntime=={version}"],
        f"pip install onnxruntime=={version} (aarch64)",
    )  # fmt: skip
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    return target


def emulation_prefix(sysroot: Path, cache: Path = CACHE) -> Path:
    """A ``-L`` prefix: the sysroot's directories linked, plus one Cortex-A76's
    ``/proc/cpuinfo`` and ``/sys/devices/system/cpu`` (see the module docstring). Only
    ``bin etc lib* sbin usr var`` are linked: ``/tmp``, ``/dev`` and the like stay the host's."""
    prefix = cache / "prefix" / sysroot.resolve().as_posix().strip("/").replace("/", "_")
    (prefix / "proc").mkdir(parents=True, exist_ok=True)
    cpu = prefix / "sys" / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for entry in sysroot.iterdir():
        if entry.name in ("bin", "etc", "sbin", "usr", "var") or entry.name.startswith("lib"):
            link = prefix / entry.name
            if not link.is_symlink() or os.readlink(link) != str(entry.resolve()):
                link.unlink(missing_ok=True)
                link.symlink_to(entry.resolve())
    (prefix / "proc" / "cpuinfo").write_text(A76_CPUINFO)
    for name in ("possible", "present", "online", "kernel_max"):
        (cpu / name).write_text("0\n")
    return prefix
