"""The per-pixel linear probe: its module, its training on frozen features, prediction and scores."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.progress import progress
from selfsup.eval.dense.config import DenseConfig
from selfsup.eval.dense.features import Encoder, FrozenFeatures
from selfsup.eval.segmentation_metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy


def finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


@dataclass
class Scores:
    """Scores of one split from its confusion matrix."""

    confusion: torch.Tensor

    def as_dict(self, classes: list[str]) -> dict[str, Any]:
        """mIoU, pixel accuracy and per-class IoU (None where undefined: class absent from
        both labels and predictions)."""
        iou = iou_per_class(self.confusion).tolist()
        return {
            "miou": finite_or_none(mean_iou(self.confusion)),
            "pixel_accuracy": finite_or_none(pixel_accuracy(self.confusion)),
            "per_class_iou": {name: finite_or_none(v) for name, v in zip(classes, iou, strict=True)},
        }


class PixelProbe(nn.Module):
    """Per-pixel linear classifier: fixed per-channel standardisation, then a 1x1 conv."""

    def __init__(self, channels: int, num_classes: int, mean: torch.Tensor, std: torch.Tensor,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().view(1, channels, 1, 1))
        self.register_buffer("std", std.float().view(1, channels, 1, 1))
        self.conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01, generator=generator)
        nn.init.zeros_(self.conv.bias)

    def forward(self, fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits (B, K, H, W) at the label size ``size``."""
        logits = self.conv((fmap.float() - self.mean) / self.std)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean per-pixel cross entropy over the non-ignored pixels (0 when every pixel is ignored)."""
    total = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


def index_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` batches drawn epoch by epoch from fresh random permutations."""
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        batches += list(torch.randperm(n, generator=generator).split(batch_size))
    return batches[:steps]


def cosine_schedule(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def train_probe(
    probe: PixelProbe, features: FrozenFeatures, labels: torch.Tensor, cfg: DenseConfig,
    ignore_index: int, generator: torch.Generator,
) -> int:
    """Train the probe on the frozen features; return the number of steps taken."""
    spe = math.ceil(len(labels) / cfg.batch_size)
    steps = cfg.steps or cfg.epochs * spe
    opt = torch.optim.SGD(probe.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    sched = cosine_schedule(opt, steps)
    device = probe.mean.device
    probe.train()
    for idx in progress(index_batches(len(labels), cfg.batch_size, steps, generator), "pixel probe steps", steps):
        target = labels[idx].to(device)
        loss = masked_cross_entropy(probe(features[idx], target.shape[-2:]), target, ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return steps


@torch.no_grad()
def predict(
    features: FrozenFeatures | Encoder, probe: PixelProbe, images: torch.Tensor, size: tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    """Predicted class maps uint8 (N, H, W) on the CPU for every image (by index for
    FrozenFeatures, by pixels for an Encoder)."""
    probe.eval()
    out = []
    for idx in progress(torch.arange(len(images)).split(batch_size), "predictions"):
        fmap = features[idx] if isinstance(features, FrozenFeatures) else features(images[idx])
        out.append(probe(fmap, size).argmax(1).to(torch.uint8).cpu())
    return torch.cat(out)


def score(pred: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int) -> Scores:
    return Scores(confusion_matrix(pred, labels, num_classes, ignore_index))
