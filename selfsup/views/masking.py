"""Patch masks for masked image modelling: random (MAE) and block-wise (BEiT / CAE).

A mask is a bool tensor (B, h * w), row-major over the patch grid, True where a patch is
masked; every sample of a batch has exactly ``count`` masked patches, so the visible and the
masked patch indices are rectangular (B, n) tensors (:func:`split_indices`). All randomness is
drawn from the ``torch.Generator`` passed in, on the CPU: a method keeps that generator in its
checkpointed state (``selfsup.methods.rng.SharedGenerator``), so a resumed run draws the same
masks.

- Random (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022): a uniformly
  random subset of ``count`` patches per sample (the first ``count`` of a random permutation).
- Block-wise (Bao et al., "BEiT", 2022; CAE): rectangles of ``min_block`` or more patches
  (area drawn uniformly in [min_block, remaining] with a log-uniform aspect ratio h / w in
  ``aspect``; kept only when they fit the grid and their rounded sides still satisfy both
  bounds) are placed uniformly on the grid; a block is added when it masks at least one new
  patch and no more than the count still missing. Unlike BEiT's generator, which gives up after
  a block that adds nothing and so can stop short of the target, blocks are drawn until the
  count is EXACT: after ``patience`` blocks in a row that could not be added, the next block
  that would overshoot masks only its first missing-count new patches in raster order (a
  truncated block, still inside one rectangle).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

MaskKind = Literal["random", "block"]


def random_masks(batch: int, num_patches: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, num_patches) bool masks with exactly ``count`` random patches masked per sample."""
    _check_count(count, num_patches)
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask


def block_shape(area: float, log_aspect: float) -> tuple[int, int]:
    """(rows, cols) of a block of about ``area`` patches with aspect ratio rows / cols = exp(log_aspect)."""
    aspect = math.exp(log_aspect)
    return round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))


def block_mask(
    grid: tuple[int, int],
    count: int,
    uniforms: np.ndarray,
    min_block: int = 16,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    patience: int = 10,
    blocks: list[tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """One block-wise mask (h, w) with exactly ``count`` patches masked.

    uniforms: (attempts, 4) numbers in [0, 1) driving every draw (area, aspect, top, left).
    blocks: if given, every rectangle used (top, left, rows, cols) is appended to it.
    """
    h, w = grid
    mask = np.zeros(grid, dtype=bool)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    failures = 0
    for u_area, u_aspect, u_top, u_left in uniforms:
        missing = count - int(mask.sum())
        if missing == 0:
            break
        area = min_block + u_area * max(missing - min_block, 0)
        rows, cols = block_shape(area, log_lo + u_aspect * (log_hi - log_lo))
        if not (rows * cols >= min_block and rows <= h and cols <= w and aspect[0] <= rows / cols <= aspect[1]):
            failures += 1
            continue
        top, left = int(u_top * (h - rows + 1)), int(u_left * (w - cols + 1))
        window = mask[top : top + rows, left : left + cols]  # a view: writes go to the mask
        new = int((~window).sum())
        if 0 < new <= missing:
            window[:] = True
        elif new > missing and failures >= patience:
            rr, cc = np.nonzero(~window)  # raster order inside the block
            mask[top + rr[:missing], left + cc[:missing]] = True
        else:
            failures += 1
            continue
        failures = 0
        if blocks is not None:
            blocks.append((top, left, rows, cols))
    missing = count - int(mask.sum())
    if missing:  # only if every attempt was used up: fill the rest in raster order (never seen in tests)
        mask.reshape(-1)[np.flatnonzero(~mask.reshape(-1))[:missing]] = True
    return mask


def block_masks(
    batch: int,
    grid: tuple[int, int],
    count: int,
    generator: torch.Generator,
    min_block: int = 16,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    attempts: int = 200,
) -> torch.Tensor:
    """(batch, h * w) bool block-wise masks (:func:`block_mask`), exactly ``count`` per sample."""
    h, w = grid
    _check_count(count, h * w)
    if count and min_block > h * w:
        raise ValueError(f"a block of {min_block} patches does not fit a {h}x{w} patch grid")
    uniforms = torch.rand(batch, attempts, 4, generator=generator, dtype=torch.float64).numpy()
    masks = np.stack([block_mask(grid, count, u, min_block, aspect) for u in uniforms])
    return torch.from_numpy(masks.reshape(batch, h * w))


def draw_masks(
    kind: MaskKind,
    batch: int,
    grid: tuple[int, int],
    count: int,
    generator: torch.Generator,
    min_block: int = 16,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """Masks of ``kind`` (``random`` or ``block``) for a batch on a patch grid."""
    if kind == "random":
        return random_masks(batch, grid[0] * grid[1], count, generator)
    return block_masks(batch, grid, count, generator, min_block, aspect)


def mask_count(num_patches: int, ratio: float, count: int = 0) -> int:
    """Masked patches per sample: ``count`` if given (> 0), else ``round(ratio * num_patches)``."""
    return count if count > 0 else round(ratio * num_patches)


def split_indices(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible, masked) int64 patch indices (B, n_visible), (B, n_masked) of an exact-count
    mask, each in increasing order."""
    n_masked = int(mask[0].sum())
    order = mask.to(torch.int8).argsort(dim=1, stable=True)  # visible (0) first, then masked, each sorted
    return order[:, : mask.shape[1] - n_masked], order[:, mask.shape[1] - n_masked :]


def neighbour_clustering(mask: torch.Tensor, grid: tuple[int, int]) -> float:
    """Spatial clustering of masks: over every masked patch, the fraction of its 4-neighbours
    (inside the grid) that are masked too, averaged. About the masking ratio for random masks;
    near 1 for large blocks."""
    m = mask.view(-1, 1, *grid).float()
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    masked_nb = torch.nn.functional.conv2d(m, kernel, padding=1)
    in_grid = torch.nn.functional.conv2d(torch.ones_like(m), kernel, padding=1)
    frac = masked_nb / in_grid
    return float(frac[m.bool()].mean())


def _check_count(count: int, num_patches: int) -> None:
    if not 0 <= count < num_patches:
        raise ValueError(f"masked patch count {count} must be in [0, {num_patches}) for {num_patches} patches")
