"""The dense evaluation's picture: images, ground truth and predictions in class colours."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


@dataclass
class DenseFigure:
    """What the figure shows: a few validation pairs and each model's predictions."""

    images: torch.Tensor  # uint8 (n, 3, H, W)
    labels: torch.Tensor  # uint8 (n, H, W)
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)  # title -> (n, H, W)
    classes: list[str] = field(default_factory=list)
    ignore_index: int = 255
    palette: tuple[tuple[int, int, int], ...] = ()


def class_palette(num_classes: int, palette: tuple[tuple[int, int, int], ...] = ()) -> np.ndarray:
    """uint8 (256, 3) colours: the label set's own for its classes, else the fixed PASCAL VOC
    bit-interleaved palette shifted by one (so class 0 is not black); every other value,
    the ignore index included, is black."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for c in range(num_classes):
        if c < len(palette):
            colours[c] = palette[c]
            continue
        v, rgb = c + 1, [0, 0, 0]
        for bit in range(8):
            for ch in range(3):
                rgb[ch] |= ((v >> ch) & 1) << (7 - bit)
            v >>= 3
        colours[c] = rgb
    return colours


def save_figure(figure: DenseFigure, path: str | Path) -> Path:
    """A PNG with one row per image: the image, its ground truth and every prediction, plus a
    legend of class colours (ignored pixels black)."""
    colours = class_palette(len(figure.classes), figure.palette)
    colours[figure.ignore_index] = 0
    titles = ["image", "ground truth", *figure.predictions]
    n, h, w = figure.labels.shape
    gap, head, line = 4, 16, 14
    width = len(titles) * (w + gap) + gap
    per_row = max(1, width // 110)
    legend_rows = math.ceil(len(figure.classes) / per_row)
    canvas = Image.new("RGB", (width, head + n * (h + gap) + gap + legend_rows * line), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(titles):
        draw.text((gap + col * (w + gap), 2), title, fill="black")
    for row in range(n):
        panels = [figure.images[row].permute(1, 2, 0).numpy(), colours[figure.labels[row].numpy()],
                  *(colours[p[row].numpy()] for p in figure.predictions.values())]
        for col, panel in enumerate(panels):
            canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (gap + col * (w + gap), head + row * (h + gap)))
    top = head + n * (h + gap) + gap
    for c, name in enumerate(figure.classes):
        x, y = gap + (c % per_row) * 110, top + (c // per_row) * line
        draw.rectangle((x, y + 2, x + 10, y + 11), fill=tuple(int(v) for v in colours[c]))
        draw.text((x + 14, y), name, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
