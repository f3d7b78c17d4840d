"""Check an artifact's device library on a board: every function, run there on real inputs,
against the host device library run here.

A board library is compiled for another CPU (arm64: NEON, fused multiply-adds, its own
float-to-int conversions) and nothing about building it says that it computes what the
host library computes. Profiling on the board only times it. This check runs it: it
uploads the library over TVM RPC (as :func:`~dyno_compile.search.rpc.profile_library_rpc`
does), feeds real calibration images through the host library's segment chain so that
every segment gets its real input, and runs each segment on both sides; for every cut and
width it packs the real crossing tensor with both libraries' pack kernels (codes and
range rows must be bit-identical: the cloud unpacks whatever the device sends, so a
one-code difference is a wrong answer nobody would see) and builds the frame the device
would send from each with the runtime's own frame code (:meth:`DeviceSide.frame`), which
must be byte-identical. An emulated board (QEMU) makes this possible without ARM hardware:
its times mean nothing, its results are the board's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from dyno_compile.artifact.load import Artifact, load_artifact, run_segments
from dyno_compile.configs import Config
from dyno_compile.errors import DynoError, InputError
from dyno_compile.packing import bits_value
from dyno_compile.progress import Progress, Step, silent
from dyno_compile.runtime.sides import DeviceSide
from dyno_compile.search.calibration import default_calibration
from dyno_compile.search.profile import tvm_message
from dyno_compile.search.rpc import RPCError, open_library_rpc

__all__ = ["CheckReport", "FunctionCheck", "check_artifact"]

#: The reference: the device library built for this machine.
REFERENCE_TARGET = "host"
#: What the report says of a function's wire bytes when it has none to compare (a segment,
#: a float16 kernel: the frame casts with NumPy, not with the kernel).
NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class FunctionCheck:
    """One function of the library. ``max_rel_error``: the largest difference of any output of
    any call, relative to the reference output's max abs (0.0 when bit-identical, inf where
    shapes, dtypes or NaNs disagree); ``identical``: every output of every call bit for bit;
    ``bytes_equal``: every frame built with this pack kernel byte-identical (None: no frame
    uses it); ``calls``: how many times it ran on each side; ``note``: why it is not ok."""

    name: str
    kind: str
    max_rel_error: float
    identical: bool
    bytes_equal: bool | None
    ok: bool
    calls: int
    note: str = ""


@dataclass(frozen=True)
class CheckReport:
    """Every function of ``library`` (``device/<target>.so``) run on ``server`` (``key@tracker``)
    against the host library, on ``images`` real calibration images."""

    library: str
    server: str
    images: int
    rtol: float
    rows: list[FunctionCheck]

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def failed(self) -> list[FunctionCheck]:
        return [r for r in self.rows if not r.ok]

    def summary(self) -> str:
        """One line: how many functions were equal, within ``rtol``, or differ."""
        equal = sum(r.ok and r.identical for r in self.rows)
        close = sum(r.ok and not r.identical for r in self.rows)
        within = f", {close} within rtol {self.rtol:g}" if close else ""
        return (
            f"{len(self.rows)} functions of {self.library} on {self.server} ({self.images} real "
            f"image{'s' if self.images != 1 else ''}): {equal} equal{within}, {len(self.failed)} differ"
        )

    def table(self) -> Table:
        """The rows as a rich table, failures in red."""
        table = Table(title=self.summary(), title_justify="left")
        for header, justify in (
            ("function", "left"),
            ("kind", "left"),
            ("calls", "right"),
            ("max rel error", "right"),
            ("wire bytes", "left"),
            ("result", "left"),
        ):
            table.add_column(header, justify=justify)  # type: ignore[arg-type]
        for r in self.rows:
            wire = NOT_APPLICABLE if r.bytes_equal is None else ("equal" if r.bytes_equal else "DIFFER")
            result = ("equal" if r.identical else "within rtol") if r.ok else f"DIFFERS: {r.note}"
            table.add_row(
                r.name,
                r.kind,
                str(r.calls),
                f"{r.max_rel_error:.2e}",
                wire,
                result,
                style=None if r.ok else "red",
            )
        return table


def check_artifact(
    artifact: Artifact | str | Path,
    *,
    tracker: str,
    key: str,
    target: str = "arm64",
    images: int = 2,
    rtol: float = 1e-5,
    progress: Progress = silent,
    timeout: float = 10.0,
    session_timeout: float = 1800.0,
) -> CheckReport:
    """Run every function of the artifact's ``target`` device library on the server registered
    with ``key`` at ``tracker`` and compare it with the host device library run here, on
    ``images`` real calibration images (see the module docstring).

    Float outputs of segments pass when bit-identical or within ``rtol`` of the reference's
    max abs; integer outputs, pack kernels and frames only when identical. Raises a
    :class:`~dyno_compile.errors.DynoError` (``ArtifactError``: no such library or no host
    reference; ``RPCError``: tracker, key, upload or a remote call failed; ``InputError``:
    bad ``images``/``rtol``) rather than report what it could not run.
    """
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise InputError(f"images must be a positive integer, got {images!r}")
    if not (isinstance(rtol, (int, float)) and 0 <= rtol < 1):
        raise InputError(f"rtol must be a number in [0, 1), got {rtol!r}")
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    rel = art.library("device", target)
    art.library("device", REFERENCE_TARGET)  # the reference must be there before anything is uploaded
    model, shape = art.manifest["model"], art.manifest["inputs"][0]["shape"]
    calibration = default_calibration(model, shape)
    if len(calibration) < images:
        raise InputError(f"the calibration data for {model} holds {len(calibration)} images; asked for {images}")

    progress(f"opening the reference library {art.library('device', REFERENCE_TARGET)} here")
    reference = DeviceSide(art, REFERENCE_TARGET)
    progress(f"uploading {rel} to {key}@{tracker}")
    remote = copy.copy(reference)  # the same frame code and cut table; only the library differs
    remote.runner = open_library_rpc(
        art, "device", target, tracker=tracker, key=key, timeout=timeout, session_timeout=session_timeout
    )
    tally = _Tally(art.manifest["libraries"][rel]["module"]["functions"])
    failure = None
    try:
        for i, x in enumerate(calibration.x[:images]):
            progress(Step("images checked", i, images, f"image {i + 1}: segments"))
            env = _check_segments(art, reference, remote, x[None], tally)
            progress(Step("images checked", i, images, f"image {i + 1}: pack kernels and frames"))
            _check_cuts(art, reference, remote, env, tally, request_id=i + 1)
    except DynoError:
        raise
    except Exception as exc:  # noqa: BLE001 - a remote call failed or the session expired
        failure = tvm_message(exc)  # raised below, without TVM's error (its traceback holds the session)
    finally:
        # End the session now, so the server is free for the next client: the runner holds
        # the remote module, hence the session.
        remote.runner = None
    if failure is not None:
        raise RPCError(f"running {rel} on {key}@{tracker} failed (session_timeout {session_timeout:g} s): {failure}")
    progress(Step("images checked", images, images))
    return CheckReport(rel, f"{key}@{tracker}", images, rtol, tally.rows(rtol))


# --- running both sides ---------------------------------------------------------------------


def _check_segments(
    art: Artifact, reference: DeviceSide, remote: DeviceSide, x: np.ndarray, tally: _Tally
) -> dict[str, np.ndarray]:
    """Run the whole segment chain on the reference; each segment also on the remote, on the
    reference's input (so one difference does not spread). Every tensor of the chain."""

    def both(function: str, inputs: list) -> list[np.ndarray]:
        want = reference.runner.run(function, inputs)
        tally.add(function, "segment", want, remote.runner.run(function, inputs))
        return want

    env: dict[str, np.ndarray] = {reference.input_name: np.ascontiguousarray(x, dtype=reference.input_dtype)}
    run_segments(art, both, [s["index"] for s in art.segments], env)
    return env


