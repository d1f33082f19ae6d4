"""SimSiam (Chen & He: "Exploring Simple Siamese Representation Learning", CVPR 2021).

- Views: two views per image with the SimCLR recipe (random-resized crop, flip, colour
  jitter p = 0.8, grayscale p = 0.2, blur p = 0.5 at ImageNet scale).
- Networks: ONE encoder f = backbone + projector MLP(C -> 2048 -> 2048 -> 2048) with BN on
  every layer, the output BN without affine parameters; predictor h = MLP(2048 -> 512 -> 2048)
  (a bottleneck; 512 -> 128 -> 512 in the CIFAR preset). No momentum encoder, no negatives.
- Loss: with z = f(x), p = h(z) and D(p, z) = -cos(p, stopgrad(z)),
      L = D(p1, z2) / 2 + D(p2, z1) / 2.
  The stop-gradient is what prevents collapse.
- Schedule: cosine learning rate, except that with ``fix_pred_lr`` (the official
  recommendation) the predictor keeps the base learning rate: it declares its own optimiser
  group with ``fixed_lr`` (``Method.optimizer_groups``), which the trainer's schedule skips.
- Differences from the official code: both views go through the backbone in one batch (BN
  over both views); the views' colour jitter is the SimCLR recipe's (0.8, 0.8, 0.8, 0.2)
  instead of MoCo v2's (0.4, 0.4, 0.4, 0.1); the projector's hidden width is ``proj_hidden``
  (the official one keeps the backbone's width: 2048 for a ResNet-50, 512 for a ResNet-18).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from selfsup.core.checks import Checked, PositiveInt
from selfsup.losses.regression import negative_cosine
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.views.view import View


@dataclass
class SimSiamConfig(Checked):
    section: ClassVar[str] = "simsiam"

    proj_hidden: PositiveInt = 2048
    proj_dim: PositiveInt = 2048
    pred_hidden: PositiveInt = 512
    fix_pred_lr: bool = True


class SimSiam(Method):
    Config = SimSiamConfig
    recipe = "simclr"
    description = "SimSiam: predict the other view's projection, stop-gradient, no negatives or momentum"

    def __init__(self, backbone: nn.Module, cfg: SimSiamConfig, run: RunInfo) -> None:
        from selfsup.models.heads import mlp

        super().__init__(backbone, run)
        self.cfg = cfg
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, num_layers=3, last_bn=True)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)

    def forward(self, views: list[View]) -> StepOutput:
        h1, h2 = self.encode(views[:2])
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = negative_cosine(p1, z2.detach()) / 2 + negative_cosine(p2, z1.detach()) / 2
        return StepOutput(loss, {}, embedding=z1.detach())

    def optimizer_groups(self) -> list[dict]:
        return [{"params": self.predictor.parameters(), "fixed_lr": True}] if self.cfg.fix_pred_lr else []
