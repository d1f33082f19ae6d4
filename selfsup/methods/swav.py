"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski, Joulin: "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020).

- Views: multi-crop. Two global crops of the SimCLR recipe (colour strength 1.0, blur p 0.5
  at ImageNet scale; ``views.size`` / ``views.scale`` describe them) plus
  ``views.local_crops`` small crops (``views.local_size`` / ``views.local_scale``).
- Networks: backbone + projection head MLP(C -> 2048 -> 128) with BN + ReLU, whose output
  z is L2-normalised, and K prototypes C_k (a linear layer without bias, K = 3000), whose
  rows are L2-normalised before every forward, so the scores z . C_k are cosines.
- Codes: for each global crop, Sinkhorn-Knopp (3 iterations, epsilon 0.05) turns its scores
  into soft assignments that use all prototypes equally over the batch
  (:func:`selfsup.losses.clustering.sinkhorn_knopp`; sums all-reduced over ranks). A smaller
  epsilon gives more peaked codes; the official FAQ lowers it (0.03) when training collapses
  early to uniform codes (loss stuck near ln K). At batch 128 without a queue, epsilon 0.05
  collapses that way in our CIFAR-10 benchmark and 0.02 does not (benchmarks/LOG.md). Optional
  queue (``queue_length`` > 0): from epoch ``epoch_queue_starts`` on, the embeddings of the
  global crops of recent batches are stored; once the queue is full its rows, scored with
  the current prototypes, join the Sinkhorn problem (only the batch's codes are kept), so
  equipartition holds over more samples than a small batch.
- Loss: swapped prediction: every crop predicts the codes of the other global crop(s) with
  softmax(scores / 0.1) (:func:`selfsup.losses.clustering.swapped_prediction`).
- Collapse monitor, besides the trainer's: ``code_entropy``, the mean entropy of the first
  global crop's codes (ln K: uniform codes, the collapse the official FAQ describes, where the
  loss sticks near ln K), and ``score_std``, the spread of its scores over the prototypes
  (codes are peaked only while it is large against epsilon).
- Schedule: the prototypes get no update during the first ``freeze_prototypes_epochs``
  epochs (their gradients are dropped).
- Differences from the official code: the freeze period counts epochs, not iterations; the
  queue holds the gathered GLOBAL batch embeddings (identical on every rank, so checkpoints
  and DDP buffer broadcasts keep it whole) and each rank adds its 1/world_size share of rows
  to Sinkhorn, where the official code keeps one private queue per rank: both give the same
  rows to the same global Sinkhorn problem. The projector's first linear layer has no bias
  (a BN follows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegativeInt, Positive, PositiveInt
from selfsup.core.comm import rank, world_size
from selfsup.core.errors import ConfigError
from selfsup.core.tensors import upcast
from selfsup.losses.clustering import sinkhorn_knopp, swapped_prediction
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.queue import Queue
from selfsup.views.view import View

MIN_EPSILON = 1 / 88  # exp(88) is about the float32 maximum; the scores are cosines, at most 1
ASSIGNED = 2  # the global crops: the views whose codes are predicted (crops_for_assign)


@dataclass
class SwAVConfig(Checked):
    section: ClassVar[str] = "swav"

    proj_hidden: PositiveInt = 2048
    proj_dim: PositiveInt = 128
    num_prototypes: PositiveInt = 3000
    temperature: Positive = 0.1
    epsilon: Positive = 0.05
    sinkhorn_iterations: PositiveInt = 3
    queue_length: NonNegativeInt = 0
    epoch_queue_starts: NonNegativeInt = 15
    freeze_prototypes_epochs: NonNegativeInt = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epsilon < MIN_EPSILON:
            raise ConfigError(f"swav.epsilon {self.epsilon} is below {MIN_EPSILON:.4f}: exp(1 / epsilon) of a "
                              "cosine score overflows float32 in Sinkhorn-Knopp")


class SwAV(Method):
    Config = SwAVConfig
    recipe = "simclr"
    description = "SwAV: predict the Sinkhorn cluster codes of one crop from the other crops"

    def __init__(self, backbone: nn.Module, cfg: SwAVConfig, run: RunInfo) -> None:
        from selfsup.models.heads import mlp

        super().__init__(backbone, run)
        if cfg.queue_length % world_size():
            raise ConfigError(f"swav.queue_length {cfg.queue_length} must be divisible by the world size "
                              f"{world_size()}")
        self.cfg = cfg
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.num_prototypes, bias=False)
        # row r holds one sample's embeddings of the ASSIGNED global crops
        self.queue = Queue(cfg.queue_length, ASSIGNED, cfg.proj_dim, name="swav.queue_length")
        # completed steps, mirrored in a Python int so that no step needs a host-device sync
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._steps = 0
        self.register_load_state_dict_post_hook(SwAV._read_steps)

    @staticmethod
    def _read_steps(module: nn.Module, incompatible_keys: object) -> None:
        module._steps = int(module.steps)

    def forward(self, views: list[View]) -> StepOutput:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z = F.normalize(self.projector(torch.cat(self.encode(views))), dim=1)
        scores = list(self.prototypes(z).chunk(len(views)))
        embeddings = [e.detach() for e in z.chunk(len(views))[:ASSIGNED]]
        active = self.cfg.queue_length > 0 and self._steps // self.run.steps_per_epoch >= self.cfg.epoch_queue_starts
        use_queue = active and self.queue.full
        codes = [self._codes(scores[i].detach(), i, use_queue) for i in range(ASSIGNED)]
        if active:
            self.queue.push(torch.stack(embeddings, dim=1))
        loss = swapped_prediction(scores, codes, self.cfg.temperature)
        logs = {"queue_used": torch.tensor(float(use_queue)),
                "code_entropy": -(codes[0] * codes[0].clamp_min(1e-30).log()).sum(dim=1).mean(),
                "score_std": upcast(scores[0].detach()).std(dim=1).mean()}
        return StepOutput(loss, logs, embedding=embeddings[0])

    def _codes(self, scores: torch.Tensor, i: int, use_queue: bool) -> torch.Tensor:
        """Sinkhorn codes of assigned view ``i``; with the queue, its rows (this rank's share,
        scored with the current prototypes) join the problem and only the batch rows are kept."""
        n = scores.shape[0]
        if use_queue:
            rows = self.queue.rows[:, i].chunk(world_size())[rank()]
            scores = torch.cat([upcast(rows @ self.prototypes.weight.detach().T), upcast(scores)])
        return sinkhorn_knopp(scores, self.cfg.epsilon, self.cfg.sinkhorn_iterations)[-n:]

    def after_backward(self, step: int) -> None:
        if step < self.cfg.freeze_prototypes_epochs * self.run.steps_per_epoch:
            self.prototypes.weight.grad = None

    def on_step(self, step: int, total_steps: int) -> None:
        self._steps = step
        self.steps.fill_(step)
