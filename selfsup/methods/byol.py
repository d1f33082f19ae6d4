"""BYOL (Grill et al.: "Bootstrap Your Own Latent", NeurIPS 2020).

- Views: the asymmetric BYOL recipe (view 1 always blurred; view 2 rarely blurred and
  sometimes solarized).
- Networks: online = backbone + projector MLP(C -> 4096 -> 256) + predictor
  MLP(256 -> 4096 -> 256); target = EMA copy of backbone + projector, never trained by
  gradient.
- Loss: 2 - 2 cos(q_online(v1), z_target(v2)) symmetrised over the two views (summed).
- Schedule: target momentum tau_k = 1 - (1 - tau_0) (cos(pi k / K) + 1) / 2, tau_0 = 0.996,
  updated after every optimiser step.
- Difference from the official code: both views go through the backbone in one batch, so
  BN statistics are computed over both views together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from selfsup.core.checks import Checked, PositiveInt, UnitInterval
from selfsup.losses.regression import normalized_mse
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.momentum import MomentumEncoder
from selfsup.views.view import View


@dataclass
class BYOLConfig(Checked):
    section: ClassVar[str] = "byol"

    proj_hidden: PositiveInt = 4096
    proj_dim: PositiveInt = 256
    pred_hidden: PositiveInt = 4096
    base_momentum: UnitInterval = 0.996


class BYOL(Method):
    Config = BYOLConfig
    recipe = "byol"
    description = "BYOL: predict an EMA target network's projection of the other view"

    def __init__(self, backbone: nn.Module, cfg: BYOLConfig, run: RunInfo) -> None:
        from selfsup.models.heads import mlp

        super().__init__(backbone, run)
        self.cfg = cfg
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.target = MomentumEncoder(cfg.base_momentum, backbone=backbone, projector=self.projector)

    def forward(self, views: list[View]) -> StepOutput:
        h1, h2 = self.encode(views)
        p1, p2 = self.predictor(self.projector(h1)), self.predictor(self.projector(h2))
        with torch.no_grad():
            x = torch.cat([v.images for v in views])
            t1, t2 = self.target.projector(self.target.backbone(x)[1]).chunk(2)
        loss = normalized_mse(p1, t2) + normalized_mse(p2, t1)
        return StepOutput(loss, {"momentum": torch.tensor(self.target.momentum)}, embedding=p1.detach())

    def on_step(self, step: int, total_steps: int) -> None:
        # the momentum is a pure function of the step, so a resumed run continues exactly
        self.target.update(step, total_steps)
