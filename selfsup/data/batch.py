"""The batch every loader yields: decoded pixels plus what evaluation and geometry need."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """A batch of decoded images.

    images: uint8 (B, 3, H, W), all resized to the dataset's load size.
    sizes: int64 (B, 2), each image's ORIGINAL (height, width) before any resizing, so
        crop boxes can be sampled with the source's true aspect ratio.
    labels: int64 (B,), -1 where the dataset has no labels.
    index: int64 (B,), position of each image in its dataset (memory banks, per-image state).
    maps: optional (B, H, W) per-pixel map of every image at the images' load size (a saliency
        mask, a label map), which the views crop, resize and flip with the image's geometry.
    """

    images: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    maps: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=True),
            self.sizes.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.index.to(device, non_blocking=True),
            None if self.maps is None else self.maps.to(device, non_blocking=True),
        )
