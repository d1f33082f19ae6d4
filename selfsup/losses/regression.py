"""Regression losses between an online prediction and a target."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss (Grill et al., 2020): mean squared error of L2-normalised vectors,

        L = || p/||p|| - z/||z|| ||^2 = 2 - 2 * cos(p, z),

    averaged over the batch. ``z`` is the target; pass it detached (no gradient flows to it).
    """
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's loss (Chen & He, 2021): negative cosine similarity,

        D(p, z) = - p/||p|| . z/||z||,

    averaged over the batch; in [-1, 1]. ``z`` is the target; pass it detached (stop-gradient).
    """
    return -F.cosine_similarity(p, z, dim=-1).mean()
