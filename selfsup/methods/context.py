"""Relative patch location (Doersch, Gupta & Efros: "Unsupervised Visual Representation Learning
by Context Prediction", ICCV 2015).

- Views: ONE view per image (the ``pretext`` recipe: random-resized crop and flip), cut into a
  3 x 3 grid of ``tile``-pixel patches with ``gap`` pixels between neighbours and every patch
  moved by an independent offset in [-jitter, jitter] (``selfsup.views.tiles.TileGrid``): the
  gap and jitter keep the network from matching low-level cues (continuing lines, textures)
  across the border. The 8 outer patches are the neighbours of the centre patch; neighbour k
  (row by row, the centre skipped) has label k.
- Chromatic aberration: lenses shift the colour channels in proportion to the distance from
  the image centre, which tells a patch's absolute position. ``colour: drop`` is the paper's
  colour dropping: in every patch two of the three channels are replaced by Gaussian noise of
  1/100 of the kept channel's std (``selfsup.views.tiles.drop_colors``); ``none`` keeps colour.
  The patches are resized to ``tile_size`` pixels.
- Networks: the pair network, the backbone F shared by both patches of a pair, fc6 per patch,
  fc7 on the two concatenated fc6 features and a linear layer to the 8 positions
  (``selfsup.methods.tilenet.TileClassifier``).
- Loss: 8-way cross-entropy of the neighbour's position,
      L = -1/(8N) sum_i sum_{k=0..7} log softmax(fc8(fc7([fc6(F(c_i)), fc6(F(n_{i,k}))])))_k,
  c_i the centre patch and n_{i,k} the k-th neighbour of image i. ``pretext_acc``: the position
  accuracy (chance 1/8).
- Patch size at 32 px (CIFAR-10). The paper samples 96-pixel patches with a gap of 48 (half a
  patch) and jitter up to 7. At 32 px: 8-pixel patches, gap 3, jitter 1 (3 * 8 + 2 * 3 + 2 = 32,
  the whole view), at their native resolution (``tile_size: 0``, as ``jigsaw``).
- Differences from the official code (Caffe): every image gives all 8 (centre, neighbour) pairs,
  whose 9 patches go through F once (the paper samples one pair per image); the network is the
  configured backbone with Linear-BN-ReLU fc6 / fc7 instead of AlexNet / VGG with batch norm
  ahead of fc6 only; no "projection" alternative to colour dropping and no random downsampling
  of patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from selfsup.core.checks import Checked, NonNegativeInt, PositiveInt
from selfsup.methods.base import RunInfo
from selfsup.methods.jigsaw import tile_grid
from selfsup.methods.pretext import PretextMethod
from selfsup.methods.rng import SharedGenerator
from selfsup.methods.tilenet import TileClassifier
from selfsup.views.tiles import cut_tiles, drop_colors
from selfsup.views.view import View

CENTRE = 4
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # grid cells of labels 0..7, row by row


@dataclass
class ContextConfig(Checked):
    section: ClassVar[str] = "context"

    tile: PositiveInt = 8  # pixels of a patch cut from the view
    gap: NonNegativeInt = 3  # pixels between neighbouring patches before jitter
    jitter: NonNegativeInt = 1  # each patch moves by up to this many pixels on each axis
    colour: Literal["drop", "none"] = "drop"  # against chromatic aberration
    tile_size: NonNegativeInt = 0  # patches are resized to this many pixels for the network (0: as cut)
    tile_dim: PositiveInt = 512  # fc6: per-patch feature
    hidden: PositiveInt = 1024  # fc7: on the pair's concatenated features


class Context(PretextMethod):
    Config = ContextConfig
    description = "Relative patch location: which of the 8 neighbours of the centre patch a patch is"

    def __init__(self, backbone: nn.Module, cfg: ContextConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        self.head = TileClassifier(backbone.out_dim, 2, cfg.tile_dim, cfg.hidden, len(NEIGHBOURS))
        self.rng = SharedGenerator()

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        tile_grid(cfg.params, cfg.views.size, cfg.params.gap)  # raises if the grid does not fit the view

    def patches(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The 9 patches of every image, colour dropped if configured: (B, 9, C, s, s)."""
        cfg = self.cfg
        tiles = cut_tiles(images, tile_grid(cfg, images.shape[-1], cfg.gap), gen, cfg.tile_size)
        if cfg.colour == "drop":
            tiles = drop_colors(tiles.flatten(0, 1), gen).view_as(tiles)
        return tiles

    def pretext(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
        images = views[0].images
        per_tile = self.head.embed(self.backbone, self.patches(images, self.rng.next(torch.device("cpu"))))
        b, _, d = per_tile.shape
        centre = per_tile[:, CENTRE:CENTRE + 1].expand(b, len(NEIGHBOURS), d)
        pairs = torch.stack([centre, per_tile[:, list(NEIGHBOURS)]], dim=2)  # (B, 8, 2, d)
        labels = torch.arange(len(NEIGHBOURS), device=images.device).repeat(b)
        return self.head.classify(pairs.flatten(0, 1)), labels
