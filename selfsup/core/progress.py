"""Progress bars of the long evaluation loops (feature extraction, probes, k-means)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """``items`` with a tqdm bar on stderr that disappears when done. Shown only on an
    interactive terminal (tqdm's ``disable=None``), so logs and captured output stay clean."""
    return tqdm(items, desc=desc, total=total, file=sys.stderr, disable=None, leave=False, dynamic_ncols=True)
