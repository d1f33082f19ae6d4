"""A view carries its pixels AND its geometry."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class View:
    """One augmented view of a batch.

    images: float (B, 3, S, S), normalised with the recipe's mean/std.
    boxes: float (B, 4) as (x0, y0, x1, y1) in the SOURCE image's normalised coordinates,
        x0 = left / (W - 1), x1 = (left + w - 1) / (W - 1) (same for y with H); a horizontal
        flip swaps x0 and x1, so x1 < x0 marks a mirrored view.
    flipped: bool (B,), True where the view was mirrored.
    index: int64 (B,), the dataset index of every sample (set by the trainer; memory banks
        and instance classifiers use it), or None.
    maps: (B, S, S) the batch's per-pixel maps (``Batch.maps``) under exactly this view's crop,
        resize (nearest neighbour, no blending) and flip; the photometric ops leave them alone.
        None when the batch has none.
    """

    images: torch.Tensor
    boxes: torch.Tensor
    flipped: torch.Tensor
    index: torch.Tensor | None = None
    maps: torch.Tensor | None = None
