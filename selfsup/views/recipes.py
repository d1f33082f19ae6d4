"""View recipes: what each view of a method looks like, and the batched view generator.

Randomness: every random parameter is drawn on the CPU from the ``torch.Generator`` passed in
(cheap, deterministic, independent of the device), then moved to the images' device, where
all pixel work happens batched over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from selfsup.core.errors import ConfigError
from selfsup.views.boxes import flip_boxes, normalize_boxes, sample_boxes
from selfsup.views.config import IMAGENET_MEAN, IMAGENET_STD, Stats, ViewsConfig
from selfsup.views.ops import (
    blur_kernel_size,
    color_jitter,
    crop_resize,
    crop_resize_nearest,
    gaussian_blur,
    grayscale,
    normalize,
    solarize,
)
from selfsup.views.view import View

if TYPE_CHECKING:
    from selfsup.views.samplers import CropSampler


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation, torchvision-style parameters.

    Random-resized crop (area fraction ``scale``, aspect ``ratio``) to ``size``, horizontal
    flip, colour jitter (brightness, contrast, saturation, hue strengths) with probability
    ``jitter_p``, grayscale, Gaussian blur (sigma in 224-pixel units, scaled by size / 224,
    kernel about 10% of ``size``), solarize, then normalisation with ``mean``/``std``.
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: Stats = IMAGENET_MEAN
    std: Stats = IMAGENET_STD


def simclr(
    size: int, scale: tuple[float, float], blur: bool, mean: Stats, std: Stats
) -> list[ViewSpec]:
    """SimCLR (Chen et al., 2020): two identical views, colour strength 1.0, blur p = 0.5."""
    spec = ViewSpec(
        size=size,
        scale=scale,
        jitter=(0.8, 0.8, 0.8, 0.2),
        blur_p=0.5 if blur else 0.0,
        mean=mean,
        std=std,
    )
    return [spec, spec]


def byol(
    size: int, scale: tuple[float, float], blur: bool, mean: Stats, std: Stats
) -> list[ViewSpec]:
    """BYOL (Grill et al., 2020): asymmetric views; blur 1.0 / 0.1, solarize 0 / 0.2."""
    common = {"size": size, "scale": scale, "mean": mean, "std": std}
    return [
        ViewSpec(blur_p=1.0 if blur else 0.0, **common),
        ViewSpec(blur_p=0.1 if blur else 0.0, solarize_p=0.2, **common),
    ]


def instdisc(
    size: int, scale: tuple[float, float], blur: bool, mean: Stats, std: Stats
) -> list[ViewSpec]:
    """InstDisc (Wu et al., 2018): ONE view; jitter 0.4 on all four properties, always applied,
    grayscale p = 0.2, no blur (``blur`` is ignored: the official recipe has none)."""
    return [ViewSpec(size=size, scale=scale, jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, mean=mean, std=std)]


def invaspread(
    size: int, scale: tuple[float, float], blur: bool, mean: Stats, std: Stats
) -> list[ViewSpec]:
    """Invariant and Spreading (Ye et al., 2019): two views augmented like InstDisc's one."""
    return instdisc(size, scale, blur, mean, std) * 2


def pic(
    size: int, scale: tuple[float, float], blur: bool, mean: Stats, std: Stats
) -> list[ViewSpec]:
    """PIC (Cao et al., 2020): ONE view per image per step, augmented like SimCLR's."""
    return simclr(size, scale, blur, mean, std)[:1]


def maskcontrast(
    size: int, scale: tuple[float, float], blur: bool, mean: Stats, std: Stats
) -> list[ViewSpec]:
    """MaskContrast (Van Gansbeke et al., 2021): two identical views, random-resized crop (the
    paper's scale (0.2, 1) is its preset's ``views.scale``), flip 0.5, colour jitter
    (0.4, 0.4, 0.4, 0.1) p = 0.8, grayscale p = 0.2, no blur (``blur`` is ignored: the official
    recipe has none). The saliency masks follow each view's geometry (``View.maps``)."""
    spec = ViewSpec(size=size, scale=scale, jitter=(0.4, 0.4, 0.4, 0.1), mean=mean, std=std)
    return [spec, spec]


def single_view(
    size: int, scale: tuple[float, float], blur: bool, mean: Stats, std: Stats
) -> list[ViewSpec]:
    """ONE view, random-resized crop and flip 0.5 only; no colour jitter, grayscale or blur
    (``blur`` is ignored). The classic pretext tasks (recipe ``pretext``: the task itself -- tiles,
    rotations, colour channels -- makes the training signal) and masked image modelling (recipe
    ``mim``: MAE, SimMIM, CAE; CAE's scale (0.08, 1) is ``views.scale``) train on it."""
    return [ViewSpec(size=size, scale=scale, jitter_p=0.0, gray_p=0.0, mean=mean, std=std)]


