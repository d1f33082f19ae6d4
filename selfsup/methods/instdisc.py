"""InstDisc (Wu, Xiong, Yu, Lin: "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018).

- Views: ONE augmented view per image per step (the ``instdisc`` recipe: random-resized crop
  with area (0.2, 1), flip, colour jitter 0.4 on brightness / contrast / saturation / hue
  always applied, grayscale p = 0.2, no blur). With another ``views.recipe`` only the first
  view is used.
- Networks: backbone, then a linear layer to 128 dimensions and L2 normalisation: v = f(x).
- Memory bank: a buffer V (num_images, 128) of L2-normalised vectors, one per image,
  initialised uniformly in [-sqrt(3/d), sqrt(3/d)] per entry and then normalised. After
  computing the loss, the batch's rows are updated with momentum m = 0.5:
      V_i <- normalise(m V_i + (1 - m) v_i).
  Under DDP the features and dataset indices are gathered (without gradient) first, so
  every rank applies the same update and all banks stay identical.
- Loss: non-parametric softmax P(i | v) = exp(V_i . v / t) / Z, t = 0.07, trained with NCE
  against m = 4096 noise items drawn uniformly from the bank (``selfsup.losses.contrastive.nce``):
      L = -mean_i [ log h(V_i . v_i) + sum_j log(1 - h(V_j' . v_i)) ],
      h(s) = sigmoid(s / t - log Z - log(m / n)).
  Z is estimated once, on the first batch, as n * mean exp(s / t) over the positive and
  noise similarities (averaged over ranks), then kept fixed (a buffer, checkpointed): the
  paper's choice, ``z_momentum = 1``. With ``z_momentum < 1`` the same Monte-Carlo estimate
  is blended in after every step, Z <- z_momentum Z + (1 - z_momentum) Z_batch (0: the
  current batch's estimate). Not in the paper: on small datasets the bank refills with the
  network's early, highly correlated features within a few steps, the first-batch Z is then
  far too small, every noise posterior h saturates and the loss diverges (measured in
  benchmarks/LOG.md); a running Z keeps h calibrated.
  ``bank_init``: "random" (the paper's, above) or "features" (not in the paper): before the
  first step the bank is filled with the untrained network's own normalised embeddings of
  the un-augmented training images (eval mode), so that no step trains towards a random
  target. With the random bank, every positive of the first epoch is a random vector the
  network cannot fit, and the batch-averaged pull moves all outputs together; on 3,000
  images that collapse costs more than the rest of a short run recovers (benchmarks/LOG.md).
  The noise indices are drawn for the whole global batch from a generator that is seeded
  identically on every rank and restored on resume (``SharedGenerator``).
- Differences from the official code (lemniscate.pytorch): the initial bank rows are
  normalised (the official rows have expected norm 1 but are not normalised until their
  first update); the augmentation applies flip before jitter and grayscale after it (the
  official order is crop, grayscale, jitter, flip); the official code replaces the first
  noise column by the positive and samples with an alias table (uniform here, same
  distribution); the backbone is configurable (the paper: ResNet-50 / ResNet-18 on CIFAR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, Positive, PositiveInt, UnitInterval
from selfsup.core.comm import all_reduce_mean, gather, rank
from selfsup.core.tensors import upcast
from selfsup.data import ImageDataset
from selfsup.losses.contrastive import nce
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.rng import SharedGenerator
from selfsup.views.config import ViewsConfig
from selfsup.views.features import extract_features
from selfsup.views.view import View


@dataclass
class InstDiscConfig(Checked):
    section: ClassVar[str] = "instdisc"

    feature_dim: PositiveInt = 128
    num_negatives: PositiveInt = 4096
    temperature: Positive = 0.07
    bank_momentum: UnitInterval = 0.5
    z_momentum: UnitInterval = 1.0
    bank_init: Literal["random", "features"] = "random"


def init_bank(num_items: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(num_items, dim) rows drawn uniformly in [-sqrt(3/dim), sqrt(3/dim)], then L2-normalised."""
    bound = math.sqrt(3 / dim)
    bank = torch.rand(num_items, dim, generator=generator) * (2 * bound) - bound
    return F.normalize(bank, dim=1)


@torch.no_grad()
def update_bank(bank: torch.Tensor, index: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
    """In place: ``bank[index] <- normalise(momentum * bank[index] + (1 - momentum) * features)``."""
    mixed = bank[index].mul(momentum).add_(features.to(bank.dtype), alpha=1 - momentum)
    bank.index_copy_(0, index, F.normalize(mixed, dim=1))


class InstDisc(Method):
    Config = InstDiscConfig
    recipe = "instdisc"
    description = "InstDisc: NCE against a momentum memory bank of one vector per image"

    def __init__(self, backbone: nn.Module, cfg: InstDiscConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        if run.num_images < 2:
            raise ValueError(f"instdisc needs the training-set size for its memory bank, got {run.num_images}")
        self.cfg = cfg
        self.head = nn.Linear(backbone.out_dim, cfg.feature_dim)
        self.register_buffer("bank", init_bank(run.num_images, cfg.feature_dim))
        self.register_buffer("log_z", torch.tensor(float("nan")))  # estimated on the first batch
        self.noise = SharedGenerator()

    @torch.no_grad()
    def on_fit_start(self, train: ImageDataset, views: ViewsConfig, device: torch.device) -> None:
        """``bank_init: features``: bank row i <- the network's normalised embedding of image i."""
        if self.cfg.bank_init == "features":
            h, _ = extract_features(self.backbone, train, views.size, views.mean, views.std, device=device)
            self.bank.copy_(F.normalize(upcast(self.head(h.to(device))), dim=1))

    def forward(self, views: list[View]) -> StepOutput:
        view = views[0]
        (h,) = self.encode([view])
        v = F.normalize(upcast(self.head(h)), dim=1)
        n, m, num_items = v.shape[0], self.cfg.num_negatives, self.bank.shape[0]
        index = view.index
        index_all = gather(index)
        noise_all = torch.randint(num_items, (index_all.shape[0], m), generator=self.noise.next(v.device),
                                  device=v.device)
        noise = noise_all[rank() * n : (rank() + 1) * n]
        with torch.autocast(v.device.type, enabled=False):  # similarities in float32, like the bank
            pos = (self.bank[index] * v).sum(dim=1)
            neg = torch.einsum("nd,nkd->nk", v, self.bank[noise])
        t = self.cfg.temperature
        with torch.no_grad():
            estimate = all_reduce_mean(torch.cat([pos[:, None], neg], dim=1).div(t).exp().mean()) * num_items
            m = self.cfg.z_momentum
            running = torch.log(m * self.log_z.exp() + (1 - m) * estimate)
            self.log_z.copy_(torch.where(self.log_z.isnan(), torch.log(estimate), running))
        loss = nce(pos, neg, t, num_items, self.log_z)
        update_bank(self.bank, index_all, gather(v.detach()), self.cfg.bank_momentum)
        return StepOutput(loss, {"log_z": self.log_z.detach()}, embedding=v.detach())
