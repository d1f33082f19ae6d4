"""Projection and prediction heads."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False
) -> nn.Sequential:
    """An MLP head: ``num_layers`` linear layers, BN + ReLU between them.

    Hidden layers are Linear (no bias) -> BatchNorm1d -> ReLU; the last layer is a Linear
    with bias, optionally followed by an affine-free BatchNorm1d (SimCLR v2, Barlow Twins).
    ``mlp(C, 4096, 256)`` is BYOL's projector and predictor; ``mlp(C, 2048, 128)`` SimCLR's.
    """
    if num_layers < 1:
        raise ValueError(f"an MLP head needs at least one layer, got num_layers={num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def conv_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """A per-pixel projector (PixPro, Xie et al., 2021): 1x1 conv (bias) -> BatchNorm2d -> ReLU
    -> 1x1 conv (bias), no output BN. ``conv_mlp(2048, 4096, 256)`` is PixPro's on ResNet-50 C5;
    it is ``mlp`` applied to every cell of a (B, C, h, w) map, BN statistics over all cells.
    """
    return nn.Sequential(
        nn.Conv2d(in_dim, hidden_dim, 1),
        nn.BatchNorm2d(hidden_dim),
        nn.ReLU(True),
        nn.Conv2d(hidden_dim, out_dim, 1),
    )
