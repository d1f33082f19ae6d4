"""PixContrast (Xie, Lin, Zhang, Cao, Lin, Hu: "Propagate Yourself: Exploring Pixel-Level
Consistency for Unsupervised Visual Representation Learning", CVPR 2021, Section 3.1).

- Views: the asymmetric BYOL recipe (PixPro's); every view carries its crop box.
- Networks: online = backbone (+ optional FPN neck) + per-pixel projector (1x1 conv
  C -> 4096 -> 256, BN + ReLU); momentum keys from an EMA copy of backbone (+ neck) +
  projector (``selfsup.methods.pixel``). No propagation module, no predictor.
- Loss: every pixel is its own class. For a cell i of view 1 that lies inside view 2 (it has
  at least one positive), with positives pos(i) the cells of view 2 closer than T = 0.7 bin
  diagonals and negatives neg(i) all other cells of view 2 of the same image,
      L_i = -log( sum_{pos} exp(cos(x_i, x'_j) / tau) / sum_{pos u neg} exp(cos(x_i, x'_j) / tau) ),
  tau = 0.3, averaged over such cells of the global batch (under DDP each rank divides by the
  ranks' mean count) and summed over the two directions (view 1 queries against view 2 keys
  and the reverse).
- Schedule: momentum 0.99 -> 1 (cosine per step), updated after every optimiser step.
- Not in the official release; this follows the paper. As in PixPro here, both views share one
  batch through each encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from selfsup.core.checks import Positive
from selfsup.core.comm import all_reduce_mean
from selfsup.losses.pixel import pixcontrast_loss
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.pixel import PixelConfig, PixelMethod, pixel_embedding
from selfsup.views.view import View


@dataclass
class PixContrastConfig(PixelConfig):
    """PixContrast's defaults (ResNet-50 on ImageNet)."""

    section: ClassVar[str] = "pixcontrast"

    temperature: Positive = 0.3


class PixContrast(PixelMethod):
    Config = PixContrastConfig
    section = "pixcontrast"
    description = "PixContrast: pixel-level contrast, positives by crop geometry, momentum keys"

    def __init__(self, backbone: nn.Module, cfg: PixContrastConfig, run: RunInfo) -> None:
        super().__init__(backbone, cfg, run)

    def contrast(self, q: torch.Tensor, k: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """One direction of the loss, averaged over the global batch's pixels with a positive: each
        rank divides by the ranks' mean count, so DDP's average of the ranks' losses is that of
        one process holding the whole batch."""
        count = all_reduce_mean(positives.any(dim=2).sum().to(torch.float64))
        return pixcontrast_loss(q, k, positives, self.cfg.temperature, count)

    def forward(self, views: list[View]) -> StepOutput:
        images = torch.cat([views[0].images, views[1].images])
        online, _ = self.dense(images)
        with torch.no_grad():
            keys, _ = self.dense(images, target=True)
        loss, positives = self.pair_loss(views, online, keys, self.contrast)
        logs = {"positives": positives, "momentum": torch.tensor(self.target.momentum)}
        return StepOutput(loss, logs, embedding=pixel_embedding(online[0]))
