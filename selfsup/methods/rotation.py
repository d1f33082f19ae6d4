"""RotNet (Gidaris, Singh, Komodakis: "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018).

- Views: ONE view per image (the ``pretext`` recipe: random-resized crop and flip); every image
  of the batch is then fed at all four rotations, 0, 90, 180 and 270 degrees
  (``selfsup.views.tiles.rotations``): the paper's finding that seeing all four rotations of
  an image in the same batch beats one random rotation per image.
- Networks: backbone F, then a rotation classifier on its pooled vector: ``head: linear``
  (one linear layer to 4 classes) or ``mlp`` (Linear-BN-ReLU to ``hidden``, then linear).
- Loss: cross-entropy over the 4 rotation classes of the 4N inputs,
      L = -1/(4N) sum_i sum_{y=0..3} log softmax(g(F(rot(x_i, y))))_y.
  ``pretext_acc``: the rotation accuracy (chance 0.25).
- Differences from the official code (FeatureLearningRotNet): the network is the configured
  backbone with a head on the pooled vector (the paper: Network-In-Network blocks or AlexNet,
  with the classifier on top of the convolutional blocks); the official CIFAR augmentation is a
  random crop with 4-pixel padding and flip, here the random-resized crop of ``views.scale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from selfsup.core.checks import Checked, PositiveInt
from selfsup.methods.base import RunInfo
from selfsup.methods.pretext import PretextMethod
from selfsup.views.tiles import rotations
from selfsup.views.view import View


@dataclass
class RotationConfig(Checked):
    section: ClassVar[str] = "rotation"

    head: Literal["linear", "mlp"] = "linear"
    hidden: PositiveInt = 512  # width of the mlp head's hidden layer


def classifier(in_dim: int, classes: int, head: str, hidden: int) -> nn.Module:
    """A linear layer, or Linear (no bias) - BN - ReLU - Linear, from ``in_dim`` to ``classes``."""
    if head == "linear":
        return nn.Linear(in_dim, classes)
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(True),
                         nn.Linear(hidden, classes))


class Rotation(PretextMethod):
    Config = RotationConfig
    description = "RotNet: classify which of 4 rotations (0/90/180/270) each image was given"

    def __init__(self, backbone: nn.Module, cfg: RotationConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        self.classifier = classifier(backbone.out_dim, 4, cfg.head, cfg.hidden)

    def pretext(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = rotations(views[0].images)
        _, pooled = self.backbone(x)
        return self.classifier(pooled), labels
