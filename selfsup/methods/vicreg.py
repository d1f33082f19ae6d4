"""VICReg (Bardes, Ponce, LeCun: "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022).

- Views: two views per image with BYOL's asymmetric recipe (blur 1.0 / 0.1, solarize 0 / 0.2).
- Networks: ONE encoder: backbone + expander MLP(C -> 8192 -> 8192 -> 8192) with BN + ReLU
  between layers (2048 -> 2048 -> 2048 in the CIFAR preset, as solo-learn's CIFAR recipe).
- Loss (``selfsup.losses.redundancy.vicreg_loss``) on the expander outputs Z, Z' of the
  GLOBAL batch:
      L = 25 s(Z, Z') + 25 [v(Z) + v(Z')] / 2 + 1 [c(Z) + c(Z')],
  invariance s = mean squared difference, variance v = mean_j relu(1 - sqrt(Var z^j + 1e-4)),
  covariance c = sum of squared off-diagonal covariances / D. Under DDP the outputs are
  gathered with gradient and every rank computes the global loss, so gradients equal the
  single-process ones (as the official FullGatherLayer).
- Differences from the official code: the invariance term is computed on the gathered
  batch (the official code averages per-rank terms: the same value); both views go
  through the backbone in one batch (BN over both views); the expander's hidden linear
  layers have no bias and its last one has a bias (the official code: the reverse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from selfsup.core.checks import Checked, NonNegative, Positive, PositiveInt
from selfsup.core.comm import gather_with_grad
from selfsup.core.tensors import upcast
from selfsup.losses.redundancy import vicreg_loss
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.views.view import View


@dataclass
class VICRegConfig(Checked):
    section: ClassVar[str] = "vicreg"

    proj_hidden: PositiveInt = 8192
    proj_dim: PositiveInt = 8192
    sim_weight: NonNegative = 25.0
    var_weight: NonNegative = 25.0
    cov_weight: NonNegative = 1.0
    gamma: Positive = 1.0
    eps: Positive = 1e-4


class VICReg(Method):
    Config = VICRegConfig
    recipe = "byol"
    description = "VICReg: invariance + variance hinge + covariance decorrelation of two views' embeddings"

    def __init__(self, backbone: nn.Module, cfg: VICRegConfig, run: RunInfo) -> None:
        from selfsup.models.heads import mlp

        super().__init__(backbone, run)
        self.cfg = cfg
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, num_layers=3)

    def forward(self, views: list[View]) -> StepOutput:
        c = self.cfg
        h1, h2 = self.encode(views[:2])
        z1, z2 = self.projector(h1), self.projector(h2)
        loss, terms = vicreg_loss(upcast(gather_with_grad(z1)), upcast(gather_with_grad(z2)),
                                  c.sim_weight, c.var_weight, c.cov_weight, c.gamma, c.eps)
        return StepOutput(loss, terms, embedding=z1.detach())
