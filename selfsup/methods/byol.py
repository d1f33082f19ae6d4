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

import copy
from dataclasses import dataclass

import torch
from torch import nn

from selfsup.losses.regression import normalized_mse
from selfsup.methods.base import Method, RunInfo, StepOutput, ema_update, momentum_schedule
from selfsup.views.view import View


@dataclass
class BYOLConfig:
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    base_momentum: float = 0.996


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
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum = cfg.base_momentum

    def forward(self, views: list[View]) -> StepOutput:
        h1, h2 = self.encode(views)
        p1, p2 = self.predictor(self.projector(h1)), self.predictor(self.projector(h2))
        with torch.no_grad():
            x = torch.cat([v.images for v in views])
            t1, t2 = self.target_projector(self.target_backbone(x)[1]).chunk(2)
        loss = normalized_mse(p1, t2) + normalized_mse(p2, t1)
        return StepOutput(loss, {"momentum": torch.tensor(self.momentum)}, embedding=p1.detach())

    def on_step(self, step: int, total_steps: int) -> None:
        # the momentum is a pure function of the step, so a resumed run continues exactly
        self.momentum = momentum_schedule(self.cfg.base_momentum, step - 1, total_steps)
        ema_update(self.target_backbone, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)
