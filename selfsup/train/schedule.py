"""Learning-rate schedule: linear warm-up then cosine decay, evaluated per step."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0,
    start_factor: float = 0.0,
) -> float:
    """LR at ``step`` (0-based): linear from ``start_factor * peak`` to ``peak`` over
    ``warmup_steps``, then ``final + (peak - final) * (1 + cos(pi * t)) / 2`` with t going
    from 0 to 1 over the remaining steps."""
    if step < warmup_steps:
        return peak * (start_factor + (1 - start_factor) * step / warmup_steps)
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final + (peak - final) * (1 + math.cos(math.pi * min(t, 1.0))) / 2
