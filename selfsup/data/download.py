"""Fetching a file over HTTP(S) into the cache, verified by its md5 checksum."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from selfsup.data.errors import DataError

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    """The hex md5 digest of a file's contents."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, md5: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless a copy with the right md5 is already there.

    The download goes to a ``.part`` file that is renamed into place only once complete
    and verified, so an interrupted or corrupted transfer never looks like a finished one.
    """
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"downloading {dest.name}",
                file=sys.stderr,
                leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise DataError(f"could not download {url}: {reason}") from e
    if digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"md5 mismatch for {url}: expected {md5}, got {digest.hexdigest()} (download removed)")
    os.replace(part, dest)
    return dest
