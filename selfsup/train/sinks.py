"""Where the training records go besides ``metrics.jsonl``: TensorBoard (``train.log: tensorboard``).

The same records the trainer appends to ``metrics.jsonl`` become TensorBoard scalars, with the
optimiser step as the x axis: a step record's values as ``train/<key>``, an epoch record's
summary as ``epoch/<key>`` and its other values (the monitor's, e.g. ``online_knn``) as
``monitor/<key>``. The event files are written into the run folder, so that
``tensorboard --logdir runs/`` shows every run under its folder name. A resumed run purges the
events after its checkpoint's step, as ``metrics.jsonl`` is cut back. Without the
``tensorboard`` package (``pip install 'selfsup[tensorboard]'``) one line says so and only
``metrics.jsonl`` is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

NOT_SCALARS = ("epoch", "step", "summary")


class TensorBoardSink:
    """Writes training records as TensorBoard scalars (see the module docstring)."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        if "summary" in record:
            scalars = {f"epoch/{k}": v for k, v in record["summary"].items()}
            scalars |= {f"monitor/{k}": v for k, v in record.items() if k not in NOT_SCALARS}
        else:
            scalars = {f"train/{k}": v for k, v in record.items() if k not in NOT_SCALARS}
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, step)
        if "summary" in record:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_sink(kind: str, folder: Path, purge_step: int | None = None) -> TensorBoardSink | None:
    """The sink of ``train.log`` (None for ``jsonl``: metrics.jsonl alone, which is always written)."""
    if kind != "tensorboard":
        return None
    try:
        return TensorBoardSink(folder, purge_step)
    except ImportError:
        print("selfsup: train.log=tensorboard but the tensorboard package is not installed "
              "(pip install 'selfsup[tensorboard]'); logging to metrics.jsonl only", file=sys.stderr)
        return None
