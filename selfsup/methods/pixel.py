"""What the pixel-level methods share (PixPro and PixContrast, Xie et al.: "Propagate Yourself:
Exploring Pixel-Level Consistency for Unsupervised Visual Representation Learning", CVPR 2021).

- Views: the BYOL recipe, which is PixPro's: two random-resized crops (scale U(0.08, 1), aspect
  log-uniform in [3/4, 4/3], flip p = 0.5), colour jitter (0.4, 0.4, 0.2, 0.1) p = 0.8,
  grayscale p = 0.2, blur p = 1.0 / 0.1 (sigma in 224-pixel units, scaled with the size),
  solarize p = 0 / 0.2. Each view carries its crop box (``View.boxes``), which places every
  feature cell in the source image (``selfsup.losses.pixel``).
- Online encoder: backbone -> the map(s) the pixel loss sees -> per-pixel projector
  ``conv_mlp(C, proj_hidden, proj_dim)`` (PixPro: 2048 -> 4096 -> 256 on ResNet-50). With
  ``neck: none`` the map is the backbone's last one, C5 (``backbone.output_stride`` 16 or 8
  doubles or quadruples its resolution). With ``neck: fpn`` an FPN (``fpn_dim`` channels) is built on C{l}..C5,
  l = ``fpn_min_level``, and the pixel loss is computed on each output P{l}..P5 with one
  shared projector and averaged over the levels (the paper applies its loss on every FPN
  level; the FPN here has no pooled P6, and starts at C{l} so that no parameter is left
  without a gradient, which DDP requires).
- Momentum encoder: a copy of backbone (+ neck) + projector, never trained by gradient;
  m_k = 1 - (1 - m_0) (cos(pi k / K) + 1) / 2 with m_0 = 0.99, updated after every optimiser
  step, i.e. before the next step's targets are computed (the official code updates at the
  start of the step: the same sequence of weights).
- Differences from the official code: both views go through each encoder in one batch, so BN
  statistics are shared by the two views (as ``selfsup``'s BYOL); zero-initialising the last
  BN of every residual block is the backbone's ``zero_init_residual`` (the presets set it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from selfsup.core.checks import Checked, Positive, PositiveInt, UnitInterval
from selfsup.core.errors import ConfigError
from selfsup.losses.pixel import positive_pairs
from selfsup.methods.base import Method, RunInfo
from selfsup.methods.momentum import MomentumEncoder
from selfsup.models.fpn import FPN
from selfsup.models.heads import conv_mlp
from selfsup.views.view import View


@dataclass
class PixelConfig(Checked):
    """Encoder, geometry and momentum settings shared by the pixel-level methods."""

    proj_hidden: PositiveInt = 4096
    proj_dim: PositiveInt = 256
    threshold: Positive = 0.7
    base_momentum: UnitInterval = 0.99
    neck: Literal["none", "fpn"] = "none"
    fpn_dim: PositiveInt = 256
    fpn_min_level: Literal[2, 3, 4, 5] = 3


PairLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class PixelMethod(Method):
    """Base of PixPro / PixContrast: online and momentum dense encoders, per-level pair losses."""

    recipe = "byol"
    section: ClassVar[str] = ""  # the config section, for error messages

    def __init__(self, backbone: nn.Module, cfg: PixelConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        self.neck = FPN(backbone.stage_dims[cfg.fpn_min_level - 2 :], cfg.fpn_dim) if cfg.neck == "fpn" else None
        in_dim = cfg.fpn_dim if self.neck is not None else backbone.out_dim
        self.projector = conv_mlp(in_dim, cfg.proj_hidden, cfg.proj_dim)
        self.target = MomentumEncoder(cfg.base_momentum, backbone=backbone, neck=self.neck, projector=self.projector)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if cfg.params.neck == "fpn" and not cfg.backbone.is_resnet:
            raise ConfigError(f"{cfg.method}.neck: fpn needs a ResNet backbone (one with stages C2..C5), "
                              f"got {cfg.backbone.name!r}")

    def dense(self, images: torch.Tensor, target: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Projected maps (B, proj_dim, h, w) of every pixel-loss level, and the backbone's last
        map C5, of the online (or, with ``target``, the momentum) encoder."""
        source = self.target if target else self
        backbone, neck, projector = source.backbone, source.neck, source.projector
        if neck is None:
            c5 = backbone(images)[0]
            return [projector(c5)], c5
        stages = backbone.stages(images)
        levels = neck(stages[self.cfg.fpn_min_level - 2 :])
        return [projector(p) for p in levels], stages[-1]

    def pair_loss(
        self, views: list[View], online: list[torch.Tensor], targets: list[torch.Tensor], loss: PairLoss
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``loss(online view 1, target view 2, positives) + loss(online view 2, target view 1,
        positives^T)`` averaged over the levels; also the mean number of positive pairs per
        image at the first level (logged). Maps hold view 1 then view 2 along the batch."""
        total = torch.zeros((), device=online[0].device)
        counts = []
        for z, t in zip(online, targets, strict=True):
            z1, z2 = z.chunk(2)
            t1, t2 = t.chunk(2)
            pos = positive_pairs(views[0].boxes, views[1].boxes, z1.shape[-2:], t2.shape[-2:], self.cfg.threshold)
            total = total + loss(z1, t2, pos) + loss(z2, t1, pos.transpose(1, 2))
            counts.append(pos.sum(dim=(1, 2)).float().mean())
        return total / len(online), counts[0]

    def on_step(self, step: int, total_steps: int) -> None:
        # the momentum is a pure function of the step, so a resumed run continues exactly
        self.target.update(step, total_steps)


def pixel_embedding(projected: torch.Tensor) -> torch.Tensor:
    """The per-pixel projections of view 1 as (B/2 * h * w, D), detached: the collapse monitor's input."""
    return projected.chunk(2)[0].detach().permute(0, 2, 3, 1).flatten(0, 2)
