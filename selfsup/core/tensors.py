"""Small tensor helpers shared by losses, models and methods."""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: bf16 / fp16 (autocast) rise to float32, float64 is kept.

    Losses exponentiate and sum, so they run in float32 under mixed precision; ``.float()``
    would also turn a float64 run (``train.dtype: float64``, for exact comparisons) into float32.
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))
