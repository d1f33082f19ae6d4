"""PixPro (Xie, Lin, Zhang, Cao, Lin, Hu: "Propagate Yourself: Exploring Pixel-Level Consistency
for Unsupervised Visual Representation Learning", CVPR 2021).

- Views: PixPro's = the asymmetric BYOL recipe; every view carries its crop box, which
  decides the positive pixel pairs (cells whose bin centres are closer than T = 0.7 bin
  diagonals; ``selfsup.losses.pixel``).
- Networks: online = backbone (+ optional FPN neck) + per-pixel projector
  (1x1 conv C -> 4096 -> 256, BN + ReLU) + pixel propagation module (PPM, online branch only:
  y_i = sum_j max(cos(x_i, x_j), 0)^gamma g(x_j)/||g(x_j)||, gamma = 2, g one 1x1 conv, y
  normalised); momentum = EMA copy of backbone (+ neck) + projector (``selfsup.methods.pixel``).
- Loss: pixel-to-propagation consistency, per image -2 sum_{positive (i, j)} cos(y_i, x'_j) /
  (#positives + 1e-6), averaged over the batch, both directions (view 1 propagated vs view 2
  momentum projection, and the reverse) summed.
- Instance branch (``instance_weight`` alpha > 0; the paper's "PixPro + instance" uses 1, see
  the preset ``camvid/pixpro_instance``): its own per-pixel projector (C -> 4096 -> 256) and
  predictor (256 -> 4096 -> 256) on C5, average-pooled over the whole map after the predictor
  (adaptive pooling, for any map size), BYOL loss against the momentum instance projector,
  symmetrised. Total = L_pix + alpha L_inst.
- Schedule: momentum 0.99 -> 1 (cosine per step), updated after every optimiser step.
- Differences from the official code: both views share one batch through each encoder (BN
  statistics over both views); the instance loss is BYOL's 2 - 2 cos per direction (the same
  gradient as -2 cos; the logged value is 4 higher at alpha = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import NonNegative, Positive, PositiveInt
from selfsup.losses.pixel import pixpro_loss
from selfsup.losses.regression import normalized_mse
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.pixel import PixelConfig, PixelMethod, pixel_embedding
from selfsup.models.heads import conv_mlp
from selfsup.models.ppm import PPM
from selfsup.views.view import View


@dataclass
class PixProConfig(PixelConfig):
    """PixPro's defaults (ResNet-50 on ImageNet); ``instance_weight`` > 0 adds the instance branch."""

    section: ClassVar[str] = "pixpro"

    gamma: Positive = 2.0
    ppm_layers: Literal[0, 1, 2] = 1
    instance_weight: NonNegative = 0.0
    inst_hidden: PositiveInt = 4096
    inst_dim: PositiveInt = 256


class PixPro(PixelMethod):
    Config = PixProConfig
    section = "pixpro"
    description = "PixPro: pixel-to-propagation consistency with a momentum encoder (+ optional instance branch)"

    def __init__(self, backbone: nn.Module, cfg: PixProConfig, run: RunInfo) -> None:
        super().__init__(backbone, cfg, run)
        self.ppm = PPM(cfg.proj_dim, cfg.ppm_layers, cfg.gamma)
        self.instance = cfg.instance_weight > 0
        if self.instance:
            self.instance_projector = conv_mlp(backbone.out_dim, cfg.inst_hidden, cfg.inst_dim)
            self.instance_predictor = conv_mlp(cfg.inst_dim, cfg.inst_hidden, cfg.inst_dim)
            self.target.add(instance_projector=self.instance_projector)

    def forward(self, views: list[View]) -> StepOutput:
        images = torch.cat([views[0].images, views[1].images])
        online, c5 = self.dense(images)
        with torch.no_grad():
            targets, target_c5 = self.dense(images, target=True)
        loss, positives = self.pair_loss(views, [self.ppm(z) for z in online], targets, pixpro_loss)
        logs = {"pixel_loss": loss.detach(), "positives": positives, "momentum": torch.tensor(self.target.momentum)}
        if self.instance:
            p1, p2 = _pooled(self.instance_predictor(self.instance_projector(c5))).chunk(2)
            with torch.no_grad():
                t1, t2 = _pooled(self.target.instance_projector(target_c5)).chunk(2)
            instance_loss = normalized_mse(p1, t2) + normalized_mse(p2, t1)
            loss = loss + self.cfg.instance_weight * instance_loss
            logs["instance_loss"] = instance_loss.detach()
        return StepOutput(loss, logs, embedding=pixel_embedding(online[0]))


def _pooled(fmap: torch.Tensor) -> torch.Tensor:
    """Average over the whole feature map, whatever its size: (B, C, h, w) -> (B, C)."""
    return F.adaptive_avg_pool2d(fmap, 1).flatten(1)
