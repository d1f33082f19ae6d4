"""What the masked-image-modelling methods (MAE, SimMIM, CAE, BEiT, iBOT) share: the masking
options, a ViT backbone, masks drawn from a checkpointed generator, reconstructions for pictures,
and the discrete tokenizer that BEiT and CAE's token targets load from a config key.

Masks are drawn for the GLOBAL batch from a generator seeded identically on every rank and
restored on resume (``SharedGenerator``); each rank keeps its own slice, so a run on several
ranks masks exactly as one process on the global batch does, and a resumed run repeats the
masks of the straight run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import nn

from selfsup.core.checks import Checked, Fraction, NonNegativeInt, PositiveInt, Range
from selfsup.core.comm import rank, world_size
from selfsup.core.errors import ConfigError
from selfsup.losses.mim import patchify, unpatchify
from selfsup.methods.base import Method, RunInfo
from selfsup.methods.rng import SharedGenerator
from selfsup.models.backbones import ViTBackbone
from selfsup.models.tokenizer import VQTokenizer, load_tokenizer, read_tokenizer_config
from selfsup.views.masking import MaskKind, draw_masks, mask_count

Aspect = Annotated[float, Range(gt=0)]


@dataclass
class MaskingConfig(Checked):
    """Masking options of a MIM method (``selfsup.views.masking``).

    masking: ``random`` (MAE) or ``block`` (BEiT / CAE block-wise masking).
    mask_ratio: fraction of the patches masked, unless ``mask_count`` > 0 gives the number
        (CAE's official code masks 98 of 196, the article 75 of 196).
    mask_min_block / mask_aspect: block-wise masking's smallest block (patches) and its range of
        aspect ratios (rows / cols).
    """

    masking: MaskKind = "random"
    mask_ratio: Fraction = 0.75
    mask_count: NonNegativeInt = 0
    mask_min_block: PositiveInt = 16
    mask_aspect: tuple[Aspect, Aspect] = (0.3, 1 / 0.3)

    def __post_init__(self) -> None:
        super().__post_init__()
        lo, hi = self.mask_aspect
        if not lo <= 1 <= hi:
            raise ConfigError(f"{self.section}.mask_aspect must satisfy min <= 1 <= max, got {[lo, hi]}")


def check_tokenizer(cfg: Any, path: str, key: str) -> None:
    """Config-time checks of the tokenizer folder ``path`` given by the key ``key`` (e.g.
    ``beit.tokenizer``) against the run (``cfg``: a PretrainConfig): its patch size must be the
    ViT's, its normalisation the views'. An empty path is reported when the method is built."""
    if not path:
        return
    tok, _ = read_tokenizer_config(path, key)
    b, v = cfg.backbone, cfg.views
    if b.patch_size and tok.patch_size != b.patch_size:
        raise ConfigError(f"{key}: the tokenizer at {path} has patch size {tok.patch_size}, backbone.patch_size is "
                          f"{b.patch_size}: its ids must lie on the ViT's patch grid")
    for name in ("mean", "std"):
        theirs, ours = getattr(tok, name), getattr(v, name)
        if not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(theirs, ours, strict=True)):
            raise ConfigError(f"{key}: the tokenizer at {path} was trained on images normalised with {name} "
                              f"{list(theirs)}, views.{name} is {list(ours)} (train it with --{name})")


def build_tokenizer(path: str, key: str, backbone: ViTBackbone) -> VQTokenizer:
    """The frozen tokenizer of the config key ``key``, its grid checked against the backbone's."""
    if not path:
        raise ConfigError(f"{key} is empty: train a tokenizer with `selfsup tokenizer train --data DATA --out DIR` "
                          f"and pass {key}=DIR")
    tokenizer = load_tokenizer(path, key)
    if tokenizer.cfg.patch_size != backbone.patch_size:
        raise ConfigError(f"{key}: the tokenizer at {path} has patch size {tokenizer.cfg.patch_size}, the ViT "
                          f"{backbone.patch_size}")
    return tokenizer


def decoded_patches(tokenizer: VQTokenizer, images: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor,
                    patch: int) -> torch.Tensor:
    """Pixels (B, h * w, p * p * 3) that the tokenizer's decoder draws from the predicted ids
    (argmax of ``logits`` (B, h * w, V)) at the masked patches and the true ids elsewhere: a
    token-target method's reconstruction."""
    ids = torch.where(mask, logits.argmax(-1), tokenizer(images))
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    return patchify(tokenizer.decode(ids, grid), patch)


class MaskedImageModel(Method):
    """Base of the MIM methods: ``self.cfg`` a :class:`MaskingConfig`, ``self.backbone`` a ViT."""

    recipe = "mim"
    backbone: ViTBackbone

    def __init__(self, backbone: nn.Module, cfg: MaskingConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        if not isinstance(backbone, ViTBackbone):
            raise ConfigError(f"{cfg.section} needs a ViT backbone, got {type(backbone).__name__}")
        self.cfg = cfg
        self.mask_rng = SharedGenerator()

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        b, m = cfg.backbone, cfg.params
        if b.is_resnet:
            raise ConfigError(f"{cfg.method} masks ViT patches: backbone.name must be a ViT "
                              f"(e.g. vit_tiny_patch16_224 with backbone.patch_size), got {b.name!r}")
        if b.patch_size:
            side = cfg.views.size // b.patch_size
            n = side * side
            count = mask_count(n, m.mask_ratio, m.mask_count)
            if not 0 < count < n:
                raise ConfigError(f"{cfg.method}: {count} masked patches of {n} ({side}x{side} grid of views.size "
                                  f"{cfg.views.size} / backbone.patch_size {b.patch_size}); need 0 < count < {n}")
            if m.masking == "block" and m.mask_min_block > count:
                raise ConfigError(f"{cfg.method}.mask_min_block {m.mask_min_block} is more than the {count} "
                                  "patches to mask")

    @property
    def patch(self) -> int:
        return self.backbone.patch_size

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        return images.shape[-2] // self.patch, images.shape[-1] // self.patch

    def draw_masks(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """bool (B, h * w) masks of this rank's images: its slice of the global batch's masks,
        drawn from the run's generator (or from ``generator``: evaluations, which leave the
        run's stream alone)."""
        cfg, grid, n = self.cfg, self.grid(images), images.shape[0]
        count = mask_count(grid[0] * grid[1], cfg.mask_ratio, cfg.mask_count)
        gen = self.mask_rng.next(torch.device("cpu")) if generator is None else generator
        masks = draw_masks(cfg.masking, n * world_size(), grid, count, gen, cfg.mask_min_block, cfg.mask_aspect)
        return masks[rank() * n : (rank() + 1) * n].to(images.device, non_blocking=True)

    def predict_patches(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The method's prediction (B, h * w, P) of every patch's target (rows of visible patches
        may hold anything); for the reconstruction pictures."""
        raise NotImplementedError  # pragma: no cover - every MIM method defines it

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in the input's (normalised) pixel space: the masked patches
        predicted, the visible ones copied. Per-patch normalised targets (``norm_pix_loss``) are
        mapped back with the true patch's mean and std, as MAE's visualisation does.
        ``pred``: (B, h * w, P) predictions to use instead of :meth:`predict_patches`."""
        pred = self.predict_patches(images, mask) if pred is None else pred
        true = patchify(images.float(), self.patch)
        pred = pred.float()
        if getattr(self.cfg, "norm_pix_loss", False):
            pred = pred * (true.var(dim=-1, keepdim=True) + 1e-6).sqrt() + true.mean(dim=-1, keepdim=True)
        mixed = torch.where(mask[..., None], pred, true)
        return unpatchify(mixed, self.patch, images.shape[-2:])
