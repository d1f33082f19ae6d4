"""Random draws that every rank makes identically and that a resumed run repeats.

Memory-bank noise (InstDisc) and sampled negative classes (PIC) must be the same on every
rank, so that the ranks' losses together equal the single-process loss of the global batch,
and they should continue unchanged after ``--resume``. The trainer seeds the global RNG
differently per rank and does not own these streams, so a method keeps its own counter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SharedGenerator(nn.Module):
    """The k-th call of :meth:`next` returns a generator seeded with ``seed + k``.

    The draw count ``k`` is this module's extra state (``<name>._extra_state`` in the
    state dict), so it is checkpointed and restored with the method. Drawing on the
    requested device avoids host-device transfers and synchronisation.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.draws = 0

    def next(self, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed + self.draws)
        self.draws += 1
        return gen

    def get_extra_state(self) -> dict[str, Any]:
        return {"draws": self.draws}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])
