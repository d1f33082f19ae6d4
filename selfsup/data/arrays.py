"""Images already decoded into memory, as a named dataset's parser returns them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ImageArrays:
    """A decoded split: uint8 images (N, 3, H, W), int64 labels (N,) and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def resized(self, size: tuple[int, int]) -> ImageArrays:
        """The same split with every image resized (bilinear, antialiased) to ``size`` (H, W)."""
        if tuple(self.images.shape[-2:]) == size:
            return self
        return ImageArrays(resize_images(self.images, size), self.labels, self.classes)


def resize_images(images: torch.Tensor, size: tuple[int, int], chunk: int = 1024) -> torch.Tensor:
    """Resize uint8 images (N, 3, H, W) to ``size`` with antialiased bilinear interpolation."""
    out = torch.empty((images.shape[0], 3, *size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(part, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out
