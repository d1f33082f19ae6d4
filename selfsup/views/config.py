"""The ``views`` section of a run's configuration, and the normalisation statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from selfsup.core.checks import Checked, Fraction, NonNegativeInt, Positive, PositiveInt, Range
from selfsup.core.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

Stats = tuple[float, float, float]


@dataclass
class ViewsConfig(Checked):
    """Augmented views. ``recipe`` empty means the method's own recipe.

    Multi-crop (SwAV, DINO): ``local_crops`` extra low-resolution views of ``local_size``
    pixels with crop area in ``local_scale``, photometrically like the recipe's last view;
    ``size`` and ``scale`` then describe the global views.

    Crop sampler (``selfsup.views.contrastive_crop``), for every view of any method:
    ``crop`` is ``random`` (random-resized crop), ``contrastive`` (ContrastiveCrop: crops
    placed around a per-image object box with Beta(``crop_alpha``, ``crop_alpha``) offsets;
    boxes from the encoder's heat map thresholded at ``crop_threshold``, plain random crops
    for ``crop_warmup_epochs`` epochs, boxes recomputed every ``crop_interval`` epochs) or
    ``fixed-center`` (the centred crop of area fraction max(scale), no randomness). A method
    may wrap the sampler with its own (``Method.crop_sampler``).
    """

    section: ClassVar[str] = "views"

    recipe: Literal[
        "", "simclr", "byol", "instdisc", "invaspread", "pic", "maskcontrast", "pretext", "mim"
    ] = ""  # RECIPES keys
    size: PositiveInt = 224
    scale: tuple[Fraction, Fraction] = (0.08, 1.0)
    blur: bool = True
    mean: Stats = IMAGENET_MEAN
    std: tuple[Positive, Positive, Positive] = IMAGENET_STD
    local_crops: NonNegativeInt = 0
    local_size: PositiveInt = 96
    local_scale: tuple[Fraction, Fraction] = (0.05, 0.4)
    crop: Literal["random", "contrastive", "fixed-center"] = "random"
    crop_alpha: Positive = 0.6
    crop_threshold: Annotated[float, Range(ge=0, lt=1)] = 0.1
    crop_warmup_epochs: NonNegativeInt = 100
    crop_interval: PositiveInt = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size < 8:
            raise ConfigError(f"views.size must be >= 8 pixels, got {self.size}")
        for name in ("scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ConfigError(f"views.{name} must satisfy 0 < min <= max <= 1, got {list(getattr(self, name))}")
