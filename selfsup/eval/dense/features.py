"""What a dense probe sees: the frozen backbone's last feature map, computed once and cached."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from selfsup.core.progress import progress
from selfsup.models.backbones import ViTBackbone
from selfsup.views.ops import normalize
from selfsup.views.recipes import eval_view


def autocast_on(device: torch.device) -> contextlib.AbstractContextManager:
    use = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


class Encoder:
    """The backbone's last feature map for uint8 images, normalised with the run's mean and std
    (and, for a ViT, resized to its square input size)."""

    def __init__(self, backbone: nn.Module, mean: tuple, std: tuple, vit_size: int, device: torch.device) -> None:
        self.backbone = backbone.to(device)
        self.mean, self.std, self.device = mean, std, device
        self.input_size = vit_size if isinstance(backbone, ViTBackbone) else None

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised float network input on the device."""
        images = images.to(self.device)
        if self.input_size is not None:
            return eval_view(images, self.input_size, self.mean, self.std)
        return normalize(images.float().div_(255.0), self.mean, self.std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with autocast_on(self.device):
            return self.backbone(self.inputs(images))[0].float()


class FrozenFeatures:
    """Feature maps of a frozen encoder for a split: computed once and kept (fp16, on the
    device) when they fit in ``memory_bytes``, else recomputed for every request."""

    def __init__(self, encoder: Encoder, images: torch.Tensor, batch_size: int, memory_bytes: float) -> None:
        self.encoder, self.images, self.batch_size = encoder, images, batch_size
        with torch.no_grad():
            first = encoder(images[:1])
        self.shape = tuple(first.shape[1:])
        self.bank: torch.Tensor | None = None
        if len(images) * math.prod(self.shape) * 2 <= memory_bytes:
            self.bank = torch.cat([self._compute(idx).half() for idx in progress(self._chunks(), "feature maps")])

    def _chunks(self) -> list[torch.Tensor]:
        return list(torch.arange(len(self.images)).split(self.batch_size))

    @torch.no_grad()
    def _compute(self, idx: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.images[idx])

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.bank is not None:
            return self.bank[idx.to(self.bank.device)].float()
        return self._compute(idx)

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std over all positions of all images (float64 sums)."""
        c = self.shape[0]
        total = torch.zeros(c, dtype=torch.float64, device=self.encoder.device)
        squares = torch.zeros_like(total)
        count = 0
        for idx in self._chunks():
            f = self[idx].double().transpose(0, 1).reshape(c, -1)
            total += f.sum(1)
            squares += (f * f).sum(1)
            count += f.shape[1]
        mean = total / count
        std = (squares / count - mean * mean).clamp(min=0).sqrt() + 1e-6
        return mean.float(), std.float()
