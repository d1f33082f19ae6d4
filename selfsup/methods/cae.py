"""CAE (Chen, Ding, Xie, Wang, Han, Tang, Zhong, Han, Wang: "Context Autoencoder for
Self-Supervised Representation Learning", IJCV 2023), as in ../shared/docs/methods-spec.md s. 4.

- Views: ONE view per image (the ``mim`` recipe: flip, random-resized crop (0.08, 1), no colour).
- Masking: block-wise (BEiT), blocks of >= 16 patches with aspect in [0.3, 3.33], exactly
  ``mask_ratio`` (0.5: 98 of 196 as the official code; ``mask_count`` for another number).
- Encoder F: the ViT on the CLS token and the VISIBLE patches only, fixed 2-D sin-cos positions,
  LayerScale 0.1, drop-path 0.1 (the backbone's options in the preset), final LN: latents Z_v.
- Latent contextual regressor H: ``regressor_depth`` (4) cross-attention blocks. The queries
  start as a shared learnable mask token; with P_m the masked patches' position embeddings and
  P_v the visible ones' (the CLS token's is zero), each block computes
      kv = [Z_v, x],  x <- x + CrossAttn(LN_q(x + P_m), LN_k(kv + [P_v, P_m]), LN_v(kv)),
      x <- LN(x),  x <- x + MLP(x),
  (LayerScale on both branches); Z_v is only read, never updated. A final LN gives Z_m.
- Alignment: the target is the encoder itself (this step's weights, i.e. the previous step's
  result, no gradient) on CLS + the MASKED patches, CLS dropped: L_align = MSE(Z_m, sg[F(x_m)]),
  weight ``alignment_weight`` (2; 0 is the ablation and skips the target pass).
- Decoder G: Z_m + P_m through ``decoder_depth`` (4) self-attention blocks over the masked tokens
  only, LN, and a linear layer to the target space.
- Targets (``target``): (a) ``pixels``, per-patch normalised pixels, MSE (``norm_pix_loss``), or
  (b) ``tokens``, a discrete tokenizer's ids of the masked patches, cross-entropy (the paper's
  setting, with DALL-E's tokens, which cannot be downloaded here): the VQ-VAE trained by
  ``selfsup tokenizer train`` given as ``cae.tokenizer=DIR``, or any :class:`Tokenizer` passed
  as ``CAE(..., tokenizer=...)``. L = L_target + alignment_weight * L_align.
- Differences from the official code: block masks reach the exact count (the official BEiT
  generator may stop short); masks come from the run's checkpointed generator, drawn for the
  global batch; the regressor and decoder widths equal the encoder's (as there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from timm.layers import LayerScale, Mlp
from timm.models.vision_transformer import Block
from torch import nn

from selfsup.core.checks import Fraction, NonNegative, NonNegativeInt, PositiveInt
from selfsup.core.errors import ConfigError
from selfsup.losses.mim import latent_alignment, masked_patch_mse, pixel_targets, token_cross_entropy
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.masked import MaskedImageModel, MaskingConfig, build_tokenizer, check_tokenizer, decoded_patches
from selfsup.models.attention import CrossAttention
from selfsup.models.backbones import sincos_pos_embed
from selfsup.views.masking import MaskKind, split_indices
from selfsup.views.view import View


class Tokenizer(Protocol):
    """A discrete image tokenizer (BEiT / CAE's DALL-E dVAE): normalised images (B, 3, H, W) ->
    int64 token ids (B, h * w), one per patch of the encoder's grid, in [0, vocab_size)."""

    vocab_size: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Images (B, 3, H, W) drawn from ids (B, h * w) on the grid (h, w) (reconstruction pictures)."""


@dataclass
class CAEConfig(MaskingConfig):
    """CAE's options (official defaults; num_heads 0: the encoder's). ``target``: ``pixels`` or
    ``tokens`` (the ids of the tokenizer folder ``tokenizer``, see ``selfsup tokenizer train``)."""

    section: ClassVar[str] = "cae"

    masking: MaskKind = "block"
    mask_ratio: Fraction = 0.5
    regressor_depth: PositiveInt = 4
    decoder_depth: PositiveInt = 4
    num_heads: NonNegativeInt = 0
    mlp_ratio: float = 4.0
    layer_scale: NonNegative = 0.1
    alignment_weight: NonNegative = 2.0
    norm_pix_loss: bool = True
    target: Literal["pixels", "tokens"] = "pixels"
    tokenizer: str = ""


class RegressorBlock(nn.Module):
    """One block of CAE's latent contextual regressor (module docstring): the queries x are
    updated from the visible latents and themselves; the latents pass through unchanged."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, layer_scale: float) -> None:
        super().__init__()
        self.norm_q, self.norm_k, self.norm_v = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.scale_attn = LayerScale(dim, layer_scale)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.scale_mlp = LayerScale(dim, layer_scale)

    def forward(self, x: torch.Tensor, pos_q: torch.Tensor, latents: torch.Tensor,
                pos_latents: torch.Tensor) -> torch.Tensor:
        kv = torch.cat([latents, x], dim=1)
        pos_kv = torch.cat([pos_latents, pos_q], dim=1)
        x = x + self.scale_attn(self.attn(self.norm_q(x + pos_q), self.norm_k(kv + pos_kv), self.norm_v(kv)))
        x = self.norm(x)
        return x + self.scale_mlp(self.mlp(x))


