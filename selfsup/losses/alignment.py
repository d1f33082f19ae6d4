"""Alignment and uniformity (Wang & Isola: "Understanding Contrastive Representation
Learning through Alignment and Uniformity on the Hypersphere", ICML 2020).

Both take L2-normalised embeddings. They serve as a training loss
(``L_align + lambda L_uniform``, the paper's alternative to InfoNCE) and as metrics of a
trained encoder (``selfsup eval align``): lower is better for both.
"""

from __future__ import annotations

import math

import torch


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """L_align = E_{(x, y) positive pairs} ||f(x) - f(y)||_2^alpha.

    x, y: (N, D) embeddings of the two views of N images, row i of x paired with row i of y.
    Between 0 (views map to the same point) and 2^alpha for unit vectors.
    """
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniformity(x: torch.Tensor, t: float = 2.0, chunk: int = 1024) -> torch.Tensor:
    """L_uniform = log E_{i != j} exp(-t ||f(x_i) - f(x_j)||_2^2), over all pairs of rows.

    The log of the average pairwise Gaussian potential: 0 when every embedding is the same
    point, lower as they spread over the sphere. x: (N, D) with N >= 2. Rows are processed
    ``chunk`` at a time, so N can be a whole evaluation set (memory chunk x N).
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {n}")
    parts = []
    for start in range(0, n, chunk):
        block = x[start : start + chunk]
        logits = -t * torch.cdist(block, x).pow(2)
        own = torch.arange(block.shape[0], device=x.device)
        diagonal = torch.zeros_like(logits, dtype=torch.bool)
        diagonal[own, own + start] = True
        parts.append(torch.logsumexp(logits.masked_fill(diagonal, float("-inf")).flatten(), dim=0))
    return torch.logsumexp(torch.stack(parts), dim=0) - math.log(n * (n - 1))
