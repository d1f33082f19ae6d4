"""Pixel-level geometry and losses of PixPro and PixContrast (Xie, Lin, Zhang, Cao, Lin, Hu:
"Propagate Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual Representation
Learning", CVPR 2021).

Geometry. A view's feature map of h x w cells tiles its crop box (x0, y0, x1, y1), given in the
SOURCE image's normalised coordinates (``View.boxes``: x0 = left / (W - 1), x1 = (left + w - 1)
/ (W - 1), same for y with H; a flip swaps x0 and x1). Cell (r, c) is the bin centred at

    x = x0 + (c + 0.5) (x1 - x0) / w,    y = y0 + (r + 0.5) (y1 - y0) / h,

and a bin's diagonal is sqrt(((x1 - x0) / w)^2 + ((y1 - y0) / h)^2). A flipped view has a
negative bin width, so its bins come out mirrored. Normalisation is per axis: on a non-square
image equal pixel distances along x and y are different normalised distances (as the official
code; kept for fidelity).

Cells i of view 1 and j of view 2 of the same image form a positive pair when

    || centre_i - centre_j || / max(diag_1, diag_2) < T,    T = 0.7;

for PixContrast every other pair of the two views is a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bin_centres(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centres of an h x w grid of bins over each box: float (B, h * w, 2) as (x, y).

    boxes: (B, 4) normalised (x0, y0, x1, y1). Cells are in row-major order: (r, c) is r * w + c.
    """
    x0, y0, x1, y1 = boxes.unbind(1)
    cols = torch.arange(w, dtype=boxes.dtype, device=boxes.device) + 0.5
    rows = torch.arange(h, dtype=boxes.dtype, device=boxes.device) + 0.5
    x = x0[:, None] + cols[None] * ((x1 - x0) / w)[:, None]  # (B, w)
    y = y0[:, None] + rows[None] * ((y1 - y0) / h)[:, None]  # (B, h)
    grid = torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), dim=-1)  # (B, h, w, 2)
    return grid.flatten(1, 2)


def bin_diagonal(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The diagonal of one bin of an h x w grid over each box: (B,)."""
    x0, y0, x1, y1 = boxes.unbind(1)
    return torch.hypot((x1 - x0) / w, (y1 - y0) / h)


def positive_pairs(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    shape1: tuple[int, int],
    shape2: tuple[int, int],
    threshold: float = 0.7,
) -> torch.Tensor:
    """PixPro's positive-pair mask between the cells of two views: bool (B, h1 * w1, h2 * w2).

    Entry (b, i, j) is True when the bin centres of cell i of view 1 (an h1 x w1 map over
    ``boxes1[b]``) and cell j of view 2 (h2 x w2 over ``boxes2[b]``) lie closer than
    ``threshold`` x max(bin diagonal of view 1, bin diagonal of view 2). Symmetric:
    ``positive_pairs(b2, b1, s2, s1)`` is the transpose.
    """
    c1 = bin_centres(boxes1, *shape1)
    c2 = bin_centres(boxes2, *shape2)
    dist = (c1[:, :, None, :] - c2[:, None, :, :]).norm(dim=-1)
    scale = torch.maximum(bin_diagonal(boxes1, *shape1), bin_diagonal(boxes2, *shape2))
    return dist / scale[:, None, None] < threshold


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between every cell of ``a`` (B, C, ...) and every cell of ``b``: (B, Na, Nb), in at
    least float32, also under autocast (the losses sum thousands of them)."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    with torch.autocast(a.device.type, enabled=False):
        a = F.normalize(a.flatten(2).to(dtype), dim=1)
        b = F.normalize(b.flatten(2).to(dtype), dim=1)
        return torch.bmm(a.transpose(1, 2), b)


def pixpro_loss(y: torch.Tensor, target: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Pixel-to-propagation consistency, one direction (PixPro, Xie et al., 2021, Eq. 5):

        L_b = -2 * sum_{(i, j) positive} cos(y_i, x'_j) / (#positive pairs of image b + 1e-6),
        L = mean_b L_b,

    so an image without positive pairs contributes 0 but still counts in the mean (as the
    official code). PixPro sums the two directions (view 1 -> 2 and view 2 -> 1).

    y: (B, C, h1, w1) or (B, C, N1) propagated online features of view 1.
    target: (B, C, h2, w2) or (B, C, N2) momentum projections of view 2 (pass them detached).
    positives: bool (B, N1, N2), from :func:`positive_pairs`.
    """
    cos = _cosines(y, target)
    mask = positives.to(cos.dtype)
    per_image = (cos * mask).sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) + 1e-6)
    return -2 * per_image.mean()


def pixcontrast_loss(
    q: torch.Tensor, k: torch.Tensor, positives: torch.Tensor, temperature: float = 0.3,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-level contrastive loss, one direction (PixContrast, Xie et al., 2021, Eq. 1):

        L_i = -log( sum_{j in pos(i)} exp(cos(x_i, x'_j) / tau)
                    / sum_{j in pos(i) u neg(i)} exp(cos(x_i, x'_j) / tau) ),

    where pos(i) / neg(i) are the cells of the other view of the same image at normalised
    distance < T / >= T. Averaged over the pixels i that have at least one positive (the
    pixels of view 1 inside view 2) across the batch; pixels without positives are left out
    (0 when no pixel has one). Symmetrise by adding the view 2 -> view 1 direction.

    q: (B, C, h1, w1) or (B, C, N1) online projections of view 1.
    k: (B, C, h2, w2) or (B, C, N2) momentum projections of view 2 (pass them detached).
    positives: bool (B, N1, N2), from :func:`positive_pairs`.
    count: the divisor, by default this call's number of pixels with a positive. Under DDP pass
        that number of the GLOBAL batch divided by the number of ranks (the ranks' mean), so
        that the ranks' losses, averaged by DDP, are the global batch's average; ranks whose
        shards hold different numbers of such pixels would otherwise weight them unequally.
    """
    logits = _cosines(q, k) / temperature
    has_pos = positives.any(dim=2)  # (B, N1)
    # rows without positives get a finite dummy (their loss is dropped), so no -inf reaches
    # the backward pass of logsumexp
    pos_logits = logits.masked_fill(~positives & has_pos[..., None], float("-inf"))
    per_pixel = torch.logsumexp(logits, dim=2) - torch.logsumexp(pos_logits, dim=2)
    per_pixel = torch.where(has_pos, per_pixel, torch.zeros_like(per_pixel))
    divisor = has_pos.sum() if count is None else count
    return per_pixel.sum() / divisor.to(per_pixel.dtype).clamp(min=1e-12)  # no positive anywhere: 0 / tiny = 0
