"""Frozen features of a dataset: whole images through the evaluation view (resized, normalised),
backbone in eval mode. Used by the evaluations, the trainer's monitors and methods that start
from the network's own embeddings (InstDisc's ``bank_init: features``)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.core.progress import progress
from selfsup.data.dataset import ImageDataset
from selfsup.views.recipes import eval_view


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: ImageDataset,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, C) on the CPU and labels (N,) for every image, in dataset order."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    batches = dataset.batches(batch_size, shuffle=False, drop_last=False)
    for batch in progress(batches, "features", dataset.num_batches(batch_size, drop_last=False)):
        x = eval_view(batch.images.to(device), size, mean, std)
        feats.append(backbone(x)[1].float().cpu())
        labels.append(batch.labels)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)
