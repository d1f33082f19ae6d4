"""Running a per-file function over many files in worker processes, with progress."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

T = TypeVar("T")

PARALLEL_MIN_FILES = 2048  # below this, starting worker processes costs more than it saves
PROGRESS_MIN_FILES = 2048  # below this, a progress bar is noise
CHUNK_FILES = 256  # files per task handed to a worker


def cpu_count() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Chunks(Dataset):
    """Item i is ``fn`` applied to the i-th run of ``chunk`` consecutive paths."""

    def __init__(self, fn: Callable[[list[str]], T], paths: list[str], chunk: int) -> None:
        self.fn, self.paths, self.chunk = fn, paths, chunk

    def __len__(self) -> int:
        return -(-len(self.paths) // self.chunk)

    def __getitem__(self, i: int) -> T:
        return self.fn(self.paths[i * self.chunk : (i + 1) * self.chunk])


def map_chunks(fn: Callable[[list[str]], T], paths: list[str], desc: str) -> Iterator[tuple[int, T]]:
    """Yield (start, fn(paths[start:start + CHUNK_FILES])) in order, from worker processes.

    ``fn`` must be picklable (a module-level function or a partial of one). A progress bar
    goes to stderr for large inputs and disappears when done.
    """
    workers = min(cpu_count(), 16) if len(paths) >= PARALLEL_MIN_FILES else 0
    chunk = CHUNK_FILES
    # a private generator: the loader's worker seed must not consume the global RNG, or a run
    # on a cold cache would start from different initial weights than the same run later
    loader = DataLoader(_Chunks(fn, paths, chunk), batch_size=None, num_workers=workers,
                        generator=torch.Generator())
    with tqdm(
        total=len(paths),
        desc=desc,
        unit="img",
        file=sys.stderr,
        leave=False,
        disable=len(paths) < PROGRESS_MIN_FILES,
    ) as bar:
        for i, result in enumerate(loader):
            yield i * chunk, result
            bar.update(min(chunk, len(paths) - i * chunk))
