"""Linear probe on frozen features, extracted once.

Features are standardised with the training set's per-dimension mean and std (a BN without
affine parameters, as in MAE's linear probe), then a linear classifier is trained with SGD +
momentum and a cosine schedule on the training features. The LAST epoch's test accuracy is
the result; the best epoch is reported too, labelled as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LinearResult:
    last_epoch_accuracy: float
    best_epoch_accuracy: float
    best_epoch: int
    epochs: int


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> LinearResult:
    """Train ``Linear(C, num_classes)`` on the frozen training features; test every epoch."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    fc = torch.nn.Linear(xtr.shape[1], num_classes)
    torch.nn.init.normal_(fc.weight, std=0.01, generator=gen)
    torch.nn.init.zeros_(fc.bias)
    opt = torch.optim.SGD(fc.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    accs = []
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for idx in perm.split(batch_size):
            loss = F.cross_entropy(fc(xtr[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            accs.append((fc(xte).argmax(1) == test_labels).float().mean().item())
    best = max(range(epochs), key=accs.__getitem__)
    return LinearResult(accs[-1], accs[best], best + 1, epochs)
