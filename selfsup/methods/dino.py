"""DINO (Caron, Touvron, Misra, Jegou, Mairal, Bojanowski, Joulin: "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021).

- Views: multi-crop. Two global crops from the BYOL-style asymmetric recipe (view 1 always
  blurred, view 2 rarely blurred and sometimes solarized; ``views.size`` / ``views.scale``
  describe them) plus ``views.local_crops`` small crops (``views.local_size`` /
  ``views.local_scale``).
- Networks: student = backbone + DINO head: MLP C -> 2048 -> 2048 -> 256 (GELU, optional BN),
  L2 normalisation of the 256-d bottleneck, then a weight-normalised linear layer (no bias)
  to K outputs ("prototypes"; K = 65536 on ImageNet, a few thousand on CIFAR). With
  ``norm_last_layer`` its per-row gain is fixed to 1, so the layer is a cosine classifier.
  Teacher = EMA copy of backbone + head, never trained by gradient, seeing only the global
  crops; the student sees every crop.
- Loss: cross-entropy H(P_t(x_i), P_s(x_v)) between teacher and student distributions over
  every pair of different views (i global, v any), averaged
  (:func:`selfsup.losses.distillation.dino_loss`), with
  P_t = softmax((g_t - c) / tau_t) and P_s = softmax(g_s / tau_s), tau_s = 0.1.
- Centre: c <- m c + (1 - m) mean_batch g_t(x), m = 0.9, after every forward; the batch mean
  covers the global batch (all-reduced over ranks). A buffer, so it is checkpointed.
- Schedules: teacher momentum lambda_k = 1 - (1 - lambda_0) (cos(pi k / K) + 1) / 2 from
  lambda_0 = 0.996 to 1, per step. Teacher temperature per epoch e: linear from 0.04 to 0.07
  over ``warmup_teacher_temp_epochs`` (the official ``np.linspace`` over those epochs), then
  constant; it is a buffer recomputed from the step count, so a resumed run continues
  exactly. The last layer gets no update during the first ``freeze_last_layer_epochs``
  epochs (its gradients are dropped), which stabilises the start.
- Collapse monitor (the paper's Sec. 5.3, Fig. 7): the loss splits into the teacher's entropy
  h(P_t) and KL(P_t || P_s); both are logged (``teacher_entropy``, ``kl``). Uniform collapse:
  h -> log K and KL -> 0; collapse onto one dimension: h -> 0 and KL -> 0. On 3,000 CIFAR
  images with K = 4096 the teacher drifts to uniform (h rises towards log K for the whole
  run); with K = 512 and the teacher temperature held at 0.04 h falls and DINO learns
  (benchmarks/LOG.md).
- Differences from the official code: no weight-decay schedule (the official ViT recipe
  raises wd 0.04 -> 0.4; its ResNet-50 recipe keeps it constant, as here); gradient
  clipping (``optim.grad_clip``) is by global norm, not per parameter; local crops are
  augmented like the second global view (blur p 0.1, solarize p 0.2) instead of blur p 0.5
  without solarize (at 32 px with ``views.blur: false`` only solarize differs); under
  gradient accumulation the centre is updated after every micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegativeInt, Positive, PositiveInt, UnitInterval
from selfsup.core.comm import all_reduce_mean
from selfsup.core.tensors import upcast
from selfsup.losses.distillation import dino_loss
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.momentum import MomentumEncoder
from selfsup.views.view import View


@dataclass
class DINOConfig(Checked):
    section: ClassVar[str] = "dino"

    out_dim: PositiveInt = 65536
    hidden_dim: PositiveInt = 2048
    bottleneck_dim: PositiveInt = 256
    head_bn: bool = False
    norm_last_layer: bool = True
    student_temp: Positive = 0.1
    teacher_temp: Positive = 0.07
    warmup_teacher_temp: Positive = 0.04
    warmup_teacher_temp_epochs: NonNegativeInt = 30
    center_momentum: UnitInterval = 0.9
    base_momentum: UnitInterval = 0.996
    freeze_last_layer_epochs: NonNegativeInt = 1


def teacher_temperature(epoch: int, warmup_temp: float, final_temp: float, warmup_epochs: int) -> float:
    """tau_t at ``epoch`` (0-based): ``warmup_temp + (final_temp - warmup_temp) e / (W - 1)`` for
    e < W = ``warmup_epochs`` (reaching ``final_temp`` at e = W - 1), then ``final_temp``."""
    if epoch >= warmup_epochs:
        return final_temp
    return warmup_temp + (final_temp - warmup_temp) * epoch / max(warmup_epochs - 1, 1)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> None:
    """c <- m c + (1 - m) mean of the teacher outputs (N, K) over the global batch (all ranks), in place."""
    center.lerp_(all_reduce_mean(upcast(teacher).mean(dim=0, keepdim=True)), 1 - momentum)


class DINOHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck, GELU) -> L2 norm -> weight-normalised linear to K."""

    def __init__(
        self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int, use_bn: bool, norm_last_layer: bool
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(2):
            layers += [nn.Linear(dim, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if use_bn else []), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DINO(Method):
    Config = DINOConfig
    recipe = "byol"
    description = "DINO: a student matches a centred, sharpened EMA teacher across multi-crop views"

    def __init__(self, backbone: nn.Module, cfg: DINOConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        self.head = DINOHead(backbone.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                             cfg.head_bn, cfg.norm_last_layer)
        self.teacher = MomentumEncoder(cfg.base_momentum, backbone=backbone, head=self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("teacher_temp", torch.tensor(self._temperature(0)))

    def _temperature(self, step: int) -> float:
        c = self.cfg
        epoch = step // self.run.steps_per_epoch
        return teacher_temperature(epoch, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_epochs)

    def forward(self, views: list[View]) -> StepOutput:
        feats = self.encode(views)
        student = self.head(torch.cat(feats)).chunk(len(views))
        with torch.no_grad():
            teacher = self.teacher.head(torch.cat(self.encode(views[:2], self.teacher.backbone)))
        loss = dino_loss(list(student), list(teacher.chunk(2)), self.center, self.cfg.student_temp, self.teacher_temp)
        with torch.no_grad():  # every teacher view enters the same number of pairs: loss = h + KL
            log_p_t = F.log_softmax((upcast(teacher) - self.center) / self.teacher_temp, dim=1)
            entropy = -(log_p_t.exp() * log_p_t).sum(dim=1).mean()
        self._update_center(teacher)
        logs = {"teacher_temp": self.teacher_temp.detach().clone(), "momentum": torch.tensor(self.teacher.momentum),
                "teacher_entropy": entropy, "kl": loss.detach() - entropy}
        return StepOutput(loss, logs, embedding=feats[0].detach())

    def _update_center(self, teacher: torch.Tensor) -> None:
        update_center(self.center, teacher, self.cfg.center_momentum)

    def after_backward(self, step: int) -> None:
        if step < self.cfg.freeze_last_layer_epochs * self.run.steps_per_epoch:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_step(self, step: int, total_steps: int) -> None:
        # momentum and temperature are pure functions of the step: a resumed run continues exactly
        self.teacher.update(step, total_steps)
        self.teacher_temp.fill_(self._temperature(step))