RECIPES: dict[str, Callable[..., list[ViewSpec]]] = {
    "simclr": simclr, "byol": byol, "instdisc": instdisc, "invaspread": invaspread, "pic": pic,
    "maskcontrast": maskcontrast, "pretext": single_view, "mim": single_view,
}


def local_views(
    like: ViewSpec, count: int, size: int, scale: tuple[float, float]
) -> list[ViewSpec]:
    """Multi-crop (Caron et al., SwAV 2020): ``count`` small views of ``size`` pixels with crop
    area in ``scale``, otherwise augmented like ``like`` (blur sigma scales with the size)."""
    return [replace(like, size=size, scale=scale)] * count


def view_specs(views: ViewsConfig, default_recipe: str) -> list[ViewSpec]:
    """The view recipe of a run: ``views.recipe`` if set, else the method's ``default_recipe``;
    plus ``views.local_crops`` multi-crop views."""
    name = views.recipe or default_recipe
    if name not in RECIPES:
        raise ConfigError(f"unknown views.recipe {name!r}; available: {', '.join(RECIPES)}")
    specs = RECIPES[name](views.size, views.scale, views.blur, views.mean, views.std)
    return specs + local_views(specs[-1], views.local_crops, views.local_size, views.local_scale)


def _make_view(
    images: torch.Tensor,
    sizes: torch.Tensor,
    spec: ViewSpec,
    generator: torch.Generator,
    crop: CropSampler | None = None,
    index: torch.Tensor | None = None,
    maps: torch.Tensor | None = None,
) -> View:
    n = images.shape[0]
    if crop is None:
        boxes = sample_boxes(sizes, spec.scale, spec.ratio, generator)
    else:
        boxes = normalize_boxes(crop.sample(sizes, spec.scale, spec.ratio, generator, index, maps), sizes.cpu())
    flipped = torch.rand(n, generator=generator) < spec.flip_p
    boxes = flip_boxes(boxes, flipped)
    x = crop_resize(images, boxes, sizes, spec.size)  # mirrored where flipped
    view_maps = None if maps is None else crop_resize_nearest(maps, boxes, sizes, spec.size)
    x = color_jitter(x, spec.jitter, spec.jitter_p, generator)
    x = grayscale(x, torch.rand(n, generator=generator) < spec.gray_p)
    low, high = spec.blur_sigma
    sigmas = (low + (high - low) * torch.rand(n, generator=generator)) * (spec.size / 224)
    blurred = torch.rand(n, generator=generator) < spec.blur_p
    x = gaussian_blur(x, sigmas, blurred, blur_kernel_size(spec.size))
    x = solarize(x, torch.rand(n, generator=generator) < spec.solarize_p)
    x = normalize(x, spec.mean, spec.std)
    device = images.device
    return View(x, boxes.to(device, non_blocking=True), flipped.to(device, non_blocking=True), maps=view_maps)


def make_views(
    images: torch.Tensor,
    sizes: torch.Tensor,
    specs: list[ViewSpec],
    generator: torch.Generator,
    crop: CropSampler | None = None,
    index: torch.Tensor | None = None,
    maps: torch.Tensor | None = None,
) -> list[View]:
    """One ``View`` per spec of a batch.

    images: uint8 (B, 3, H, W), every image resized to the loader's common H x W.
    sizes: int64 (B, 2), each image's original (height, width): boxes are sampled there.
    generator: a CPU ``torch.Generator``; the same seed gives the same views.
    crop: where crop boxes come from: None for the random-resized crop, else a per-image
        sampler (``selfsup.views.contrastive_crop``: ContrastiveCrop, fixed centre crop)
        that sees ``index``, the dataset index (B,) of every image, and ``maps``.
    maps: optional (B, H, W) per-pixel maps at the images' stored size; every view carries them
        under its own geometry (``View.maps``).
    """
    return [_make_view(images, sizes, spec, generator, crop, index, maps) for spec in specs]


def eval_view(images: torch.Tensor, size: int, mean: Stats, std: Stats) -> torch.Tensor:
    """The whole image resized to ``size`` x ``size``, normalised: float (B, 3, size, size).

    One resize for the whole batch, bilinear with PIL-style antialiasing when shrinking.
    images: uint8 (B, 3, H, W) or float in [0, 1].
    """
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize(x, mean, std)
