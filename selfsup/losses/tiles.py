"""Losses of the tile-based pretext tasks that are not a plain cross-entropy (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def counting_loss(
    down: torch.Tensor, tiles_sum: torch.Tensor, down_other: torch.Tensor, margin: float = 10.0
) -> torch.Tensor:
    """Counting's contrastive loss (Noroozi, Pirsiavash & Favaro, ICCV 2017, Eq. 5), averaged
    over the batch:

        l(x, y) = |phi(D x) - sum_j phi(T_j x)|^2 + max(0, M - |phi(D y) - sum_j phi(T_j x)|^2)

    The first term asks the counts of the downsampled image D x to equal the sum of its tiles'
    counts; alone, phi = 0 solves it, so the second term asks the tiles' sum to stay at squared
    distance at least M from the counts of ANOTHER image y.

    down: (B, K) phi(D x). tiles_sum: (B, K) sum_j phi(T_j x). down_other: (B, K) phi(D y).
    """
    pos = (down - tiles_sum).pow(2).sum(dim=1)
    neg = (down_other - tiles_sum).pow(2).sum(dim=1)
    return (pos + F.relu(margin - neg)).mean()


def cluster_contrastive(z: torch.Tensor, groups: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Jigsaw Clustering's clustering branch (Chen, Liu & Jia, CVPR 2021): a contrastive loss in
    which the positives of a tile are the other tiles cut from the same image,

        L = 1/N sum_i -1/|P(i)| sum_{j in P(i)} log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) ),

    s_ij the cosine of the embeddings z_i, z_j and P(i) = {j != i : g_j = g_i}. Anchors with no
    positive are left out.

    z: (N, d) embeddings. groups: (N,) int64 the image each tile comes from.
    """
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (groups[:, None] == groups[None, :]) & ~eye
    count = pos.sum(dim=1)
    per_anchor = -log_prob.masked_fill(~pos, 0).sum(dim=1) / count.clamp(min=1)
    has = count > 0
    return per_anchor[has].mean()
