"""Which dataset indices each rank gets in each batch: the ordering contract.

With shuffle, epoch ``e`` visits ``perm = torch.randperm(N)`` drawn from
``torch.Generator().manual_seed(seed + e)`` (without shuffle, ``arange(N)``; with a sliding
window, ``sliding_window_order``). Global batch
``b`` is ``perm[b*W*B : (b+1)*W*B]`` for W ranks of batch size B, and rank r's share is
``perm[(b*W + r)*B : (b*W + r + 1)*B]``, so concatenating the ranks' batches in rank order
gives the global batch. An incomplete last global batch is dropped (``drop_last``) or split
as evenly as possible over the ranks, lower ranks taking one more image where it does not
divide (rank 0 is never empty; a higher rank's share may be).
"""

from __future__ import annotations

import torch

from selfsup.data.errors import DataError


def check_batch_size(n: int, batch_size: int, world_size: int, drop_last: bool) -> None:
    """Reject a non-positive batch size or world size, and a global batch over the dataset."""
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch size and world size must be positive: {batch_size}, {world_size}")
    if drop_last and batch_size * world_size > n:
        raise DataError(f"batch size {batch_size} x {world_size} rank(s) is larger than the dataset ({n} images)")


def count_batches(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """The number of (global) batches in an epoch: the same for every rank."""
    check_batch_size(n, batch_size, world_size, drop_last)
    global_batch = batch_size * world_size
    return n // global_batch if drop_last else -(-n // global_batch)


def sliding_window_order(n: int, window: int, stride: int, seed: int, epoch: int) -> torch.Tensor:
    """PIC's sliding-window data scheduler (Cao et al., 2020): the n indices epoch ``epoch`` visits.

    One fixed permutation P of 0..n-1 (seeded by ``seed``) is read through a window of
    ``window`` positions that starts at position w * ``stride`` (modulo n) for the w-th
    window; each window's indices are visited in their own random order, then the window
    slides. The stream of windows is cut into epochs of n indices. An image is visited once
    in each of the window / stride consecutive windows that hold it, so its visits come about
    ``window`` images apart rather than n (PIC's remedy for rarely updated class weights).
    With ``window`` a multiple of the global batch no batch straddles two windows, so no
    image appears twice in one batch.
    """
    if not 0 < stride <= window <= n:
        raise DataError(f"data.sliding_window [{window}, {stride}] needs 0 < stride <= window <= dataset size ({n})")
    base = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    first, skip = divmod(epoch * n, window)
    parts, held, w = [], -skip, first
    while held < n:
        order = torch.randperm(window, generator=torch.Generator().manual_seed(seed + 1 + w))
        parts.append(base[(w * stride + order) % n])
        held, w = held + window, w + 1
    return torch.cat(parts)[skip : skip + n]


def epoch_order(
    n: int, shuffle: bool, seed: int, epoch: int, window: tuple[int, int] | None = None
) -> torch.Tensor:
    """The order in which an epoch visits indices 0..n-1 (``window``: (size, stride) of
    :func:`sliding_window_order`, which then replaces the shuffle)."""
    if window is not None:
        return sliding_window_order(n, window[0], window[1], seed, epoch)
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def rank_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    drop_last: bool,
    start_batch: int,
    window: tuple[int, int] | None = None,
) -> list[torch.Tensor]:
    """Rank ``rank``'s index batches for an epoch, from global batch ``start_batch`` on
    (``window``: the sliding-window order instead of ``shuffle``; see :func:`epoch_order`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    total = count_batches(n, batch_size, world_size, drop_last)
    perm = epoch_order(n, shuffle, seed, epoch, window)
    global_batch = batch_size * world_size
    batches = []
    for b in range(start_batch, total):
        chunk = perm[b * global_batch : (b + 1) * global_batch]
        if len(chunk) == global_batch:
            batches.append(chunk[rank * batch_size : (rank + 1) * batch_size])
        else:
            share, extra = divmod(len(chunk), world_size)
            begin = rank * share + min(rank, extra)
            batches.append(chunk[begin : begin + share + (rank < extra)])
    return batches
