"""Interpreter tuning around epochs: when the cyclic garbage collector runs,
and how soon the event loop's thread gets the GIL back while an epoch closes.

Invariants:

- ``collector_off``: the collector is off inside the block (the engine's
  ``start``, where loading balances would trip it for nothing, and its
  ``run``), then enabled again only if it was before. Inside ``run``, the
  engine collects right after each epoch is handed out (``collect_after``),
  never during a close or a fan-out.
- ``quick_gil_handoffs``: inside the block the switch interval is
  ``CLOSE_SWITCH_INTERVAL``, so a thread computing meanwhile (the database
  thread, a fold) hands the GIL back to the loop quickly at each of the
  close's waits. Blocks may overlap (two engines of one process, epochs
  waiting for their witnesses): the interval found before the first is
  restored once the last ends.

Both are process-wide and meant for the event loop's thread.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

__all__ = [
    "CLOSE_SWITCH_INTERVAL",
    "FULL_COLLECTION_EVERY",
    "collect_after",
    "collector_off",
    "quick_gil_handoffs",
]

FULL_COLLECTION_EVERY = 30  # epochs; the young generations are collected after every epoch
CLOSE_SWITCH_INTERVAL = 0.0002  # seconds; sys.setswitchinterval while an epoch closes

_closing: list[float] = []  # the switch interval to restore, once per block under way


@contextlib.contextmanager
def quick_gil_handoffs() -> Iterator[None]:
    """Python's switch interval at ``CLOSE_SWITCH_INTERVAL``, then, once no
    such block of the process is under way, back as it was."""
    _closing.append(sys.getswitchinterval() if not _closing else _closing[0])
    sys.setswitchinterval(CLOSE_SWITCH_INTERVAL)
    try:
        yield
    finally:
        interval = _closing.pop()
        if not _closing:
            sys.setswitchinterval(interval)


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """Python's cyclic garbage collector off, then back as it was; meanwhile
    the caller collects (``collect_after``)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def collect_after(epoch: int) -> None:
    """Collect garbage right after ``epoch`` was handed out: the young
    generations, and every ``FULL_COLLECTION_EVERY`` epochs all of them."""
    gc.collect(2 if epoch % FULL_COLLECTION_EVERY == 0 else 1)
