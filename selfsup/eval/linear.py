"""Linear probe on frozen features, extracted once.

Features are standardised with the training set's per-dimension mean and std (a BN without
affine parameters, as in MAE's linear probe), then a linear classifier is trained with SGD +
momentum and a cosine schedule on the training features. The LAST epoch's test accuracy is
the result; the best epoch is reported too, labelled as such.

Without weight decay the probe overfits small training sets (3,000 images x 512 features), and
random-initialisation features gain most from regularisation. :func:`linear_probe_chosen_decay`
picks the decay on a held-out part of the TRAINING features (the L2 regularisation chosen on a
validation split, as in SimCLR's transfer protocol) and never looks at the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from selfsup.core.progress import progress

DEFAULT_WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1)


@dataclass
class LinearResult:
    last_epoch_accuracy: float
    best_epoch_accuracy: float
    best_epoch: int
    epochs: int
    # the last epoch's predicted class of every test sample (N,), for paired comparisons
    predictions: torch.Tensor = field(compare=False)


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
    accs, pred = [], torch.empty(0, dtype=torch.int64)
    for _ in progress(range(epochs), "linear probe epochs"):
        perm = torch.randperm(len(xtr), generator=gen)
        for idx in perm.split(batch_size):
            loss = F.cross_entropy(fc(xtr[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            pred = fc(xte).argmax(1)
            accs.append((pred == test_labels).float().mean().item())
    best = max(range(epochs), key=accs.__getitem__)
    return LinearResult(accs[-1], accs[best], best + 1, epochs, pred)


@dataclass
class ChosenDecayResult:
    weight_decay: float
    validation_accuracy: dict[float, float]  # last-epoch accuracy on the held-out training part
    result: LinearResult  # the probe retrained on ALL training features with the chosen decay


def linear_probe_chosen_decay(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    seed: int = 0,
    **probe_kwargs: float,
) -> ChosenDecayResult:
    """:func:`linear_probe` with its weight decay chosen on a seeded random ``val_fraction`` of
    the training features: each decay is trained on the rest and scored (last epoch) on that
    part; the best (the smallest on a tie) is retrained on all training features and tested."""
    n_val = int(len(train_feats) * val_fraction)
    if not 0 < n_val < len(train_feats):
        raise ValueError(f"val_fraction {val_fraction} leaves no validation or no fitting samples "
                         f"out of {len(train_feats)}")
    if not weight_decays or min(weight_decays) < 0:
        raise ValueError(f"weight_decays must be a non-empty list of values >= 0, got {weight_decays}")
    perm = torch.randperm(len(train_feats), generator=torch.Generator().manual_seed(seed))
    val, fit = perm[:n_val], perm[n_val:]
    scores = {wd: linear_probe(train_feats[fit], train_labels[fit], train_feats[val], train_labels[val],
                               num_classes, weight_decay=wd, seed=seed, **probe_kwargs).last_epoch_accuracy
              for wd in sorted(weight_decays)}
    best = max(scores, key=scores.get)  # the first maximum: the smallest decay among ties
    result = linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes,
                          weight_decay=best, seed=seed, **probe_kwargs)
    return ChosenDecayResult(best, scores, result)
