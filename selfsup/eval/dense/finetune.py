"""Tiny-budget fine-tuning of the whole network from the trained probe (LP-FT)."""

from __future__ import annotations

import torch

from selfsup.core.progress import progress
from selfsup.data.segmentation import SegmentationSplit, crop_resize_pair
from selfsup.eval.dense.config import DenseConfig
from selfsup.eval.dense.features import Encoder, autocast_on
from selfsup.eval.dense.probe import PixelProbe, cosine_schedule, index_batches, masked_cross_entropy
from selfsup.views.boxes import sample_pixel_boxes


def finetune(
    encoder: Encoder, probe: PixelProbe, train: SegmentationSplit, cfg: DenseConfig, ignore_index: int,
    generator: torch.Generator,
) -> None:
    """Train backbone and head together for ``cfg.finetune_steps`` SGD steps (see module doc)."""
    backbone, device = encoder.backbone, encoder.device
    params = [*backbone.parameters(), *probe.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=cfg.finetune_lr, momentum=0.9, weight_decay=cfg.finetune_weight_decay)
    sched = cosine_schedule(opt, cfg.finetune_steps)
    h, w = train.image_size
    sizes = torch.tensor([[h, w]]).repeat(cfg.batch_size, 1)
    ratio = (0.75 * w / h, 4 / 3 * w / h)
    backbone.train()
    probe.train()
    for idx in progress(index_batches(len(train), cfg.batch_size, cfg.finetune_steps, generator), "fine-tuning steps",
                        cfg.finetune_steps):
        boxes = sample_pixel_boxes(sizes[: len(idx)], cfg.finetune_scale, ratio, generator)
        flipped = torch.rand(len(idx), generator=generator) < 0.5
        images, labels = crop_resize_pair(train.images[idx], train.labels[idx], boxes, flipped, (h, w))
        labels = labels.to(device)
        with autocast_on(device):
            fmap = backbone(encoder.inputs(images))[0]
        loss = masked_cross_entropy(probe(fmap, (h, w)), labels, ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    backbone.eval()
    for p in params:
        p.requires_grad_(False)
