"""Alignment and uniformity of a trained encoder (Wang & Isola, ICML 2020) on a whole split.

- Alignment: for every image, two views drawn with the run's own training recipe (the
  first two views of ``view_specs``: SimCLR's two identical specs, BYOL's asymmetric pair),
  encoded by the frozen backbone in eval mode; mean ||u1 - u2||^2 of the L2-normalised
  features (alpha = 2). Low: the encoder is invariant to the augmentations.
- Uniformity: log mean_{i != j} exp(-2 ||u_i - u_j||^2) over the features of the whole,
  un-augmented images (the features kNN and the linear probe see). Low: features spread
  over the sphere. Both are 0 for a collapsed (constant) encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data import DataError, open_dataset
from selfsup.data.dataset import ImageDataset
from selfsup.losses.alignment import alignment, uniformity
from selfsup.views.features import extract_features
from selfsup.views.recipes import ViewSpec, make_views

ALPHA = 2.0
T = 2.0


@torch.no_grad()
def view_alignment(
    backbone: nn.Module,
    dataset: ImageDataset,
    specs: list[ViewSpec],
    batch_size: int,
    device: torch.device | str,
    seed: int = 0,
) -> float:
    """Mean alignment over two views (``specs[0]``, ``specs[1]``) of every image of ``dataset``."""
    was_training = backbone.training
    backbone.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for batch in dataset.batches(batch_size, shuffle=False, drop_last=False):
        batch = batch.to(device)
        v1, v2 = make_views(batch.images, batch.sizes, specs[:2], generator)
        u1, u2 = (F.normalize(backbone(v.images)[1].float(), dim=1) for v in (v1, v2))
        total += alignment(u1, u2, ALPHA).item() * len(u1)
    backbone.train(was_training)
    return total / len(dataset)


def alignment_uniformity(
    backbone: nn.Module,
    dataset: ImageDataset,
    specs: list[ViewSpec],
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """``{"alignment", "uniformity", "alpha", "t", "images", "feature_dim"}`` of ``backbone``
    on ``dataset`` (views from ``specs``; whole images at ``size`` for uniformity)."""
    feats, _ = extract_features(backbone, dataset, size, mean, std, batch_size, device)
    u = F.normalize(feats, dim=1)
    return {
        "alignment": view_alignment(backbone, dataset, specs, batch_size, device, seed),
        "uniformity": uniformity(u, T).item(),
        "alpha": ALPHA,
        "t": T,
        "images": len(dataset),
        "feature_dim": u.shape[1],
    }


def evaluate_run(
    checkpoint: str | Path,
    data: str,
    split: str = "test",
    max_images: int = 0,
    size: int = 0,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    seed: int = 0,
    random_init: bool = False,
) -> dict[str, Any]:
    """:func:`alignment_uniformity` of a run's encoder on ``split`` (``test`` or ``train``) of
    ``data``, with the run's own views and evaluation size (``size`` 0); ``max_images`` caps
    the split to a fixed random subset (0 = all); ``random_init``: the untrained baseline."""
    from selfsup.data import cap
    from selfsup.train.runs import load_run
    from selfsup.views.recipes import view_specs

    cfg, method = load_run(checkpoint, random_init=random_init)
    splits = open_dataset(data, load_size=cfg.data.load_size)
    dataset = splits.test if split == "test" else splits.train
    if dataset is None:
        raise DataError(f"{data}: no held-out split (a test/ or val/ folder); use --split train")
    dataset = cap(dataset, max_images, 0)
    if len(dataset) < 2:
        raise DataError(f"{data}: alignment and uniformity need 2 images or more, {split} has {len(dataset)}")
    v = cfg.views
    result = alignment_uniformity(method.backbone.to(device), dataset, view_specs(cfg.views, type(method).recipe),
                                  size or v.size, v.mean, v.std, batch_size, device, seed)
    return {"checkpoint": str(checkpoint), "random_init": random_init, "split": split, **result}
