"""What every pre-training method shares: the interface the trainer talks to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.views.view import View


@dataclass
class StepOutput:
    """A method's forward result: the loss to minimise and detached scalars to log."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]


class Method(nn.Module):
    """Base class of pre-training methods.

    A method owns its backbone (``self.backbone``, the network evaluated and exported), its
    heads and any momentum copies. The trainer calls, per step:
    ``forward(views) -> StepOutput`` then, after the optimiser step, ``on_step(step, total)``
    (EMA / momentum updates, schedules). ``recipe`` names the view recipe it trains on.
    """

    Config: ClassVar[type]
    recipe: ClassVar[str] = "simclr"
    description: ClassVar[str] = ""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, views: list[View]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (``step`` counts completed steps, from 1)."""

    def encode(self, views: list[View]) -> list[torch.Tensor]:
        """Pooled backbone features of every view, in one forward pass over all views."""
        x = torch.cat([v.images for v in views])
        _, pooled = self.backbone(x)
        return list(pooled.chunk(len(views)))


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: per-dimension std of L2-normalised embeddings, averaged.

    About 1/sqrt(d) for well-spread embeddings, 0 when every sample maps to one point.
    """
    return F.normalize(z.float(), dim=1).std(dim=0).mean()


def momentum_schedule(base: float, step: int, total_steps: int) -> float:
    """BYOL's cosine EMA schedule: m_k = 1 - (1 - m_0) * (cos(pi k / K) + 1) / 2."""
    import math

    return 1 - (1 - base) * (math.cos(math.pi * min(step, total_steps) / total_steps) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- m * target + (1 - m) * online, parameters and float buffers alike."""
    t_params = list(target.parameters()) + [b for b in target.buffers() if b.is_floating_point()]
    o_params = list(online.parameters()) + [b for b in online.buffers() if b.is_floating_point()]
    torch._foreach_lerp_(t_params, o_params, 1 - momentum)
