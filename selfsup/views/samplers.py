"""Crop samplers: where each view's crop box comes from, per image (``make_views(..., crop=)``).

``None`` stands for the recipe's random-resized crop; :class:`FixedCenterCrop` is the
deterministic ablation; ContrastiveCrop (``selfsup.views.contrastive_crop``) learns its boxes
from the encoder; a method wraps any of them with its own condition
(``selfsup.views.resampled_crop``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from selfsup.data.dataset import ImageDataset


class CropSampler:
    """Where the crop boxes of a view come from, per image (``make_views(..., crop=)``).

    The base class is stateless; subclasses override ``sample`` and, if they learn from the
    encoder, ``for_epoch`` / ``due`` / ``update`` and the state methods.
    """

    def sample(
        self,
        sizes: torch.Tensor,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        generator: torch.Generator,
        index: torch.Tensor | None,
        maps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Crop boxes as int64 (B, 4) (left, top, width, height) in original pixels, on the CPU.

        sizes: int (B, 2) original (height, width); index: int64 (B,) dataset indices; maps:
        the batch's per-pixel maps (B, H, W) at the stored size, or None (for samplers that
        look at them, e.g. a method's :class:`selfsup.views.resampled_crop.ResampledCrop`).
        """
        raise NotImplementedError

    def for_epoch(self, epoch: int) -> CropSampler | None:
        """The sampler for training epoch ``epoch`` (1-based); None means random crops."""
        return self

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether ``update`` must run after completed epoch ``epoch`` of ``epochs``."""
        return False

    def update(self, backbone: nn.Module, dataset: ImageDataset, device: torch.device) -> None:
        """Refresh the sampler's state from the encoder (nothing to do for a stateless one)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict()`` (a stateless sampler has none)."""


class FixedCenterCrop(CropSampler):
    """The centred crop with the image's own aspect ratio and area fraction max(scale):
    h = round(H sqrt(s)), w = round(W sqrt(s)), top = (H - h) // 2, left = (W - w) // 2.

    No randomness (the generator is not touched): an ablation that removes crop variation
    while keeping flip and colour; with scale max 1 it is the whole image."""

    def sample(
        self,
        sizes: torch.Tensor,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        generator: torch.Generator,
        index: torch.Tensor | None,
        maps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sizes = sizes.to("cpu", torch.float64)
        extent = torch.round(sizes * math.sqrt(scale[1])).clamp(min=1)
        corner = torch.div(sizes - extent, 2, rounding_mode="floor")
        return torch.stack((corner[:, 1], corner[:, 0], extent[:, 1], extent[:, 0]), dim=1).to(torch.int64)
