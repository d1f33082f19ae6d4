"""Where a dataset's pixels live: one tensor in memory, or files decoded while streaming."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from selfsup.data.decode import decode_many

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


class _FileBatches(Dataset):
    """Item ``indices`` is the decoded batch of those files."""

    def __init__(self, paths: list[str], size: tuple[int, int]) -> None:
        self.decode = partial(decode_many, size=size)
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, _, ok = self.decode([self.paths[i] for i in indices])
        return images, ok


class FileStore:
    """Image files decoded (and resized to ``image_size``) batch by batch by a DataLoader.

    Files whose header could not be read are excluded when the dataset is opened; a file
    that still fails to decode while streaming yields a black image (so batch shapes and the
    ordering contract hold) and is reported once per pass. ``num_workers`` processes decode.
    """

    def __init__(self, paths: list[str], size: tuple[int, int], num_workers: int) -> None:
        self.paths = paths
        self._size = size
        self.num_workers = num_workers

    @property
    def image_size(self) -> tuple[int, int]:
        return self._size

    def subset(self, indices: torch.Tensor) -> FileStore:
        return FileStore([self.paths[i] for i in indices.tolist()], self._size, self.num_workers)

    def load(self, index_batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The decoded images of each batch of indices, in order."""
        sampler = [indices.tolist() for indices in index_batches]
        loader = DataLoader(
            _FileBatches(self.paths, self._size),
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            generator=torch.Generator(),  # keep the global RNG untouched (reproducible runs)
        )
        failed: list[str] = []
        try:
            for indices, (images, ok) in zip(sampler, loader, strict=True):
                failed += [self.paths[i] for i, good in zip(indices, ok.tolist(), strict=True) if not good]
                yield images
        finally:
            if failed:
                log.warning(
                    "could not decode %d image(s), replaced by black images: %s",
                    len(failed),
                    describe_files(failed),
                )
