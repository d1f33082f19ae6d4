"""Checkpoints: written atomically and durably, read with ``weights_only=True``.

A checkpoint is written to a temporary file in the same folder, flushed and fsync-ed, then
renamed over the old one (and the folder fsync-ed), so a crash, a kill or a full disk at any
moment leaves either the old checkpoint or the new one, never a truncated file. A write that
fails (no space, no permission, a read-only file system) is a one-line ``CheckpointError``
naming the path and the cause; the previous checkpoint stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.core.errors import CheckpointError

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into a one-line CheckpointError naming it."""
    try:
        yield
    except OSError as e:
        cause = e.strerror or str(e) or type(e).__name__
        raise CheckpointError(f"cannot write {path}: {cause} (errno {e.errno})") from None


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """torch.save to ``.<name>.tmp<pid>`` beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}{TMP_SUFFIX}{os.getpid()}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
                fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except CheckpointError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{e}; the previous checkpoint, if any, is unchanged") from None


def remove_stale_temporaries(path: str | Path) -> None:
    """Delete temporary files a killed writer of ``path`` left behind."""
    path = Path(path)
    for stale in path.parent.glob(f"{TMP_PREFIX}{path.name}{TMP_SUFFIX}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None


def rng_state(view_gen: torch.Generator) -> dict[str, Any]:
    """Every random stream a run draws from, in weights_only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "views": view_gen.get_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], view_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    view_gen.set_state(state["views"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
