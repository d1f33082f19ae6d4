"""The time left, from a smoothed per-step rate that follows the run step by step."""

from __future__ import annotations

import statistics
import time
from collections import deque


class StepClock:
    """Seconds per step as the median of the last ``window`` steps, and the time left at that rate.

    Updated at every step. A median ignores the odd slow step (a checkpoint, an evaluation,
    start-up) and follows a lasting change of speed within half a window; the first step of a
    run (start-up, caches, compilation) only stands in until the second.
    """

    def __init__(self, window: int = 10, clock=time.perf_counter) -> None:
        self.clock = clock
        self.last = clock()
        self.recent: deque[float] = deque(maxlen=window)
        self.steps = 0

    def tick(self) -> float:
        """Record one finished step; return the smoothed seconds per step."""
        now = self.clock()
        dt, self.last = now - self.last, now
        self.steps += 1
        if self.steps == 2:
            self.recent.clear()  # the start-up step is not typical
        self.recent.append(dt)
        return self.per_step

    @property
    def per_step(self) -> float:
        return statistics.median(self.recent) if self.recent else 0.0

    def eta(self, remaining_steps: int) -> float:
        return self.per_step * remaining_steps
