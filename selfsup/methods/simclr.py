"""SimCLR (Chen, Kornblith, Norouzi, Hinton: "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020).

- Views: two independent draws of the SimCLR recipe (random-resized crop, flip, strong colour
  jitter p=0.8, grayscale p=0.2, blur p=0.5 at ImageNet scale).
- Networks: backbone f, projector g = MLP(C -> hidden -> out) with BN + ReLU.
- Loss: NT-Xent over the 2N projections of the global batch; under DDP the projections are
  gathered WITH gradient so negatives on other ranks are trained too (as the official TPU
  code's cross-replica negatives).
- Differences from the official code: the projector's last layer has a bias and no BN
  (SimCLR v1); LARS is optional (``optim.name: lars``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from selfsup.losses.contrastive import nt_xent
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.train.distributed import gather_with_grad, rank
from selfsup.views.view import View


@dataclass
class SimCLRConfig:
    temperature: float = 0.1
    proj_hidden: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2


class SimCLR(Method):
    Config = SimCLRConfig
    recipe = "simclr"
    description = "SimCLR: NT-Xent between two views, negatives from the global batch"

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig, run: RunInfo) -> None:
        from selfsup.models.heads import mlp

        super().__init__(backbone, run)
        self.cfg = cfg
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers)

    def forward(self, views: list[View]) -> StepOutput:
        h1, h2 = self.encode(views)
        z1, z2 = self.projector(h1), self.projector(h2)
        z1_all, z2_all = gather_with_grad(z1), gather_with_grad(z2)
        loss = nt_xent(z1, z2, self.cfg.temperature, z1_all, z2_all, offset=rank() * z1.shape[0])
        return StepOutput(loss, {}, embedding=z1.detach())
