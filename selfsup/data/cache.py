"""The on-disk cache of decoded splits and file indexes: keys and atomic entries.

Entries live under ``$SELFSUP_CACHE`` (``selfsup.data.sources.cache_root``), keyed by a
fingerprint of the split's files; a missing or damaged entry is a cache miss, and a cache
that cannot be written only costs speed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import torch

from selfsup.data.folder import FolderSplit

log = logging.getLogger("selfsup.data")
CACHE_VERSION = 2  # 2: images and label maps turned upright by their EXIF orientation


def fingerprint(split: FolderSplit, paths: list[str]) -> str:
    """A hex digest of the split's root and its files' relative paths, sizes and mtimes.

    ``paths`` are the files' full paths, in the order of ``split.files``.
    """
    digest = hashlib.sha256(f"v{CACHE_VERSION}\0{split.root.resolve()}\n".encode())
    for rel, path in zip(split.files, paths, strict=True):
        st = os.stat(path)
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_entry(path: Path) -> dict | None:
    """A cache entry, or None when absent or unreadable (a damaged entry is rebuilt)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a truncated or foreign file is just a cache miss
        return None


def save_entry(path: Path, entry: dict) -> None:
    """Write a cache entry atomically (temporary file, then rename).

    A cache that cannot be written (read-only, full) only costs speed: it is reported and
    the data is used without being cached.
    """
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(entry, tmp)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write the cache entry %s: %s", path, e)
    finally:
        tmp.unlink(missing_ok=True)
