"""A check that a training step makes no host-device synchronisation.

A step that waits for the GPU (``.item()``, ``.tolist()`` or ``.cpu()`` of a device tensor, a
blocking copy to the device, ``nonzero`` on the device) stalls the host, which then cannot
queue the next step's work while the GPU runs the current one. :func:`check_sync_free` runs
training steps under ``torch.cuda.set_sync_debug_mode("error")``, where every such call
raises, and reports the first one with the line of selfsup that made it. Loading the batch
is outside the check (the loader may synchronise: nvJPEG decoding does) and so are the log
steps (``train.log_every``: the logged values are read there, one synchronisation per
interval, by design). On a CPU there is no such mode; the same steps run unchecked, so the
code path stays exercised by the CPU tests.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from selfsup.data.batch import Batch
    from selfsup.train.trainer import Trainer

PACKAGE = Path(__file__).resolve().parents[1]


@dataclass
class SyncCheck:
    """What :func:`check_sync_free` found.

    mode: ``error`` where the steps ran under CUDA's sync debug mode, else why not.
    ok: True when no step synchronised, False when one did (``error``, ``where``), None when
    unchecked (no CUDA device and no guard handed in).
    """

    device: str
    mode: str
    steps: int
    ok: bool | None
    error: str | None = None
    where: str | None = None


@contextlib.contextmanager
def sync_errors() -> Iterator[None]:
    """CUDA's sync debug mode at ``error`` inside the block, the previous mode restored after."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def _selfsup_line(error: BaseException) -> str | None:
    """``file:line (function)`` of the innermost selfsup frame of the error's traceback."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if Path(f.filename).resolve().is_relative_to(PACKAGE)]
    if not frames:
        return None
    f = frames[-1]
    return f"{Path(f.filename).resolve().relative_to(PACKAGE.parent)}:{f.lineno} ({f.name}: {f.line})"


def check_sync_free(
    trainer: Trainer, batches: Iterator[Batch], steps: int = 3, warmup: int = 1,
    guard: Callable[[], Any] | None = None,
) -> SyncCheck:
    """Run ``warmup`` plain steps (lazy initialisation, cuDNN's algorithm search), then ``steps``
    steps each under ``guard`` (default: :func:`sync_errors` on CUDA, none elsewhere).

    ``batches``: the loader's batches (e.g. ``trainer.splits.train.batches(...)``), fetched
    outside the guard. A synchronising call inside a step ends the check with ``ok`` False.
    """
    device = trainer.dist.device
    cuda = device.type == "cuda"
    checked = cuda or guard is not None
    if guard is not None:
        mode = "the guard handed in"
    elif cuda:
        guard, mode = sync_errors, "error"
    else:
        guard, mode = contextlib.nullcontext, f"unavailable: CUDA's sync debug mode needs a CUDA device, not {device}"
    for _ in range(warmup):
        trainer.train_step([next(batches)])
    if cuda:
        torch.cuda.synchronize(device)
    for done in range(steps):
        batch = next(batches)
        try:
            with guard():
                trainer.train_step([batch])
        except RuntimeError as error:
            if "synchroniz" not in str(error):
                raise
            return SyncCheck(str(device), mode, done, False, str(error).strip().splitlines()[0],
                             _selfsup_line(error))
    if cuda:
        torch.cuda.synchronize(device)
    return SyncCheck(str(device), mode, steps, True if checked else None)
