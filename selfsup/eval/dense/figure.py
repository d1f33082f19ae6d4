"""The dense evaluation's picture: images, ground truth and predictions in class colours."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

PANEL_WIDTH, LEGEND_COLUMNS, DPI = 160, 6, 100


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
    """A PNG with one row per image: the image, its ground truth and every prediction (panels
    at least 160 px wide, nearest-neighbour so class colours stay exact), and a legend of class
    colours (ignored pixels black)."""
    colours = class_palette(len(figure.classes), figure.palette)
    colours[figure.ignore_index] = 0
    titles = ["image", "ground truth", *figure.predictions]
    n, h, w = figure.labels.shape
    scale = max(1.0, PANEL_WIDTH / w)
    legend_rows = math.ceil(len(figure.classes) / LEGEND_COLUMNS)
    fig = Figure(figsize=(len(titles) * (w * scale + 8) / DPI, (n * (h * scale + 8) + 30 + 18 * legend_rows) / DPI),
                 layout="constrained")
    axes = fig.subplots(n, len(titles), squeeze=False)
    for row in range(n):
        panels = [figure.images[row].permute(1, 2, 0).numpy(), colours[figure.labels[row].numpy()],
                  *(colours[p[row].numpy()] for p in figure.predictions.values())]
        for col, panel in enumerate(panels):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].set_axis_off()
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=9)
    handles = [Patch(facecolor=colours[c] / 255, edgecolor="#444", label=name) for c, name in enumerate(figure.classes)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(LEGEND_COLUMNS, len(handles)) or 1, fontsize=8,
               frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path
