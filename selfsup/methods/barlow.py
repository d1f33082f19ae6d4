"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny: "Barlow Twins: Self-Supervised Learning
via Redundancy Reduction", ICML 2021).

- Views: two views per image with BYOL's asymmetric recipe (blur 1.0 / 0.1, solarize 0 / 0.2).
- Networks: ONE encoder: backbone + projector MLP(C -> 8192 -> 8192 -> 8192) with BN + ReLU
  between layers (2048 -> 2048 -> 2048 in the CIFAR preset, as solo-learn's CIFAR recipe).
- Loss: every projection dimension is standardised over the GLOBAL batch, C is the
  cross-correlation matrix of the two views' standardised projections and
      L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2,   lambda = 0.0051
  (``selfsup.losses.redundancy.barlow_twins_loss``), times ``scale_loss`` (1 in the paper,
  0.1 in solo-learn's CIFAR recipe). Under DDP the projections are gathered with gradient
  and every rank computes the global loss, so gradients equal the single-process ones
  (the official code all-reduces C and uses SyncBN for the standardisation: the same).
- Differences from the official code: the projector's last linear layer has a bias (it
  cancels in the standardisation); both views go through the backbone in one batch (BN
  over both views).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from selfsup.core.checks import Checked, NonNegative, Positive, PositiveInt
from selfsup.core.comm import gather_with_grad
from selfsup.core.tensors import upcast
from selfsup.losses.redundancy import barlow_twins_loss
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.views.view import View


@dataclass
class BarlowTwinsConfig(Checked):
    section: ClassVar[str] = "barlow"

    proj_hidden: PositiveInt = 8192
    proj_dim: PositiveInt = 8192
    lambd: NonNegative = 0.0051
    scale_loss: Positive = 1.0


class BarlowTwins(Method):
    Config = BarlowTwinsConfig
    recipe = "byol"
    description = "Barlow Twins: push the cross-correlation of two views' embeddings to the identity"

    def __init__(self, backbone: nn.Module, cfg: BarlowTwinsConfig, run: RunInfo) -> None:
        from selfsup.models.heads import mlp

        super().__init__(backbone, run)
        self.cfg = cfg
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, num_layers=3)

    def forward(self, views: list[View]) -> StepOutput:
        h1, h2 = self.encode(views[:2])
        z1, z2 = self.projector(h1), self.projector(h2)
        loss, terms = barlow_twins_loss(upcast(gather_with_grad(z1)), upcast(gather_with_grad(z2)), self.cfg.lambd)
        return StepOutput(loss * self.cfg.scale_loss, terms, embedding=z1.detach())
