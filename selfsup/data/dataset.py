"""ImageDataset, the one dataset type of selfsup, and ``open_dataset`` to get one from a spec."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from selfsup.data.arrays import ImageArrays
from selfsup.data.batch import Batch
from selfsup.data.decode import DEFAULT_MAX_PIXELS
from selfsup.data.errors import DataError
from selfsup.data.folder import class_names, find_splits, is_labelled, scan
from selfsup.data.loading import load_split
from selfsup.data.order import count_batches, rank_batches
from selfsup.data.sources import cache_root, resolve
from selfsup.data.stores import FileStore, TensorStore


class ImageDataset:
    """Images of one split, all delivered at one load size, with labels and original sizes.

    Pixels live either in memory (one uint8 tensor) or in files decoded while streaming;
    both yield identical batches in the order fixed by ``selfsup.data.order``. ``maps``: an
    optional per-pixel map of every image (N, H, W) at the load size (saliency masks), which
    every batch carries (``Batch.maps``). ``files``: the image files (relative to ``root``) of a
    dataset opened from a folder, in dataset order (None for in-memory data).
    """

    def __init__(
        self,
        store: TensorStore | FileStore,
        labels: torch.Tensor,
        sizes: torch.Tensor,
        classes: list[str],
        num_skipped: int = 0,
        maps: torch.Tensor | None = None,
        files: list[str] | None = None,
        root: Path | None = None,
    ) -> None:
        if maps is not None and (maps.shape[0] != len(labels) or tuple(maps.shape[1:]) != store.image_size):
            raise DataError(f"per-pixel maps of shape {tuple(maps.shape)} do not fit {len(labels)} images of "
                            f"{store.image_size}")
        self._store = store
        self.labels = labels
        self.sizes = sizes
        self.classes = classes
        self.num_skipped = num_skipped
        self.maps = maps
        self.files = files
        self.root = root
        self.num_without_mask = 0  # images left out for want of a usable mask (``selfsup.data.masks``)

    @classmethod
    def from_tensors(
        cls,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        classes: list[str] | None = None,
        sizes: torch.Tensor | None = None,
        maps: torch.Tensor | None = None,
    ) -> ImageDataset:
        """An in-memory dataset from uint8 images (N, 3, H, W) (and per-pixel ``maps`` (N, H, W)).

        Without labels every label is -1; without class names labelled data gets "0", "1",
        ...; without sizes the original size is taken to be the images' own.
        """
        n = images.shape[0]
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.int64)
        if classes is None:
            classes = [str(c) for c in range(int(labels.max()) + 1)] if n else []
        if sizes is None:
            sizes = torch.tensor(images.shape[-2:], dtype=torch.int64).repeat(n, 1)
        return cls(TensorStore(images), labels.to(torch.int64), sizes, classes, maps=maps)

    @property
    def has_labels(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int]:
        """The (H, W) of every image this dataset yields."""
        return self._store.image_size

    @property
    def in_memory(self) -> bool:
        """Whether the images are held decoded in memory (else they stream from files)."""
        return isinstance(self._store, TensorStore)

    def __repr__(self) -> str:
        h, w = self.image_size
        where = "in memory" if self.in_memory else "streamed"
        return f"ImageDataset({len(self)} images, {h}x{w}, {len(self.classes)} classes, {where})"

    def num_batches(self, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
        """Batches per epoch, the same on every rank (see ``batches``)."""
        return count_batches(len(self), batch_size, world_size, drop_last)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        start_batch: int = 0,
        window: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """This rank's batches of one epoch, from global batch ``start_batch`` on.

        The order is the contract in ``selfsup.data.order``: global batch b is
        ``perm[b*W*B:(b+1)*W*B]`` and rank r gets the r-th slice of B; ``window`` (size,
        stride) draws ``perm`` from PIC's sliding-window scheduler. Arguments are checked
        here, before iteration starts (DataError when the global batch exceeds the dataset
        with ``drop_last``).
        """
        index_batches = rank_batches(
            len(self),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            start_batch=start_batch,
            window=window,
        )
        return self._iterate(index_batches)

    def _iterate(self, index_batches: list[torch.Tensor]) -> Iterator[Batch]:
        for indices, images in zip(index_batches, self._store.load(index_batches), strict=True):
            maps = None if self.maps is None else self.maps[indices]
            yield Batch(images, self.sizes[indices], self.labels[indices], indices, maps)

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """The images at ``indices`` (int64 positions or a bool mask), re-indexed from 0.

        Classes are kept; ``num_skipped`` of a subset is 0.
        """
        indices = torch.as_tensor(indices)
        if indices.dtype == torch.bool:
            indices = indices.nonzero().flatten()
        indices = indices.to(torch.int64)
        maps = None if self.maps is None else self.maps[indices]
        files = None if self.files is None else [self.files[i] for i in indices.tolist()]
        return ImageDataset(self._store.subset(indices), self.labels[indices], self.sizes[indices], self.classes,
                            maps=maps, files=files, root=self.root)

    def with_maps(self, maps: torch.Tensor) -> ImageDataset:
        """The same images carrying per-pixel ``maps`` (N, H, W) at the load size."""
        return ImageDataset(self._store, self.labels, self.sizes, self.classes, self.num_skipped, maps, self.files,
                            self.root)


def cap(dataset: ImageDataset, max_images: int, seed: int) -> ImageDataset:
    """A fixed random subset of at most ``max_images`` images (0 = all), in dataset order."""
    if max_images <= 0 or max_images >= len(dataset):
        return dataset
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(perm[:max_images].sort().values)


@dataclass
class DatasetSplits:
    """The training split and the held-out split (``test/`` or ``val/``), if any."""

    train: ImageDataset
    test: ImageDataset | None


def normalize_load_size(load_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``s`` -> (s, s); (h, w) stays; None stays None (decided from the images)."""
    if load_size is None:
        return None
    if isinstance(load_size, int) and not isinstance(load_size, bool):
        load_size = (load_size, load_size)
    if (
        isinstance(load_size, (tuple, list))
        and len(load_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in load_size)
    ):
        return int(load_size[0]), int(load_size[1])
    raise DataError(f"invalid load size {load_size!r}: expected a positive int or (height, width)")


