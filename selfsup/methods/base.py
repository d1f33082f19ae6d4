"""What every pre-training method shares: the interface the trainer talks to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.tensors import upcast
from selfsup.data import ImageDataset
from selfsup.views.config import ViewsConfig
from selfsup.views.samplers import CropSampler
from selfsup.views.view import View


@dataclass
class StepOutput:
    """A method's forward result.

    loss: the scalar to minimise. logs: detached scalars to log.
    embedding: (N, D) the representation the collapse monitor watches (typically the
    projector output of the first view); the trainer logs its ``embedding_std`` and
    ``effective_rank`` at every log step.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]
    embedding: torch.Tensor | None = None


@dataclass
class RunInfo:
    """Facts about the training run a method may need to build itself.

    num_images: training-set size (memory banks and instance classifiers have one row per
    image; ``View.index`` addresses them). steps_per_epoch / epochs: for epoch-based schedules.
    """

    num_images: int = 0
    steps_per_epoch: int = 1
    epochs: int = 1


class Method(nn.Module):
    """Base class of pre-training methods.

    A method owns its backbone (``self.backbone``, the network evaluated and exported), its
    heads, any momentum copies and any queues or memory banks (as buffers, so they are
    checkpointed). Every method is built as ``Method(backbone, cfg, run)``. The trainer calls,
    per step: ``forward(views) -> StepOutput``; backward; ``after_backward(step)`` (gradient
    surgery, e.g. frozen prototypes); the optimiser step; ``on_step(step, total)`` (EMA /
    momentum updates, schedules); and ``on_epoch_end(epoch)`` after every epoch. ``recipe``
    names the view recipe it trains on; each view carries ``index``, the dataset index of
    every sample.
    """

    Config: ClassVar[type]
    recipe: ClassVar[str] = "simclr"
    description: ClassVar[str] = ""

    def __init__(self, backbone: nn.Module, run: RunInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.run = run

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Checks of the method's options against the rest of the run's config (``cfg``: a
        ``PretrainConfig``, e.g. an option that needs a ViT backbone); raise a one-line
        ``ConfigError``. Runs when the config is built, before any data is opened. The method's
        own fields check themselves (``selfsup.core.checks.Checked``)."""

    def forward(self, views: list[View]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_backward(self, step: int) -> None:
        """Called after the backward pass of step ``step`` (0-based), before the optimiser step."""

    def on_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (``step`` counts completed steps, from 1)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after every epoch (``epoch`` counts completed epochs, from 1), before the
        checkpoint is written: per-epoch schedules and state changes (e.g. refreshing a
        memory or re-clustering) belong here, and a resumed run has their result."""

    def on_fit_start(self, train: ImageDataset, views: ViewsConfig, device: torch.device) -> None:
        """Called once before the first step of a fresh run (not on resume: whatever it sets
        up is in the checkpoint), with the training set and the view settings."""

    def crop_sampler(self, base: CropSampler | None) -> CropSampler | None:
        """Where this step's crop boxes come from, given the run's sampler (``views.crop`` for the
        running epoch; None: random-resized crops). A method with its own condition on the crops
        wraps ``base`` (e.g. :class:`selfsup.views.resampled_crop.ResampledCrop`: MaskContrast's
        "salient area in (1%, 99%)"), so it composes with ContrastiveCrop and the others."""
        return base

    def optimizer_groups(self) -> list[dict]:
        """Parameters that need their own optimiser options, as ``{"params": ..., option: value}``
        dicts; the rest form the default groups. Options are optimiser group keys, plus
        ``fixed_lr: True`` (the trainer's schedule skips the group: its lr stays at
        ``optim.lr``). Weight decay and LARS still skip 1-D parameters in every group."""
        return []

    def dense_network(self) -> nn.Module:
        """The network the dense evaluations read (``selfsup eval dense`` / ``cluster``): called on
        images it returns ``(feature map (B, C, h, w), pooled)``. The backbone by default; a method
        with a dense decoder returns backbone + decoder (MaskContrast)."""
        return self.backbone

    def encode(self, views: list[View], backbone: nn.Module | None = None) -> list[torch.Tensor]:
        """Pooled features of every view: one backbone pass per run of same-size views.

        Views of one resolution (the two global crops; all local crops) share a batch, so
        batch-norm statistics and the cost are those of the official multi-crop code.
        """
        net = backbone if backbone is not None else self.backbone
        out: list[torch.Tensor] = []
        start = 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].images.shape[-2:] == views[start].images.shape[-2:]:
                end += 1
            _, pooled = net(torch.cat([v.images for v in views[start:end]]))
            out += list(pooled.chunk(end - start))
            start = end
        return out


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: per-dimension std of L2-normalised embeddings, averaged.

    About 1/sqrt(d) for well-spread embeddings, 0 when every sample maps to one point.
    """
    return F.normalize(upcast(z), dim=1).std(dim=0).mean()


@torch.no_grad()
def effective_rank(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor (Roy & Vetterli, 2007): exp of the entropy of the normalised singular
    values of the centred embeddings. Between 1 (all variance in one direction) and
    min(N, D) (isotropic); a dimensional collapse shows as a falling value.
    """
    z = upcast(z)
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    p = s / s.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
