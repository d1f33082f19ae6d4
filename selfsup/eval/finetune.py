"""Full fine-tuning of a pre-trained encoder with a linear classifier, with layer-wise
learning-rate decay (BEiT, Bao et al., ICLR 2022; the MAE and CAE fine-tuning protocol).

- Network: the run's backbone (ResNet or ViT, all weights trainable, its own drop-path) and a
  linear classifier on its pooled vector: a ResNet's global average pool; a ViT's mean of the
  patch tokens after the final norm (``pool: mean``, as MAE's and CAE's fine-tuning) or its CLS
  token (``pool: cls``).
- Layer-wise lr decay: layer i of L (ViT: embeddings 0, block i i; ResNet: stem 0, stage i i)
  learns at ``lr * layer_decay^(L + 1 - i)``, the classifier at ``lr``
  (``selfsup.train.optim.layer_scales``); norms, biases and position embeddings get no weight
  decay (``param_groups``).
- Optimiser: AdamW (MAE / CAE) or SGD with momentum; linear warm-up, then cosine to 0, per step.
- Training views: random-resized crop (``scale``) and flip, no colour change; test: the whole
  image resized (the evaluation view). The LAST epoch's test accuracy is the result (the best
  epoch is reported too, labelled as such).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import OptimConfig
from selfsup.core.checks import Checked, Fraction, NonNegative, Positive, PositiveInt
from selfsup.core.progress import progress
from selfsup.data.dataset import ImageDataset
from selfsup.train.optim import build_optimizer
from selfsup.train.schedule import learning_rate
from selfsup.views.features import Pool, pooled
from selfsup.views.recipes import ViewSpec, eval_view, make_views


@dataclass
class FinetuneConfig(Checked):
    """Fine-tuning options (``selfsup eval finetune``); ``pool`` None: a ViT's patch-token mean."""

    section: ClassVar[str] = "finetune"

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Positive = 1e-3
    weight_decay: NonNegative = 0.05
    layer_decay: Fraction = 0.75
    warmup_epochs: NonNegative = 1.0
    scale: tuple[Fraction, Fraction] = (0.2, 1.0)
    pool: Pool | None = None
    seed: int = 0


class Classifier(nn.Module):
    """``backbone`` + ``head``: a linear classifier on the pooled vector (see :func:`pooled`)."""

    def __init__(self, backbone: nn.Module, num_classes: int, pool: Pool | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        self.features = pooled(backbone, pool)
        self.head = nn.Linear(backbone.out_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def classifier(backbone: nn.Module, num_classes: int, cfg: FinetuneConfig) -> Classifier:
    """The fine-tuned network; a ViT pools the mean of its patch tokens unless ``cfg.pool`` says."""
    pool = cfg.pool or ("mean" if hasattr(backbone, "tokens") else None)
    return Classifier(backbone, num_classes, pool)


def finetune_optimizer(model: Classifier, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW / SGD over the layer-decayed groups (each with its ``lr_scale``; see :func:`set_lr`)."""
    optim = OptimConfig(name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    return build_optimizer(model, optim)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` times its layer-wise ``lr_scale``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: ImageDataset, size: int, mean: tuple[float, float, float],
             std: tuple[float, float, float], batch_size: int = 512, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` (eval mode) on the whole images of ``dataset``."""
    was_training = model.training
    model.eval()
    right = 0
    for batch in dataset.batches(batch_size, shuffle=False, drop_last=False):
        x = eval_view(batch.images.to(device), size, mean, std)
        right += int((model(x).argmax(1).cpu() == batch.labels).sum())
    model.train(was_training)
    return right / len(dataset)


@dataclass
class FinetuneResult:
    last_epoch_accuracy: float
    best_epoch_accuracy: float
    best_epoch: int
    epochs: int
    test_accuracy: list[float]  # per epoch
    pool: str


def finetune(
    model: Classifier,
    train: ImageDataset,
    test: ImageDataset,
    cfg: FinetuneConfig,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device | str = "cpu",
    eval_batch_size: int = 512,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``train`` (cross-entropy, views of :class:`FinetuneConfig`), testing
    on ``test`` after every epoch."""
    model.to(device).train()
    opt = finetune_optimizer(model, cfg)
    spec = ViewSpec(size=size, scale=cfg.scale, jitter_p=0.0, gray_p=0.0, mean=mean, std=std)
    gen = torch.Generator().manual_seed(cfg.seed)
    drop_last = len(train) >= cfg.batch_size
    per_epoch = train.num_batches(cfg.batch_size, drop_last=drop_last)
    total, warmup = cfg.epochs * per_epoch, round(cfg.warmup_epochs * per_epoch)
    step, accs = 0, []
    for epoch in progress(range(cfg.epochs), "fine-tuning epochs"):
        for batch in train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, drop_last=drop_last):
            set_lr(opt, learning_rate(step, total, warmup, cfg.lr))
            batch = batch.to(device)
            view = make_views(batch.images, batch.sizes, [spec], gen)[0]
            loss = F.cross_entropy(model(view.images), batch.labels)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step} (lower --lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        accs.append(accuracy(model, test, size, mean, std, eval_batch_size, device))
    best = max(range(cfg.epochs), key=accs.__getitem__)
    return FinetuneResult(accs[-1], accs[best], best + 1, cfg.epochs, accs, model.pool or "global average pool")
