"""Where a dataset's pixels live: one tensor in memory, or files decoded while streaming."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from selfsup.data.decode import decode_many
from selfsup.data.jpeg import decode_batch, read_encoded

log = logging.getLogger("selfsup.data")
SHOWN_NAMES = 3  # how many file names a warning about skipped files lists


def describe_files(names: list[str]) -> str:
    """``a.jpg, b.jpg, c.jpg, ...``: the first few names of a list of files."""
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (", ..." if len(names) > SHOWN_NAMES else "")


class TensorStore:
    """All images decoded into one uint8 tensor (N, 3, H, W)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def subset(self, indices: torch.Tensor) -> TensorStore:
        return TensorStore(self.images[indices])

    def load(self, index_batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of each batch of indices, in order."""
        for indices in index_batches:
            yield self.images[indices]


def _decode_pil(paths: list[str], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (k, 3, H, W), ok (k,)) decoded by PIL (``decode_many``)."""
    images, _, ok = decode_many(paths, size)
    return images, ok


class _FileBatches(Dataset):
    """Item ``indices`` is ``read(those files, size)``: a decoded batch, or what a worker hands
    over for the device to decode (``read_encoded``)."""

    def __init__(self, paths: list[str], size: tuple[int, int], read: Callable) -> None:
        self.read = partial(read, size=size)
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices: list[int]) -> tuple:
        return self.read([self.paths[i] for i in indices])


class FileStore:
    """Image files decoded (and resized to ``image_size``) batch by batch by a DataLoader.

    Files whose header could not be read are excluded when the dataset is opened; a file
    that still fails to decode while streaming yields a black image (so batch shapes and the
    ordering contract hold) and is reported once per pass (``num_failed``: that pass's count).
    ``num_workers`` processes decode with PIL, or, with a ``decode_device``, only read the
    files (into pinned memory for a GPU) and the JPEGs are decoded on that device
    (``selfsup.data.jpeg``); batches then come on that device.
    """

    def __init__(self, paths: list[str], size: tuple[int, int], num_workers: int,
                 decode_device: torch.device | None = None) -> None:
        self.paths = paths
        self._size = size
        self.num_workers = num_workers
        self.decode_device = decode_device
        self.num_failed = 0

    @property
    def image_size(self) -> tuple[int, int]:
        return self._size

    def subset(self, indices: torch.Tensor) -> FileStore:
        return FileStore([self.paths[i] for i in indices.tolist()], self._size, self.num_workers, self.decode_device)

    def load(self, index_batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The decoded images of each batch of indices, in order."""
        sampler = [indices.tolist() for indices in index_batches]
        device = self.decode_device
        files = _FileBatches(self.paths, self._size, _decode_pil if device is None else read_encoded)
        loader = DataLoader(
            files,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=device is not None and device.type == "cuda",
            generator=torch.Generator(),  # keep the global RNG untouched (reproducible runs)
        )
        failed: list[str] = []
        self.num_failed = 0
        try:
            for indices, item in zip(sampler, loader, strict=True):
                images, ok = item if device is None else decode_batch(*item, self._size, device)
                failed += [self.paths[i] for i, good in zip(indices, ok.tolist(), strict=True) if not good]
                self.num_failed = len(failed)
                yield images
        finally:
            if failed:
                log.warning(
                    "could not decode %d image(s), replaced by black images: %s",
                    len(failed),
                    describe_files(failed),
                )
