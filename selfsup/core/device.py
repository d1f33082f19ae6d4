"""Which torch device a ``device`` setting means."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; anything else as torch reads it."""
    return torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
