"""Turning a scanned folder split into pixels: decoded once into memory, or streamed.

Two caches, both keyed by a fingerprint of the split (its absolute root and every file's
relative path, byte size and modification time), make later opens cheap:
- ``index/``: every file's header size and whether its header could be read;
- ``decoded/``: for splits that fit the memory limit, the decoded uint8 tensor at the
  load size (plus which files decoded), written with ``torch.save`` and read back with
  ``torch.load(weights_only=True)``.
A change to any file changes the fingerprint, so stale entries are never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from selfsup.data.cache import fingerprint, load_entry, save_entry
from selfsup.data.decode import DEFAULT_MAX_PIXELS, decode_many, read_sizes
from selfsup.data.errors import DataError
from selfsup.data.folder import FolderSplit
from selfsup.data.parallel import map_chunks
from selfsup.data.stores import FileStore, TensorStore, describe_files

log = logging.getLogger("selfsup.data")
DEFAULT_MIXED_SIZE = (256, 256)


@dataclass
class LoadedSplit:
    """A split's pixels plus per-image data for the files that could be read."""

    store: TensorStore | FileStore
    sizes: torch.Tensor  # int64 (M, 2) original (H, W)
    labels: torch.Tensor  # int64 (M,)
    num_skipped: int
    files: list[str] | None = None  # the kept files, relative to the split's root


def _header_index(split: FolderSplit, paths: list[str], fp: str, cache: Path) -> dict:
    """Every file's header size and readability, from the cache or by reading headers."""
    path = cache / "index" / f"{fp}.pt"
    entry = load_entry(path)
    if entry is None:
        sizes = torch.zeros((len(paths), 2), dtype=torch.int64)
        ok = torch.zeros(len(paths), dtype=torch.bool)
        for start, (s, k) in map_chunks(read_sizes, paths, f"reading {split.root}"):
            sizes[start : start + len(k)] = s
            ok[start : start + len(k)] = k
        entry = {"sizes": sizes, "ok": ok}
        save_entry(path, entry)
    return entry


def choose_load_size(load_size: tuple[int, int] | None, sizes: torch.Tensor) -> tuple[int, int]:
    """The requested load size, else the images' common size, else 256x256 for mixed sizes."""
    if load_size is not None:
        return load_size
    if bool((sizes == sizes[0]).all()):
        return int(sizes[0, 0]), int(sizes[0, 1])
    return DEFAULT_MIXED_SIZE


def _decode_all(split: FolderSplit, paths: list[str], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every file at ``size``: (images (N, 3, H, W), ok (N,))."""
    images = torch.empty((len(paths), 3, *size), dtype=torch.uint8)
    ok = torch.zeros(len(paths), dtype=torch.bool)
    decode = partial(decode_many, size=size)
    for start, (imgs, _, k) in map_chunks(decode, paths, f"decoding {split.root}"):
        images[start : start + len(k)] = imgs
        ok[start : start + len(k)] = k
    return images, ok


def _require_some(keep: torch.Tensor, split: FolderSplit) -> None:
    if not keep.any():
        raise DataError(f"no readable images in {split.root} ({len(keep)} file(s) failed)")


def load_split(
    split: FolderSplit,
    load_size: tuple[int, int] | None,
    cache: Path,
    memory_limit_bytes: float,
    num_workers: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_device: torch.device | None = None,
) -> LoadedSplit:
    """Read a split's headers, then decode it into memory if it fits, else stream it.

    ``decode_device``: a streamed split's JPEGs are decoded there (``selfsup.data.jpeg``), not by
    PIL in the workers; a split that fits in memory is decoded once by PIL either way.

    Unreadable files, and files of more than ``max_pixels`` pixels (decompression bombs, or
    just too large: ``data.max_image_pixels``), are skipped and reported in one warning line
    each kind; a split with no readable image raises DataError.
    """
    if not split.files:
        raise DataError(f"no images found in {split.root}")
    root = str(split.root)
    paths = [os.path.join(root, rel) for rel in split.files]
    fp = fingerprint(split, paths)
    index = _header_index(split, paths, fp, cache)
    keep = index["ok"].clone()
    large = keep & (index["sizes"].prod(dim=1) > max_pixels)
    if large.any():
        first = int(large.nonzero()[0])
        h, w = index["sizes"][first].tolist()
        log.warning("skipped %d image file(s) of more than data.max_image_pixels=%d pixels in %s, e.g. %s "
                    "(%d x %d); raise the setting to read them", int(large.sum()), max_pixels, split.root,
                    split.files[first], w, h)
        keep &= ~large
    _require_some(keep, split)
    size = choose_load_size(load_size, index["sizes"][keep])
    if int(keep.sum()) * 3 * size[0] * size[1] <= memory_limit_bytes:
        key = hashlib.sha256(f"{fp}\0{size[0]}x{size[1]}\0{max_pixels}".encode()).hexdigest()
        decoded_path = cache / "decoded" / f"{key}.pt"
        entry = load_entry(decoded_path)
        if entry is None:
            readable = [p for p, k in zip(paths, keep.tolist(), strict=True) if k]
            images, decoded = _decode_all(split, readable, size)
            keep[keep.clone()] = decoded
            entry = {"images": images[decoded] if not decoded.all() else images, "keep": keep}
            save_entry(decoded_path, entry)
        keep = entry["keep"]
        store: TensorStore | FileStore = TensorStore(entry["images"])
    else:
        store = FileStore([p for p, k in zip(paths, keep.tolist(), strict=True) if k], size, num_workers,
                          decode_device)
    _require_some(keep, split)
    skipped = [rel for rel, k in zip(split.files, keep.tolist(), strict=True) if not k]
    unreadable = [rel for rel, k, big in zip(split.files, keep.tolist(), large.tolist(), strict=True)
                  if not k and not big]
    if unreadable:
        log.warning(
            "skipped %d unreadable image file(s) in %s: %s",
            len(unreadable),
            split.root,
            describe_files(unreadable),
        )
    labels = torch.tensor(split.labels, dtype=torch.int64)[keep]
    files = [rel for rel, k in zip(split.files, keep.tolist(), strict=True) if k]
    return LoadedSplit(store, index["sizes"][keep], labels, len(skipped), files)
