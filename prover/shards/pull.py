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

The JetStream API reads a shard makes (the stream's state, the lookups)
go through ``api_read``: a request the server never answers (one sent
during a stream leader change, even to the nodes that stay up) is sent
again after a fraction of a second rather than waited for the whole
timeout; every copy is sent after the one before, so an answer to any of
them is as recent as the first's would have been.

Invariant: a ``Puller``'s ``held`` messages are in stream order, each
once, and every message of its subject up to ``known`` is held or taken.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Iterator

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from prover.errors import ProverError

__all__ = ["Held", "Puller", "api_read", "merged", "open_puller", "stream_state"]

log = logging.getLogger("solvency.prover")
Held = tuple[int, int, bytes]  # stream sequence, stored time (ms), payload
NO_MESSAGE = 10037  # JetStream's error code for "no message found"
# Seconds each attempt to create a consumer waits for the answer (``open_puller``):
# short first, as a consumer placed on a peer that is down is never answered (one
# creation in three while one node of three is down; 5 in a row seen), longer
# after, should the cluster be slow rather than the consumer lost. An answer
# comes in 2-10 ms otherwise (the fault tests' deployment, on 2 cores).
CREATE_WAITS = (0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 4.0)
# Seconds ``api_read`` waits for an answer before it sends the request again
# (the last one repeated up to the deadline). A JetStream API request sent in
# the ~10 ms of a stream leader change is never answered, by any node; one
# that is answered is, in 2-10 ms (the fault tests' deployment, on 2 cores).
READ_WAITS = (0.25, 0.25, 0.5, 0.5, 1.0)
NO_RESPONDERS_WAIT = 0.1  # s before a request refused for want of responders is sent again


class _Stored(msgspec.Struct):
    seq: int


class _ApiError(msgspec.Struct):
    code: int
    err_code: int = 0
    description: str = ""


class _State(msgspec.Struct):
    first_seq: int = 0
    last_seq: int = 0


class _InfoReply(msgspec.Struct):
    """A ``STREAM.INFO`` answer, only what is read of it."""

    state: _State | None = None
    error: _ApiError | None = None


class _GetReply(msgspec.Struct):
    """A ``STREAM.MSG.GET`` answer, only what is read of it (not the payload)."""

    message: _Stored | None = None
    error: _ApiError | None = None


_get_reply = msgspec.json.Decoder(_GetReply)
_info_reply = msgspec.json.Decoder(_InfoReply)


async def api_read(
    nc: Client,
    subject: str,
    payload: bytes,
    timeout: float,
    waits: tuple[float, ...] = READ_WAITS,
    *,
    no_responders_wait: float | None = NO_RESPONDERS_WAIT,
) -> Msg:
    """The answer to a request that is answered the same if asked again
    (a JetStream API read: as of when it is answered), within ``timeout``
    seconds: sent again whenever ``waits[i]`` passes without an answer
    (the last wait repeated), the first answer to any copy taken, the
    others dropped. A copy refused for want of responders (none subscribed
    yet) is sent again ``no_responders_wait`` seconds after, if it is not
    None; else that ends the request.

    Raises:
        nats.errors.TimeoutError: no copy answered in ``timeout``.
        nats.errors.NoRespondersError: with ``no_responders_wait`` None.
        nats.errors.Error: NATS unreachable, or the connection closed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sent: set[asyncio.Task[Msg]] = set()
    copies = 0
    try:
        while (left := deadline - loop.time()) > 0:
            copies += 1
            sent.add(asyncio.ensure_future(nc.request(subject, payload, timeout=left)))
            resend = loop.time() + min(waits[min(copies, len(waits)) - 1], left)
            while (wait := resend - loop.time()) > 0:
                if not sent:  # every copy refused (no responders): the next after a while
                    await asyncio.sleep(wait)
                    break
                done, sent = await asyncio.wait(sent, timeout=wait, return_when="FIRST_COMPLETED")
                for copy in done:
                    error = copy.exception()
                    if error is None:
                        if copies > 1:
                            log.info("%s answered, %d copies sent", subject, copies)
                        return copy.result()
                    if isinstance(error, nats.errors.NoRespondersError):
                        if no_responders_wait is None:
                            raise error
                        resend = min(resend, loop.time() + no_responders_wait)
                    elif not isinstance(error, nats.errors.TimeoutError):
                        raise error
        raise nats.errors.TimeoutError
    finally:
        for copy in sent:
            copy.cancel()


async def stream_state(nc: Client, stream: str, timeout: float) -> tuple[int, int]:
    """``stream``'s first and last sequence, as its leader answers
    (``api_read``).

    Raises:
        ProverError: the server refused the request (no such stream, say).
        nats.errors.Error: no answer in ``timeout`` seconds.
    """
    answer = await api_read(nc, f"$JS.API.STREAM.INFO.{stream}", b"", timeout)
    try:
        reply = _info_reply.decode(answer.data)
    except msgspec.DecodeError as exc:
        raise ProverError(f"stream {stream}'s info: {exc}") from None
    if reply.state is None:
        error = reply.error or _ApiError(0, 0, "neither a state nor an error")
        raise ProverError(f"stream {stream}'s info: {error.code} {error.description}")
    return reply.state.first_seq, reply.state.last_seq


class Puller:
    """One pull consumer, read with ``no_wait`` requests; its messages are
    collected by a callback on an inbox of its own (``start``), which costs
    the event loop far less than a ``next_msg`` per message."""

    def __init__(self, nc: Client, stream: str, name: str, subject: str, known: int) -> None:
        self.nc, self.name, self.subject = nc, name, subject
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
        self.get_api = f"$JS.API.STREAM.MSG.GET.{stream}"
        self.held: deque[Held] = deque()  # in stream order
        self.known = known  # every message of this consumer up to here is held or taken
        self.inbox = ""
        self.lookups = 0  # pulls that ended short of the last sequence, checked on the stream
        self.lags = 0  # of those, the stream held a message the consumer had not delivered
        self._done: asyncio.Future[bool] | None = None  # the pull under way: True if it ended
        self._asked = self._left = 0  # messages the pull under way asked for, may still bring

    async def start(self) -> None:
        self.inbox = self.nc.new_inbox()
        await self.nc.subscribe(self.inbox, cb=self._deliver)

    async def pull(self, batch: int, max_bytes: int, last: int, timeout: float) -> None:
        """Pull what the consumer gives now, up to ``batch`` messages and
        about ``max_bytes``; if it gives out short of ``last`` (the stream's
        last sequence, taken before), ``known`` up to ``last`` once the
        stream shows nothing more of the subject up to there, else a pull
        that waits for the message it shows (module docstring).

        Raises:
            TimeoutError: no answer in ``timeout`` seconds (the consumer is gone).
            ProverError: the server refused the pull or the lookup.
            nats.errors.Error: the lookup was not answered (no responders, timeout).
        """
        if not await self._request(batch, max_bytes, 0.0, timeout) or self.known >= last:
            return
        self.lookups += 1
        following = await self._next_stored(timeout)
        if following is None or following > last:
            self.known = last if following is None else following - 1
            return
        self.lags += 1  # stored, not delivered yet: wait for it rather than pass it
        await self._request(batch, max_bytes, timeout / 2, timeout)

    async def _request(self, batch: int, max_bytes: int, wait: float, timeout: float) -> bool:
        """One pull request, answered within ``timeout``: True if it ended
        with the consumer giving out, False once ``batch`` or ``max_bytes``
        is reached. With ``wait`` (seconds), the server reads its store
        and answers as soon as it gave some, or after ``wait``."""
        self._done = asyncio.get_running_loop().create_future()
        self._asked = self._left = batch
        request: dict[str, object] = {"batch": batch, "no_wait": True, "max_bytes": max_bytes}
        if wait:
            request["expires"] = int(wait * 1e9)
        await self.nc.publish(self.api, json.dumps(request).encode(), reply=self.inbox)
        async with asyncio.timeout(timeout):
            return await self._done

    async def _next_stored(self, timeout: float) -> int | None:
        """The stream sequence of the stream's next message of this subject
        after ``known``, as the stream leader's store holds it now; None if
        there is none."""
        request = {"seq": self.known + 1, "next_by_subj": self.subject}
        answer = await api_read(self.nc, self.get_api, json.dumps(request).encode(), timeout)
        try:
            reply = _get_reply.decode(answer.data)
        except msgspec.DecodeError as exc:
            raise ProverError(f"next of {self.subject} after {self.known}: {exc}") from None
        if reply.message is not None:
            return reply.message.seq
        error = reply.error or _ApiError(0, 0, "neither a message nor an error")
        if error.err_code == NO_MESSAGE:
            return None
        raise ProverError(
            f"next of {self.subject} after {self.known}: {error.code} {error.description}"
        )

    async def _deliver(self, msg: Msg) -> None:
        done = self._done
        if done is None or done.done():  # after a pull that timed out: the session ends
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
    """An ephemeral pull consumer of ``subject`` from stream sequence
    ``start``, no acks; the server drops it once unused for ``inactive``
    seconds (a shard that died).

    NATS 2.9.10 makes such a consumer R1 on one of the stream's peers drawn
    at random, a peer that is down included (``createGroupForConsumer``
    checks no peer's liveness, ``setPreferred`` draws one uniformly; while
    one node of three is down, one creation in three): nothing answers the
    creation, and the consumer, assigned, is "offline" (10119) until that
    peer is back. So each attempt waits ``waits[i]`` seconds for the answer
    (a creation is answered in milliseconds otherwise), then deletes the
    consumer it asked for (the meta leader removes an assignment at once,
    wherever it was placed) and asks for another, under a new name. A
    creation merely slow (the meta leader just elected, say) may still
    make its consumer after the deletion: unused, the server drops it after
    ``inactive``.

    Raises:
        ProverError: no attempt was answered in time.
        nats.errors.Error: a creation refused, or NATS unreachable.
    """
    began = asyncio.get_running_loop().time()
    for attempt, wait in enumerate(waits, 1):
        config = ConsumerConfig(
            name=nc.new_inbox().rpartition(".")[2],
            description=description,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            filter_subject=subject,
            inactive_threshold=inactive,
        )
        assert config.name is not None
        try:
            created = await js.add_consumer(stream, config, timeout=wait)
        except nats.errors.TimeoutError:
            deleted = await _delete_quietly(js, stream, config.name, wait)
            log.warning(
                "consumer %s of %s: creation not answered in %.1f s (attempt %d of %d):"
                " placed on a peer that is down? %s; creating another",
                config.name,
                subject,
                wait,
                attempt,
                len(waits),
                deleted,
            )
            continue
        assert created.name is not None
        if attempt > 1:
            log.info(
                "consumer %s of %s created at attempt %d, %.1f s after the first",
                created.name,
                subject,
                attempt,
                asyncio.get_running_loop().time() - began,
            )
        puller = Puller(nc, stream, created.name, subject, start - 1)
        await puller.start()
        return puller
    raise ProverError(
        f"no consumer of {subject} on stream {stream} created: {len(waits)} creations"
        f" not answered in {asyncio.get_running_loop().time() - began:.1f} s"
    )


async def _delete_quietly(js: JetStreamContext, stream: str, name: str, wait: float) -> str:
    """Delete consumer ``name``, waiting ``wait`` seconds at most; what came
    of it, for the log. One not deleted goes unused, and the server drops
    it later (``inactive_threshold``)."""
    try:
        await asyncio.wait_for(js.delete_consumer(stream, name), wait)
    except TimeoutError:
        return f"its deletion not answered in {wait:.1f} s"
    except nats.errors.Error as exc:
        return f"not deleted ({type(exc).__name__} {exc})"
    return "deleted"


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
