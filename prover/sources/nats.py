"""The NATS JetStream source: ingest messages read from a stream through a
durable pull consumer, each acknowledged to JetStream only once its outcome
is final.

Each message's payload is one ingest message of docs/PROTOCOL.md §11.1 (the
JSON a producer would send on ``/ingest``). In stream order, per its outcome
(prover/sources/__init__.py):

- stored (committed, or a replay ignored by seq): ``ack``;
- refused for good (``bad-update``, ``bad-seq``, ``unknown-asset``...):
  ``term``, so that JetStream never delivers it again, with one warning line
  naming its stream sequence; counted in ``ingest_errors``. It stays in the
  stream: fix the cause and republish it;
- not stored (``internal``): ``nak`` with a backoff delay: the same message
  again, before any later one;
- ``shutting-down``: ``nak``, and the source stops: the message is delivered
  again after the restart.

Invariants:

- The consumer has ``max_ack_pending = 1``: JetStream delivers a message
  only once the one before it is acked or terminated, so messages are
  ingested in stream order, across restarts too: a message delivered to a
  prover killed before it acked is delivered again (after
  ``nats_ack_wait``) before any later one. In any other order a producer's
  earlier message would arrive after its later seqs were stored, and be
  ignored as a replay.
- Idempotency is the producers' ``(source, seq)``; JetStream's ``(stream,
  sequence)`` is only the position. A message committed and not acked (the
  prover killed in between) is delivered again: its updates are replays,
  acknowledged and ignored. Producers publish with a ``Nats-Msg-Id`` (e.g.
  ``<source>:<first seq>``) so that a message republished within the stream's
  duplicate window is stored once in the stream.
- A session that fails (server unreachable, stream missing, consumer
  deleted) is logged and started again after a backoff, until ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from prover.backoff import Backoff
from prover.config import Config
from prover.errors import IngestError
from prover.sources import Disposition, Outcome, ingest_message, refusal

if TYPE_CHECKING:
    from prover.engine import Engine

__all__ = ["NatsSource", "NatsStats", "redact"]

log = logging.getLogger("solvency.prover")
T = TypeVar("T")
RETRY = Backoff(first=0.1, cap=10.0)  # before a message that could not be stored, again
RESTART = Backoff(first=0.5, cap=30.0)  # before a failed session is started again
POLL = 1.0  # seconds a fetch waits for a message: how soon ``stop`` is noticed


def redact(url: str) -> str:
    """``url`` (one or several, comma-separated) without user names, passwords or tokens."""
    parts = []
    for one in url.split(","):
        split = urllib.parse.urlsplit(one.strip())
        host = split.netloc.rpartition("@")[2]
        parts.append(urllib.parse.urlunsplit(split._replace(netloc=host)))
    return ",".join(parts)


@dataclass
class NatsStats:
    """What the source did since start (messages, not updates)."""

    stored: int = 0  # acked: committed, or replays
    refused: int = 0  # terminated
    retried: int = 0  # nak'd to be delivered again (``internal``)
    sessions: int = 0  # consumers bound: 1, plus one per restarted session
    position: int = 0  # the stream sequence last acked or terminated


@dataclass(frozen=True)
class NatsSource:
    """Consumes ``stream`` through the durable pull consumer ``durable`` (module docstring)."""

    url: str
    stream: str
    subject: str = ""  # filter subject; empty: all of the stream's
    durable: str = "solvency-prover"
    ack_wait: float = 30.0
    max_bytes: int = 16 << 20
    stats: NatsStats = field(default_factory=NatsStats, compare=False)
    name: str = field(default="nats", init=False)

    @classmethod
    def from_config(cls, config: Config) -> NatsSource:
        return cls(
            config.nats_url,
            config.nats_stream,
            config.nats_subject,
            config.nats_durable,
            config.nats_ack_wait,
            config.max_message_bytes,
        )

    def consumer_config(self) -> ConsumerConfig:
        """The durable consumer: explicit acks, one unacknowledged message at a
        time (the order invariant), from the stream's first message (what the
        prover holds already is ignored as replays)."""
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            description="solvency-prover ingest",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=1,
            max_deliver=-1,
            filter_subject=self.subject or None,
        )

    async def run(self, engine: Engine, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set or a message meets ``shutting-down``;
        a failed session is started again after a backoff."""
        failures = 0
        while not stop.is_set():
            try:
                client = await _unless_stopped(stop, self._connect())
                if client is None:
                    return
                try:
                    js = client.jetstream()
                    await js.add_consumer(self.stream, self.consumer_config())  # or update it
                    sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
                    self.stats.sessions += 1
                    failures = 0
                    log.info(
                        "nats: consuming stream %s (%s) as %s from %s",
                        self.stream,
                        self.subject or "all subjects",
                        self.durable,
                        redact(self.url),
                    )
                    await self._consume(engine, sub, stop)
                    return
                finally:
                    await client.close()  # flushes the last acks
            except (nats.errors.Error, OSError) as exc:  # TimeoutError is an OSError
                failures += 1
                delay = RESTART.delay(failures)
                log.error("nats: %s; starting again in %.1f s", exc or type(exc).__name__, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _connect(self) -> Client:
        last: list[str] = []  # the last error logged: one line per kind of failure

        async def error(exc: Exception) -> None:
            if [str(exc)] != last:
                last[:] = [str(exc)]
                log.warning("nats: %s", exc or type(exc).__name__)

        async def disconnected() -> None:
            log.warning("nats: disconnected from %s", redact(self.url))

        async def reconnected() -> None:
            last.clear()
            log.info("nats: reconnected to %s", redact(self.url))

        return await nats.connect(
            [u.strip() for u in self.url.split(",")],
            name="solvency-prover",
            connect_timeout=2,
            reconnect_time_wait=1,
            max_reconnect_attempts=-1,  # also retries the first connection, until stopped
            error_cb=error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )

    async def _consume(
        self, engine: Engine, sub: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            try:
                messages = await sub.fetch(1, timeout=POLL)
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                if not await self._handle(engine, message):
                    return

    async def _handle(self, engine: Engine, message: Msg) -> bool:
        """Ingest one message and settle it with JetStream; False: stop (the prover is)."""
        meta = message.metadata
        where = f"{meta.stream} #{meta.sequence.stream} (delivery {meta.num_delivered})"
        if len(message.data) > self.max_bytes:
            too_large = IngestError("too-large", f"message larger than {self.max_bytes} bytes")
            outcome: Outcome = refusal(engine, too_large)
        else:
            outcome = await ingest_message(engine, message.data)
        disposition = outcome.disposition
        if disposition is Disposition.STORED:
            await message.ack()
            self.stats.stored += 1
            self.stats.position = meta.sequence.stream
            log.debug("nats: stored %s: %s", where, outcome.summary())
        elif disposition is Disposition.REFUSED:
            await message.term()
            self.stats.refused += 1
            self.stats.position = meta.sequence.stream
            log.warning(
                "nats: refused %s, terminated (not delivered again): %s", where, outcome.summary()
            )
        elif disposition is Disposition.RETRY:
            delay = RETRY.delay(meta.num_delivered)
            await message.nak(delay=delay)
            self.stats.retried += 1
            log.warning("nats: not stored %s, again in %.1f s: %s", where, delay, outcome.summary())
        else:  # shutting-down: delivered again after the restart
            await message.nak()
            return False
        return True


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None (``work`` cancelled) if ``stop`` is set first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
