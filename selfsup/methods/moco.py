"""MoCo v1 (He, Fan, Wu, Xie, Girshick: "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020) and MoCo v2 (Chen, Fan, Girshick, He: "Improved
Baselines with Momentum Contrastive Learning", arXiv 2020).

- Views: two independent views per image, a query view x_q and a key view x_k. v1 uses
  InstDisc's augmentation (the ``invaspread`` recipe: jitter 0.4, grayscale, no blur); v2
  adds blur p = 0.5 and lighter hue jitter (the ``simclr`` recipe here).
- Networks: query encoder f_q = backbone + head; key encoder f_k = a momentum copy of both,
  never trained by gradient: theta_k <- m theta_k + (1 - m) theta_q after every step,
  m = 0.999. Head: v1 a linear layer C -> 128; v2 an MLP C -> C -> 128 (ReLU, no BN).
- Loss: q = f_q(x_q) / ||.||, k = f_k(x_k) / ||.||, a queue Q of K past keys:
      L = -log( exp(q.k / t) / (exp(q.k / t) + sum_{j<K} exp(q.Q_j / t)) ),
  t = 0.07 (v1) / 0.2 (v2), averaged over the batch (``loss`` picks another loss of the
  InfoNCE family on the same similarities, see ``selfsup.losses.contrastive.PAIR_LOSSES``).
  Then the batch's keys enter the FIFO queue (a buffer; K = 65536 on ImageNet, 4096 in the
  CIFAR preset), replacing the oldest. Under DDP the keys of all ranks are gathered in rank
  order (no gradient) and enqueued on every rank, so all ranks hold the same queue.
- Shuffling BN: the key encoder's batch norms are :class:`SplitBatchNorm` with
  ``bn_splits`` sub-batches of the global batch (the official 8 GPUs of 32 images), and the
  key batch is permuted before the key encoder and un-permuted after it (across ranks under
  DDP), so a query and its key never share batch statistics. The permutation comes from a
  generator shared by all ranks and checkpointed (``SharedGenerator``).
- ``queue_init``: "random" (the official code's: K random unit vectors) or "keys" (not in the
  papers): before the first step the queue is filled with the untrained key encoder's keys of
  un-augmented training images (train-mode, split BN, shuffled like every key batch; a seeded
  random order, the dataset repeated when K exceeds it), so no step contrasts against random
  vectors. With the random queue the first K / batch steps see negatives that are uniformly
  spread and unrelated to the data, and collapsing all queries onto one direction lowers the
  loss; on 3,000 images that early collapse is not recovered (benchmarks/LOG.md).
- Differences from the official code: the key encoder is updated after the optimiser step
  (the official one updates it at the start of the next forward: the same sequence); the
  EMA also averages BN running statistics (unused in training); weight decay skips norms
  and biases; the queue may hold a global batch that does not divide K (it wraps around);
  v2's views use the SimCLR recipe's colour jitter (0.8, 0.8, 0.8, 0.2) instead of
  (0.4, 0.4, 0.4, 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegative, Positive, PositiveInt, Range, UnitInterval
from selfsup.core.comm import gather, rank, world_size
from selfsup.core.errors import ConfigError
from selfsup.core.tensors import upcast
from selfsup.data import ImageDataset
from selfsup.losses.contrastive import PairLossName, pair_loss
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.momentum import MomentumEncoder
from selfsup.methods.queue import Queue
from selfsup.methods.rng import SharedGenerator
from selfsup.models.split_bn import convert_split_bn
from selfsup.views.config import ViewsConfig
from selfsup.views.recipes import eval_view
from selfsup.views.view import View


@dataclass
class MoCoConfig(Checked):
    """MoCo v1's options (paper defaults, ImageNet; the CIFAR presets change some).

    dim: embedding size; queue_size: K; momentum: m of the key encoder; mlp: v2's MLP head
    instead of v1's linear one; bn_splits: sub-batches of the global batch the key
    encoder's batch norms normalise separately (1: plain global statistics); loss: one of
    ``PAIR_LOSSES``, with tau_plus / beta for the debiased and hard-negative losses.
    """

    section: ClassVar[str] = "mocov1"

    dim: PositiveInt = 128
    queue_size: PositiveInt = 65536
    momentum: UnitInterval = 0.999
    temperature: Positive = 0.07
    mlp: bool = False
    bn_splits: PositiveInt = 8
    loss: PairLossName = "infonce"
    tau_plus: Annotated[float, Range(ge=0, lt=1)] = 0.1
    beta: NonNegative = 1.0
    queue_init: Literal["random", "keys"] = "random"


@dataclass
class MoCoV2Config(MoCoConfig):
    """MoCo v2: MLP head and t = 0.2 (plus blur in the views)."""

    section: ClassVar[str] = "mocov2"
    temperature: Positive = 0.2
    mlp: bool = True


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the GLOBAL batch (all ranks, in rank order) and return this rank's share of the
    permuted batch plus the inverse permutation for :func:`batch_unshuffle`.

    ``generator`` must give the same permutation on every rank (a ``SharedGenerator`` draw).
    """
    x_all = gather(x)
    perm = torch.randperm(x_all.shape[0], generator=generator, device=x.device)
    n, r = x.shape[0], rank()
    return x_all[perm[r * n : (r + 1) * n]], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(y: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Undo :func:`batch_shuffle`: ``y`` holds one row per sample of this rank's shuffled share;
    returns the rows of this rank's own samples, in their original order."""
    y_all = gather(y)
    n, r = y.shape[0], rank()
    return y_all[inverse[r * n : (r + 1) * n]]


class MoCo(Method):
    Config = MoCoConfig
    recipe = "invaspread"
    description = "MoCo v1: InfoNCE against a queue of momentum-encoder keys, shuffling BN"

    def __init__(self, backbone: nn.Module, cfg: MoCoConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        c = backbone.out_dim
        self.head = (
            nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, cfg.dim)) if cfg.mlp
            else nn.Linear(c, cfg.dim)
        )
        self.key_encoder = MomentumEncoder(cfg.momentum, "constant", backbone=backbone, head=self.head)
        self.key_encoder.backbone = convert_split_bn(self.key_encoder.backbone, cfg.bn_splits)
        self.queue = Queue(cfg.queue_size, cfg.dim, init=F.normalize(torch.randn(cfg.queue_size, cfg.dim), dim=1),
                           name=f"{cfg.section}.queue_size")
        self.shuffle_gen = SharedGenerator()

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised keys of ``x`` from the key encoder, with the batch shuffled for its BN."""
        splits = max(1, self.cfg.bn_splits // world_size())
        if x.shape[0] % splits:
            raise ConfigError(
                f"{self.cfg.section}.bn_splits {self.cfg.bn_splits}: the per-process batch of {x.shape[0]} "
                f"does not split into {splits} equal sub-batches"
            )
        x_shuffled, inverse = batch_shuffle(x, self.shuffle_gen.next(x.device))
        k = self.key_encoder.head(self.key_encoder.backbone(x_shuffled)[1])
        return batch_unshuffle(F.normalize(upcast(k), dim=1), inverse)

    @torch.no_grad()
    def on_fit_start(self, train: ImageDataset, views: ViewsConfig, device: torch.device) -> None:
        """``queue_init: keys``: fill the queue with the key encoder's keys of training images, in
        batches of up to 256 per process drawn in a seeded random order (all ranks agree)."""
        if self.cfg.queue_init != "keys":
            return
        splits = max(1, self.cfg.bn_splits // world_size())
        per_rank = splits * max(1, min(256, len(train) // world_size()) // splits)
        size, filled, epoch = len(self.queue), 0, 0
        while filled < size:
            for batch in train.batches(per_rank, shuffle=True, epoch=epoch, rank=rank(), world_size=world_size()):
                k = gather(self.keys(eval_view(batch.images.to(device), views.size, views.mean, views.std)))
                self.queue.push(k[: size - filled], gather_ranks=False)
                filled += k.shape[0]
                if filled >= size:
                    break
            epoch += 1

    def forward(self, views: list[View]) -> StepOutput:
        cfg = self.cfg
        x_q, x_k = views[0].images, views[1].images
        q = F.normalize(upcast(self.head(self.backbone(x_q)[1])), dim=1)
        k = self.keys(x_k)
        pos = (q * k).sum(dim=1)
        neg = q @ self.queue.rows.clone().T  # a copy: the queue changes below, autograd keeps this one
        loss = pair_loss(cfg.loss, pos, neg, cfg.temperature, tau_plus=cfg.tau_plus, beta=cfg.beta)
        self.queue.push(k)
        logs = {"pos_sim": pos.detach().mean(), "neg_sim": neg.detach().mean()}
        return StepOutput(loss, logs, embedding=q.detach())

    def on_step(self, step: int, total_steps: int) -> None:
        self.key_encoder.update(step, total_steps)


class MoCoV2(MoCo):
    Config = MoCoV2Config
    recipe = "simclr"
    description = "MoCo v2: MoCo v1 with an MLP head, t = 0.2 and blurred views"