def _from_arrays(arrays: ImageArrays, size: tuple[int, int] | None) -> ImageDataset:
    original = arrays.images.shape[-2:]
    if size is not None:
        arrays = arrays.resized(size)
    sizes = torch.tensor(original, dtype=torch.int64).repeat(len(arrays.labels), 1)
    return ImageDataset.from_tensors(arrays.images, arrays.labels, arrays.classes, sizes)


def _open_folder(
    root: Path,
    size: tuple[int, int] | None,
    cache: Path,
    memory_limit_bytes: float,
    num_workers: int,
    max_pixels: int,
    decode_device: torch.device | None,
) -> DatasetSplits:
    train_dir, test_dir = find_splits(root)
    folders = [d for d in (train_dir, test_dir) if d is not None]
    labelled = {d for d in folders if is_labelled(d)}
    classes = class_names(*sorted(labelled))
    opened = []
    for folder in folders:
        split_classes = classes if folder in labelled else []
        split = scan(folder, split_classes)
        loaded = load_split(split, size, cache, memory_limit_bytes, num_workers, max_pixels, decode_device)
        opened.append(ImageDataset(loaded.store, loaded.labels, loaded.sizes, split_classes, loaded.num_skipped,
                                   files=loaded.files, root=folder))
    return DatasetSplits(opened[0], opened[1] if len(opened) > 1 else None)


def open_dataset(
    spec: str | os.PathLike,
    *,
    load_size: int | tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    memory_limit_gb: float = 8.0,
    num_workers: int = 0,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
    masks: str | os.PathLike | None = None,
    skip_missing: bool = False,
    decode_device: torch.device | str | None = None,
) -> DatasetSplits:
    """Open a dataset from an image folder, an archive of one, or a name (``cifar10``).

    load_size: None keeps the images' common size (256x256 when sizes differ); ``s`` means
        (s, s); (H, W) as given. Images are resized (bilinear, antialiased) to it.
    cache_dir: for unpacked archives, downloads and decoded tensors; default
        ``$SELFSUP_CACHE`` or ``~/.cache/selfsup``.
    memory_limit_gb: a folder split whose decoded pixels (N x 3 x H x W bytes) fit in this
        many GiB is decoded once into memory (and cached on disk); a larger one streams from
        its files. The limit applies to each split separately; named datasets always load
        into memory.
    num_workers: decoding processes for streamed splits.
    decode_device: None: streamed splits are decoded by PIL in the workers; a device (``cuda``):
        the workers only read the files and JPEGs are decoded on that device, in batches
        (``selfsup.data.jpeg``; non-JPEG files still by PIL), so batches come on that device.
    max_image_pixels: files with more pixels (once upright) are skipped and counted, with a
        warning naming one of them (a decompression bomb, or a file larger than expected).
    masks: a folder (or archive) of saliency masks, one PNG per TRAINING image with the same
        name (``selfsup.data.masks``): the training split then carries them as per-pixel maps
        (uint8 0/1 at the load size). A training image without a mask is a DataError naming it,
        unless ``skip_missing``: then it is left out and counted (``num_without_mask``).
    """
    size = normalize_load_size(load_size)
    cache = cache_root(cache_dir)
    source = resolve(os.fspath(spec), cache)
    if isinstance(source, Path):
        device = None if decode_device is None else torch.device(decode_device)
        splits = _open_folder(source, size, cache, memory_limit_gb * 2**30, num_workers, max_image_pixels, device)
        if masks:
            from selfsup.data.masks import attach_masks

            splits = DatasetSplits(attach_masks(splits.train, masks, cache, skip_missing), splits.test)
        return splits
    if masks:
        raise DataError(f"data.masks needs an image folder or archive with file names, not the dataset {spec!r}")
    train, test = source
    return DatasetSplits(_from_arrays(train, size), _from_arrays(test, size) if test is not None else None)
