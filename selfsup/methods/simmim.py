"""SimMIM (Xie, Zhang, Cao, Lin, Bao, Yao, Dai, Hu: "SimMIM: a Simple Framework for Masked
Image Modeling", CVPR 2022).

- Views: ONE view per image (the ``mim`` recipe: random-resized crop, flip, no colour change).
- Masking: a random ``mask_ratio`` (0.6) of the patches per sample.
- Encoder: the ViT on ALL patches, the embedding of every masked patch replaced by one shared
  learnable mask token before the position embedding is added
  (``ViTBackbone.tokens(mask=, mask_token=)``).
- Prediction head: one linear layer from each patch token to its p * p * 3 raw pixels (the
  paper's 1x1 convolution + pixel shuffle is the same map).
- Loss: L1 between predicted and true (normalised view) pixels, over the masked pixels only,
  averaged over them and the channels.
- Differences from the paper: masks are drawn per model patch; the paper masks 32 x 32 pixel
  squares (2 x 2 patches of a ViT-B/16), which has no counterpart on a grid of 8 x 8 patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from selfsup.core.checks import Fraction
from selfsup.losses.mim import masked_pixel_l1, unpatchify
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.masked import MaskedImageModel, MaskingConfig
from selfsup.views.view import View


@dataclass
class SimMIMConfig(MaskingConfig):
    section: ClassVar[str] = "simmim"

    mask_ratio: Fraction = 0.6


def pixel_mask(mask: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """(B, h * w) patch mask -> (B, 1, h * p, w * p) float pixel mask."""
    m = mask.view(-1, 1, *grid).float()
    return m.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


class SimMIM(MaskedImageModel):
    Config = SimMIMConfig
    description = "SimMIM: mask token in the encoder input, linear pixel head, L1 on masked pixels"

    def __init__(self, backbone: nn.Module, cfg: SimMIMConfig, run: RunInfo) -> None:
        super().__init__(backbone, cfg, run)
        dim = self.backbone.out_dim
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(dim, self.patch**2 * 3)

    def predict_patches(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted pixels (B, h * w, p * p * 3) of every patch, the masked ones from the mask token."""
        return self.head(self.backbone.tokens(images, mask=mask, mask_token=self.mask_token).patches)

    def forward(self, views: list[View]) -> StepOutput:
        images = views[0].images
        mask = self.draw_masks(images)
        tokens = self.backbone.tokens(images, mask=mask, mask_token=self.mask_token)
        pred = unpatchify(self.head(tokens.patches), self.patch, images.shape[-2:])
        loss = masked_pixel_l1(pred, images, pixel_mask(mask, self.grid(images), self.patch))
        return StepOutput(loss, {}, embedding=tokens.prefix[:, 0].detach())