def _check_cuts(
    art: Artifact, reference: DeviceSide, remote: DeviceSide, env: dict[str, np.ndarray], tally: _Tally, request_id: int
) -> None:
    """Every pack kernel of every cut and width on its real crossing tensor; the frame of
    every integer width from both libraries."""
    for cut in art.cuts:
        for bits, kernels in cut.get("kernels", {}).items():
            for k in kernels:
                inputs = [env[k["tensor"]]]
                tally.add(
                    k["pack"], "pack", reference.runner.run(k["pack"], inputs), remote.runner.run(k["pack"], inputs)
                )
            if isinstance(bits_value(bits), str):
                continue  # a float width: the frame casts with NumPy, the kernel does not enter it
            config = Config(cut["position"], bits, granularity=reference.granularity)
            same = reference.frame(env, config, request_id) == remote.frame(env, config, request_id)
            for k in kernels:
                tally.frame(k["pack"], same, config.label)


# --- comparing -------------------------------------------------------------------------------


@dataclass
class _Function:
    kind: str
    calls: int = 0
    max_rel_error: float = 0.0
    identical: bool = True
    exact_only: bool = False  # pack kernels and integer outputs: only bit-identical passes
    frames: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Tally:
    """What each function did on both sides, over all its calls."""

    def __init__(self, functions: dict[str, Any]) -> None:
        self._order = list(functions)
        self._seen: dict[str, _Function] = {}

    def add(self, name: str, kind: str, want: list[np.ndarray], got: list[np.ndarray]) -> None:
        f = self._seen.setdefault(name, _Function(kind, exact_only=kind == "pack"))
        f.calls += 1
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            identical = w.dtype == g.dtype and w.shape == g.shape and w.tobytes() == g.tobytes()
            f.identical &= identical
            if identical:
                continue
            f.exact_only |= w.dtype.kind != "f"
            error = rel_error(w, g)
            f.max_rel_error = max(f.max_rel_error, error)
            f.notes.append(f"output {i} call {f.calls}: rel error {error:.2e}")

    def frame(self, name: str, same: bool, label: str) -> None:
        f = self._seen[name]
        f.frames.append(same)
        if not same:
            f.notes.append(f"frame of {label} differs")

    def rows(self, rtol: float) -> list[FunctionCheck]:
        rows = []
        for name in [*self._order, *(n for n in self._seen if n not in self._order)]:
            f = self._seen.get(name)
            if f is None:  # the library has it, but no segment or cut of the manifest calls it
                rows.append(FunctionCheck(name, "other", 0.0, False, None, False, 0, "no real input: not run"))
                continue
            bytes_equal = all(f.frames) if f.frames else None
            close = f.identical or (not f.exact_only and f.max_rel_error <= rtol)
            ok = close and bytes_equal is not False
            note = "" if ok else "; ".join(f.notes[:3]) + (f" (+{len(f.notes) - 3} more)" if len(f.notes) > 3 else "")
            rows.append(FunctionCheck(name, f.kind, f.max_rel_error, f.identical, bytes_equal, ok, f.calls, note))
        return rows


def rel_error(want: np.ndarray, got: np.ndarray) -> float:
    """Max abs difference relative to the reference's max abs; inf when the two cannot be
    compared (shape, dtype) or disagree on where NaNs are. The one measure of "how far
    apart" for every check of a library against a reference (the board check, the ARM
    instruction counts, the GPU split check)."""
    if want.shape != got.shape or want.dtype != got.dtype:
        return float("inf")
    w, g = want.astype(np.float64), got.astype(np.float64)
    if not np.array_equal(np.isnan(w), np.isnan(g)):
        return float("inf")
    finite = ~np.isnan(w)
    diff = np.abs(w[finite] - g[finite])
    if not np.isfinite(diff).all():
        return float("inf")
    scale = float(np.max(np.abs(w[finite]), initial=0.0))
    return float(np.max(diff, initial=0.0) / max(scale, 1e-12))
