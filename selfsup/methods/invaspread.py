"""Invariant and Spreading instance features (Ye, Zhang, Yuen, Chang: "Unsupervised Embedding
Learning via Invariant and Spreading Instance Feature", CVPR 2019).

- Views: two augmentations of every image (the ``invaspread`` recipe: InstDisc's, i.e.
  random-resized crop with area (0.2, 1), flip, colour jitter 0.4 always, grayscale p = 0.2).
  The first plays the paper's x_i, the second its augmented x_hat_i.
- Networks: backbone, then a linear layer to 128 dimensions and L2 normalisation (siamese:
  both views through the same network, in one batch).
- Loss (``selfsup.losses.instance.invariant_spreading``): a softmax whose classifier
  weights are the batch's own embeddings f_k, P(i | x) = exp(f_i . x / t) / sum_k exp(f_k . x / t),
  t = 0.1; l_i = -log P(i | f_hat_i) - sum_{k != i} log(1 - P(k | f_i)), averaged over the
  batch. Under DDP the embeddings f are gathered WITH gradient, so the classifier spans the
  global batch and its rows from other ranks are trained too.
- Differences from the official code (mangye16/Unsupervised_Embedding_Learning): the official
  criterion treats all 2N embeddings symmetrically (each view is an anchor, the classifier is
  the other 2N - 1 embeddings, without the anchor itself) and stops the gradient through
  the classifier side (``.data``); this follows the paper's Eq. 5 with full gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, Positive, PositiveInt
from selfsup.core.comm import gather_with_grad, rank
from selfsup.losses.instance import invariant_spreading
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.views.view import View


@dataclass
class InvaSpreadConfig(Checked):
    section: ClassVar[str] = "invaspread"

    feature_dim: PositiveInt = 128
    temperature: Positive = 0.1


class InvaSpread(Method):
    Config = InvaSpreadConfig
    recipe = "invaspread"
    description = "InvaSpread: softmax over the batch's own embeddings, invariant views, spread instances"

    def __init__(self, backbone: nn.Module, cfg: InvaSpreadConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        self.head = nn.Linear(backbone.out_dim, cfg.feature_dim)

    def forward(self, views: list[View]) -> StepOutput:
        h, h_hat = self.encode(views[:2])
        f, f_hat = F.normalize(self.head(h), dim=1), F.normalize(self.head(h_hat), dim=1)
        loss = invariant_spreading(f, f_hat, self.cfg.temperature, gather_with_grad(f), offset=rank() * f.shape[0])
        return StepOutput(loss, {}, embedding=f.detach())
