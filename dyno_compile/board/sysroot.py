"""An aarch64 Linux userland on this x86-64 machine, run by QEMU user-mode emulation.

The project's device libraries are built for 64-bit ARM, and no ARM board is at hand in
CI or on a developer's machine. QEMU's user-mode emulator runs an aarch64 Python from an
unpacked Debian userland (a *sysroot*: no chroot, no binfmt, no kernel features), with
the aarch64 wheels of the lean device install (``requirements-device.txt``) in it, so
TVM's RPC server and the project's device side run on real ARM code. It answers whether
the ARM code computes the right thing; its times are emulation's, never a board's.

:func:`setup` builds it once (system packages, the Debian userland, the wheels, a
launcher) into a temporary folder that is renamed into place only when complete, and
records a stamp of what went in, so a second call does nothing and a changed requirements
file rebuilds it. :func:`require` returns the ready sysroot or says how to make one.
Measured facts behind each step: ``../shared/docs/arm64-emulation-notes.md``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dyno_compile
from dyno_compile.errors import DynoError
from dyno_compile.progress import Progress, silent

#: The checkout the emulated Python imports the project from (it runs from source).
CHECKOUT = Path(dyno_compile.__file__).resolve().parents[1]
REQUIREMENTS = CHECKOUT / "requirements-device.txt"
PYPROJECT = CHECKOUT / "pyproject.toml"

#: Debian release of the userland: its Python is the one the aarch64 wheels are chosen for.
SUITE = "bookworm"
PYTHON = "3.11"
#: The userland's glibc (bookworm: 2.36): wheels for any manylinux up to it run there. pip
#: given one ``--platform`` takes only that tag, so every compatible one is listed.
GLIBC_MINOR = 36
PLATFORMS = (*(f"manylinux_2_{m}_aarch64" for m in range(GLIBC_MINOR, 16, -1)), "manylinux2014_aarch64")
#: Debian packages of the userland: the interpreter and the C++ runtime TVM links against.
DEBIAN_PACKAGES = (f"python{PYTHON}", "libstdc++6", "libgcc-s1")
#: What TVM's RPC server needs on the board beyond the device install, as measured by
#: running it emulated: cloudpickle to start its worker (a ModuleNotFoundError without
#: it), psutil to end a timed-out session's children. The tracker (tornado) runs on the
#: host. Their version constraints are pyproject.toml's.
RPC_SERVER_PACKAGES = ("cloudpickle", "psutil")
#: Host tools and the Debian packages that provide them.
HOST_TOOLS = {"qemu-aarch64-static": "qemu-user-static", "mmdebstrap": "mmdebstrap"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_LOCK_WAIT_S = 600

SETUP_HINT = "python -m dyno_compile board setup"
#: Where a started board records itself (dyno_compile.board.server); setup will not
#: rebuild a sysroot a board may be running from.
STATE_FILE = "state.json"
_STAMP = ".dyno-board.json"
#: Output that means the network, not the request, failed (apt, mmdebstrap, pip).
_NETWORK = re.compile(
    r"Temporary failure|Could not resolve|Failed to fetch|Network is unreachable|Connection refused|"
    r"NewConnectionError|Max retries exceeded|timed out|Name or service not known|No route to host",
    re.IGNORECASE,
)


class BoardError(DynoError):
    """The emulated board cannot be set up, started or used; the message says what to do."""


def board_home() -> Path:
    """Where the board lives: ``$DYNO_BOARD_HOME``, else ``~/.cache/dyno-compile/board``."""
    return Path(os.environ.get("DYNO_BOARD_HOME") or Path.home() / ".cache" / "dyno-compile" / "board")


@dataclass(frozen=True)
class Sysroot:
    """A ready aarch64 userland: ``root`` is the unpacked Debian tree, ``python`` the
    launcher that runs its Python under QEMU."""

    home: Path
    root: Path
    python: Path

    def command(self, *args: str) -> list[str]:
        """The argv that runs the emulated Python with ``args``."""
        return [str(self.python), *args]

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for the emulated Python: the project imported from the checkout,
        TVM's runtime library only (what a board loads), nothing of the host's Python
        setup (its paths and preloads are x86 code), plus ``extra``."""
        host_only = ("LD_PRELOAD", "LD_LIBRARY_PATH", "VIRTUAL_ENV")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k not in host_only}
        return {**env, "PYTHONPATH": str(CHECKOUT), "TVM_USE_RUNTIME_LIB": "1", **extra}


def _sysroot(home: Path) -> Sysroot:
    root = home / "sysroot"
    return Sysroot(home=home, root=root, python=root / "usr" / "bin" / "python3-qemu")


