"""What the classic pretext tasks share: a task that is a classification of the views (rotation,
tile permutation, patch position, colour bin ...), its held-out accuracy, and the pieces that turn
a normalised RGB view into Lab channels (colorization and CMC) with encoders to match.

A pretext method implements ``pretext(views) -> (logits, targets)``, free of side effects (no
memory-bank update), so that :func:`pretext_accuracy` can measure the task on held-out images;
``forward`` trains on the same logits.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.tensors import upcast
from selfsup.methods.base import Method, StepOutput
from selfsup.views.config import IMAGENET_MEAN, IMAGENET_STD, ViewsConfig
from selfsup.views.lab import rgb_to_lab
from selfsup.views.view import View


class PretextMethod(Method):
    """A method whose task is ``pretext(views) -> (logits (N, K), targets (N,))``, trained with
    cross-entropy; ``logs["pretext_acc"]`` is the batch's top-1 accuracy on the task.

    """

    recipe = "pretext"

    def pretext(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, views: list[View]) -> StepOutput:
        logits, targets = self.pretext(views)
        loss = F.cross_entropy(upcast(logits), targets)
        return StepOutput(loss, {"pretext_acc": accuracy(logits, targets)}, embedding=self.embedding(views))

    def embedding(self, views: list[View]) -> torch.Tensor | None:
        """What the collapse monitor watches: the backbone's pooled features of the first view."""
        with torch.no_grad():
            return self.backbone(views[0].images)[1]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of ``logits`` (N, K) against ``targets`` (N,), detached."""
    return (logits.detach().argmax(dim=1) == targets).float().mean()


@torch.no_grad()
def pretext_accuracy(method: PretextMethod, views: list[View]) -> float:
    """The task's top-1 accuracy on ``views`` (e.g. of held-out images) in eval mode."""
    was = method.training
    method.eval()
    try:
        logits, targets = method.pretext(views)
        return accuracy(logits, targets).item()
    finally:
        method.train(was)


def with_in_channels(backbone: nn.Module, channels: int) -> nn.Module:
    """``backbone`` with its first 3-channel convolution (the ResNet stem, a ViT's patch
    embedding) replaced by a freshly initialised one taking ``channels`` input channels: the
    L (1) or ab (2) encoders of colorization and CMC. Changes ``backbone`` in place."""
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups, child.bias is not None)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                setattr(parent, name, conv)
                return backbone
    raise ValueError(f"{type(backbone).__name__} has no 3-channel input convolution to replace")


def fresh_copy(backbone: nn.Module) -> nn.Module:
    """An independently initialised network of the same architecture (convolutions Kaiming
    normal fan-out as torchvision's ResNets, norms 1 / 0, other layers their default init)."""
    twin = copy.deepcopy(backbone)
    for m in twin.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif hasattr(m, "reset_parameters") and not isinstance(m, nn.Conv2d):
            m.reset_parameters()
    return twin


class LabInput(nn.Module):
    """Normalised RGB views -> scaled Lab channels: ``L`` (1 channel, (L - 50) / 50) and ``ab``
    (2 channels, ab / 110), the inputs of colorization's and CMC's encoders.

    The views' normalisation (``views.mean`` / ``views.std``) is kept in buffers, so a network
    behind it evaluates and exports on the same normalised images as every other backbone; the
    method sets them from the run's views in ``on_fit_start`` (checkpointed).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def set_stats(self, views: ViewsConfig) -> None:
        self.mean.copy_(torch.tensor(views.mean).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(views.std).view(1, 3, 1, 1))

    def rgb(self, images: torch.Tensor) -> torch.Tensor:
        """A normalised view back to RGB in [0, 1]."""
        return (images * self.std.to(images) + self.mean.to(images)).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L (B, 1, H, W), ab (B, 2, H, W)) scaled to about [-1, 1]."""
        lab = rgb_to_lab(self.rgb(images.float()))
        return (lab[:, :1] - 50) / 50, lab[:, 1:] / 110


class LightnessBackbone(nn.Module):
    """A network that sees only the L channel of the (normalised RGB) images it is given:
    colorization's evaluated and exported encoder. ``forward(x) = net(L(x))``; the export is
    the network's own weights (with a 1-channel stem)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.lab = LabInput()
        self.out_dim = net.out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(self.lab(x)[0].to(x.dtype))

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.export_state_dict()
