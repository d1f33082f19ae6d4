"""A queue of past vectors shared by all ranks: MoCo's keys, SwAV's embeddings, MaskContrast's
prototypes.

A first-in-first-out ring of ``size`` rows: every push writes the GLOBAL batch's rows
(gathered over ranks in rank order) over the oldest ones, so every rank holds the same queue
and a checkpoint of rank 0 is the queue of all. A push that does not divide the size wraps
around; one larger than the queue is an error. The queue is a buffer of its method
(checkpointed and restored with it); how many rows hold real entries is mirrored in a Python
int, so deciding whether the queue is full needs no host-device synchronisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup.core.comm import gather
from selfsup.core.errors import ConfigError


class Queue(nn.Module):
    """``rows`` (size, *shape) with a write pointer; ``init`` fills it (and counts as entries).

    ``name`` names the setting that sizes the queue in error messages (``mocov2.queue_size``).
    """

    def __init__(self, size: int, *shape: int, init: torch.Tensor | None = None, name: str = "queue size") -> None:
        super().__init__()
        self.name = name
        self.register_buffer("rows", torch.zeros(size, *shape) if init is None else init)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.tensor(0 if init is None else size, dtype=torch.long))
        self.num_filled = int(self.filled)
        self.register_load_state_dict_post_hook(Queue._read_filled)

    @staticmethod
    def _read_filled(module: nn.Module, incompatible_keys: Any) -> None:
        module.num_filled = int(module.filled)

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def full(self) -> bool:
        """Every row holds a real entry (pushed, or given as ``init``)."""
        return self.num_filled >= len(self)

    @torch.no_grad()
    def push(self, x: torch.Tensor, gather_ranks: bool = True) -> None:
        """Write ``x`` (this rank's rows; gathered over ranks first unless ``gather_ranks`` is
        False, i.e. ``x`` already is the global batch) over the oldest rows, in order."""
        x = gather(x) if gather_ranks else x
        n, size = x.shape[0], len(self)
        if n > size:
            raise ConfigError(f"{self.name} {size} must be >= the global batch size {n}")
        idx = (self.ptr + torch.arange(n, device=x.device)) % size
        self.rows[idx] = x.to(self.rows.dtype)
        self.ptr.copy_((self.ptr + n) % size)
        self.num_filled = min(size, self.num_filled + n)
        self.filled.fill_(self.num_filled)
