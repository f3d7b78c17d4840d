"""Write and open artifact directories: whole or not at all, and verified on open.

An artifact is a directory with ``manifest.json`` and the files it lists. Writing builds
everything in a hidden sibling directory and renames it into place at the end, so an
interrupted build never leaves a half-written artifact where a loader could find it.
Opening checks the format version and every file's SHA-256 against the manifest before
anything is loaded, and refuses a tampered or mismatched artifact naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dyno_compile.errors import DynoError

FORMAT = "dyno-artifact"
#: 2: every cut records the channel axis of each crossing tensor (``channel_axes``), which
#: per-channel packing reduces around; a version-1 artifact assumed axis 1 everywhere.
VERSION = 2
MANIFEST = "manifest.json"


class ArtifactError(DynoError):
    """An artifact is missing, incomplete, tampered with, or from another format version."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def staging(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty directory to build into; on success it becomes ``out_dir``.

    ``out_dir`` must not exist unless ``overwrite``; an existing one is replaced only
    after the new artifact is complete.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the published artifact from a server's user
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def amend(root: str | os.PathLike, change: Callable[[Path], dict[str, Any]]) -> None:
    """Change a published artifact as a whole: ``change`` works on a verified copy, adds or
    replaces files and returns manifest entries to set; the copy then replaces ``root``.
    Readers see the old artifact or the new one, never a mix."""
    manifest = read_manifest(root)
    with staging(root, overwrite=True) as tmp:
        shutil.copytree(root, tmp, dirs_exist_ok=True)
        kept = {k: v for k, v in manifest.items() if k not in ("format", "version", "files")}
        write_manifest(tmp, {**kept, **change(tmp)})


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Record every file under ``root`` with its checksum, then write the manifest."""
    files = {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    body = {"format": FORMAT, "version": VERSION, **manifest, "files": files}
    (root / MANIFEST).write_text(json.dumps(body, indent=1))


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the artifact at ``root``, after verifying every file it lists."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} is not an artifact: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a dyno-compile artifact (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {manifest.get('version')!r}; this build reads "
            f"version {VERSION}: rebuild the artifact"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{path}: lists no files")
    for rel, expected in files.items():
        file = (root / rel).resolve()
        if root.resolve() not in file.parents:
            raise ArtifactError(f"{path}: file entry {rel!r} points outside the artifact")
        if not file.is_file():
            raise ArtifactError(f"{root}: {rel} is missing")
        if sha256_file(file) != expected:
            raise ArtifactError(f"{root}: {rel} does not match its checksum (tampered or corrupted)")
    return manifest
