"""One-file artifacts: a built artifact directory as a ``.tar.gz``, and back.

One file is what people copy to a phone or push to a model registry. Opening an archive
unpacks it once into a cache folder named after the archive's SHA-256 (so the same
archive opens instantly the next time, and a changed one never reuses stale files), then
opens that folder like any artifact — checksums verified. The archive comes from outside,
so every member is checked before anything is written: regular files and folders only,
relative paths that stay inside, bounded count and size.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from dyno_compile.artifact.store import MANIFEST, ArtifactError, sha256_file, staging

#: Bounds on what an archive may unpack to: far above any real artifact, far below a disk.
MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 8 << 30


def cache_root() -> Path:
    """Where archives unpack: ``$DYNO_CACHE`` or ``~/.cache/dyno_compile``."""
    base = os.environ.get("DYNO_CACHE") or Path.home() / ".cache" / "dyno_compile"
    return Path(base) / "artifacts"


def write_archive(root: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the artifact directory ``root`` as one ``.tar.gz`` at ``path``, atomically."""
    root, path = Path(root), Path(path).resolve()
    if not (root / MANIFEST).is_file():
        raise ArtifactError(f"{root} is not an artifact: {MANIFEST} is missing")
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} already exists; choose another name or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        # gzip's header carries a time and a file name: zero both for byte-identical archives
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w") as tar,
        ):
            for file in sorted(p for p in root.rglob("*") if p.is_file()):
                tar.add(file, arcname=file.relative_to(root).as_posix(), filter=_normalised)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Same bytes from the same build: no owner, times or permissions from this machine."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o644
    return info


def open_archive(path: str | os.PathLike) -> Path:
    """The folder ``path`` unpacks to (unpacking it on first use)."""
    path = Path(path)
    if not tarfile.is_tarfile(path):
        raise ArtifactError(f"{path} is neither an artifact directory nor an artifact archive (.tar.gz)")
    folder = cache_root() / sha256_file(path)[:24]
    if (folder / MANIFEST).is_file():
        return folder
    try:
        with tarfile.open(path, "r:*") as tar:
            members = _checked_members(path, tar)
            with staging(folder, overwrite=True) as tmp:
                tar.extractall(tmp, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArtifactError(f"{path}: cannot unpack the artifact archive: {exc}") from None
    return folder


def _checked_members(path: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    if len(members) > MAX_MEMBERS:
        raise ArtifactError(f"{path}: {len(members)} archive members, more than the {MAX_MEMBERS} allowed")
    total = 0
    for m in members:
        name = PurePosixPath(m.name)
        if name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir()):
            raise ArtifactError(f"{path}: archive member {m.name!r} is not a plain file inside the artifact")
        total += m.size
    if total > MAX_UNPACKED_BYTES:
        raise ArtifactError(f"{path}: unpacks to {total} bytes, more than the {MAX_UNPACKED_BYTES} allowed")
    if MANIFEST not in {m.name for m in members}:
        raise ArtifactError(f"{path}: the archive holds no {MANIFEST}: not an artifact")
    return members
