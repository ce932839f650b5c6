"""Capped exponential backoff with jitter, for retrying a failing epoch. Pure."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay before retry ``n`` (1: after the first failure) is drawn
    uniformly from ``[d/2, d]``, ``d = min(cap, first * 2**(n-1))``: never
    less than half the step, so that retries cannot bunch up, and spread
    over the other half, so that provers failing together do not retry in
    step."""

    first: float = 0.1
    cap: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError("need 0 < first <= cap")

    def step(self, failures: int) -> float:
        """The upper bound ``d`` of the delay after ``failures`` failures in a row (>= 1)."""
        if failures < 1:
            raise ValueError("failures must be at least 1")
        # 2**60 overflows no float; beyond some 60 doublings every step is the cap anyway
        return min(self.cap, self.first * 2.0 ** min(failures - 1, 60))

    def delay(self, failures: int, uniform: Callable[[], float] = random.random) -> float:
        """The delay after ``failures`` failures in a row; ``uniform()`` is in [0, 1)."""
        step = self.step(failures)
        return step / 2 + step / 2 * uniform()