def require(home: Path | None = None) -> Sysroot:
    """The ready sysroot under ``home``; a :class:`BoardError` saying how to make it otherwise."""
    home = home or board_home()
    sysroot = _sysroot(home)
    stamp = _read_stamp(sysroot.root)
    if stamp is None or not sysroot.python.is_file():
        raise BoardError(f"no board set up in {home}: run {SETUP_HINT}")
    if stamp.get("key") != _stamp_key(_qemu_path() or ""):
        raise BoardError(
            f"the board in {home} was set up for other requirements or tools "
            f"({REQUIREMENTS.name} changed, or QEMU moved): run {SETUP_HINT}"
        )
    return sysroot


def setup(home: Path | None = None, *, progress: Progress = silent) -> Sysroot:
    """Make the board ready under ``home`` (default :func:`board_home`); does nothing when it
    already is. Needs Linux x86-64, and root where QEMU or mmdebstrap must be installed."""
    home = home or board_home()
    _check_platform()
    home.mkdir(parents=True, exist_ok=True)
    with locked(home):
        try:
            return require(home)
        except BoardError:
            pass
        if (home / STATE_FILE).exists():
            raise BoardError(
                f"the board in {home} must be rebuilt but may be running: stop it first "
                f"(python -m dyno_compile board stop), then {SETUP_HINT}"
            )
        _install_host_tools(progress)
        _build(home, progress)
        return require(home)


@contextmanager
def locked(home: Path) -> Iterator[None]:
    """One setup, start or stop at a time per home (a second waits for the first)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_platform() -> None:
    system, machine = platform.system(), platform.machine()
    if system != "Linux" or machine not in ("x86_64", "AMD64"):
        raise BoardError(
            f"the emulated board needs Linux on x86-64 (this is {system} {machine}); on an ARM "
            "board, run python -m tvm.exec.rpc_server there instead"
        )


def _qemu_path() -> str | None:
    return shutil.which("qemu-aarch64-static")


def _install_host_tools(progress: Progress) -> None:
    """QEMU and mmdebstrap from the host's package manager, where missing."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    install = ["install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise BoardError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed and installing needs "
            f"root: run `apt-get update && apt-get {' '.join(install)}` as root, then {SETUP_HINT}"
        )
    if shutil.which("apt-get") is None:
        raise BoardError(f"no apt-get here to install {' and '.join(missing)}: install them, then {SETUP_HINT}")
    progress(f"installing {', '.join(missing)} (apt-get)")
    apt = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"]  # another apt-get may hold the lock a while
    _run([*apt, "update"], "apt-get update", "Debian's archive")
    _run([*apt, *install], f"apt-get install {' '.join(missing)}", "Debian's archive")
    for tool, pkg in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            raise BoardError(f"{pkg} installed but {tool} is not on PATH: check the package, then {SETUP_HINT}")


def _build(home: Path, progress: Progress) -> None:
    """Build the sysroot in a hidden folder beside its place and rename it there when done,
    so a failure or interruption never leaves a half-built sysroot where a ready one goes."""
    for stale in home.glob(".building-*"):  # an interrupted setup's leftovers (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=home))
    try:
        root = work / "sysroot"
        mirror = debian_mirror()
        progress(f"unpacking the aarch64 Debian userland ({SUITE}, {mirror})")
        mode = "root" if os.geteuid() == 0 else "chrootless"
        _run(
            [
                "mmdebstrap",
                f"--mode={mode}",
                "--variant=extract",
                "--architectures=arm64",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                SUITE,
                str(root),
                mirror,
            ],
            "mmdebstrap (the aarch64 userland)",
            mirror,
        )
        progress("installing the aarch64 wheels of requirements-device.txt and the RPC server's")
        site = root / "usr" / "lib" / "python3" / "dist-packages"
        _run(_pip_install(site), "pip install (the aarch64 wheels)", "the package index")
        qemu = _qemu_path()
        if qemu is None:
            raise BoardError(f"qemu-aarch64-static is not on PATH: install qemu-user-static, then {SETUP_HINT}")
        launcher = root / "usr" / "bin" / "python3-qemu"
        launcher.write_text(_launcher(qemu))
        launcher.chmod(0o755)
        progress("checking the emulated Python")
        _verify(_sysroot(work))
        (root / _STAMP).write_text(
            json.dumps(
                {
                    "key": _stamp_key(qemu),
                    "requirements": wheel_requirements(),
                    "packages": _installed(site),
                    "mirror": mirror,
                    "seconds": round(time.monotonic() - t0, 1),
                },
                indent=1,
            )
        )
        old = home / "sysroot"
        if old.exists():
            old.rename(work / "old")
        root.rename(home / "sysroot")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _launcher(qemu: str) -> str:
    """A shell script that runs the userland's Python under QEMU. ``-0`` makes its own path
    ``sys.executable``, so the workers TVM's RPC server spawns run emulated too; the
    userland is found from the script's place, so the folder can be renamed."""
    return (
        "#!/bin/sh\n"
        "# The aarch64 Python of this userland under QEMU user-mode emulation (dyno_compile.board).\n"
        'root=$(cd "$(dirname "$0")/../.." && pwd)\n'
        f'exec {qemu} -L "$root" -0 "$root/usr/bin/python3-qemu" "$root/usr/bin/python{PYTHON}" "$@"\n'
    )


