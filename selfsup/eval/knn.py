"""Weighted k-nearest-neighbour classification on frozen features.

As in InstDisc (Wu et al., 2018): features are L2-normalised, the k nearest training
samples by cosine similarity s_i vote for their class with weight exp(s_i / T);
k = 200, T = 0.1 by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted class (Q,) for every query, by temperature-weighted votes of its k neighbours."""
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, bank.shape[0])
    preds = []
    for q in F.normalize(query_feats.float(), dim=1).split(chunk):
        sims, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy (fraction) of :func:`knn_predict` on a labelled test set."""
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature)
    return (pred == test_labels).float().mean().item()
