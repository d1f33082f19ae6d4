"""PIC (Cao, Xie, Liu, Lin, Zhang, Hu: "Parametric Instance Classification for Unsupervised
Visual Feature Learning", NeurIPS 2020).

- Views: ONE view per image per step (the ``pic`` recipe: SimCLR's augmentation); no second
  branch, no momentum encoder.
- Networks: backbone, 2-layer MLP head (C -> hidden -> 128), and one classifier weight
  w_i (128-d, initialised N(0, 0.01) as the official code) per training image.
- Loss: cosine softmax over instance classes, t = 0.2:
      l = -log( exp(cos(w_y, z) / t) / sum_{j in S} exp(cos(w_j, z) / t) ),  y = the image's index.
  S is every class, or, with ``num_negatives`` = K > 0 (negative instance sampling), the
  classes of the global batch plus K others drawn uniformly without replacement, the same
  on every rank (``SharedGenerator``), so only |S| weights take part in each step.
- Weight update correction (with sampling): a class outside S gets no gradient, but SGD's
  weight decay and momentum would still move its weight. With ``weight_correction`` the
  weights of classes not sampled in the step are restored after the optimiser step, so
  weight decay and momentum act only on sampled classes. The optimiser's momentum buffer
  of an unsampled row (the trainer owns it) still decays; only the weight is held.
- Sliding-window data scheduler: a data-order option of the trainer, not of the method:
  ``data.sliding_window: [W, S]`` (``selfsup.data.order.sliding_window_order``): batches come
  from a window of W images of a fixed permutation, shuffled within the window, and the
  window slides by S images after each W images, so a class is revisited about every W
  images (in each of the W / S windows that hold it) instead of once per epoch. Take W a
  multiple of the global batch size (official: W = 131072, S = 16384 on ImageNet). The
  CIFAR-10 preset keeps the epoch order (an epoch is only ~200 steps there).
- Differences from the official code (bl0/PIC): its head is Linear-ReLU-Linear without BN
  (here ``mlp``: Linear-BN-ReLU-Linear); its preset adds 3 small multi-crop views whose
  logits do not train the classifier (not done here); it trains with the full softmax
  (sampling and the correction are from the paper); its sliding window reshuffles the
  permutation once per pass over the data (here the permutation is fixed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegativeInt, Positive, PositiveInt
from selfsup.core.comm import gather, rank
from selfsup.core.tensors import upcast
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.rng import SharedGenerator
from selfsup.views.view import View


@dataclass
class PICConfig(Checked):
    section: ClassVar[str] = "pic"

    proj_hidden: PositiveInt = 2048
    proj_dim: PositiveInt = 128
    temperature: Positive = 0.2
    num_negatives: NonNegativeInt = 0  # 0: softmax over every image's class
    weight_correction: bool = True


def cosine_logits(z: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, C) logits cos(w_j, z_i) / t of a cosine softmax classifier: features z (N, d),
    class weights (C, d), both L2-normalised here."""
    return F.normalize(z, dim=1) @ F.normalize(weights, dim=1).T / temperature


def sample_classes(
    batch_classes: torch.Tensor, num_classes: int, num_negatives: int, generator: torch.Generator
) -> torch.Tensor:
    """The batch's classes followed by ``num_negatives`` other classes of ``0..num_classes-1``,
    drawn uniformly without replacement (a random key per class; the batch's keys are pushed
    above every other, then the smallest keys are taken: no host synchronisation)."""
    keys = torch.rand(num_classes, generator=generator, device=batch_classes.device)
    keys[batch_classes] = 2.0
    negatives = keys.topk(num_negatives, largest=False, sorted=False).indices
    return torch.cat([batch_classes, negatives])


class PIC(Method):
    Config = PICConfig
    recipe = "pic"
    description = "PIC: parametric instance classification, cosine softmax, sampled negative classes"

    def __init__(self, backbone: nn.Module, cfg: PICConfig, run: RunInfo) -> None:
        from selfsup.models.heads import mlp

        super().__init__(backbone, run)
        if run.num_images < 2:
            raise ValueError(f"pic needs the training-set size (one class per image), got {run.num_images}")
        self.cfg = cfg
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.class_weights = nn.Parameter(torch.randn(run.num_images, cfg.proj_dim) * 0.01)
        self.correct = cfg.num_negatives > 0 and cfg.weight_correction
        # classes sampled since the last optimiser step, and their weights before it
        self.register_buffer("sampled", torch.zeros(run.num_images, dtype=torch.bool), persistent=False)
        self._before: torch.Tensor | None = None
        self.negatives = SharedGenerator()

    def forward(self, views: list[View]) -> StepOutput:
        view = views[0]
        (h,) = self.encode([view])
        z = upcast(self.projector(h))
        n, num_classes = z.shape[0], self.class_weights.shape[0]
        if self.cfg.num_negatives > 0:
            batch_classes = gather(view.index)
            k = min(self.cfg.num_negatives, num_classes - batch_classes.shape[0])
            classes = sample_classes(batch_classes, num_classes, k, self.negatives.next(z.device))
            self.sampled[classes] = True
            weights, target = self.class_weights[classes], torch.arange(n, device=z.device) + rank() * n
        else:
            weights, target = self.class_weights, view.index
        loss = F.cross_entropy(cosine_logits(z, upcast(weights), self.cfg.temperature), target)
        return StepOutput(loss, {}, embedding=z.detach())

    def after_backward(self, step: int) -> None:
        if self.correct:
            self._before = self.class_weights.detach().clone()

    @torch.no_grad()
    def on_step(self, step: int, total_steps: int) -> None:
        if self._before is not None:
            w = self.class_weights
            w.copy_(torch.where(self.sampled[:, None], w, self._before))
            self._before = None
        self.sampled.zero_()
