"""Unsupervised semantic segmentation by k-means + Hungarian matching (``selfsup eval cluster``).

No label is used to form the segments; labels only score them, after the one-to-one matching of
clusters to classes that maximises the total IoU (Hungarian, ``scipy.optimize.linear_sum_assignment``).
Clusters are fitted on the evaluation split itself (as MaskContrast's protocol does), over
``seeds`` k-means seeds; mIoU is reported as mean and sample std over them.

Two protocols:

- ``pixel`` (any checkpoint): every pixel's frozen dense feature (the map the linear probe reads,
  ``Method.dense_network``: a ResNet's last stage, MaskContrast's 256-d decoder), L2-normalised,
  clustered into K = number of classes; each label pixel takes the cluster of the bilinearly
  upsampled scores x.c - |c|^2 / 2 (the nearest centre of the interpolated feature).
- ``maskcontrast`` (MaskContrast checkpoints; Van Gansbeke et al., 2021, Sec. 4): foreground =
  saliency head > 0.5; one prototype per image = the L2-normalised sum of its normalised pixel
  embeddings over the foreground weighted by the saliency; PCA to 32 dimensions with whitening
  (scikit-learn); k-means into K = number of OBJECT classes; foreground pixels get cluster + 1,
  background 0. The ground truth is remapped to background 0 and object classes 1..K (every other
  class is background); matching and mIoU over K + 1 classes.

k-means: scikit-learn's ``KMeans`` (n_init 3) up to ``EXACT_MAX`` points, ``MiniBatchKMeans``
(batches of 4096, n_init 3) above; the pixel protocol fits on at most ``FIT_PIXELS`` pixels
drawn with the seed and assigns every pixel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from selfsup.core.device import resolve_device
from selfsup.core.progress import progress
from selfsup.data import DataError
from selfsup.data.segmentation import open_segmentation
from selfsup.eval.dense.features import Encoder
from selfsup.eval.dense.figure import DenseFigure
from selfsup.eval.segmentation_metrics import confusion_matrix, iou_per_class, mean_iou
from selfsup.methods.maskcontrast import MaskContrast
from selfsup.train.runs import load_run

EXACT_MAX = 20000
FIT_PIXELS = 200000
CAMVID_OBJECTS = ("pole", "sign/symbol", "fence", "car", "pedestrian", "bicyclist")


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster centres (k, D) of the rows of ``x`` (see the module doc for the algorithm)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(x) <= EXACT_MAX:
        model = KMeans(n_clusters=k, n_init=3, random_state=seed)
    else:
        model = MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=4096, random_state=seed)
    return model.fit(x).cluster_centers_.astype(np.float32)


@dataclass
class Matching:
    """The Hungarian matching of clusters to classes and the scores after it."""

    mapping: np.ndarray  # cluster -> class
    confusion: torch.Tensor  # classes x classes after mapping

    @property
    def miou(self) -> float:
        return mean_iou(self.confusion)


def hungarian_match(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> Matching:
    """Match clusters 0..K-1 of ``pred`` one-to-one to classes 0..K-1 of ``target`` maximising the
    summed IoU, over the non-ignored pixels; then score the mapped prediction."""
    keep = target.reshape(-1) != ignore_index
    p, t = pred.reshape(-1)[keep].long(), target.reshape(-1)[keep].long()
    counts = torch.bincount(p * num_classes + t, minlength=num_classes**2).view(num_classes, num_classes).double()
    union = counts.sum(1, keepdim=True) + counts.sum(0, keepdim=True) - counts
    iou = (counts / union.clamp(min=1)).numpy()
    rows, cols = linear_sum_assignment(-iou)
    mapping = np.zeros(num_classes, dtype=np.int64)
    mapping[rows] = cols
    mapped = torch.from_numpy(mapping)[pred.long()]
    return Matching(mapping, confusion_matrix(mapped, target, num_classes, ignore_index))


def _stats(values: list[float]) -> dict[str, Any]:
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "per_seed": values}


@dataclass
class ClusterConfig:
    """Options of ``selfsup eval cluster``."""

    protocol: str = "both"  # pixel | maskcontrast | both (maskcontrast only for MaskContrast runs)
    seeds: int = 5
    size: tuple[int, int] | None = None
    scale: float = 1.0
    split: str = "val"
    object_classes: tuple[str, ...] | None = None
    max_images: int = 0
    batch_size: int = 16
    figure_images: int = 4
    device: str = "auto"


@torch.no_grad()
def _pixel_protocol(encoder: Encoder, images, labels, k, ignore, seeds, batch_size):
    feats = [F.normalize(encoder(images[i : i + batch_size]).float(), dim=1).cpu()
             for i in progress(range(0, len(images), batch_size), "feature maps")]
    maps = torch.cat(feats)  # (N, C, h, w)
    flat = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).numpy()
    size = tuple(labels.shape[-2:])
    results, best = [], None
    for seed in progress(range(seeds), "k-means seeds"):
        rng = np.random.default_rng(seed)
        fit = flat if len(flat) <= FIT_PIXELS else flat[rng.choice(len(flat), FIT_PIXELS, replace=False)]
        centres = torch.from_numpy(kmeans(fit, k, seed))
        preds = []
        for i in range(0, len(maps), batch_size):
            scores = torch.einsum("nchw,kc->nkhw", maps[i : i + batch_size], centres) - 0.5 * (centres**2).sum(1)[
                None, :, None, None]
            preds.append(F.interpolate(scores, size=size, mode="bilinear", align_corners=False).argmax(1))
        pred = torch.cat(preds)
        match = hungarian_match(pred, labels, k, ignore)
        results.append(match)
        if seed == 0:
            best = torch.from_numpy(match.mapping)[pred].to(torch.uint8)
    return results, best, tuple(maps.shape[1:])


@torch.no_grad()
def _maskcontrast_protocol(method: MaskContrast, encoder: Encoder, images, labels, objects, ignore, seeds,
                           batch_size):
    from sklearn.decomposition import PCA

    protos, fgs = [], []
    for i in range(0, len(images), batch_size):
        emb, logits = method.segment(encoder.inputs(images[i : i + batch_size]))
        prob = torch.sigmoid(F.interpolate(logits[:, None], size=labels.shape[-2:], mode="bilinear",
                                           align_corners=False))[:, 0]
        emb = F.normalize(F.interpolate(emb, size=labels.shape[-2:], mode="bilinear", align_corners=False), dim=1)
        fg = prob > 0.5
        weight = (prob * fg).flatten(1)
        protos.append(F.normalize(torch.einsum("bdn,bn->bd", emb.flatten(2), weight), dim=1).cpu())
        fgs.append(fg.cpu())
    protos_np, fg_all = torch.cat(protos).numpy(), torch.cat(fgs)
    target = torch.zeros_like(labels)
    for j, c in enumerate(objects):
        target[labels == c] = j + 1
    target[labels == ignore] = ignore
    k = len(objects)
    results, shown = [], None
    for seed in progress(range(seeds), "k-means seeds"):
        n_comp = min(32, protos_np.shape[0], protos_np.shape[1])
        z = PCA(n_components=n_comp, whiten=True, random_state=seed).fit_transform(protos_np)
        from sklearn.cluster import KMeans

        assign = torch.from_numpy(KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(z))
        pred = fg_all.long() * (assign[:, None, None] + 1)
        match = hungarian_match(pred, target, k + 1, ignore)
        results.append(match)
        if seed == 0:
            shown = torch.from_numpy(match.mapping)[pred].to(torch.uint8)
    return results, shown, target, float(fg_all.float().mean())


def cluster_eval(checkpoint: str | Path, data: str | Path, cfg: ClusterConfig, random_init: bool = False):
    """Both protocols on ``data``'s ``cfg.split``: (JSON-ready result, {protocol: DenseFigure})."""
    start = time.perf_counter()
    torch.manual_seed(0)  # the weights of --random-init
    run_cfg, method = load_run(checkpoint, random_init=random_init)
    ds = open_segmentation(data, splits=("train", cfg.split), size=cfg.size, scale=cfg.scale)
    split = ds.val
    if cfg.max_images and cfg.max_images < len(split):
        split = split.subset(torch.arange(len(split))[: cfg.max_images])
    device = resolve_device(cfg.device)
    method = method.to(device).eval()
    encoder = Encoder(method.dense_network(), run_cfg.views.mean, run_cfg.views.std, run_cfg.backbone.img_size, device)
    protocols = ["pixel", "maskcontrast"] if cfg.protocol == "both" else [cfg.protocol]
    if not isinstance(method, MaskContrast):
        if cfg.protocol == "maskcontrast":
            raise DataError(f"the maskcontrast protocol needs a maskcontrast run (a saliency head), got "
                            f"{run_cfg.method}; use --protocol pixel")
        protocols = ["pixel"]
    k, ignore = ds.num_classes, ds.ignore_index
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "random_init": random_init, "method": run_cfg.method,
                              "data": str(data), "split": cfg.split, "images": len(split),
                              "image_size": list(split.image_size), "seeds": cfg.seeds, "classes": ds.classes}
    figures: dict[str, DenseFigure] = {}
    shown = torch.linspace(0, len(split) - 1, min(cfg.figure_images, len(split))).round().long().unique()
    if "pixel" in protocols:
        t = time.perf_counter()
        matches, pred, fmap = _pixel_protocol(encoder, split.images, split.labels, k, ignore, cfg.seeds,
                                              cfg.batch_size)
        ious = np.array([iou_per_class(m.confusion).numpy() for m in matches])
        result["pixel"] = {"k": k, "feature_map": list(fmap), "miou": _stats([m.miou for m in matches]),
                           "per_class_iou_mean": {c: None if math.isnan(v) else float(v) for c, v in
                                                  zip(ds.classes, np.nanmean(ious, 0), strict=True)},
                           "wall_time_s": time.perf_counter() - t}
        figures["pixel"] = DenseFigure(split.images[shown], split.labels[shown], {"k-means (matched)": pred[shown]},
                                       ds.classes, ignore, ds.palette)
    if "maskcontrast" in protocols:
        names = cfg.object_classes or (CAMVID_OBJECTS if ds.label_set == "camvid" else None)
        if not names:
            raise DataError("the maskcontrast protocol needs --object-classes (names of the object classes)")
        unknown = [n for n in names if n not in ds.classes]
        if unknown:
            raise DataError(f"unknown object class {unknown[0]!r}; classes: {', '.join(ds.classes)}")
        objects = [ds.classes.index(n) for n in names]
        t = time.perf_counter()
        matches, pred, target, fg = _maskcontrast_protocol(method, encoder, split.images, split.labels, objects,
                                                           ignore, cfg.seeds, cfg.batch_size)
        classes = ["background", *names]
        ious = np.array([iou_per_class(m.confusion).numpy() for m in matches])
        result["maskcontrast"] = {"k": len(objects), "classes": classes, "foreground_share": fg,
                                  "miou": _stats([m.miou for m in matches]),
                                  "per_class_iou_mean": {c: None if math.isnan(v) else float(v) for c, v in
                                                         zip(classes, np.nanmean(ious, 0), strict=True)},
                                  "wall_time_s": time.perf_counter() - t}
        palette = ((255, 255, 255), *(ds.palette[c] for c in objects)) if ds.palette else ()
        figures["maskcontrast"] = DenseFigure(split.images[shown], target[shown],
                                              {"k-means (matched)": pred[shown]}, classes, ignore, palette)
    result["wall_time_s"] = time.perf_counter() - start
    return result, figures
