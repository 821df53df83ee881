"""Fitting a training run into a wall-clock budget (a short GPU slot): time a few steps, then cut the run's
step count so that it ends in time, with its learning-rate schedule completed."""

from __future__ import annotations

import time
from collections.abc import Callable


class TimeBudget:
    """``seconds`` of training for steps ``start`` ..; ``resize`` is asked after every step.

    After ``probe`` steps (the first, which may compile, is not timed) it returns the step at which the run
    must end to finish in time, once; ``over`` is the hard stop. ``sync`` waits for queued device work
    before the clock is read (``torch.cuda.synchronize`` on a GPU).
    """

    def __init__(self, seconds: float, start: int, probe: int = 20, sync: Callable[[], None] = lambda: None):
        self.seconds, self.start, self.probe, self.sync = seconds, start, max(2, probe), sync
        self.t0 = time.perf_counter()
        self.t_first: float | None = None
        self.done = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def resize(self, step: int) -> int | None:
        """The end step that fits the budget, once ``probe`` steps have run (else None)."""
        n = step - self.start
        if self.done or n not in (1, self.probe):
            return None
        self.sync()
        now = time.perf_counter()
        if n == 1:
            self.t_first = now
            return None
        self.done = True
        per_step = (now - self.t_first) / (self.probe - 1)
        return step + max(0, int((self.seconds - (now - self.t0)) / per_step))

    def over(self) -> bool:
        return self.elapsed() > self.seconds
