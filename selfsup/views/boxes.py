"""Random-resized-crop boxes, sampled for a whole batch at once.

The sampler follows torchvision's ``RandomResizedCrop.get_params`` (Szegedy et al., 2015,
"Going deeper with convolutions", the Inception crop): a target area fraction
s ~ U(scale) of the whole source image, an aspect ratio r drawn log-uniformly in ``ratio``,
an integer box w = round(sqrt(s A r)), h = round(sqrt(s A / r)) placed at uniform integer
top/left offsets; up to ``tries`` attempts, then a centre crop clamped to the ratio range.
Instead of a Python loop, ``tries`` candidates are drawn per sample and the first valid one
is kept. Boxes live in the ORIGINAL pixel grid (true aspect ratio), then are expressed in
normalised pixel-centre coordinates: x0 = left / (W - 1), x1 = (left + w - 1) / (W - 1).
"""

from __future__ import annotations

import math

import torch


def sample_pixel_boxes(
    sizes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = 10,
) -> torch.Tensor:
    """Draw one random-resized-crop box per image.

    sizes: int (B, 2) original (height, width); read on the CPU, where ``generator`` lives.
    Returns int64 (B, 4) as (left, top, width, height) in original pixels, on the CPU.
    """
    sizes = sizes.to("cpu", torch.float64)
    uniform = torch.rand(4, sizes.shape[0], tries, generator=generator, dtype=torch.float64)
    h, w, first, ok = crop_sizes(sizes, scale, ratio, uniform[:2])
    top = torch.floor(uniform[2].gather(1, first).squeeze(1) * (sizes[:, 0] - h + 1))
    left = torch.floor(uniform[3].gather(1, first).squeeze(1) * (sizes[:, 1] - w + 1))
    boxes = torch.stack((left, top, w, h), dim=1)
    return torch.where(ok[:, None], boxes, centre_boxes(sizes, ratio)).to(torch.int64)


def crop_sizes(
    sizes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    uniform: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Inception crop's size search over ``tries`` candidates drawn by the caller.

    sizes: float64 (B, 2) original (height, width). uniform: float64 (2, B, tries) U[0, 1)
    draws for the area fraction and the log-aspect of every candidate. Returns the first
    valid candidate's height and width (float64 (B,), whole pixels), its position ``first``
    (int64 (B, 1)) and ``ok`` (bool (B,)), False where no candidate fits (the caller falls
    back to ``centre_boxes`` there).
    """
    height, width = sizes[:, 0:1], sizes[:, 1:2]
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    target = height * width * (scale[0] + (scale[1] - scale[0]) * uniform[0])
    aspect = torch.exp(lo + (hi - lo) * uniform[1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    return h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1), first, valid.any(dim=1)


def centre_boxes(sizes: torch.Tensor, ratio: tuple[float, float]) -> torch.Tensor:
    """torchvision's fallback: the whole image, cropped centrally to the nearest allowed ratio.

    sizes: float64 (B, 2) (height, width); returns float64 (B, 4) (left, top, width, height).
    """
    height, width = sizes[:, 0], sizes[:, 1]
    in_ratio = width / height
    lo, hi = min(ratio), max(ratio)
    w = torch.where(in_ratio > hi, torch.round(height * hi), width)
    h = torch.where(in_ratio < lo, torch.round(width / lo), height)
    top = torch.div(height - h, 2, rounding_mode="floor")
    left = torch.div(width - w, 2, rounding_mode="floor")
    return torch.stack((left, top, w, h), dim=1)


def normalize_boxes(pixel_boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """(left, top, width, height) pixels -> float (x0, y0, x1, y1) in pixel-centre units.

    x0 = left / (W - 1), x1 = (left + w - 1) / (W - 1), same with H for y; a size-1 axis
    maps to 0.
    """
    pixel_boxes = pixel_boxes.to(torch.float64)
    sizes = sizes.to(pixel_boxes.device, torch.float64)
    left, top, w, h = pixel_boxes.unbind(1)
    span_y = (sizes[:, 0] - 1).clamp(min=1)
    span_x = (sizes[:, 1] - 1).clamp(min=1)
    x0, x1 = left / span_x, (left + w - 1) / span_x
    y0, y1 = top / span_y, (top + h - 1) / span_y
    return torch.stack((x0, y0, x1, y1), dim=1).to(torch.float32)


def sample_boxes(
    sizes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Random-resized-crop boxes as float (B, 4) normalised (x0, y0, x1, y1), on the CPU."""
    return normalize_boxes(sample_pixel_boxes(sizes, scale, ratio, generator), sizes.cpu())


def flip_boxes(boxes: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Swap x0 and x1 where ``flipped`` (a mirrored view has x1 < x0)."""
    swapped = boxes[:, [2, 1, 0, 3]]
    return torch.where(flipped[:, None], swapped, boxes)
