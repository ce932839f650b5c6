"""The JetStream API requests a shard's reading makes (prover/shards/pull.py):
reads of the stream and of a consumer, and the making and deleting of its
pull consumers, each bounded by waits far shorter than a request's timeout
where NATS is known to leave a request unanswered.

A read goes through ``api_read``: a request the server never answers (one
sent during a stream leader change, even to the nodes that stay up) is sent
again after a fraction of a second rather than waited for the whole
timeout; every copy is sent after the one before, so an answer to any of
them is as recent as the first's would have been.

A consumer is made by ``create_consumer``: NATS 2.9.10 makes an ephemeral
consumer R1 on one of the stream's peers drawn at random, a peer that is
down included (``createGroupForConsumer`` checks no peer's liveness,
``setPreferred`` draws one uniformly; while one node of three is down, one
creation in three): nothing answers the creation, and the consumer,
assigned, is "offline" (10119) until that peer is back. So each attempt
waits a short while for the answer (a creation is answered in milliseconds
otherwise), then deletes the consumer it asked for (the meta leader removes
an assignment at once, wherever it was placed) and asks for another, under
a new name. A creation merely slow (the meta leader just elected, say) may
still make its consumer after the deletion: unused, the server drops it
after its inactive threshold.

``consumer_live`` tells whether a consumer answers for itself: its info is
answered by its leader when it has one; for a consumer whose only peer is
down the meta leader answers "consumer is offline" (10119) after 0.5 s, and
nothing answers while the meta leader is being elected.
"""

from __future__ import annotations

import asyncio
import json
import logging

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from prover.errors import ProverError

__all__ = [
    "CREATE_WAITS",
    "READ_WAITS",
    "api_read",
    "consumer_live",
    "create_consumer",
    "delete_quietly",
    "next_stored",
    "stream_state",
]

log = logging.getLogger("solvency.prover")
NO_MESSAGE = 10037  # JetStream's error code for "no message found"
# Seconds each attempt to create a consumer waits for the answer
# (``create_consumer``): short first, as a consumer placed on a peer that is
# down is never answered (one creation in three while one node of three is
# down; 5 in a row seen), longer after, should the cluster be slow rather than
# the consumer lost. An answer comes in 2-10 ms otherwise (the fault tests'
# deployment, on 2 cores).
CREATE_WAITS = (0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 4.0)
# Seconds ``api_read`` waits for an answer before it sends the request again
# (the last one repeated up to the deadline). A JetStream API request sent in
# the ~10 ms of a stream leader change is never answered, by any node; one
# that is answered is, in 2-10 ms (the fault tests' deployment, on 2 cores).
READ_WAITS = (0.25, 0.25, 0.5, 0.5, 1.0)
NO_RESPONDERS_WAIT = 0.1  # s before a request refused for want of responders is sent again
DELETE_WAIT = 0.5  # s a consumer's deletion is waited for before it is left to expire


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


class _ConsumerReply(msgspec.Struct):
    """A ``CONSUMER.INFO`` answer, only whether it is one or an error."""

    name: str = ""
    error: _ApiError | None = None


_get_reply = msgspec.json.Decoder(_GetReply)
_info_reply = msgspec.json.Decoder(_InfoReply)
_consumer_reply = msgspec.json.Decoder(_ConsumerReply)


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


async def next_stored(
    nc: Client, stream: str, subject: str, after: int, timeout: float
) -> int | None:
    """The stream sequence of ``stream``'s next message of ``subject`` after
    sequence ``after``, as the stream leader's store holds it now
    (``STREAM.MSG.GET``, next by subject); None if there is none.

    Raises:
        ProverError: the server refused the lookup (no such stream, say).
        nats.errors.Error: no answer in ``timeout`` seconds.
    """
    request = json.dumps({"seq": after + 1, "next_by_subj": subject}).encode()
    answer = await api_read(nc, f"$JS.API.STREAM.MSG.GET.{stream}", request, timeout)
    try:
        reply = _get_reply.decode(answer.data)
    except msgspec.DecodeError as exc:
        raise ProverError(f"next of {subject} after {after}: {exc}") from None
    if reply.message is not None:
        return reply.message.seq
    error = reply.error or _ApiError(0, 0, "neither a message nor an error")
    if error.err_code == NO_MESSAGE:
        return None
    raise ProverError(f"next of {subject} after {after}: {error.code} {error.description}")


async def consumer_live(nc: Client, stream: str, name: str, timeout: float) -> str | None:
    """None if consumer ``name`` of ``stream`` answers its info (its leader
    is up) within ``timeout`` seconds (``api_read``); else why not, for the
    log: the server's error ("consumer is offline": its peer is down; not
    found), or no answer at all.

    Raises:
        nats.errors.Error: NATS unreachable, or the connection closed.
    """
    subject = f"$JS.API.CONSUMER.INFO.{stream}.{name}"
    try:
        answer = await api_read(nc, subject, b"", timeout)
    except nats.errors.TimeoutError:
        return f"its info not answered in {timeout:.1f} s"
    try:
        reply = _consumer_reply.decode(answer.data)
    except msgspec.DecodeError as exc:
        return f"its info unreadable: {exc}"
    if reply.error is not None:
        return f"its info refused: {reply.error.err_code} {reply.error.description}"
    return None


async def create_consumer(
    nc: Client,
    js: JetStreamContext,
    stream: str,
    subject: str,
    start: int,
    description: str,
    inactive: float,
    waits: tuple[float, ...] = CREATE_WAITS,
) -> str:
    """The name of a new ephemeral pull consumer of ``subject`` from stream
    sequence ``start``, no acks, made on a peer that answers; the server
    drops it once unused for ``inactive`` seconds (a shard that died). Each
    attempt waits ``waits[i]`` seconds, then its consumer is deleted and
    another asked for (module docstring).

    Raises:
        ProverError: no attempt was answered in time.
        nats.errors.Error: a creation refused, or NATS unreachable.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
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
            deleted = await delete_quietly(js, stream, config.name, wait)
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
                loop.time() - began,
            )
        return created.name
    raise ProverError(
        f"no consumer of {subject} on stream {stream} created: {len(waits)} creations"
        f" not answered in {loop.time() - began:.1f} s"
    )


async def delete_quietly(
    js: JetStreamContext, stream: str, name: str, wait: float = DELETE_WAIT
) -> str:
    """Delete consumer ``name``, waiting ``wait`` seconds at most; what came
    of it, for the log. One not deleted goes unused, and the server drops
    it later (its inactive threshold)."""
    try:
        await asyncio.wait_for(js.delete_consumer(stream, name), wait)
    except TimeoutError:
        return f"its deletion not answered in {wait:.1f} s"
    except nats.errors.Error as exc:
        return f"not deleted ({type(exc).__name__} {exc})"
    return "deleted"
