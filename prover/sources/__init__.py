"""Ingest sources: where the daemon's ingest messages come from, and what
each one's outcome means for the source's position.

A ``Source`` feeds messages of docs/PROTOCOL.md §11.1 to ``Engine.ingest``
until its input ends or ``stop`` is set. Sources today: the WebSocket route
``/ingest`` (prover/server.py, one connection per producer), ``--follow``
(prover/sources/follow.py, JSON lines) and NATS JetStream
(prover/sources/nats.py). Each turns one message into an ``Outcome`` with
``ingest_message`` and acts on its ``disposition``:

- ``STORED``: committed (or a replay, ignored by seq): move past it (ack).
- ``REFUSED``: refused for good, nothing applied: move past it, logged; the
  refusal is counted (``ingest_errors``).
- ``RETRY``: not stored (``internal``): offer the same message again after a
  pause, before any later one.
- ``STOPPING``: not stored, the prover is stopping: do not move past it; it
  is offered again after the restart.

Invariant for a source with a position (a stream sequence, an offset): the
position moves past a message only once its outcome is STORED or REFUSED,
and messages are ingested in order. Sequence numbers are per producer and a
seq at or below the stored mark is a replay, so a message offered again is
harmless, and one ingested after a later one of its producer would be lost:
order is what a source must keep.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prover.errors import IngestError
from prover.ingest import IngestResult
from prover.messages import RequestId, ack, error_reply, parse_ingest

if TYPE_CHECKING:
    from prover.engine import Engine
    from prover.served import Served

__all__ = ["Disposition", "Outcome", "Source", "ingest_message", "refusal"]

log = logging.getLogger("solvency.prover")


class Source(Protocol):
    """Feeds ingest messages to the engine (module docstring)."""

    @property
    def name(self) -> str:
        """For log lines: ``follow``, ``nats``."""
        ...

    async def run(self, engine: Engine, stop: asyncio.Event) -> None:
        """Ingest messages in order until the input ends or ``stop`` is set;
        a message refused as ``shutting-down`` is left for after the restart.
        The daemon cancels a source still running a few seconds after stop."""
        ...


class Disposition(enum.Enum):
    """What a source does with a message after its outcome (module docstring)."""

    STORED = "stored"
    REFUSED = "refused"
    RETRY = "retry"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One ingest message's result: stored (``result``) or refused (``error``)."""

    id: RequestId
    result: IngestResult | None = None
    error: IngestError | None = None

    @property
    def disposition(self) -> Disposition:
        if self.error is None:
            return Disposition.STORED
        if self.error.code == "shutting-down":
            return Disposition.STOPPING
        if self.error.code == "internal":
            return Disposition.RETRY
        return Disposition.REFUSED

    def reply(self) -> str:
        """The WebSocket reply (docs/PROTOCOL.md §11.1): an ack or an error."""
        if self.result is not None:
            r = self.result
            return ack(r.id, r.source, r.applied, r.duplicates, r.last_seq)
        assert self.error is not None
        return error_reply(self.id, self.error)

    def summary(self) -> str:
        """One line for a log: what was stored, or why nothing was."""
        if self.result is not None:
            r = self.result
            return (
                f"source {r.source} id {r.id!r}: {r.applied} applied,"
                f" {r.duplicates} replayed, last seq {r.last_seq}"
            )
        assert self.error is not None
        return f"id {self.id!r}: {self.error.code}: {self.error.message}"


def refusal(engine: Served, error: IngestError, request_id: RequestId = None) -> Outcome:
    """A refused message's outcome, counted in ``ingest_errors``."""
    engine.metrics.ingest_errors += 1
    return Outcome(request_id if error.id is None else error.id, error=error)


async def ingest_message(engine: Served, data: str | bytes) -> Outcome:
    """Parse one ingest message and store it; every refusal is counted, and an
    unexpected exception is logged and becomes ``internal`` (retry)."""
    request_id: RequestId = None
    try:
        batch = parse_ingest(data)
        request_id = batch.id
        return Outcome(batch.id, result=await engine.ingest(batch))
    except IngestError as exc:
        return refusal(engine, exc, request_id)
    except Exception:
        log.exception("ingest failed")
        return refusal(engine, IngestError("internal", "internal error"), request_id)
