"""SimCLR (Chen, Kornblith, Norouzi, Hinton: "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020), with the SimCLR v2 head (Chen, Kornblith, Swersky,
Norouzi, Hinton: "Big Self-Supervised Models are Strong Semi-Supervised Learners", NeurIPS 2020).

- Views: two independent draws of the SimCLR recipe (random-resized crop, flip, strong colour
  jitter p=0.8, grayscale p=0.2, blur p=0.5 at ImageNet scale).
- Networks: backbone f, projector g = MLP(C -> hidden -> out) with BN + ReLU.
- Loss: NT-Xent over the 2N projections of the global batch; under DDP the projections are
  gathered WITH gradient so negatives on other ranks are trained too (as the official TPU
  code's cross-replica negatives). ``loss`` selects another loss of the InfoNCE family on the
  same (positive, negatives) similarities (``selfsup.losses.contrastive.PAIR_LOSSES``:
  debiased, hard_negative, flatnce, dcl), or ``align_uniform``: Wang & Isola's
  ``align_weight * L_align + uniform_weight * L_uniform`` (alpha = 2, t = 2) on the
  normalised projections, uniformity over the gathered batch, averaged over the two views.
  Alignment and uniformity of the projections are logged whatever the loss.
- SimCLR v2 head: ``proj_layers: 3`` and ``proj_last_bn: true`` (BN on every projector layer)
  with ``finetune_from_layer: 1``: the first projector layer (Linear-BN-ReLU) becomes part
  of the encoder that is evaluated (kNN, linear, align) and exported ("fine-tune from the
  middle layer of the projection head"; ``ft_proj_selector`` in the official code).
- Differences from the official code: by default (as the v1 paper describes it) the
  projector's last layer has a bias and no BN, where the official v1 and v2 code put BN on
  the output too; with ``proj_last_bn`` that BN has no affine parameters (the official one
  learns a scale). The hidden width is ``proj_hidden`` (the official v2 head keeps the
  backbone's width). LARS is optional (``optim.name: lars``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegative, NonNegativeInt, Positive, PositiveInt, Range
from selfsup.core.comm import gather_with_grad, rank
from selfsup.core.errors import ConfigError
from selfsup.losses.alignment import alignment, uniformity
from selfsup.losses.contrastive import PAIR_LOSSES, pair_loss, simclr_pairs
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.views.view import View

LOSSES = (*PAIR_LOSSES, "align_uniform")


@dataclass
class SimCLRConfig(Checked):
    """SimCLR's own options (paper defaults; the CIFAR preset changes some).

    loss: one of ``LOSSES``; tau_plus (class prior, debiased / hard_negative), beta (hardness,
    hard_negative), align_weight / uniform_weight (align_uniform) configure the others.
    finetune_from_layer: how many projector layers (0 .. proj_layers - 1) belong to the
    evaluated and exported encoder (SimCLR v2 uses 1 with a 3-layer projector).
    """

    section: ClassVar[str] = "simclr"

    temperature: Positive = 0.1
    proj_hidden: PositiveInt = 2048
    proj_dim: PositiveInt = 128
    proj_layers: PositiveInt = 2
    proj_last_bn: bool = False
    finetune_from_layer: NonNegativeInt = 0
    loss: Literal["infonce", "debiased", "hard_negative", "flatnce", "dcl", "align_uniform"] = "infonce"
    tau_plus: Annotated[float, Range(ge=0, lt=1)] = 0.1
    beta: NonNegative = 1.0
    align_weight: NonNegative = 1.0
    uniform_weight: NonNegative = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.finetune_from_layer < self.proj_layers:
            raise ConfigError(
                f"simclr.finetune_from_layer must be in 0..{self.proj_layers - 1} (proj_layers - 1), "
                f"got {self.finetune_from_layer}"
            )


class ProjectedBackbone(nn.Module):
    """A backbone followed by the first projector layers: SimCLR v2's fine-tuned encoder.

    ``forward(x) -> (fmap, head(pooled))``; ``out_dim`` is the head's width. The export holds
    the backbone's own weights (torchvision / timm names) plus the head's under ``projector.``
    (``nn.Sequential(Linear(C, hidden, bias=False), BatchNorm1d(hidden), ReLU())`` per layer).
    """

    def __init__(self, trunk: nn.Module, head: nn.Sequential, out_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap, pooled = self.trunk(x)
        return fmap, self.head(pooled)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        head = {f"projector.{k}": v.detach().clone() for k, v in self.head.state_dict().items()}
        return {**self.trunk.export_state_dict(), **head}


class SimCLR(Method):
    Config = SimCLRConfig
    recipe = "simclr"
    description = "SimCLR: NT-Xent between two views, negatives from the global batch"

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig, run: RunInfo) -> None:
        from selfsup.models.heads import mlp

        super().__init__(backbone, run)
        self.cfg = cfg
        head = mlp(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers, last_bn=cfg.proj_last_bn)
        kept = 3 * cfg.finetune_from_layer  # each hidden layer of ``mlp`` is Linear, BN, ReLU
        if kept:
            self.backbone = ProjectedBackbone(backbone, head[:kept], cfg.proj_hidden)
        self.projector = head[kept:]

    def forward(self, views: list[View]) -> StepOutput:
        cfg = self.cfg
        h1, h2 = self.encode(views)
        z1, z2 = self.projector(h1), self.projector(h2)
        z1_all, z2_all = gather_with_grad(z1), gather_with_grad(z2)
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.loss == "align_uniform"):
            align = alignment(F.normalize(z1, dim=1), F.normalize(z2, dim=1))
            unif = (uniformity(F.normalize(z1_all, dim=1)) + uniformity(F.normalize(z2_all, dim=1))) / 2
        if cfg.loss == "align_uniform":
            loss = cfg.align_weight * align + cfg.uniform_weight * unif
        else:
            pos, neg = simclr_pairs(z1, z2, z1_all, z2_all, offset=rank() * z1.shape[0])
            loss = pair_loss(cfg.loss, pos, neg, cfg.temperature, tau_plus=cfg.tau_plus, beta=cfg.beta)
        return StepOutput(loss, {"align": align.detach(), "uniform": unif.detach()}, embedding=z1.detach())
