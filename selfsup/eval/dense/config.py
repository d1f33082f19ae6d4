"""The options of a dense evaluation (``selfsup eval dense``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from selfsup.core.checks import Checked, Fraction, NonNegative, NonNegativeInt, Positive, PositiveInt
from selfsup.core.errors import ConfigError


@dataclass
class DenseConfig(Checked):
    """Data, probe budget and fine-tuning budget of a dense evaluation.

    size: (H, W) load size of images and labels (None: the images' size times ``scale``).
    steps: probe optimiser steps; 0 means ``epochs`` passes over the training split.
    val_data: a separate folder / archive holding ``val_split`` (default: the training data's).
    classes / ignore_index / label_dir: see ``selfsup.data.segmentation.open_segmentation``.
    max_train / max_val: a fixed random subset of that many pairs (0: all).
    """

    section: ClassVar[str] = "dense"

    size: tuple[PositiveInt, PositiveInt] | None = None
    scale: Positive = 1.0
    train_split: str = "train"
    val_split: str = "val"
    val_data: str | None = None
    label_dir: str = "{split}annot"
    classes: str | None = None
    ignore_index: int | None = None
    max_train: NonNegativeInt = 0
    max_val: NonNegativeInt = 0
    epochs: PositiveInt = 20
    steps: NonNegativeInt = 0
    lr: Positive = 0.1
    weight_decay: NonNegative = 0.0
    batch_size: PositiveInt = 8
    eval_batch_size: PositiveInt = 16
    finetune_steps: NonNegativeInt = 0
    finetune_lr: Positive = 0.01
    finetune_weight_decay: NonNegative = 1e-4
    finetune_scale: tuple[Fraction, Fraction] = (0.5, 1.0)
    feature_memory_gb: NonNegative = 4.0
    figure_images: NonNegativeInt = 4
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.size is not None:
            self.size = tuple(int(v) for v in self.size)
        self.finetune_scale = tuple(float(v) for v in self.finetune_scale)
        super().__post_init__()
        if not self.finetune_scale[0] <= self.finetune_scale[1]:
            raise ConfigError(f"dense.finetune_scale must satisfy 0 < min <= max <= 1, got {list(self.finetune_scale)}")
