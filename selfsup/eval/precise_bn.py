"""Batch-norm statistics re-estimated on the evaluation view ("precise BN": Wu & Johnson,
"Rethinking 'Batch' in BatchNorm", 2021).

A network pre-trained on something other than whole images (the tiles of a jigsaw, 8-pixel
patches, L channels) keeps running means and variances of THOSE inputs; frozen-feature
evaluations on whole images then normalise with statistics of another distribution.
Re-estimating them on unlabelled training images at the evaluation view (no gradient, no
labels, the weights untouched) separates "the weights learned nothing" from "the statistics
belong to another input".
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.dataset import ImageDataset
from selfsup.views.recipes import eval_view


@torch.no_grad()
def recalibrate_bn(
    backbone: nn.Module,
    dataset: ImageDataset,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> int:
    """Replace the running mean and variance of every batch-norm layer of ``backbone`` by their
    average over the batches of ``dataset`` (whole images through :func:`eval_view`; the
    cumulative average, momentum None: equal weight per batch, so only full batches are used
    when there is one).
    The weights and the layers' momenta are left as they were; returns the number of layers."""
    layers = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    was_training = backbone.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    backbone.train()
    try:
        for batch in dataset.batches(batch_size, shuffle=False, drop_last=len(dataset) >= batch_size):
            backbone(eval_view(batch.images.to(device), size, mean, std))
    finally:
        for m, mom in zip(layers, momenta, strict=True):
            m.momentum = mom
        backbone.train(was_training)
    return len(layers)
