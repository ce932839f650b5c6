"""The retry delays of a failing epoch: doubling, capped, jittered within the upper half."""

from __future__ import annotations

import random

import pytest

from prover.backoff import Backoff


def test_steps_double_up_to_the_cap() -> None:
    backoff = Backoff(first=0.1, cap=10.0)
    assert [backoff.step(n) for n in range(1, 10)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    )
    assert backoff.step(10_000) == 10.0  # no overflow after many failures


def test_delays_lie_in_the_upper_half_of_the_step_and_spread_over_it() -> None:
    backoff = Backoff(first=0.1, cap=10.0)
    assert backoff.delay(3, lambda: 0.0) == pytest.approx(0.2)
    assert backoff.delay(3, lambda: 0.999) == pytest.approx(0.4, abs=1e-3)
    rng = random.Random(15)
    delays = [backoff.delay(20, rng.random) for _ in range(1_000)]
    assert 5.0 <= min(delays) < 5.1 and 9.9 < max(delays) < 10.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(first=0.0)
    with pytest.raises(ValueError):
        Backoff(first=2.0, cap=1.0)
    with pytest.raises(ValueError):
        Backoff().step(0)
