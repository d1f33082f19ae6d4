"""Jigsaw Clustering (Chen, Liu & Jia: "Jigsaw Clustering for Unsupervised Visual Representation
Learning", CVPR 2021).

- Views: ONE view per image (the ``pretext`` recipe: random-resized crop and flip), split into
  ``grid`` x ``grid`` tiles (resized to ``tile_size`` pixels when set). The B * grid^2 tiles of the
  batch are shuffled together and dealt back into B montages of grid x grid tiles
  (``selfsup.views.tiles.shuffle_across_images`` and ``montage``): a montage mixes tiles of
  several images, each at a random slot.
- Networks: the backbone F runs once on the montages (the batch costs one pass, as the plain
  batch would); its feature map is average-pooled into grid x grid cells, one per slot. Two
  heads on a cell's vector: the clustering branch, an MLP projection (Linear-BN-ReLU-Linear to
  ``proj_dim``), and the location branch, a linear classifier to the grid^2 positions.
- Loss: L = L_clu + ``loc_weight`` * L_loc. L_clu (``selfsup.losses.tiles.cluster_contrastive``)
  is a contrastive loss over all tiles of the batch in which a tile's positives are the other
  tiles of the SAME source image (recover which tiles belong together, i.e. the images);
  L_loc is the cross-entropy of each tile's position in its source image.
  ``pretext_acc``: the position accuracy (chance 1 / grid^2).
- At 32 px: 2 x 2 tiles of 16 pixels, the montage is 32 pixels and the CIFAR ResNet stem gives
  a 4 x 4 feature map (2 x 2 cells per tile). The standard stem's 1 x 1 map at 32 px cannot be
  split: there set ``tile_size: 24`` (a 48-pixel montage, 2 x 2 map, 2.25 times the compute).
- Differences from the official code: tiles are cut without overlap from the one augmented
  view (the official code crops overlapping tiles and augments each separately); the feature
  map is pooled per slot by adaptive average pooling; the temperature is this library's
  default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegative, NonNegativeInt, Positive, PositiveInt
from selfsup.core.tensors import upcast
from selfsup.losses.tiles import cluster_contrastive
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.pretext import PretextMethod, accuracy
from selfsup.methods.rng import SharedGenerator
from selfsup.methods.tilenet import fc
from selfsup.views.tiles import montage, resize_tiles, shuffle_across_images, split_tiles
from selfsup.views.view import View


@dataclass
class JigCluConfig(Checked):
    section: ClassVar[str] = "jigclu"

    grid: PositiveInt = 2  # tiles per side of an image and of a montage
    tile_size: NonNegativeInt = 0  # tiles are resized to this many pixels (0: as cut)
    proj_dim: PositiveInt = 128  # clustering branch output
    hidden: PositiveInt = 512  # clustering branch hidden layer
    temperature: Positive = 0.2
    loc_weight: NonNegative = 1.0


class JigClu(PretextMethod):
    Config = JigCluConfig
    description = "Jigsaw Clustering: montages of tiles from several images; recover each tile's image and position"

    def __init__(self, backbone: nn.Module, cfg: JigCluConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        self.projector = nn.Sequential(fc(backbone.out_dim, cfg.hidden), nn.Linear(cfg.hidden, cfg.proj_dim))
        self.locator = nn.Linear(backbone.out_dim, cfg.grid**2)
        self.rng = SharedGenerator()

    def tiles(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slot features of the batch's montages (B * grid^2, D), row by row, and each slot's
        source image (B * grid^2,) and position in it (B * grid^2,)."""
        g = self.cfg.grid
        tiles = split_tiles(images, g)
        if self.cfg.tile_size:
            tiles = resize_tiles(tiles, self.cfg.tile_size)
        shuffled, source, position = shuffle_across_images(tiles, self.rng.next(torch.device("cpu")))
        fmap, _ = self.backbone(montage(shuffled, g))
        if fmap.shape[-1] < g or fmap.shape[-1] % g or fmap.shape[-2] % g:
            raise ValueError(f"jigclu: the backbone's {tuple(fmap.shape[-2:])} feature map of a "
                             f"{montage(shuffled[:1], g).shape[-1]}-pixel montage cannot be split into {g} x {g} "
                             f"cells; set jigclu.tile_size larger (or backbone.cifar_stem: true)")
        cells = F.adaptive_avg_pool2d(fmap, g).flatten(2).transpose(1, 2).flatten(0, 1)
        return cells, source.flatten(), position.flatten()

    def pretext(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
        cells, _, position = self.tiles(views[0].images)
        return self.locator(cells), position

    def forward(self, views: list[View]) -> StepOutput:
        cells, source, position = self.tiles(views[0].images)
        loc_logits = self.locator(cells)
        loc = F.cross_entropy(upcast(loc_logits), position)
        clu = cluster_contrastive(upcast(self.projector(cells)), source, self.cfg.temperature)
        logs = {"pretext_acc": accuracy(loc_logits, position), "loss_loc": loc.detach(), "loss_clu": clu.detach()}
        return StepOutput(clu + self.cfg.loc_weight * loc, logs, embedding=self.embedding(views))
