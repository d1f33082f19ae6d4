"""Per-step schedules of the learning rate and the weight decay.

Learning rate: linear warm-up from ``start_factor * peak`` to ``peak`` over ``warmup_steps``,
then, with t going from 0 to 1 over the remaining steps,
- ``cosine``:   final + (peak - final) (1 + cos(pi t)) / 2     (SGDR; SimCLR, BYOL, MoCo v2 ...)
- ``poly``:     final + (peak - final) (1 - t)^power           (DeepLab; MaskContrast, power 0.9)
- ``constant``: peak.
Weight decay: a cosine from its start to its end value over the whole run, no warm-up (DINO's
ViT recipe raises it from 0.04 to 0.4).
"""

from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["cosine", "poly", "constant"]


def learning_rate(
    step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0,
    start_factor: float = 0.0, schedule: LRSchedule = "cosine", power: float = 0.9,
) -> float:
    """The learning rate at ``step`` (0-based) of ``total_steps``."""
    if step < warmup_steps:
        return peak * (start_factor + (1 - start_factor) * step / warmup_steps)
    t = min((step - warmup_steps) / max(1, total_steps - warmup_steps), 1.0)
    if schedule == "constant":
        return peak
    if schedule == "poly":
        return final + (peak - final) * (1 - t) ** power
    return final + (peak - final) * (1 + math.cos(math.pi * t)) / 2


def cosine_value(step: int, total_steps: int, start: float, end: float) -> float:
    """A cosine from ``start`` (step 0) to ``end`` (step ``total_steps`` - 1): the weight-decay
    schedule (DINO's ``cosine_scheduler`` without warm-up)."""
    t = min(step / max(1, total_steps - 1), 1.0)
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2
