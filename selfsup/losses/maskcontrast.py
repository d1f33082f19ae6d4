"""MaskContrast's losses (Van Gansbeke, Vandenhende, Georgoulis, Van Gool: "Unsupervised Semantic
Segmentation by Contrasting Object Mask Proposals", ICCV 2021, Sec. 3.2).

Notation: a batch of B images, two views each; q_i the L2-normalised query-view embedding of
pixel i, at the salient pixels of the query view's mask only; y_i the index of the image pixel
i belongs to (its "class"); k the key-view embeddings of the momentum encoder.

- Prototype of image b: z_b = normalise( sum_{j salient in key view b} k_j ) (a sum of unit
  vectors, then normalised; the two views are not matched pixel to pixel).
- Logits of pixel i: [q_i . z_1, ..., q_i . z_B, q_i . Q_1, ..., q_i . Q_K] / tau, Q a queue
  of K past prototypes (negatives only), tau = 0.5.
- Contrastive loss: weighted cross-entropy with class weights w_c = 1 / ln(1.02 + p_c), where
  p_c is image c's share of the batch's salient query pixels (ENet's weighting, so images with
  small objects are not drowned by large ones):

      L_con = sum_i w_{y_i} CE_i / sum_i w_{y_i},   CE_i = -log softmax(logits_i)[y_i]

  (``F.cross_entropy(..., weight=w, reduction='mean')``, the official code's).
- Saliency loss: balanced binary cross-entropy between the saliency head's logits s and the
  query mask m (HED's weighting): with beta = #negatives / #pixels of the batch,

      L_sal = ( beta sum_{m=1} BCE(s, 1) + (1 - beta) sum_{m=0} BCE(s, 0) ) / #pixels.

- Total: L_con + lambda L_sal, lambda = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def saliency_prototypes(keys: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """z_b = normalise(sum of ``keys`` over the salient pixels of ``masks``): (B, D).

    keys: (B, D, H, W) L2-normalised per pixel; masks: (B, H, W) bool or 0/1. An image without
    a salient pixel gets the zero vector (it matches nothing).
    """
    summed = torch.einsum("bdn,bn->bd", keys.flatten(2), masks.flatten(1).to(keys.dtype))
    return F.normalize(summed, dim=1)


def class_weights(shares: torch.Tensor) -> torch.Tensor:
    """ENet's class weights w_c = 1 / ln(1.02 + p_c) for class shares p_c in [0, 1]."""
    return 1.0 / torch.log(1.02 + shares)


def mask_contrast_loss(
    q: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.5,
    weights: torch.Tensor | None = None,
    normaliser: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weighted cross-entropy L_con of the module doc.

    q: (N, D) L2-normalised query embeddings of the salient pixels; labels: int64 (N,) the index
    of each pixel's prototype in ``prototypes`` (B, D); queue: (K, D) negative prototypes.
    weights: (B,) class weights w_c; default ``class_weights`` of the labels' shares among the N
    pixels. normaliser: the divisor, default sum_i w_{y_i}; under DDP pass that sum over the
    GLOBAL batch divided by the number of ranks, so the ranks' mean is the global loss.
    No pixel (N = 0): 0.
    """
    if weights is None:
        weights = class_weights(torch.bincount(labels, minlength=prototypes.shape[0]).to(q.dtype) / max(len(q), 1))
    logits = torch.cat([q @ prototypes.T, q @ queue.T], dim=1) / temperature
    per_pixel = F.cross_entropy(logits, labels, reduction="none")
    w = weights.to(per_pixel.dtype)[labels]
    divisor = w.sum() if normaliser is None else normaliser.to(per_pixel.dtype)
    return (w * per_pixel).sum() / divisor.clamp(min=1e-12)


def balanced_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    negative_share: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """The balanced binary cross-entropy L_sal of the module doc (HED, Xie & Tu, 2015).

    logits: (B, H, W) saliency-head logits; target: (B, H, W) bool or 0/1 masks.
    negative_share: beta, default the share of non-salient pixels in ``target``; count: the
    divisor, default the number of pixels (under DDP pass the global batch's beta and its
    pixel count divided by the number of ranks).
    """
    y = target.to(logits.dtype)
    beta = (1 - y).mean() if negative_share is None else negative_share.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    total = beta * (bce * y).sum() + (1 - beta) * (bce * (1 - y)).sum()
    divisor = torch.tensor(float(y.numel()), dtype=logits.dtype) if count is None else count.to(logits.dtype)
    return total / divisor.clamp(min=1)
