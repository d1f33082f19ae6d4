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
