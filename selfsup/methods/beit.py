"""BEiT (Bao, Dong, Piao, Wei: "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022).

- Visual tokens: a discrete tokenizer maps the image x to one id z_i in [0, V) per patch i of
  the ViT's grid (the paper: DALL-E's dVAE, V = 8192; here the VQ-VAE trained by
  ``selfsup tokenizer train``, :mod:`selfsup.models.tokenizer`, given as ``beit.tokenizer=DIR``).
  It is frozen and only supplies targets.
- Views: ONE view per image (the ``mim`` recipe: random-resized crop and flip); the tokenizer
  sees the same view as the encoder.
- Masking: block-wise (``selfsup.views.masking``): blocks of >= 16 patches, aspect ratio in
  [0.3, 1/0.3], until about 40% of the patches are masked (the paper's 75 of 196; here exactly
  ``mask_ratio``).
- Encoder: the ViT on ALL patches, the embedding of every masked patch replaced by a shared
  learnable mask token e_[M] before the position embedding is added
  (``ViTBackbone.tokens(mask=, mask_token=)``), with the CLS token.
- MIM head: a linear softmax classifier over the V ids on each masked patch's final token h_i.
- Loss: the cross-entropy of the tokenizer's ids at the MASKED positions M only, averaged over
  them:  L = - 1/|M| sum_{i in M} log softmax(W h_i + b)[z_i]  (the paper's Eq. 1;
  :func:`selfsup.losses.mim.token_cross_entropy`). ``token_acc`` logs the fraction of masked
  ids predicted exactly.
- Differences from the official code: the tokenizer is a VQ-VAE trained here on the same images
  (not DALL-E's dVAE trained on 250M images) and sees the view at the encoder's resolution (the
  official code feeds DALL-E a 112 px copy of the 224 px crop: both give the same 14x14 grid);
  no colour jitter in the views (the official recipe has jitter 0.4); absolute position
  embeddings of the backbone config (the paper's relative position bias needs a fixed grid);
  no rescaling of the blocks' output projections at initialisation; block masks reach the
  exact count and come from the run's checkpointed generator, drawn for the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from selfsup.core.checks import Fraction
from selfsup.losses.mim import token_cross_entropy
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.masked import MaskedImageModel, MaskingConfig, build_tokenizer, check_tokenizer, decoded_patches
from selfsup.models.tokenizer import VQTokenizer
from selfsup.views.masking import MaskKind, split_indices
from selfsup.views.view import View


@dataclass
class BEiTConfig(MaskingConfig):
    """BEiT's options: block-wise masking of 40% and the tokenizer folder (``selfsup tokenizer train``)."""

    section: ClassVar[str] = "beit"

    masking: MaskKind = "block"
    mask_ratio: Fraction = 0.4
    tokenizer: str = ""


class BEiT(MaskedImageModel):
    Config = BEiTConfig
    description = "BEiT: mask token in the encoder input, cross-entropy over a tokenizer's ids at masked patches"

    def __init__(
        self, backbone: nn.Module, cfg: BEiTConfig, run: RunInfo, tokenizer: VQTokenizer | None = None
    ) -> None:
        super().__init__(backbone, cfg, run)
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg.tokenizer, "beit.tokenizer",
                                                                                 self.backbone)
        dim = self.backbone.out_dim
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(dim, self.tokenizer.vocab_size)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        check_tokenizer(cfg, cfg.params.tokenizer, "beit.tokenizer")

    def logits(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Id logits (B, h * w, V) of every patch, the masked ones seen as the mask token."""
        return self.head(self.backbone.tokens(images, mask=mask, mask_token=self.mask_token).patches)

    def predict_patches(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pixels (B, h * w, p * p * 3) the tokenizer's decoder draws from the predicted ids at
        the masked patches and the true ids elsewhere."""
        return decoded_patches(self.tokenizer, images, mask, self.logits(images, mask), self.patch)

    def forward(self, views: list[View]) -> StepOutput:
        images = views[0].images
        mask = self.draw_masks(images)
        _, masked = split_indices(mask)
        tokens = self.backbone.tokens(images, mask=mask, mask_token=self.mask_token)
        logits = self.head(tokens.patches.gather(1, masked[..., None].expand(-1, -1, tokens.patches.shape[-1])))
        ids = self.tokenizer(images).gather(1, masked)
        loss = token_cross_entropy(logits, ids)
        acc = (logits.detach().argmax(-1) == ids).float().mean()
        return StepOutput(loss, {"token_acc": acc}, embedding=tokens.prefix[:, 0].detach())
