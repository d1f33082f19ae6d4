"""Semantic-segmentation scores from a confusion matrix accumulated over all pixels.

The confusion matrix C (K x K) counts pixels: C[t, p] = number of pixels of true class t
predicted as class p; pixels whose label is the ignore index are left out entirely.
For every class k, with TP = C[k, k], FP = sum_t C[t, k] - TP, FN = sum_p C[k, p] - TP:

    IoU_k = TP / (TP + FP + FN)

A class that is neither present in the labels nor predicted anywhere (TP + FP + FN = 0)
has no defined IoU: it is NaN and left out of the mean, mIoU = mean of the non-NaN IoUs
(as in the usual VOC / Cityscapes / mmsegmentation protocol). A class predicted somewhere
but absent from the labels has IoU 0 and does count. Pixel accuracy = trace(C) / sum(C).
"""

from __future__ import annotations

import math

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """int64 (K, K) counts, rows = true class, columns = predicted class.

    pred, target: integer tensors of the same shape. Target pixels equal to ``ignore_index``
    are skipped; any other target or prediction outside 0..K-1 is a ValueError.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    keep = target != ignore_index
    t, p = target[keep], pred.reshape(-1).long()[keep]
    for name, values in (("label", t), ("prediction", p)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(f"{name} values must lie in 0..{num_classes - 1} (or be the ignore index "
                             f"{ignore_index}), got {int(values.min())}..{int(values.max())}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).cpu()


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """float64 (K,) IoU of every class; NaN for a class absent from both labels and predictions."""
    c = confusion.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes whose IoU is defined (NaN when none is)."""
    iou = iou_per_class(confusion)
    defined = iou[~iou.isnan()]
    return float(defined.mean()) if defined.numel() else math.nan


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Fraction of the counted (non-ignored) pixels predicted correctly (NaN when none)."""
    total = int(confusion.sum())
    return int(confusion.diag().sum()) / total if total else math.nan
