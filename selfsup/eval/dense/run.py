"""``dense_eval``: data, frozen features, probe, optional fine-tuning and the JSON result of one run."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from selfsup.core.device import resolve_device
from selfsup.data.segmentation import SegmentationData, SegmentationSplit, open_segmentation
from selfsup.eval.dense.config import DenseConfig
from selfsup.eval.dense.features import Encoder, FrozenFeatures
from selfsup.eval.dense.figure import DenseFigure
from selfsup.eval.dense.finetune import finetune
from selfsup.eval.dense.probe import PixelProbe, finite_or_none, predict, score, train_probe
from selfsup.eval.segmentation_metrics import mean_iou, pixel_accuracy
from selfsup.train.runs import load_run


@dataclass
class DenseOutput:
    result: dict[str, Any]
    figure: DenseFigure


def _cap(split: SegmentationSplit, n: int, seed: int) -> SegmentationSplit:
    if n <= 0 or n >= len(split):
        return split
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[:n].sort().values)


def dense_eval(checkpoint: str | Path, data: str | Path, cfg: DenseConfig, random_init: bool = False) -> DenseOutput:
    """Probe (and optionally fine-tune) the backbone of a pre-training run on a segmentation
    dataset; the result dict is JSON-ready, the figure goes to :func:`save_figure`."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)  # the weights of --random-init
    run_cfg, method = load_run(checkpoint, random_init=random_init)
    ds: SegmentationData = open_segmentation(
        data, splits=(cfg.train_split, cfg.val_split), label_dir=cfg.label_dir, size=cfg.size, scale=cfg.scale,
        classes=cfg.classes, ignore_index=cfg.ignore_index, val_spec=cfg.val_data,
    )
    train, val = _cap(ds.train, cfg.max_train, cfg.seed), _cap(ds.val, cfg.max_val, cfg.seed)
    data_time = time.perf_counter() - start
    device = resolve_device(cfg.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    backbone = method.dense_network().eval()  # the backbone, or backbone + decoder (MaskContrast)
    for p in backbone.parameters():
        p.requires_grad_(False)
    encoder = Encoder(backbone, run_cfg.views.mean, run_cfg.views.std, run_cfg.backbone.img_size, device)
    k, ignore = ds.num_classes, ds.ignore_index

    start = time.perf_counter()
    features = FrozenFeatures(encoder, train.images, cfg.eval_batch_size, cfg.feature_memory_gb * 2**30)
    mean, std = features.channel_stats()
    probe = PixelProbe(features.shape[0], k, mean, std, generator).to(device)
    steps = train_probe(probe, features, train.labels, cfg, ignore, generator)
    train_scores = score(predict(features, probe, train.images, train.image_size, cfg.eval_batch_size),
                         train.labels, k, ignore)
    fmap_shape = features.shape
    del features
    val_pred = predict(encoder, probe, val.images, val.image_size, cfg.eval_batch_size)
    val_scores = score(val_pred, val.labels, k, ignore)
    probe_time = time.perf_counter() - start

    shown = torch.linspace(0, len(val) - 1, min(cfg.figure_images, len(val))).round().long().unique()
    figure = DenseFigure(val.images[shown], val.labels[shown], {"linear probe": val_pred[shown]}, ds.classes,
                         ignore, ds.palette)
    flat = train.labels.flatten()
    train_counts = torch.bincount(flat[flat != ignore].long(), minlength=k)[:k]
    majority = int(train_counts.argmax())
    majority_pred = torch.full_like(val.labels, majority)
    spe = math.ceil(len(train) / cfg.batch_size)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "random_init": random_init, "method": run_cfg.method,
        "backbone": asdict(run_cfg.backbone), "data": str(data), "val_data": cfg.val_data,
        "splits": {"train": cfg.train_split, "val": cfg.val_split},
        "label_set": ds.label_set, "classes": ds.classes, "ignore_index": ignore,
        "image_size": list(train.image_size), "feature_map": list(fmap_shape),
        "train_images": len(train), "val_images": len(val),
        "skipped_images": {"train": ds.train.num_skipped, "val": ds.val.num_skipped},
        **val_scores.as_dict(ds.classes),
        "train_miou": finite_or_none(mean_iou(train_scores.confusion)),
        "train_pixel_accuracy": finite_or_none(pixel_accuracy(train_scores.confusion)),
        "majority_class": ds.classes[majority],
        "majority_pixel_accuracy": finite_or_none(pixel_accuracy(score(majority_pred, val.labels, k, ignore)
                                                                  .confusion)),
        "train_majority_pixel_accuracy": finite_or_none(float(train_counts[majority] / train_counts.sum())),
        "evaluated": "after the last probe step",
        "probe": {"steps": steps, "epochs": steps / spe, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                  "batch_size": cfg.batch_size, "schedule": "sgd momentum 0.9, cosine"},
        "data_time_s": data_time, "wall_time_s": probe_time, "device": str(device),
        "finetune": None,
    }
    if cfg.finetune_steps:
        start = time.perf_counter()
        finetune(encoder, probe, train, cfg, ignore, generator)
        ft_pred = predict(encoder, probe, val.images, val.image_size, cfg.eval_batch_size)
        result["finetune"] = {
            **score(ft_pred, val.labels, k, ignore).as_dict(ds.classes),
            "steps": cfg.finetune_steps, "lr": cfg.finetune_lr, "weight_decay": cfg.finetune_weight_decay,
            "batch_size": cfg.batch_size, "crop_scale": list(cfg.finetune_scale),
            "init": "backbone + trained linear probe", "wall_time_s": time.perf_counter() - start,
        }
        figure.predictions["fine-tuned"] = ft_pred[shown]
    return DenseOutput(result, figure)
