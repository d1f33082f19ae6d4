"""MoCo v3 (Chen, Xie, He: "An Empirical Study of Training Self-Supervised Vision
Transformers", ICCV 2021).

- Views: two views per image with BYOL's asymmetric recipe (blur 1.0 / 0.1, solarize 0 / 0.2).
- Networks: online = backbone + projector + predictor; momentum = EMA copy of backbone +
  projector. Projector MLP(C -> 4096 -> 256) with BN on every layer including an affine-free
  output BN: 2 layers for a ResNet, 3 for a ViT; predictor MLP(256 -> 4096 -> 256).
  ResNet or ViT backbones alike; ``freeze_patch_embed`` keeps a ViT's random patch
  projection fixed (the official "stop-grad conv1" stability trick).
- Loss: no queue; the keys are the momentum encoder's projections of the OTHER view of the
  global batch, gathered over ranks without gradient. With q = pred(proj(f(x))) and k
  L2-normalised, for this rank's n queries at global offset r n:
      ctr(q, k) = 2 t * CE(q k_all^T / t, labels = r n + i),
      L = ctr(q1, k2) + ctr(q2, k1),
  t = 1.0 for ResNets in the paper (0.2 for ViTs and the CIFAR preset); the 2 t factor is the
  official code's. ``loss`` selects another loss of the InfoNCE family on the same
  (positive, negatives) similarities.
- Schedule: momentum m_k = 1 - (1 - m_0) (cos(pi k / K) + 1) / 2 from m_0 = 0.99 to 1; the
  update after the optimiser step k (0-based) uses m_k, the library's one convention
  (``selfsup.methods.momentum``). The official code updates before the forward of step k + 1
  with m_{k+1}: one schedule step later, at most (1 - m_0) pi / (2K) apart.
- Differences from the official code: the backbone runs both views in one batch (BN over
  both views; the official code makes one pass per view; the heads run per view as there);
  the heads' hidden linear layers have no bias as there, but the predictor's last layer has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegative, NonNegativeInt, Positive, PositiveInt, Range, UnitInterval
from selfsup.core.comm import gather, rank
from selfsup.core.errors import ConfigError
from selfsup.core.tensors import upcast
from selfsup.losses.contrastive import PairLossName, drop_columns, pair_loss
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.momentum import MomentumEncoder
from selfsup.models.backbones import ViTBackbone
from selfsup.views.view import View


@dataclass
class MoCoV3Config(Checked):
    """MoCo v3's options (paper defaults for a ResNet-50; the CIFAR preset changes some).

    proj_layers: 0 picks the paper's depth (3 for a ViT, 2 for a ResNet).
    freeze_patch_embed: ViT backbones only; the patch embedding keeps its random init.
    loss: one of ``PAIR_LOSSES``, with tau_plus / beta for the debiased and hard-negative losses.
    """

    section: ClassVar[str] = "mocov3"

    temperature: Positive = 1.0
    proj_hidden: PositiveInt = 4096
    proj_dim: PositiveInt = 256
    proj_layers: NonNegativeInt = 0
    pred_hidden: PositiveInt = 4096
    base_momentum: UnitInterval = 0.99
    freeze_patch_embed: bool = False
    loss: PairLossName = "infonce"
    tau_plus: Annotated[float, Range(ge=0, lt=1)] = 0.1
    beta: NonNegative = 1.0


class MoCoV3(Method):
    Config = MoCoV3Config
    recipe = "byol"
    description = "MoCo v3: in-batch InfoNCE against momentum keys of the other view, predictor, no queue"

    def __init__(self, backbone: nn.Module, cfg: MoCoV3Config, run: RunInfo) -> None:
        from selfsup.models.heads import mlp

        super().__init__(backbone, run)
        self.cfg = cfg
        vit = isinstance(backbone, ViTBackbone)
        if cfg.freeze_patch_embed:
            backbone.net.patch_embed.requires_grad_(False)
        layers = cfg.proj_layers or (3 if vit else 2)
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, layers, last_bn=True)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.momentum_encoder = MomentumEncoder(cfg.base_momentum, backbone=backbone, projector=self.projector)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if cfg.params.freeze_patch_embed and cfg.backbone.is_resnet:
            raise ConfigError(f"mocov3.freeze_patch_embed needs a ViT backbone, got {cfg.backbone.name!r}")

    def contrast(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """2 t * InfoNCE of this rank's queries against the keys of the global batch."""
        cfg = self.cfg
        q = F.normalize(upcast(q), dim=1)
        k_all = F.normalize(upcast(gather(k)), dim=1)
        n = q.shape[0]
        sims = q @ k_all.T
        positive = torch.arange(n, device=q.device) + rank() * n  # the key of the same image
        pos, neg = sims[torch.arange(n, device=q.device), positive], drop_columns(sims, positive)
        loss = pair_loss(cfg.loss, pos, neg, cfg.temperature, tau_plus=cfg.tau_plus, beta=cfg.beta)
        return loss * 2 * cfg.temperature

    def forward(self, views: list[View]) -> StepOutput:
        h1, h2 = self.encode(views[:2])
        z1 = self.projector(h1)
        q1, q2 = self.predictor(z1), self.predictor(self.projector(h2))
        with torch.no_grad():
            m = self.momentum_encoder
            k1, k2 = (m.projector(h) for h in self.encode(views[:2], m.backbone))
        loss = self.contrast(q1, k2) + self.contrast(q2, k1)
        return StepOutput(loss, {"momentum": torch.tensor(self.momentum_encoder.momentum)}, embedding=z1.detach())

    def on_step(self, step: int, total_steps: int) -> None:
        # a pure function of the step, so a resumed run continues exactly
        self.momentum_encoder.update(step, total_steps)
