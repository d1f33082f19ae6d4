"""CMC (Tian, Krishnan, Isola: "Contrastive Multiview Coding", ECCV 2020), with the L and ab
channels of the CIE Lab image as its two views.

- Views: ONE augmented view per image (the ``pretext`` recipe: random-resized crop, flip; no
  colour jitter), converted to Lab (``selfsup.views.lab``): view 1 is L, scaled
  (L - 50) / 50, view 2 is ab, scaled ab / 110 (``LabInput``).
- Networks: one encoder per view, the configured backbone with a 1-channel stem (f_1 on L) and
  an independently initialised copy with a 2-channel stem (f_2 on ab) (``with_in_channels``,
  ``fresh_copy``); each is followed by a linear layer to ``feature_dim`` = 128 and L2
  normalisation: z_1 = g_1(f_1(L)), z_2 = g_2(f_2(ab)).
- Loss, both directions of the contrast (eq. 3-4): L = L(z_1, z_2) + L(z_2, z_1), where
  L(z_a, z_b) contrasts each z_a,i with its own z_b,i against the other images' z_b:
  - ``loss: infonce``: InfoNCE over the (global) batch at temperature t = 0.07,
        L(z_a, z_b) = -1/N sum_i log( exp(z_a,i . z_b,i / t) / sum_j exp(z_a,i . z_b,j / t) ),
    i.e. 2 x ``symmetric_info_nce`` (the paper's full softmax over the batch; features are
    gathered over ranks with gradient).
  - ``loss: nce``: the paper's memory-bank NCE (as InstDisc, ``selfsup.losses.contrastive.nce``):
    one bank per view, V_1 and V_2 (num_images, 128), normalised random init; the anchor z_1,i
    is scored against V_2[i] (positive) and ``num_negatives`` rows of V_2 drawn uniformly (noise),
    h(s) = sigmoid(s / t - log Z_2 - log(m / n)); symmetrically z_2,i against V_1. Z_1, Z_2 are
    estimated on the first batch (n * mean exp(s / t)) and then fixed (``z_momentum: 1``, the
    paper's; below 1, not in the paper, the estimate of every batch is blended in,
    Z <- z_momentum Z + (1 - z_momentum) Z_batch, as InstDisc's option for small datasets where the
    bank soon holds correlated features and a fixed Z saturates h); after the step each bank's
    rows of the batch move with momentum 0.5, V_v,i <- normalise(0.5 V_v,i + 0.5 z_v,i).
  ``pretext_acc``: the batch's L -> ab matching accuracy, argmax_j z_1,i . z_2,j = i (chance 1 / N).
- Evaluated / exported network: both encoders on their channels of the (normalised RGB)
  images, features concatenated (``LabSplitBackbone``: pooled (N, 2 D), feature maps along
  channels), the paper's evaluation on the concatenation of the two halves.
- Differences from the official code (HobbitLong/CMC): each encoder is the full configured
  backbone (the paper splits AlexNet / ResNet in halves of half the width, so that the pair
  costs one network); the official Lab views are computed by scikit-image on the augmented
  PIL crop with its own per-channel normalisation constants (here torch Lab and fixed scalings);
  the official noise indices put the positive in column 0 and sample with an alias table
  (uniform here); the batch InfoNCE variant of the later CMC code also keeps the memory bank
  (its "softmax" NCE) while here it contrasts within the batch only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, Positive, PositiveInt, UnitInterval
from selfsup.core.comm import all_reduce_mean, gather, gather_with_grad, rank
from selfsup.core.tensors import upcast
from selfsup.data import ImageDataset
from selfsup.losses.contrastive import nce
from selfsup.losses.crossmodal import symmetric_info_nce
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.instdisc import init_bank, update_bank
from selfsup.methods.pretext import LabInput, PretextMethod, accuracy, fresh_copy, with_in_channels
from selfsup.methods.rng import SharedGenerator
from selfsup.views.config import ViewsConfig
from selfsup.views.view import View


@dataclass
class CMCConfig(Checked):
    section: ClassVar[str] = "cmc"

    feature_dim: PositiveInt = 128
    temperature: Positive = 0.07
    loss: Literal["infonce", "nce"] = "infonce"
    num_negatives: PositiveInt = 4096  # nce: noise rows per anchor
    bank_momentum: UnitInterval = 0.5  # nce
    z_momentum: UnitInterval = 1.0  # nce: 1 keeps the first batch's Z (the paper); < 1 a running estimate


class LabSplitBackbone(nn.Module):
    """Two encoders on the Lab channels of normalised RGB images: ``light`` on L (1 channel),
    ``colour`` on ab (2 channels). ``forward(x) = (cat of the feature maps, cat of the pooled
    features)``, ``out_dim`` the sum of both; ``views(x)`` the pooled features of each. The
    export holds each encoder's own weights under ``l.`` and ``ab.``."""

    def __init__(self, light: nn.Module, colour: nn.Module) -> None:
        super().__init__()
        self.light = light
        self.colour = colour
        self.lab = LabInput()
        self.out_dim = light.out_dim + colour.out_dim

    def split(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """((fmap, pooled) of the L encoder, (fmap, pooled) of the ab encoder)."""
        light, ab = self.lab(x)
        return self.light(light.to(x.dtype)), self.colour(ab.to(x.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (fl, pl), (fa, pa) = self.split(x)
        return torch.cat([fl, fa], dim=1), torch.cat([pl, pa], dim=1)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"l.{k}": v for k, v in self.light.export_state_dict().items()},
                **{f"ab.{k}": v for k, v in self.colour.export_state_dict().items()}}


class CMC(PretextMethod):
    Config = CMCConfig
    description = "CMC: contrast an L encoder with an ab encoder (batch InfoNCE or memory-bank NCE)"

    def __init__(self, backbone: nn.Module, cfg: CMCConfig, run: RunInfo) -> None:
        colour = with_in_channels(fresh_copy(backbone), 2)
        super().__init__(LabSplitBackbone(with_in_channels(backbone, 1), colour), run)
        self.cfg = cfg
        self.head_l = nn.Linear(backbone.out_dim, cfg.feature_dim)
        self.head_ab = nn.Linear(colour.out_dim, cfg.feature_dim)
        if cfg.loss == "nce":
            if run.num_images < 2:
                raise ValueError(f"cmc loss nce needs the training-set size for its memory banks, got {run.num_images}")
            self.register_buffer("bank_l", init_bank(run.num_images, cfg.feature_dim))
            self.register_buffer("bank_ab", init_bank(run.num_images, cfg.feature_dim))
            self.register_buffer("log_z", torch.full((2,), float("nan")))  # (Z_l, Z_ab), first batch
            self.noise = SharedGenerator()

    def on_fit_start(self, train: ImageDataset, views: ViewsConfig, device: torch.device) -> None:
        self.backbone.lab.set_stats(views)

    def embed(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_l, z_ab): the L2-normalised embeddings (N, feature_dim) of the first view's channels."""
        (_, pl), (_, pa) = self.backbone.split(views[0].images)
        return F.normalize(upcast(self.head_l(pl)), dim=1), F.normalize(upcast(self.head_ab(pa)), dim=1)

    def pretext(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
        z_l, z_ab = self.embed(views)
        return z_l @ z_ab.T / self.cfg.temperature, torch.arange(len(z_l), device=z_l.device)

    def forward(self, views: list[View]) -> StepOutput:
        z_l, z_ab = self.embed(views)
        logs = {"pretext_acc": accuracy(z_l @ z_ab.T, torch.arange(len(z_l), device=z_l.device))}
        if self.cfg.loss == "infonce":
            loss = 2 * symmetric_info_nce(gather_with_grad(z_l), gather_with_grad(z_ab), self.cfg.temperature)
        else:
            loss = self.bank_loss(z_l, z_ab, views[0].index)
            logs["log_z_l"], logs["log_z_ab"] = self.log_z[0].detach(), self.log_z[1].detach()
        return StepOutput(loss, logs, embedding=torch.cat([z_l, z_ab], dim=1).detach())

    def bank_loss(self, z_l: torch.Tensor, z_ab: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The memory-bank NCE of both directions, then the banks' momentum update."""
        n, m, num_items, t = z_l.shape[0], self.cfg.num_negatives, self.bank_l.shape[0], self.cfg.temperature
        index_all = gather(index)
        noise_all = torch.randint(num_items, (index_all.shape[0], m), generator=self.noise.next(z_l.device),
                                  device=z_l.device)
        noise = noise_all[rank() * n : (rank() + 1) * n]
        loss = z_l.new_zeros(())
        for v, (anchor, bank) in enumerate(((z_l, self.bank_ab), (z_ab, self.bank_l))):
            with torch.autocast(anchor.device.type, enabled=False):
                pos = (bank[index] * anchor).sum(dim=1)
                neg = torch.einsum("nd,nkd->nk", anchor, bank[noise])
            with torch.no_grad():
                estimate = all_reduce_mean(torch.cat([pos[:, None], neg], dim=1).div(t).exp().mean()) * num_items
                zm = self.cfg.z_momentum
                running = torch.log(zm * self.log_z[v].exp() + (1 - zm) * estimate)
                self.log_z[v] = torch.where(self.log_z[v].isnan(), torch.log(estimate), running)
            loss = loss + nce(pos, neg, t, num_items, self.log_z[v])
        update_bank(self.bank_l, index_all, gather(z_l.detach()), self.cfg.bank_momentum)
        update_bank(self.bank_ab, index_all, gather(z_ab.detach()), self.cfg.bank_momentum)
        return loss
