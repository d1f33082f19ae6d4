"""The shared-weight tile network of the jigsaw and context tasks: the backbone applied to every
tile (Noroozi & Favaro's "siamese-ennead", Doersch et al.'s pair network) and a classifier over
the concatenated tile features."""

from __future__ import annotations

import torch
from torch import nn


def fc(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear (no bias) - BN - ReLU."""
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(True))


class TileClassifier(nn.Module):
    """``logits = W8 fc7([fc6(F(t_1)), ..., fc6(F(t_T))])``: the backbone F and fc6 shared by the
    T tiles of a sample (the papers' fc6 per tile), fc7 on their concatenation, then a linear
    layer to the classes."""

    def __init__(self, in_dim: int, tiles: int, tile_dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.fc6 = fc(in_dim, tile_dim)
        self.fc7 = fc(tiles * tile_dim, hidden)
        self.fc8 = nn.Linear(hidden, classes)

    def embed(self, backbone: nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        """tiles: (B, T, C, h, w), all through ``backbone`` in one batch -> fc6 (B, T, tile_dim)."""
        _, pooled = backbone(tiles.flatten(0, 1))
        return self.fc6(pooled).view(*tiles.shape[:2], -1)

    def classify(self, per_tile: torch.Tensor) -> torch.Tensor:
        """fc6 features (B, T, tile_dim) of the T tiles of each sample -> logits (B, classes)."""
        return self.fc8(self.fc7(per_tile.flatten(1)))

    def forward(self, backbone: nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        """tiles: (B, T, C, h, w) -> logits (B, classes)."""
        return self.classify(self.embed(backbone, tiles))
