"""Exemplar-CNN (Dosovitskiy, Springenberg, Riedmiller, Brox: "Discriminative Unsupervised
Feature Learning with Convolutional Neural Networks", NIPS 2014).

- Surrogate classes: each of ``num_classes`` training images (the "seed" exemplars) is one
  class; 0 means every training image. A smaller set is a fixed random subset of the
  dataset (seed 0; the first N would be class-sorted in an image folder); the other images
  are ignored by the loss (they still pass through the network and its batch norm).
- Views: the samples of a class are random transformations of its seed; here the two views
  of the SimCLR recipe (random-resized crop, flip, strong colour jitter, grayscale), both
  used as samples, freshly drawn at every step.
- Networks: backbone, then a plain linear softmax classifier on the pooled features.
- Loss: cross-entropy on the surrogate label, averaged over the labelled samples of the
  global batch (under DDP the count is summed over ranks, so the gradient equals the
  single-process one).
- Differences from the paper: the seeds are whole images instead of 32 x 32 patches picked
  at large gradients; the transformations (the paper: translation, scale, rotation, contrast
  and colour changes, with a fixed set of K samples per class) are the SimCLR recipe drawn
  anew each step; the network is the configured backbone (the paper: a 3- or 4-layer CNN
  with dropout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegativeInt
from selfsup.core.comm import all_reduce_mean, world_size
from selfsup.core.tensors import upcast
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.views.view import View


@dataclass
class ExemplarConfig(Checked):
    section: ClassVar[str] = "exemplar"

    num_classes: NonNegativeInt = 0  # surrogate classes; 0: one per training image


def surrogate_classes(num_images: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """(num_images,) int64: the surrogate class of every image, -1 outside the surrogate set.

    ``num_classes`` = 0 or ``num_images``: image i is class i. Otherwise a fixed random
    subset of ``num_classes`` images gets classes 0..num_classes-1 in dataset order.
    """
    if not 0 <= num_classes <= num_images:
        raise ValueError(f"exemplar.num_classes must be in 0..{num_images} (the training images), got {num_classes}")
    if num_classes in (0, num_images):
        return torch.arange(num_images)
    chosen = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))[:num_classes].sort().values
    mapping = torch.full((num_images,), -1, dtype=torch.int64)
    mapping[chosen] = torch.arange(num_classes)
    return mapping


class Exemplar(Method):
    Config = ExemplarConfig
    recipe = "simclr"
    description = "Exemplar-CNN: classify augmented samples into one surrogate class per seed image"

    def __init__(self, backbone: nn.Module, cfg: ExemplarConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        if run.num_images < 2:
            raise ValueError(f"exemplar needs the training-set size for its classes, got {run.num_images}")
        self.cfg = cfg
        self.register_buffer("class_of", surrogate_classes(run.num_images, cfg.num_classes))
        self.classifier = nn.Linear(backbone.out_dim, cfg.num_classes or run.num_images)

    def forward(self, views: list[View]) -> StepOutput:
        h = torch.cat(self.encode(views))
        target = self.class_of[views[0].index].repeat(len(views))
        logits = upcast(self.classifier(h))
        labelled = (target >= 0).sum()
        # mean over the GLOBAL batch's labelled samples: DDP averages the ranks' gradients
        count = (all_reduce_mean(labelled.float()) * world_size()).clamp_min(1)
        loss = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum") * world_size() / count
        return StepOutput(loss, {}, embedding=h.detach()[: views[0].images.shape[0]])
