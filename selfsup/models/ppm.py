"""The pixel propagation module of PixPro (Xie et al., "Propagate Yourself", CVPR 2021, Eq. 3-4).

Every pixel's feature is replaced by a smoothed one built from the similar pixels of the same
view: with x the projector output of a view,

    s_ij = max(cos(x_i, x_j), 0)^gamma,    y_i = sum_j s_ij * g(x_j) / ||g(x_j)||,

then y_i is L2-normalised. No softmax and no division by sum_j s_ij. g (the value transform)
has l layers: l = 0 identity, l = 1 one 1x1 conv with bias (the paper's default), l = 2 two
1x1 convs with BN + ReLU between.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def propagate(x: torch.Tensor, values: torch.Tensor, gamma: float) -> torch.Tensor:
    """y_i = normalise( sum_j max(cos(x_i, x_j), 0)^gamma * normalise(values_j) ).

    x: (B, C, h, w) features that define the similarities; values: (B, D, h, w) the transformed
    features g(x) that are aggregated. Returns (B, D, h, w), L2-normalised per pixel.
    """
    xn = F.normalize(x.flatten(2), dim=1)  # (B, C, N)
    sim = torch.bmm(xn.transpose(1, 2), xn).clamp(min=0).pow(gamma)  # (B, N, N): s_ij
    v = F.normalize(values.flatten(2), dim=1)  # (B, D, N)
    y = torch.bmm(v, sim.transpose(1, 2))  # y[:, :, i] = sum_j s_ij v[:, :, j]
    return F.normalize(y, dim=1).view_as(values)


def value_transform(dim: int, layers: int) -> nn.Module:
    """PixPro's g: identity (0 layers), a 1x1 conv (1), or conv -> BN -> ReLU -> conv (2)."""
    if layers == 0:
        return nn.Identity()
    if layers == 1:
        return nn.Conv2d(dim, dim, 1)
    if layers == 2:
        return nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim), nn.ReLU(True), nn.Conv2d(dim, dim, 1))
    raise ValueError(f"PPM transform layers must be 0, 1 or 2, got {layers}")


class PPM(nn.Module):
    """Pixel propagation module: ``PPM(dim, layers, gamma)(x) = propagate(x, g(x), gamma)``."""

    def __init__(self, dim: int, layers: int = 1, gamma: float = 2.0) -> None:
        super().__init__()
        self.transform = value_transform(dim, layers)
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return propagate(x, self.transform(x), self.gamma)
