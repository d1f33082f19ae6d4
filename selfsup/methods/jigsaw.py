"""Jigsaw puzzles (Noroozi & Favaro: "Unsupervised Learning of Visual Representations by Solving
Jigsaw Puzzles", ECCV 2016).

- Views: ONE view per image (the ``pretext`` recipe: random-resized crop and flip). Its 3 x 3
  grid of ``tile``-pixel tiles is cut with ``gap`` pixels between neighbouring tiles and every
  tile moved by an independent offset in [-jitter, jitter] (``selfsup.views.tiles.TileGrid``):
  the gap and jitter keep the network from solving the puzzle by continuing edges and lines
  across tile borders. Every colour channel of a tile is shifted by its own offset in
  [-channel_shift, channel_shift] (against chromatic aberration, which tells where a tile was
  in the frame), the tiles are resized to ``tile_size`` pixels and every tile is normalised
  to zero mean and unit std per channel (against matching tiles by low-level statistics).
- Puzzle: a permutation set P of ``permutations`` members (100 or 1000 in the paper) chosen
  greedily for a large Hamming distance (``hamming_permutations``, seeded by ``perm_seed``,
  kept in a buffer). Each image draws a class k uniformly; slot i of its puzzle shows tile
  P_k[i].
- Networks: the shared-weight tile network (the backbone F, then fc6 per tile: the
  "siamese-ennead"), fc7 on the 9 concatenated tile features and a linear layer to |P|
  classes (``selfsup.methods.tilenet.TileClassifier``).
- Loss: cross-entropy of the permutation class,
      L = -1/N sum_i log softmax(fc8(fc7([fc6(F(t_{i,P_k[1]})), ..., fc6(F(t_{i,P_k[9]}))])))_k.
  ``pretext_acc``: the permutation accuracy (chance 1 / |P|).
- Tile size at 32 px (CIFAR-10). The paper cuts a 225-pixel crop into 75-pixel cells and a
  64-pixel tile in each (gap about 11, jitter up to the cell). At 32 px the same proportions
  give 8-pixel tiles, gap 2, jitter 1 and a 1-pixel channel shift (3 * 8 + 2 * 2 + 2 * (1 + 1)
  = 32: the whole view). The tiles go to the network at that native resolution
  (``tile_size: 0``), as in the paper, whose tiles are crops at the image's resolution: the
  tile network sees objects at the scale the evaluated backbone sees them in whole 32-pixel
  images, and the 9 tiles cost 9 * (8/32)^2 = 0.56 of one image. ``tile_size: 16`` upsamples
  them (2.25 images per image): through the standard ResNet stem (stride 4) an 8-pixel tile
  is 2 x 2 cells at the first stage, a 16-pixel one 4 x 4.
- Differences from the official code (Caffe, CFN): the network is the configured backbone with
  Linear-BN-ReLU fc6 (``tile_dim``) and fc7 (``hidden``) instead of AlexNet with dropout; the
  permutation set ranks candidates by minimal, then total Hamming distance (the paper's
  Algorithm 1: total distance); the paper's greyscale training images are not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from selfsup.core.checks import Checked, NonNegative, NonNegativeInt, PositiveInt
from selfsup.methods.base import RunInfo
from selfsup.methods.pretext import PretextMethod
from selfsup.methods.rng import SharedGenerator
from selfsup.methods.tilenet import TileClassifier
from selfsup.views.tiles import TileGrid, cut_tiles, hamming_permutations, normalize_tiles, permute_tiles
from selfsup.views.view import View


@dataclass
class JigsawConfig(Checked):
    section: ClassVar[str] = "jigsaw"

    permutations: PositiveInt = 100  # size of the permutation set (classes): 100 or 1000 in the paper
    perm_seed: NonNegativeInt = 0  # picks the set's first permutation
    tile: PositiveInt = 8  # pixels of a tile cut from the view
    gap: NonNegativeInt = 2  # pixels between neighbouring tiles before jitter
    jitter: NonNegativeInt = 1  # each tile moves by up to this many pixels on each axis
    channel_shift: NonNegativeInt = 1  # each colour channel of a tile moves by up to this many pixels
    tile_size: NonNegativeInt = 0  # tiles are resized to this many pixels for the network (0: as cut)
    tile_dim: PositiveInt = 512  # fc6: per-tile feature
    hidden: PositiveInt = 1024  # fc7: on the concatenated tile features
    eps: NonNegative = 1e-5  # per-tile normalisation


def tile_grid(cfg: Any, size: int, gap: int, margin: int = 0) -> TileGrid:
    """The 3 x 3 grid of a method config with ``tile`` and ``jitter`` in a ``size``-pixel view."""
    return TileGrid(size=size, grid=3, tile=cfg.tile, gap=gap, jitter=cfg.jitter, margin=margin)


class Jigsaw(PretextMethod):
    Config = JigsawConfig
    description = "Jigsaw puzzles: which of a Hamming-distant set of permutations shuffled the 3x3 tiles"

    def __init__(self, backbone: nn.Module, cfg: JigsawConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        self.register_buffer("perms", hamming_permutations(9, cfg.permutations, cfg.perm_seed))
        self.head = TileClassifier(backbone.out_dim, 9, cfg.tile_dim, cfg.hidden, cfg.permutations)
        self.rng = SharedGenerator()

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        p = cfg.params
        tile_grid(p, cfg.views.size, p.gap, p.channel_shift)  # raises if the grid does not fit the view

    def pretext(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        images = views[0].images
        gen = self.rng.next(torch.device("cpu"))
        grid = tile_grid(cfg, images.shape[-1], cfg.gap, cfg.channel_shift)
        tiles = normalize_tiles(cut_tiles(images, grid, gen, cfg.tile_size), cfg.eps)
        labels = torch.randint(len(self.perms), (images.shape[0],), generator=gen).to(images.device)
        puzzles = permute_tiles(tiles, self.perms[labels])
        return self.head(self.backbone, puzzles), labels
