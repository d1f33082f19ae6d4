"""Resolving the ``--data`` argument: an image folder, an archive of one, or a dataset name."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfsup.data.archive import ARCHIVE_SUFFIXES, is_archive, unpack
from selfsup.data.arrays import ImageArrays
from selfsup.data.cifar import parse_cifar10
from selfsup.data.download import fetch
from selfsup.data.errors import DataError


@dataclass(frozen=True)
class RemoteArchive:
    """A dataset downloadable by name: where to get it and how to read it.

    ``parse`` turns the downloaded file into decoded (train, test) splits.
    """

    url: str
    md5: str
    filename: str
    parse: Callable[[Path], tuple[ImageArrays, ImageArrays | None]]


NAMED_DATASETS: dict[str, RemoteArchive] = {
    "cifar10": RemoteArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        filename="cifar-10-python.tar.gz",
        parse=parse_cifar10,
    ),
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$SELFSUP_CACHE``, else ``~/.cache/selfsup``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SELFSUP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "selfsup"


def resolve(spec: str, cache_dir: Path) -> Path | tuple[ImageArrays, ImageArrays | None]:
    """Turn a data spec into a local image folder, or into decoded splits for a named dataset.

    An existing path wins over a dataset of the same name; archives are unpacked (once)
    into the cache and named datasets are downloaded (once) into it.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if not is_archive(path):
            kinds = ", ".join(ARCHIVE_SUFFIXES)
            raise DataError(f"not a folder or a supported archive ({kinds}): {path}")
        return unpack(path, cache_dir)
    remote = NAMED_DATASETS.get(spec)
    if remote is None:
        names = ", ".join(sorted(NAMED_DATASETS))
        raise DataError(f"no such file or folder: {path} (nor a dataset name: {names})")
    downloaded = fetch(remote.url, remote.md5, cache_dir / "downloads" / remote.filename)
    return remote.parse(downloaded)