def _verify(sysroot: Sysroot) -> None:
    """The emulated Python runs as aarch64 and imports what the RPC server needs."""
    imports = ", ".join(("tvm.exec.rpc_server", "numpy", *RPC_SERVER_PACKAGES))
    script = f"import platform, {imports}; print(platform.machine())"
    proc = subprocess.run(sysroot.command("-c", script), env=sysroot.env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or proc.stdout.strip() != "aarch64":
        raise BoardError(
            f"the emulated Python does not start or import TVM's RPC server: {_last_line(proc.stderr + proc.stdout)}"
        )


def _pip_install(target: Path) -> list[str]:
    """Host pip installing the aarch64 wheels into ``target`` (no code is built or run)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        *platforms,
        "--python-version",
        PYTHON,
        "--implementation",
        "cp",
        "--abi",
        f"cp{PYTHON.replace('.', '')}",
        "--target",
        str(target),
        *wheel_requirements(),
    ]


def device_requirements() -> list[str]:
    """The requirement lines of ``requirements-device.txt`` (the lean device install)."""
    try:
        text = REQUIREMENTS.read_text()
    except OSError:
        raise BoardError(f"{REQUIREMENTS} is missing: the board is set up from a source checkout") from None
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def wheel_requirements() -> list[str]:
    """Everything installed on the board: the device install and the RPC server's packages,
    each with the constraint pyproject.toml gives it."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    named = {_name(spec): spec for spec in dependencies}
    return [*device_requirements(), *(named.get(name, name) for name in RPC_SERVER_PACKAGES)]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].strip().lower().replace("_", "-")


def _stamp_key(qemu: str) -> str:
    """A hash of everything the sysroot is built from: a different one means rebuild."""
    inputs = [SUITE, *DEBIAN_PACKAGES, *PLATFORMS, *wheel_requirements(), _launcher(qemu)]
    return hashlib.sha256("\n".join(inputs).encode()).hexdigest()


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / _STAMP).read_text())
    except (OSError, ValueError):
        return None


def _installed(site: Path) -> dict[str, str]:
    """Distribution -> version, from the ``*.dist-info`` folders pip wrote."""
    found = (p.name[: -len(".dist-info")].rsplit("-", 1) for p in site.glob("*.dist-info"))
    return dict(sorted((name, version) for name, version in found))


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 ``.sources`` or one-line
    ``sources.list``), so the userland comes from where the host's packages do; Debian's
    own redirector where the host uses none (another distribution)."""
    apt = Path("/etc/apt")
    uris: list[str] = []
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in _read(path).split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
            )
            if "deb" in fields.get("Types", "").split():
                uris += fields.get("URIs", "").split()
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        for line in _read(path).splitlines():
            words = [w for w in re.sub(r"\[[^]]*\]", "", line).split() if w]
            if len(words) >= 2 and words[0] == "deb":
                uris.append(words[1])
    return next((u.rstrip("/") for u in uris if u.rstrip("/").endswith("/debian")), DEFAULT_MIRROR)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _run(cmd: list[str], what: str, source: str, timeout: float = 1200) -> None:
    """Run one setup step; a failure is one line saying which step, and whether the network
    (``source`` unreachable) is the cause."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BoardError(f"{what} took over {timeout:g} s: is {source} reachable? Then rerun {SETUP_HINT}") from None
    if proc.returncode == 0:
        return
    output = proc.stderr + proc.stdout
    if _NETWORK.search(output):
        raise BoardError(
            f"{what} failed: no network access to {source} ({_last_line(output, _NETWORK)}); "
            f"connect this machine, then rerun {SETUP_HINT}"
        )
    raise BoardError(f"{what} failed (exit {proc.returncode}): {_last_line(output)}")


def _last_line(output: str, pattern: re.Pattern[str] | None = None) -> str:
    """The last non-empty line of ``output`` (matching ``pattern`` if given), trimmed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if pattern is not None:
        lines = [line for line in lines if pattern.search(line)] or lines
    return (lines[-1] if lines else "no output")[:300]
