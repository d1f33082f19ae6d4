"""Unpacking an image archive (.tar, .tar.gz, .tgz, .zip, ...) once into the cache."""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path

from selfsup.data.errors import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
MARKER = ".selfsup-unpacked"
_CHUNK = 1 << 20


def is_archive(path: Path) -> bool:
    """Whether ``path`` names an archive this module can unpack (by its suffix)."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(path: Path, cache_dir: Path) -> str:
    """The sha256 of an archive's contents, remembered per (path, size, mtime).

    Hashing a large archive takes minutes, so the digest is stored in the cache and reused
    while the file keeps its path, size and modification time.
    """
    st = path.stat()
    stamp = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    memo = cache_dir / "hashes" / hashlib.sha256(stamp).hexdigest()
    if memo.is_file():
        return memo.read_text().strip()
    digest = _sha256(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f"{memo.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(digest)
    os.replace(tmp, memo)
    return digest


def _safe_name(name: str, archive: Path) -> str:
    """A member's normalised relative name; DataError if it would land outside the target."""
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or ":" in norm.split("/")[0]:
        raise DataError(f"refusing to unpack {archive}: member {name!r} escapes the target folder")
    return norm


def _unpack_tar(archive: Path, target: Path) -> None:
    """Stream a tar archive into ``target``, writing only directories and regular files.

    No link is ever created on disk (so no later member can be written through one): a
    symbolic or hard link to a file unpacked earlier becomes a copy of it, other links are
    left out, and so are devices and fifos. A name or link target that leaves the folder
    is refused.
    """
    made: set[str] = set()  # folders known to exist

    def make_dirs(folder: str) -> None:
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)

    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            dest = os.path.join(target, _safe_name(member.name, archive))
            if member.isdir():
                make_dirs(dest)
            elif member.isfile():
                source = tar.extractfile(member)
                make_dirs(os.path.dirname(dest))
                with source, open(dest, "wb") as out:
                    shutil.copyfileobj(source, out)
            elif member.issym() or member.islnk():
                link = member.linkname
                if member.issym():
                    link = posixpath.join(posixpath.dirname(member.name), link)
                linked = os.path.join(target, _safe_name(link, archive))
                if os.path.isfile(linked):
                    make_dirs(os.path.dirname(dest))
                    shutil.copyfile(linked, dest)


def _unpack_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            _safe_name(name, archive)
        zf.extractall(target)


def _data_root(folder: Path) -> Path:
    """The single top-level folder of an unpacked archive, or the folder itself."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def unpack(archive: Path, cache_dir: Path) -> Path:
    """Unpack ``archive`` into ``cache_dir/unpacked/<sha256>`` once; return its data root.

    Extraction goes to a private temporary folder; the completion marker is written into it
    last and the folder is then renamed into place atomically, so an interrupted unpack is
    simply redone and concurrent processes (several ranks) never see a partial tree.
    """
    try:
        final = cache_dir / "unpacked" / content_hash(archive, cache_dir)
    except OSError as e:
        raise DataError(f"cannot read {archive}: {e}") from e
    if not (final / MARKER).is_file():
        if final.exists():
            shutil.rmtree(final)  # an incomplete tree left by an older layout or by hand
        tmp = final.with_name(f"{final.name}.{uuid.uuid4().hex}.tmp")
        tmp.mkdir(parents=True)
        try:
            if archive.name.lower().endswith(".zip"):
                _unpack_zip(archive, tmp)
            else:
                _unpack_tar(archive, tmp)
            (tmp / MARKER).write_text(f"{archive}\n")
            try:
                tmp.rename(final)
            except OSError:
                if not (final / MARKER).is_file():  # not another process having won the race
                    raise
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
            raise DataError(f"cannot unpack {archive}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _data_root(final)
