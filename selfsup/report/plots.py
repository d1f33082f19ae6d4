"""The report's figures, drawn with matplotlib (no pyplot state: every function returns a Figure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from selfsup.report.run import RunFolder

# what the logged scalars mean, for the curve titles (others are titled by their key)
MEANINGS = {
    "loss": "training loss",
    "lr": "learning rate",
    "weight_decay": "weight decay",
    "online_knn": "online kNN top-1 (held-out)",
    "z_std": "collapse monitor: embedding std",
    "z_eff_rank": "collapse monitor: effective rank",
    "img_per_s": "throughput (images/s)",
}
FIRST = ("loss", "lr", "online_knn", "z_std", "z_eff_rank")
SKIPPED = ("epoch", "step")
DPI = 100


def save(figure: Figure, path: Path) -> Path:
    """Write a figure as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, facecolor="white")
    return path


def curve_keys(runs: Sequence[RunFolder]) -> list[str]:
    """Every numeric scalar the runs logged per step (and ``online_knn`` per epoch), the
    common ones first, then the methods' own in the order they were logged."""
    keys: dict[str, None] = {}
    for run in runs:
        for record in run.steps:
            keys.update({k: None for k, v in record.items() if k not in SKIPPED and isinstance(v, (int, float))})
        if any("online_knn" in r for r in run.epochs):
            keys["online_knn"] = None
    return [k for k in FIRST if k in keys] + [k for k in keys if k not in FIRST]


def _series(run: RunFolder, key: str) -> tuple[np.ndarray, np.ndarray]:
    records = run.epochs if key == "online_knn" else run.steps
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = np.array(points, dtype=float).T
    return steps, values


def _smooth(values: np.ndarray) -> np.ndarray:
    """A centred moving average over about 1/25 of the points (none for short series)."""
    window = len(values) // 25
    if window < 2:
        return values
    kernel = np.ones(window) / window
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def curves_figure(runs: Sequence[RunFolder], colours: Sequence[str]) -> Figure:
    """One panel per logged scalar against the optimiser step, every run overlaid in its colour."""
    keys = curve_keys(runs)
    cols = min(3, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4.2 * cols, 2.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        for run, colour in zip(runs, colours, strict=True):
            steps, values = _series(run, key)
            if not len(steps):
                continue
            marker = "o" if key == "online_knn" or len(steps) < 30 else None
            smooth = _smooth(values)
            if smooth is not values:
                ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps, smooth, color=colour, linewidth=1.6, marker=marker, markersize=3, label=run.name)
        ax.set_title(MEANINGS.get(key, key) + ("" if key not in MEANINGS else f" ({key})"), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    if len(runs) > 1 and keys:
        axes[0].legend(fontsize=8)
    return fig


def _class_colours(n: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N) for i in range(n)])


def embedding_figure(panels: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, classes: Sequence[str]) -> Figure:
    """2-D embeddings side by side (t-SNE of the run and of its random-init baseline), one
    colour per class, with a shared legend."""
    fig = Figure(figsize=(5.2 * len(panels) + 1.6, 5.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    colours = _class_colours(len(classes))
    for ax, (title, xy) in zip(axes, panels, strict=True):
        ax.scatter(xy[:, 0], xy[:, 1], c=colours[labels], s=min(30.0, max(5.0, 3000 / len(xy))), linewidths=0,
                   alpha=0.85)
        ax.set_title(title, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(handles=[Patch(color=colours[i], label=c) for i, c in enumerate(classes)], loc="outside right center",
               fontsize=8, frameon=False)
    return fig


def _pixels(image: torch.Tensor) -> np.ndarray:
    """uint8 (3, H, W) or float (3, H, W) in [0, 1] -> an (H, W, 3) array for imshow."""
    return image.permute(1, 2, 0).numpy()


def retrieval_figure(queries: torch.Tensor, query_labels: Sequence[int], neighbours: torch.Tensor,
                     neighbour_labels: torch.Tensor, classes: Sequence[str]) -> Figure:
    """One row per query: the query image, then its nearest training images, framed green where
    the neighbour has the query's class and red where not."""
    q, k = neighbours.shape[:2]
    fig = Figure(figsize=(1.0 * (k + 1) + 0.3, 1.15 * q), layout="constrained")
    axes = fig.subplots(q, k + 1, squeeze=False)
    for i in range(q):
        axes[i, 0].imshow(_pixels(queries[i]), interpolation="nearest")
        axes[i, 0].set_title(f"query: {classes[query_labels[i]]}", fontsize=6, fontweight="bold")
        for j in range(k):
            ax = axes[i, j + 1]
            ax.imshow(_pixels(neighbours[i, j]), interpolation="nearest")
            right = int(neighbour_labels[i, j]) == int(query_labels[i])
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9850" if right else "#d73027")
                spine.set_linewidth(3)
            ax.set_title(("✓ " if right else "✗ ") + classes[int(neighbour_labels[i, j])], fontsize=6,
                         color="#1a9850" if right else "#d73027")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for spine in axes[0, 0].spines.values():
        spine.set_linewidth(0)
    return fig


def views_figure(originals: torch.Tensor, views: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]]) -> Figure:
    """One column per training image: the image as loaded, then below it each view of the
    recipe (float (N, 3, S, S) in [0, 1]); where a view carries per-pixel maps (saliency
    masks) they are tinted red over it."""
    n = originals.shape[0]
    fig = Figure(figsize=(1.35 * n + 0.9, 1.4 * (len(views) + 1)), layout="constrained")
    axes = fig.subplots(len(views) + 1, n, squeeze=False)
    for i in range(n):
        axes[0, i].imshow(_pixels(originals[i]), interpolation="nearest")
        for j, (_title, images, maps) in enumerate(views):
            pixels = _pixels(images[i]).copy()
            if maps is not None:
                salient = maps[i].numpy() > 0
                pixels[salient] = 0.55 * pixels[salient] + 0.45 * np.array([1.0, 0.1, 0.1])
            axes[j + 1, i].imshow(pixels, interpolation="nearest")
    for j, title in enumerate(["image", *(t for t, _, _ in views)]):
        axes[j, 0].set_ylabel(title, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
