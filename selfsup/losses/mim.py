"""Masked-image-modelling targets and losses (MAE, SimMIM, CAE).

Patches are flattened as (C, p, p) per patch (``F.unfold``'s order), row-major over the grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.core.tensors import upcast


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h * w, C * p * p) non-overlapping patches, row-major."""
    return F.unfold(images, kernel_size=patch, stride=patch).transpose(1, 2)


def unpatchify(patches: torch.Tensor, patch: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, h * w, C * p * p) -> (B, C, H, W)."""
    return F.fold(patches.transpose(1, 2), output_size=size, kernel_size=patch, stride=patch)


def pixel_targets(images: torch.Tensor, patch: int, norm_pix: bool, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch pixel targets (B, h * w, C * p * p); with ``norm_pix`` each patch is normalised
    by its own mean and variance (MAE's ``norm_pix_loss``, He et al., 2022):
        t = (x - mean(x)) / sqrt(var(x) + eps),
    var the unbiased variance over the patch's C * p * p values, as in MAE's code."""
    t = patchify(upcast(images), patch)
    if norm_pix:
        t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + eps).sqrt()
    return t


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE's loss (He et al., 2022): mean squared error per patch, averaged over the MASKED
    patches only,
        L = sum_i m_i * mean_j (pred_ij - target_ij)^2 / sum_i m_i,
    pred / target (B, N, P), mask bool (B, N) True where masked. Visible patches add nothing."""
    per_patch = (upcast(pred) - upcast(target)).pow(2).mean(dim=-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1)


def masked_pixel_l1(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """SimMIM's loss (Xie et al., "SimMIM: a Simple Framework for Masked Image Modeling", 2022):
    L1 over the masked pixels, averaged over masked pixels and channels,
        L = sum |pred - target| * M / (sum M * C),
    pred / target (B, C, H, W), pixel_mask (B, 1, H, W) 1 where masked."""
    diff = (upcast(pred) - upcast(target)).abs()
    m = pixel_mask.to(diff.dtype)
    return (diff * m).sum() / (m.sum() * diff.shape[1]).clamp_min(1)


def token_cross_entropy(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """BEiT / CAE with a discrete tokenizer (Bao et al., 2022; Chen et al., 2023): cross-entropy
    of the predicted logits (B, M, V) against the tokenizer's ids (B, M) of the masked patches,
    averaged over them: L = -mean log softmax(logits)[id]."""
    return F.cross_entropy(upcast(logits).flatten(0, 1), ids.flatten())


def latent_alignment(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CAE's alignment loss (Chen et al., "Context Autoencoder for Self-Supervised Representation
    Learning", IJCV 2023): mean squared error between the regressor's predicted latents Z_m and
    the encoder's latents of the masked patches, L = mean (Z_m - sg[Z_target])^2 over every
    element; the target is computed without gradient (pass it detached)."""
    return (upcast(pred) - upcast(target)).pow(2).mean()
