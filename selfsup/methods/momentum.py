"""Momentum (EMA) encoders: the copy, its schedule and its update, for every method that has one.

BYOL's target, MoCo's key encoder (v1, v2, v3), DINO's teacher and PixPro / PixContrast's
momentum encoder are all the same object: a copy of some online modules that never receives a
gradient and follows them by an exponential moving average after every optimiser step,

    theta_target <- m_k theta_target + (1 - m_k) theta_online,

with either a constant m_k = m_0 (MoCo v1 / v2: 0.999) or BYOL's cosine schedule (BYOL, MoCo
v3, DINO, PixPro), rising from m_0 to 1 over the K steps of the run:

    m_k = 1 - (1 - m_0) (cos(pi k / K) + 1) / 2.

One convention for every method: the update that follows the optimiser step with 0-based
index k uses m_k, so the first update uses m_0 and the last m_{K-1} (just below 1). This is
BYOL's official code, and the same sequence as DINO's and PixPro's (which update at the start
of step k + 1 with their value for k). MoCo v3's official code updates at the start of step
k + 1 with m_{k+1}: one schedule step later than here, a difference in m of at most
(1 - m_0) pi / (2K) per update (4e-6 for m_0 = 0.99 over 4,000 steps).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import nn

Schedule = Literal["cosine", "constant"]


def momentum_at(base: float, step: int, total_steps: int, schedule: Schedule = "cosine") -> float:
    """m_k of the update after the optimiser step with 0-based index ``step`` of ``total_steps``:
    ``base`` for a constant schedule, else 1 - (1 - base) (cos(pi k / K) + 1) / 2 (k clamped to K)."""
    if schedule == "constant":
        return base
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total_steps) / total_steps) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- m * target + (1 - m) * online, parameters and float buffers alike."""
    t_params = list(target.parameters()) + [b for b in target.buffers() if b.is_floating_point()]
    o_params = list(online.parameters()) + [b for b in online.buffers() if b.is_floating_point()]
    torch._foreach_lerp_(t_params, o_params, 1 - momentum)


class MomentumEncoder(nn.Module):
    """No-gradient EMA copies of named online modules, updated with :func:`momentum_at`.

    ``MomentumEncoder(0.996, backbone=self.backbone, projector=self.projector)`` holds
    ``.backbone`` and ``.projector``, deep copies with ``requires_grad`` off (checkpointed with
    the method); a ``None`` module stays ``None`` (an optional neck). The online modules are remembered, not
    registered (they belong to the method), so :meth:`update` needs no arguments but the step.
    ``momentum`` is the value of the last update (``base`` before the first), for logging.
    """

    def __init__(self, base: float, schedule: Schedule = "cosine", **online: nn.Module | None) -> None:
        super().__init__()
        self.base = base
        self.schedule: Schedule = schedule
        self.momentum = base
        self._online: dict[str, nn.Module] = {}
        self.add(**online)

    def add(self, **online: nn.Module | None) -> None:
        """Copy more online modules (built after the first ones) into this encoder."""
        for name, module in online.items():
            if module is None:
                setattr(self, name, None)
            else:
                self.add_module(name, copy.deepcopy(module).requires_grad_(False))
                self._online[name] = module

    def update(self, step: int, total_steps: int) -> None:
        """The EMA update after ``step`` completed optimiser steps (``Method.on_step``'s count,
        from 1): every copy moves towards its online module with m_{step - 1}."""
        self.momentum = momentum_at(self.base, step - 1, total_steps, self.schedule)
        for name, online in self._online.items():
            ema_update(getattr(self, name), online, self.momentum)
