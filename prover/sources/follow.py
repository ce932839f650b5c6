"""The ``--follow`` source: ingest messages as JSON lines from a file or
standard input.

Lines are ingested in order. A refused line is logged and skipped; one the
prover could not store (``internal``) is tried again after a backoff; at
``shutting-down`` the source stops, leaving that line and the rest unread
(a pipe's producer replays them after the restart, from its last stored seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import TYPE_CHECKING, TextIO

from prover.backoff import Backoff
from prover.sources import Disposition, ingest_message

if TYPE_CHECKING:
    from prover.engine import Engine

__all__ = ["FollowSource"]

log = logging.getLogger("solvency.prover")
RETRY = Backoff(first=0.1, cap=10.0)  # seconds before a line that could not be stored, again


class FollowSource:
    """Reads ``stream`` line by line (module docstring); closes it at the end
    unless it is standard input."""

    name = "follow"

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    async def run(self, engine: Engine, stop: asyncio.Event) -> None:
        try:
            while line := await asyncio.to_thread(self.stream.readline):
                if line.strip() and not await self._ingest(engine, line, stop):
                    return
            log.info("follow: end of %s", self.stream.name)
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8
            log.error("follow: cannot read %s any more: %s", self.stream.name, exc)
        finally:
            if self.stream is not sys.stdin:
                self.stream.close()

    async def _ingest(self, engine: Engine, line: str, stop: asyncio.Event) -> bool:
        """Ingest one line, retrying it while it cannot be stored; False: stop."""
        failures = 0
        while True:
            outcome = await ingest_message(engine, line)
            disposition = outcome.disposition
            if disposition is Disposition.STORED:
                log.debug("follow: stored %s", outcome.summary())
                return True
            if disposition is Disposition.REFUSED:
                log.warning("follow: refused a message: %s", outcome.summary())
                return True
            if disposition is Disposition.STOPPING:  # this line and the rest: after a restart
                return False
            failures += 1
            delay = RETRY.delay(failures)
            log.warning("follow: not stored, again in %.1f s: %s", delay, outcome.summary())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return False
