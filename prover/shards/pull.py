"""Reading a shard's part of the ledger stream from JetStream: two pull
consumers, merged in stream order (docs/SCALING.md, "Consistent cuts").

NATS 2.9 gives a consumer one filter subject, and a shard wants two: its
parts (``<prefix>.part.<i>``) and every commit (``<prefix>.commit``),
merged in stream order. A shard keeps one pull consumer of each
(``open_puller``), without acks, both from the same stream sequence, and
reads them in rounds: it takes the stream's last sequence ``L``, then
pulls from whichever consumer it knows less far (``no_wait``: the server
answers at once). Everything read up to the lesser of the two is taken in
stream order (``merged``), and the shard has read the stream that far,
other shards' parts included, which it never receives. The alternative,
one consumer of ``<prefix>.>`` skipping the others' parts, is simpler but
has every shard receive the whole stream: ``2**k`` times the bytes out of
the NATS servers.

A consumer is known as far as its last message, and past it only as far
as the stream shows nothing more of its subject: when a pull ends short of
``L``, the shard asks the stream leader for the next message of the
subject after ``known`` (``STREAM.MSG.GET`` with ``next_by_subj``: read
from the leader's store when it answers, so with ``L`` stored). None, and
the consumer is known up to ``L``; one past ``L``, up to just before it.
How the pull ended proves nothing: NATS 2.9.10 answers a ``no_wait`` pull
"no messages" (404) from the consumer's pending count, which rises only
after the stream stored a message (off its signal loop), and a consumer
placed on a follower reads a store that lags the leader's; so a pull may
end before a message already stored (measured on one server: 13 in 7,000
pulls sent just after the publish was acknowledged; the consumer info's
``num_pending`` is that same count). When the stream holds a message up to
``L`` that the consumer has not delivered, the shard pulls again with
``expires`` set, which has the server read its store rather than the count
and answer once it delivered some. Every pull with ``expires`` would need
no lookup, but waits the whole ``expires`` when the consumer has nothing,
which one of the two has in most rounds.

The JetStream API requests (the stream's state, the lookups, making and
deleting consumers) are prover/shards/jsapi.py's.

A pull on a consumer whose peer is down is never answered: NATS 2.9.10
keeps such a consumer, R1, "offline" until the peer is back, and nothing
else subscribes to its pulls. So a pull that has heard nothing for
``PULL_SILENCE`` seconds (after its ``expires``, if it has one) has its
consumer checked (``consumer_live``: its info, answered by its leader when
it is up), and one that does not answer for itself is replaced: the pull's
inbox dropped, the consumer deleted (quietly: its peer may be the one
down), a new one made from ``known + 1`` on a new inbox, and the pull sent
to it. A pull answered within ``PULL_SILENCE``, the healthy case, costs no
request more.

Invariant: a ``Puller``'s ``held`` messages are in stream order, each
once, and every message of its subject up to ``known`` is held or taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Iterator

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext

from prover.errors import ProverError
from prover.shards.jsapi import (
    CREATE_WAITS,
    api_read,
    consumer_live,
    create_consumer,
    delete_quietly,
    next_stored,
    stream_state,
)

__all__ = [
    "CREATE_WAITS",
    "Held",
    "Puller",
    "api_read",
    "merged",
    "open_puller",
    "stream_state",
]

log = logging.getLogger("solvency.prover")
Held = tuple[int, int, bytes]  # stream sequence, stored time (ms), payload
# Seconds a pull may go without a word from the server (past its ``expires``)
# before its consumer is checked. On the loopback server a pull of 50 messages
# is answered in 1 ms (median), 6 ms (p99), 25 ms at most in 600; a JetStream
# request in 2-10 ms in the fault tests' deployment (2 cores). A pull on a
# consumer on a stopped node costs this rather than its whole timeout.
PULL_SILENCE = 0.3
# Seconds the check of a silent pull's consumer waits for its info: a live
# consumer's leader answers in milliseconds, the meta leader answers "offline"
# for one on a stopped peer after 0.5 s.
PROBE_TIMEOUT = 1.0
REPLACEMENTS = 2  # consumers a pull may replace before it gives up (TimeoutError)


class Puller:
    """One pull consumer, read with ``no_wait`` requests; its messages are
    collected by a callback on an inbox of its own (``start``), which costs
    the event loop far less than a ``next_msg`` per message. A consumer that
    stops answering is replaced by one from ``known + 1`` (module docstring);
    ``name`` is always the current one's."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        stream: str,
        name: str,
        subject: str,
        known: int,
        description: str,
        inactive: float,
    ) -> None:
        self.nc, self.js, self.stream, self.subject = nc, js, stream, subject
        self.description, self.inactive = description, inactive
        self.name = name
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
        self.held: deque[Held] = deque()  # in stream order
        self.known = known  # every message of this consumer up to here is held or taken
        self.inbox = ""
        self.lookups = 0  # pulls that ended short of the last sequence, checked on the stream
        self.lags = 0  # of those, the stream held a message the consumer had not delivered
        self.probes = 0  # silent pulls whose consumer was checked
        self.replaced = 0  # consumers replaced, found not answering
        self._inbox: Subscription | None = None
        self._done: asyncio.Future[bool] | None = None  # the pull under way: True if it ended
        self._asked = self._left = 0  # messages the pull under way asked for, may still bring

    async def start(self) -> None:
        """Listen on a new inbox; the one before, if any, is dropped first
        (``unsubscribe`` discards what it holds at once), so nothing sent
        to it is taken after."""
        if self._inbox is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._inbox.unsubscribe()
        self.inbox = self.nc.new_inbox()
        self._inbox = await self.nc.subscribe(self.inbox, cb=self._deliver)

    async def pull(self, batch: int, max_bytes: int, last: int, timeout: float) -> None:
        """Pull what the consumer gives now, up to ``batch`` messages and
        about ``max_bytes``; if it gives out short of ``last`` (the stream's
        last sequence, taken before), ``known`` up to ``last`` once the
        stream shows nothing more of the subject up to there, else a pull
        that waits for the message it shows (module docstring).

        Raises:
            TimeoutError: no answer in ``timeout`` seconds from a consumer
                that answers its info, or ``REPLACEMENTS`` consumers replaced.
            ProverError: the server refused the pull or the lookup, or no
                replacement consumer was made.
            nats.errors.Error: the lookup was not answered (no responders, timeout).
        """
        if not await self._request(batch, max_bytes, 0.0, timeout) or self.known >= last:
            return
        self.lookups += 1
        following = await next_stored(self.nc, self.stream, self.subject, self.known, timeout)
        if following is None or following > last:
            self.known = last if following is None else following - 1
            return
        self.lags += 1  # stored, not delivered yet: wait for it rather than pass it
        await self._request(batch, max_bytes, timeout / 2, timeout)

    async def _request(self, batch: int, max_bytes: int, wait: float, timeout: float) -> bool:
        """One pull request, answered within ``timeout`` (sent again to a
        replacement of a consumer that does not answer): True if it ended
        with the consumer giving out, False once ``batch`` or ``max_bytes``
        is reached. With ``wait`` (seconds), the server reads its store
        and answers as soon as it gave some, or after ``wait``."""
        for _ in range(REPLACEMENTS):
            why = await self._ask(batch, max_bytes, wait, timeout)
            if isinstance(why, bool):
                return why
            await self._replace(why)
        why = await self._ask(batch, max_bytes, wait, timeout)
        if isinstance(why, bool):
            return why
        raise TimeoutError(f"pull from {self.subject}: {REPLACEMENTS} consumers replaced, {why}")

    async def _ask(self, batch: int, max_bytes: int, wait: float, timeout: float) -> bool | str:
        """One pull request to the current consumer: how it ended
        (``_request``), or why the consumer is to be replaced, should the
        pull hear nothing for ``PULL_SILENCE`` past ``wait`` and the
        consumer then not answer for itself.

        Raises:
            TimeoutError: no answer in ``timeout`` from a live consumer.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        self._done = done
        self._asked = self._left = batch
        request: dict[str, object] = {"batch": batch, "no_wait": True, "max_bytes": max_bytes}
        if wait:
            request["expires"] = int(wait * 1e9)
        deadline = loop.time() + timeout
        quiet_until = loop.time() + wait + PULL_SILENCE
        await self.nc.publish(self.api, json.dumps(request).encode(), reply=self.inbox)
        seen = self._left
        try:
            while True:
                left = min(quiet_until, deadline) - loop.time()
                await asyncio.wait((done,), timeout=max(0.0, left))
                if done.done():
                    return done.result()
                now = loop.time()
                if now >= deadline:
                    raise TimeoutError(f"pull from {self.subject}: no answer in {timeout:.1f} s")
                if self._left != seen:  # messages came meanwhile: the consumer is up
                    seen, quiet_until = self._left, now + PULL_SILENCE
                    continue
                self.probes += 1
                why = await consumer_live(
                    self.nc, self.stream, self.name, min(PROBE_TIMEOUT, deadline - now)
                )
                if done.done():
                    return done.result()
                if why is not None:
                    return why
                log.info(
                    "pull from %s silent, its consumer %s up: waited for", self.subject, self.name
                )
                quiet_until = deadline  # up: its answer waited for as long as any
        finally:
            if not done.done():
                done.cancel()  # what the consumer sends after is not taken

    async def _replace(self, why: str) -> None:
        """A new consumer from ``known + 1``, on a new inbox, for one that
        does not answer; the old one deleted quietly (its peer may be down).

        Raises:
            ProverError: no consumer made (``create_consumer``).
            nats.errors.Error: a creation refused, or NATS unreachable.
        """
        old = self.name
        loop = asyncio.get_running_loop()
        began = loop.time()
        await self.start()  # the old consumer's late messages are not taken
        deleted = await delete_quietly(self.js, self.stream, old)
        self.name = await create_consumer(
            self.nc,
            self.js,
            self.stream,
            self.subject,
            self.known + 1,
            self.description,
            self.inactive,
        )
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.name}"
        self.replaced += 1
        log.warning(
            "consumer %s of %s: a pull heard nothing for %.1f s and %s (%s);"
            " replaced by %s from %d in %.2f s",
            old,
            self.subject,
            PULL_SILENCE,
            why,
            deleted,
            self.name,
            self.known + 1,
            loop.time() - began,
        )

    async def _deliver(self, msg: Msg) -> None:
        done = self._done
        if done is None or done.done():  # after a pull that timed out or was given up
            return
        status = msg.headers.get("Status") if msg.headers else None
        if status in ("404", "408"):  # none left, as the consumer sees it (408: fewer than asked)
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
    waits: tuple[float, ...] = CREATE_WAITS,
) -> Puller:
    """A ``Puller`` on a new ephemeral pull consumer of ``subject`` from
    stream sequence ``start``, no acks, on a peer that answers
    (``create_consumer``: each attempt waits ``waits[i]`` seconds); the
    server drops it once unused for ``inactive`` seconds (a shard that died).

    Raises:
        ProverError: no attempt was answered in time.
        nats.errors.Error: a creation refused, or NATS unreachable.
    """
    name = await create_consumer(nc, js, stream, subject, start, description, inactive, waits)
    puller = Puller(nc, js, stream, name, subject, start - 1, description, inactive)
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