class CAE(MaskedImageModel):
    Config = CAEConfig
    description = "CAE: encoder on visible patches, latent regressor + alignment, decoder on masked tokens"

    def __init__(self, backbone: nn.Module, cfg: CAEConfig, run: RunInfo, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(backbone, cfg, run)
        dim = self.backbone.out_dim
        heads = cfg.num_heads or self.backbone.net.blocks[0].attn.num_heads
        if tokenizer is None and cfg.target == "tokens":
            tokenizer = build_tokenizer(cfg.tokenizer, "cae.tokenizer", self.backbone)
        self.tokenizer = tokenizer
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.regressor = nn.ModuleList(RegressorBlock(dim, heads, cfg.mlp_ratio, cfg.layer_scale)
                                       for _ in range(cfg.regressor_depth))
        self.regressor_norm = nn.LayerNorm(dim)
        self.decoder = nn.Sequential(*[Block(dim, heads, cfg.mlp_ratio, qkv_bias=True, init_values=cfg.layer_scale)
                                       for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dim)
        out = tokenizer.vocab_size if tokenizer is not None else self.patch**2 * 3
        self.decoder_head = nn.Linear(dim, out)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        m = cfg.params
        if m.target == "pixels" and m.tokenizer:
            raise ConfigError(f"cae.tokenizer is set ({m.tokenizer}) but cae.target is pixels; "
                              "use cae.target=tokens for token targets")
        if m.target == "tokens":
            check_tokenizer(cfg, m.tokenizer, "cae.tokenizer")

    def positions(self, grid: tuple[int, int], index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Sin-cos position embeddings (B, n, D) of the patches ``index`` (B, n)."""
        pos = sincos_pos_embed(grid, like.shape[-1]).to(like)
        return pos[index]

    def regress(self, latents: torch.Tensor, pos_latents: torch.Tensor, pos_masked: torch.Tensor) -> torch.Tensor:
        """H: predicted latents Z_m (B, M, D) of the masked patches from the visible latents."""
        x = self.mask_token.to(latents.dtype).expand(pos_masked.shape[0], pos_masked.shape[1], -1)
        for block in self.regressor:
            x = block(x, pos_masked, latents, pos_latents)
        return self.regressor_norm(x)

    def decode(self, z: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """G: target-space predictions (B, n, P or vocab) of the tokens z with positions pos."""
        return self.decoder_head(self.decoder_norm(self.decoder(z + pos)))

    def encode_visible(self, images: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS + visible latents (B, P + n_visible, D), their positions (zero for CLS))."""
        t = self.backbone.tokens(images, keep=visible)
        latents = torch.cat([t.prefix, t.patches], dim=1)
        pos = self.positions(self.grid(images), visible, latents)
        return latents, torch.cat([torch.zeros_like(t.prefix), pos], dim=1)

    @torch.no_grad()
    def alignment_target(self, images: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """sg[F(CLS + masked patches)] without the CLS token: (B, M, D), no gradient."""
        return self.backbone.tokens(images, keep=masked).patches

    def target_loss(self, pred: torch.Tensor, images: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Pixel MSE or token cross-entropy of the masked patches' predictions (B, M, .)."""
        if self.tokenizer is not None:
            with torch.no_grad():
                ids = self.tokenizer(images).gather(1, masked)
            return token_cross_entropy(pred, ids)
        target = pixel_targets(images, self.patch, self.cfg.norm_pix_loss)
        target = target.gather(1, masked[..., None].expand(-1, -1, target.shape[-1]))
        return masked_patch_mse(pred, target, torch.ones_like(masked, dtype=torch.bool))

    def predict_patches(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        visible, masked = split_indices(mask)
        latents, pos_latents = self.encode_visible(images, visible)
        pos_masked = self.positions(self.grid(images), masked, latents)
        pred = self.decode(self.regress(latents, pos_latents, pos_masked), pos_masked)
        full = pred.new_zeros(pred.shape[0], mask.shape[1], pred.shape[-1])
        full = full.scatter(1, masked[..., None].expand(-1, -1, pred.shape[-1]), pred)
        return full if self.tokenizer is None else decoded_patches(self.tokenizer, images, mask, full, self.patch)

    def decode_encoder(self, images: torch.Tensor) -> torch.Tensor:
        """The seed's key check: ALL patches through the encoder, the regressor skipped, the
        decoder on the encoder's latents: predictions (B, h * w, P) of every patch."""
        t = self.backbone.tokens(images)
        index = torch.arange(t.patches.shape[1], device=images.device).expand(images.shape[0], -1)
        return self.decode(t.patches, self.positions(self.grid(images), index, t.patches))

    def forward(self, views: list[View]) -> StepOutput:
        images = views[0].images
        visible, masked = split_indices(self.draw_masks(images))
        latents, pos_latents = self.encode_visible(images, visible)
        pos_masked = self.positions(self.grid(images), masked, latents)
        z_masked = self.regress(latents, pos_latents, pos_masked)
        loss_target = self.target_loss(self.decode(z_masked, pos_masked), images, masked)
        logs = {"loss_target": loss_target.detach()}
        loss = loss_target
        if self.cfg.alignment_weight > 0:
            loss_align = latent_alignment(z_masked, self.alignment_target(images, masked))
            loss = loss + self.cfg.alignment_weight * loss_align
            logs["loss_align"] = loss_align.detach()
        return StepOutput(loss, logs, embedding=latents[:, 0].detach())
