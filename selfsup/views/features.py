"""Frozen features of a dataset: whole images through the evaluation view (resized, normalised),
backbone in eval mode. Used by the evaluations, the trainer's monitors and methods that start
from the network's own embeddings (InstDisc's ``bank_init: features``).

A ViT's vector can be chosen (``pool``): ``cls``, its CLS token after the final norm, or
``mean``, the mean of its patch tokens after the final norm; or all its tokens (``tokens``: the
attentive probe's input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from selfsup.core.errors import ConfigError
from selfsup.core.progress import progress
from selfsup.data.dataset import ImageDataset
from selfsup.views.recipes import eval_view

Pool = Literal["cls", "mean"]
POOLS: tuple[str, ...] = ("cls", "mean", "tokens")


def pooled(backbone: nn.Module, pool: Pool | Literal["tokens"] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> (B, C) vectors: the backbone's own pooled vector (``pool`` None), or a ViT's
    CLS token (``cls``) or mean patch token (``mean``) after its final norm; ``tokens``: all of
    a ViT's tokens after its final norm, (B, P + h * w, C), the prefix (CLS) first."""
    if pool is None:
        return lambda x: backbone(x)[1]
    if not hasattr(backbone, "tokens"):
        raise ConfigError(f"pool {pool!r} needs ViT tokens; {type(backbone).__name__} has none")
    if pool == "cls":
        return lambda x: backbone.tokens(x).prefix[:, 0]
    if pool == "mean":
        return lambda x: backbone.tokens(x).patches.mean(1)
    if pool == "tokens":
        return lambda x: _all_tokens(backbone, x)
    raise ConfigError(f"pool {pool!r}: expected one of {', '.join(POOLS)}")


def _all_tokens(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    t = backbone.tokens(x)
    return torch.cat([t.prefix, t.patches], dim=1)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: ImageDataset,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    pool: Pool | Literal["tokens"] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, C) on the CPU (see :func:`pooled`; ``tokens``: (N, T, C)) and labels
    (N,), in dataset order."""
    encode = pooled(backbone, pool)
    what = "tokens" if pool == "tokens" else "features"
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    batches = dataset.batches(batch_size, shuffle=False, drop_last=False)
    for batch in progress(batches, what, dataset.num_batches(batch_size, drop_last=False)):
        x = eval_view(batch.images.to(device), size, mean, std)
        feats.append(encode(x).float().cpu())
        labels.append(batch.labels)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)
