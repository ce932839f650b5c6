"""Reading a shard's part of the ledger stream from JetStream: two pull
consumers, merged in stream order (docs/SCALING.md, "Consistent cuts").

NATS 2.9 gives a consumer one filter subject, and a shard wants two: its
parts (``<prefix>.part.<i>``) and every commit (``<prefix>.commit``),
merged in stream order. A shard keeps one pull consumer of each
(``open_puller``), without acks, both from the same stream sequence, and
reads them in rounds: it takes the stream's last sequence ``L``, then
pulls from whichever consumer it knows less far (``no_wait``: the server
answers at once, "no messages" when it has none left). A consumer is known
as far as its last message, or as far as ``L`` once it has none left or
went past it: nothing of it below that can come later. Everything read up
to the lesser of the two is taken in stream order (``merged``), and the
shard has read the stream that far, other shards' parts included, which
it never receives. The alternative, one consumer of ``<prefix>.>``
skipping the others' parts, is simpler but has every shard receive the
whole stream: ``2**k`` times the bytes out of the NATS servers.

Invariant: a ``Puller``'s ``held`` messages are in stream order, each
once, and every message of its subject up to ``known`` is held or taken.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterator

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from prover.errors import ProverError

__all__ = ["Held", "Puller", "merged", "open_puller"]

Held = tuple[int, int, bytes]  # stream sequence, stored time (ms), payload


class Puller:
    """One pull consumer, read with ``no_wait`` requests; its messages are
    collected by a callback on an inbox of its own (``start``), which costs
    the event loop far less than a ``next_msg`` per message."""

    def __init__(self, nc: Client, stream: str, name: str, subject: str, known: int) -> None:
        self.nc, self.name, self.subject = nc, name, subject
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
        self.held: deque[Held] = deque()  # in stream order
        self.known = known  # every message of this consumer up to here is held or taken
        self.inbox = ""
        self._done: asyncio.Future[bool] | None = None  # the pull under way: True if drained
        self._asked = self._left = 0  # messages the pull under way asked for, may still bring

    async def start(self) -> None:
        self.inbox = self.nc.new_inbox()
        await self.nc.subscribe(self.inbox, cb=self._deliver)

    async def pull(self, batch: int, max_bytes: int, last: int, timeout: float) -> None:
        """Pull what the server holds now, up to ``batch`` messages and about
        ``max_bytes``; ``known`` at least ``last`` if none is left.

        Raises:
            TimeoutError: no answer in ``timeout`` seconds (the consumer is gone).
            ProverError: the server refused the pull.
        """
        self._done = asyncio.get_running_loop().create_future()
        self._asked = self._left = batch
        request = {"batch": batch, "no_wait": True, "max_bytes": max_bytes}
        await self.nc.publish(self.api, json.dumps(request).encode(), reply=self.inbox)
        async with asyncio.timeout(timeout):
            drained = await self._done
        if drained:
            self.known = max(self.known, last)

    async def _deliver(self, msg: Msg) -> None:
        done = self._done
        if done is None or done.done():  # after a pull that timed out: the session ends
            return
        status = msg.headers.get("Status") if msg.headers else None
        if status in ("404", "408"):  # none left (408: fewer than asked for)
            done.set_result(True)
        elif status == "409" and self._left < self._asked:  # ``max_bytes`` reached
            done.set_result(False)
        elif status:
            done.set_exception(ProverError(f"pull from {self.subject}: {status} {msg.headers}"))
        else:
            seq, time_ms = _position(msg)
            self.held.append((seq, time_ms, msg.data))
            self.known = max(self.known, seq)
            self._left -= 1
            if not self._left:
                done.set_result(False)


async def open_puller(
    nc: Client,
    js: JetStreamContext,
    stream: str,
    subject: str,
    start: int,
    description: str,
    inactive: float,
) -> Puller:
    """An ephemeral pull consumer of ``subject`` from stream sequence
    ``start``, no acks; the server drops it once unused for ``inactive``
    seconds (a shard that died)."""
    config = ConsumerConfig(
        name=nc.new_inbox().rpartition(".")[2],
        description=description,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=inactive,
    )
    created = await js.add_consumer(stream, config)
    assert created.name is not None
    puller = Puller(nc, stream, created.name, subject, start - 1)
    await puller.start()
    return puller


def merged(first: deque[Held], second: deque[Held], upto: int) -> Iterator[Held]:
    """Take from two ordered queues, in order, the items up to ``upto``."""
    while True:
        a = first[0][0] if first else upto + 1
        b = second[0][0] if second else upto + 1
        if min(a, b) > upto:
            return
        yield (first if a < b else second).popleft()


def _position(msg: Msg) -> tuple[int, int]:
    """A JetStream message's stream sequence and stored time (ms), read from
    its reply subject as ``Msg.metadata`` does, without building it."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[:2] == [
        "$JS",
        "ACK",
    ]:  # $JS.ACK.<stream>.<consumer>.<n>.<seq>...
        return int(tokens[5]), int(tokens[7]) // 1_000_000
    meta = msg.metadata
    return meta.sequence.stream, int(meta.timestamp.timestamp() * 1000)
