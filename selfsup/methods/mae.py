"""MAE (He, Chen, Xie, Li, Dollar, Girshick: "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022).

- Views: ONE view per image (the ``mim`` recipe: random-resized crop, flip, no colour change).
- Masking: a random 75% of the patches per sample (``mask_ratio``), exactly that many each.
- Encoder: the ViT on the CLS token and the VISIBLE patches only (``ViTBackbone.tokens(keep=)``),
  position embeddings added before the subset is taken; no mask tokens enter the encoder.
- Decoder (light, pre-training only): a linear map to ``decoder_dim``, a shared learnable mask
  token for every masked patch, the tokens put back in grid order, fixed 2-D sin-cos position
  embeddings added (the CLS token's is zero), ``decoder_depth`` Transformer blocks, LN, and a
  linear prediction of each patch's p * p * 3 pixels.
- Loss: MSE per patch, averaged over the MASKED patches only; targets are the normalised view's
  pixels, each patch normalised by its own mean and variance with ``norm_pix_loss`` (the paper's
  better variant; off by default, as in the official code's default).
- Differences from the official code: masks come from the run's checkpointed generator, drawn
  for the global batch (identical under DDP to one process); the kept patches stay in grid order
  (the official code keeps them in the random order, equivalent for a Transformer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from timm.models.vision_transformer import Block
from torch import nn

from selfsup.core.checks import PositiveInt
from selfsup.losses.mim import masked_patch_mse, pixel_targets
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.masked import MaskedImageModel, MaskingConfig
from selfsup.models.backbones import sincos_pos_embed
from selfsup.views.masking import split_indices
from selfsup.views.view import View


@dataclass
class MAEConfig(MaskingConfig):
    """MAE's options (paper defaults: ViT-B encoder, decoder 512 wide, 8 blocks, 16 heads)."""

    section: ClassVar[str] = "mae"

    decoder_dim: PositiveInt = 512
    decoder_depth: PositiveInt = 8
    decoder_heads: PositiveInt = 16
    norm_pix_loss: bool = False


class MAE(MaskedImageModel):
    Config = MAEConfig
    description = "MAE: encoder on visible patches, light decoder with mask tokens, MSE on masked pixels"

    def __init__(self, backbone: nn.Module, cfg: MAEConfig, run: RunInfo) -> None:
        super().__init__(backbone, cfg, run)
        dim = cfg.decoder_dim
        self.decoder_embed = nn.Linear(self.backbone.out_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder_blocks = nn.Sequential(*[Block(dim, cfg.decoder_heads, 4.0, qkv_bias=True)
                                              for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, self.patch**2 * 3)

    def encode_visible(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS + visible latents (B, P + n_visible, D), visible indices (B, n_visible))."""
        visible, _ = split_indices(mask)
        t = self.backbone.tokens(images, keep=visible)
        return torch.cat([t.prefix, t.patches], dim=1), visible

    def decode(self, latents: torch.Tensor, visible: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Predicted pixels (B, h * w, p * p * 3) of every patch from the visible latents."""
        x = self.decoder_embed(latents)
        n_prefix, dim = self.backbone.num_prefix, x.shape[-1]
        full = self.mask_token.to(x.dtype).expand(x.shape[0], grid[0] * grid[1], dim)
        full = full.scatter(1, visible[..., None].expand(-1, -1, dim), x[:, n_prefix:])
        full = full + sincos_pos_embed(grid, dim).to(x.device, x.dtype, non_blocking=True)[None]
        x = self.decoder_blocks(torch.cat([x[:, :n_prefix], full], dim=1))
        return self.decoder_pred(self.decoder_norm(x[:, n_prefix:]))

    def predict_patches(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        latents, visible = self.encode_visible(images, mask)
        return self.decode(latents, visible, self.grid(images))

    def forward(self, views: list[View]) -> StepOutput:
        images = views[0].images
        mask = self.draw_masks(images)
        latents, visible = self.encode_visible(images, mask)
        pred = self.decode(latents, visible, self.grid(images))
        loss = masked_patch_mse(pred, pixel_targets(images, self.patch, self.cfg.norm_pix_loss), mask)
        return StepOutput(loss, {}, embedding=latents[:, 0].detach())
