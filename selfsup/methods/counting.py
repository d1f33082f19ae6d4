"""Counting visual primitives (Noroozi, Pirsiavash & Favaro: "Representation Learning by Learning
to Count", ICCV 2017).

- Views: ONE view x per image (the ``pretext`` recipe: random-resized crop and flip). Two
  transformations of it with the same number of pixels: the downsampled image D x (half the
  side; every image with a randomly picked resampling filter, ``random_downsample``, so that
  the network cannot tell D x from a tile by one filter's artefacts) and its 2 x 2 tiles
  T_1..4 x (``split_tiles``). The other image y of a pair is the next image of the batch.
- Networks: the counting network phi = ReLU(BN(W2 ReLU(BN(W1 F(.))))), the backbone F and an
  MLP head to ``counts`` non-negative counts (the paper: AlexNet with fc6, fc7 and a 1000-unit
  fc8, then a ReLU). The last BN (no affine) is ours: without it the first term drove every
  count to 0 within a few steps (ResNet-18, real CIFAR-10, lr 1e-3 to 1e-1: the loss sat at M,
  the ReLUs dead, so the contrastive term had no gradient left to undo it).
- Loss (``selfsup.losses.tiles.counting_loss``): the counts of the whole image equal the sum of
  its tiles' counts, and differ from those of another image by a margin,
      l(x, y) = |phi(D x) - sum_j phi(T_j x)|^2 + max(0, M - |phi(D y) - sum_j phi(T_j x)|^2),
  averaged over the batch and divided by ``counts`` (the paper's objective times a constant: at
  K = 1000 the first loss is about 3000 and the first SGD steps at lr 0.1 blew up the backbone).
- ``pretext_acc``: counting is a regression; its accuracy here is the retrieval the loss
  trains, on the batch: the tiles' sum sum_j phi(T_j x_i) is closest (squared Euclidean) to
  phi(D x_i) among phi(D x_k) of all k (chance 1 / batch size).
- Differences from the official code: the network is the configured backbone with a
  Linear-BN-ReLU-Linear-ReLU head; at 32 px D x and the tiles are 16 pixels (the paper: 114);
  the contrasting image is the next one of the batch rather than a random one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from selfsup.core.checks import Checked, Positive, PositiveInt
from selfsup.losses.tiles import counting_loss
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.pretext import PretextMethod, accuracy
from selfsup.methods.rng import SharedGenerator
from selfsup.views.tiles import random_downsample, split_tiles
from selfsup.views.view import View


@dataclass
class CountingConfig(Checked):
    section: ClassVar[str] = "counting"

    counts: PositiveInt = 1000  # visual primitives counted (the paper's fc8 width)
    hidden: PositiveInt = 1024  # width of the head's hidden layer
    margin: Positive = 10.0  # M of the contrastive term


class Counting(PretextMethod):
    Config = CountingConfig
    description = "Counting: the counts of the downsampled image equal the sum of its 4 tiles' counts"

    def __init__(self, backbone: nn.Module, cfg: CountingConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        self.head = nn.Sequential(
            nn.Linear(backbone.out_dim, cfg.hidden, bias=False), nn.BatchNorm1d(cfg.hidden), nn.ReLU(True),
            nn.Linear(cfg.hidden, cfg.counts, bias=False), nn.BatchNorm1d(cfg.counts, affine=False), nn.ReLU(),
        )
        self.rng = SharedGenerator()

    def count(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(D x) (B, K), sum_j phi(T_j x) (B, K)): one network pass over 5B small images."""
        b = images.shape[0]
        tiles = split_tiles(images, 2)  # (B, 4, C, s, s)
        down = random_downsample(images, tiles.shape[-1], self.rng.next(torch.device("cpu")))
        _, pooled = self.backbone(torch.cat([down, tiles.flatten(0, 1)]))
        phi = self.head(pooled)
        return phi[:b], phi[b:].view(b, 4, -1).sum(dim=1)

    def pretext(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
        return retrieval(*self.count(views[0].images))

    def forward(self, views: list[View]) -> StepOutput:
        down, tiles_sum = (c.float() for c in self.count(views[0].images))
        loss = counting_loss(down, tiles_sum, down.roll(1, dims=0), self.cfg.margin) / self.cfg.counts
        logs = {"pretext_acc": accuracy(*retrieval(down.detach(), tiles_sum.detach())),
                "count_norm": down.detach().norm(dim=1).mean()}
        return StepOutput(loss, logs, embedding=self.embedding(views))


def retrieval(down: torch.Tensor, tiles_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which downsampled image's counts each image's tile sum is nearest to: logits (B, B), the
    negative squared distances of sum_j phi(T_j x_i) to phi(D x_k), and targets (B,) = i."""
    logits = -torch.cdist(tiles_sum.float(), down.float()).pow(2)
    return logits, torch.arange(len(down), device=down.device)
