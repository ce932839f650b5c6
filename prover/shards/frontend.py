"""The front-end role of the sharded prover (docs/SCALING.md, "Roles"):
``/ingest`` with no state, every accepted batch put on the ledger stream.

One port, like the daemon's (prover/server.py), admitted and bounded by
prover/gate.py: ``/ingest`` (PROTOCOL §11.1, the same messages and bearer
token), ``/healthz`` (200 while connected to NATS and the stream exists,
else 503 and why) and ``/metrics`` (Prometheus text: ``FrontendMetrics``,
prover/metrics.py; like the daemon's, served to anyone). Each message is
parsed and checked as the daemon checks it before storing (every check
that needs no stored state: ``parse_ingest``, configured assets,
``as_of_ms`` skew, attester signatures), split by shard
(prover/shards/split.py) and published (prover/shards/stream.py); the ack
comes once its commit is acknowledged by the stream.

What a front-end cannot know, readers decide: which updates are replays (at
or below their source's mark when the commit is read, prover/shards/intake.py).
So its ack says what was accepted, not what was applied::

    {"type": "ack", "id": "b-17", "source": "core-ledger", "accepted": 1000,
     "last_seq": 1016, "stream_seq": 5123, "duplicate": false}

``accepted``: the message's updates (or reports), replays included;
``last_seq``: its last seq; ``stream_seq``: its commit's stream sequence;
``duplicate``: the stream held this very commit already (the same batch
sent again within the duplicate window; it is stored once).

Invariants:

- Replies go out in the order of a connection's messages, and so do its
  commits: a message's parts may be published while earlier ones are under
  way (up to ``PIPELINE`` messages), its commit only once the commit before
  it is acknowledged. A refused message publishes nothing.
- A message that could not be published (``internal``) fails those after it
  on its connection, which is closed (1011) after the error reply: the
  producer sends again from its last ack, and nothing after the failed
  message was committed.
- Once ``stop`` begins, a new message is answered ``shutting-down`` and its
  connection closed (1001); messages under way are answered first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from prover.auth import BadAuthorization, bearer_token, token_ok
from prover.config import Config
from prover.errors import IngestError
from prover.gate import Gate, GatedConnection
from prover.ingest import BatchChecks
from prover.limits import (
    ACCEPT_BACKLOG,
    ANONYMOUS_MAX_SIZE,
    RateLimitedLog,
    descriptor_limit,
    plan_limits,
)
from prover.messages import (
    Batch,
    RequestId,
    ReserveBatch,
    ReserveReportBatch,
    error_reply,
    parse_ingest,
)
from prover.metrics import FrontendMetrics, render_metrics
from prover.routing import Router
from prover.server import http_error, http_response, not_get
from prover.shards.split import PartTooLarge, Split, split_balances, split_reserves
from prover.shards.stream import (
    MessageTooLarge,
    Publisher,
    PublishFailed,
    Stored,
    ensure_stream,
)
from prover.shards.wire import DEFAULT_PREFIX
from prover.sources.nats import redact

__all__ = ["PIPELINE", "Frontend", "StreamSpec", "accepted_ack", "run_frontend"]

log = logging.getLogger("solvency.frontend")
PIPELINE: Final = 4  # messages of one connection under way at once
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_INTERNAL: Final = 1011
HEALTH_TIMEOUT: Final = 2.0  # seconds /healthz waits for the stream's info
HEALTH_CACHE: Final = 1.0  # seconds an answer about the stream is reused by /healthz


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The ledger stream a front-end publishes to, and how it is made if missing."""

    replicas: int  # 3 on a 3-node cluster (docs/SCALING.md); 1 on a lone server
    name: str = "ledger"
    prefix: str = DEFAULT_PREFIX
    duplicate_window: float = 120.0  # seconds; publishing deadline: a third of the stream's


def accepted_ack(
    request_id: RequestId, source: str, accepted: int, last_seq: int, at: Stored
) -> str:
    """A front-end's reply to a message whose commit the stream acknowledged
    (module docstring)."""
    return json.dumps(
        {
            "type": "ack",
            "id": request_id,
            "source": source,
            "accepted": accepted,
            "last_seq": last_seq,
            "stream_seq": at.seq,
            "duplicate": at.duplicate,
        }
    )


@dataclass(frozen=True, slots=True)
class _Reply:
    text: str
    close: tuple[int, str] | None = None  # then close the connection after it


class Frontend:
    """One front-end: ``start``, then ``stop`` (module docstring)."""

    def __init__(
        self,
        config: Config,
        router: Router,
        nats_url: str,
        spec: StreamSpec,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.router, self.nats_url, self.spec = config, router, nats_url, spec
        self.checks = BatchChecks.from_config(config)
        self.metrics = FrontendMetrics()
        self._clock = clock
        self._nc: Client | None = None
        self._publisher: Publisher | None = None
        self._server: Server | None = None
        self._gate: Gate | None = None
        self._stopping = False
        self._unanswered = 0  # messages read and not answered, every connection
        self._answered = asyncio.Event()  # set while none is
        self._answered.set()
        self._failed = RateLimitedLog(log)  # one line per kind of failure and interval
        self._health: tuple[float, str | None] = (-HEALTH_CACHE, None)  # when asked, answer

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Connect to NATS (retried until it answers), make or check the
        stream, then listen on ``host:port`` (0: a free port, see ``port``).

        Raises:
            ProverError: the stream exists and is not the ledger's.
        """
        self._nc = await self._connect()
        try:
            found = await ensure_stream(
                self._nc.jetstream(),
                self.spec.name,
                self.spec.prefix,
                self.spec.replicas,
                self.spec.duplicate_window,
            )
            deadline = found.duplicate_window / 3
            self._publisher = Publisher(self._nc, self.spec.name, self.spec.prefix, deadline)
            self._server = await self._serve(host, port)
        except BaseException:
            await self._nc.close()
            raise
        log.info(
            "front-end on %s:%d: stream %s (%s.part.*, %s.commit) at %s, %d shards,"
            " batches committed within %.0f s",
            host,
            self.port,
            self.spec.name,
            self.spec.prefix,
            self.spec.prefix,
            redact(self.nats_url),
            self.router.parts,
            deadline,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Answer new messages ``shutting-down``; once every message under
        way is answered, or after ``grace`` seconds (default: the publishing
        deadline and one), close every connection (1001), cancelling what
        is still under way, and the NATS connection."""
        self._stopping = True
        assert self._publisher is not None and self._server is not None and self._nc is not None
        wait = self._publisher.deadline + 1 if grace is None else grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), wait)
        self._server.close()
        await self._server.wait_closed()
        await self._nc.close()

    async def health(self) -> str | None:
        """None when connected to NATS and the stream exists, else why not.
        The stream is asked about at most once per ``HEALTH_CACHE`` seconds."""
        if self._stopping:
            return "stopping"
        nc = self._nc
        if nc is None or not nc.is_connected:
            return f"not connected to NATS at {redact(self.nats_url)}"
        now = time.monotonic()
        if now - self._health[0] >= HEALTH_CACHE:
            self._health = (now, await self._stream_health(nc))
        return self._health[1]

    async def _stream_health(self, nc: Client) -> str | None:
        try:
            await asyncio.wait_for(nc.jetstream().stream_info(self.spec.name), HEALTH_TIMEOUT)
        except NotFoundError:
            return f"stream {self.spec.name} does not exist"
        except (nats.errors.Error, OSError) as exc:  # TimeoutError is an OSError
            return f"NATS did not answer about stream {self.spec.name}: {type(exc).__name__}"
        return None

    async def _connect(self) -> Client:
        async def error(exc: Exception) -> None:
            self._failed(f"nats: {str(exc) or type(exc).__name__}")

        async def disconnected() -> None:
            if not self._stopping:
                log.warning("nats: disconnected from %s", redact(self.nats_url))

        async def reconnected() -> None:
            log.info("nats: reconnected to %s", redact(self.nats_url))

        return await nats.connect(
            [u.strip() for u in self.nats_url.split(",")],
            name="solvency-front-end",
            connect_timeout=2,
            reconnect_time_wait=1,
            max_reconnect_attempts=-1,  # also retries the first connection
            error_cb=error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )

    async def _serve(self, host: str, port: int) -> Server:
        limits, warning = plan_limits(self.config, descriptor_limit())
        if warning:
            log.warning("%s", warning)
        gate = self._gate = Gate(limits, {}, self.metrics)
        return await serve(
            self._handler,
            host,
            port,
            process_request=self._process_request,
            create_connection=gate.connection_class,
            max_size=ANONYMOUS_MAX_SIZE,  # raised for authenticated /ingest
            max_queue=PIPELINE,
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            open_timeout=10,
            backlog=ACCEPT_BACKLOG,
        )

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        assert isinstance(conn, GatedConnection)
        if (refused := not_get(request)) is not None:
            return refused
        try:
            presented = bearer_token(request.headers)
        except BadAuthorization as exc:
            return http_error(400, "bad-request", str(exc))
        path = urlsplit(request.path).path
        if path == "/healthz":
            problem = await self.health()
            return http_response(503 if problem else 200, f"{problem or 'ok'}\n", "text/plain")
        if path == "/metrics":
            return http_response(200, self.render_metrics(), CONTENT_TYPE_LATEST)
        if path == "/ingest":
            token = self.config.ingest_token
            if not token or not token_ok(presented, token):
                return http_error(
                    401, "unauthorized", "/ingest needs Authorization: Bearer <token>"
                )
            conn.open_for_messages(self.config.max_message_bytes)
            return None
        return http_error(404, "not-found", f"no route {path}")

    def render_metrics(self) -> str:
        """``/metrics``: the metrics, with what the connections hold and
        whether NATS is connected as of now."""
        if self._gate is not None:
            self.metrics.connection_bytes = self._gate.held_bytes()
        self.metrics.nats_connected = self._nc is not None and self._nc.is_connected
        return render_metrics(self.metrics)

    async def _handler(self, conn: ServerConnection) -> None:
        """``/ingest``: messages read ahead (up to ``PIPELINE``), replies in order."""
        assert isinstance(conn, GatedConnection)
        if conn.early_data:
            await conn.close(CLOSE_POLICY, "message sent before the handshake completed")
            return
        session = _Session(self, conn)
        try:
            await session.run()
        finally:
            self._unanswer(-session.unanswered)  # never to be answered

    def _unanswer(self, count: int) -> None:
        """``count`` more messages read and not answered (less, if negative)."""
        self._unanswered += count
        if self._unanswered:
            self._answered.clear()
        else:
            self._answered.set()

    async def _message(
        self, data: str | bytes, previous: asyncio.Future[bool], committed: asyncio.Future[bool]
    ) -> _Reply:
        """One message's reply. ``committed`` gets whether its commit was
        stored; for a message refused before publishing, ``previous``'s."""
        started = time.perf_counter()
        request_id: RequestId = None
        publishing = stored = False
        try:
            if self._stopping:
                error = IngestError("shutting-down", "the front-end is stopping: send it again")
                self.metrics.refuse(error.code)
                return _Reply(error_reply(None, error), (CLOSE_GOING_AWAY, "front-end stopping"))
            if isinstance(data, bytes):  # §11.1: a message is one text frame
                raise IngestError("bad-message", "binary frame: send JSON in a text frame")
            batch = parse_ingest(data)
            request_id = batch.id
            self.checks.check(batch, self._clock())
            split = self._split(batch, data)
            publishing = True
            at = await self._publish(split, previous)
            stored = True
            self.metrics.batches += 1
            self.metrics.updates += len(batch.updates)
            self.metrics.ingest_batch.observe(time.perf_counter() - started)
            last = batch.updates[-1].seq
            return _Reply(accepted_ack(batch.id, batch.source, len(batch.updates), last, at))
        except IngestError as exc:
            self.metrics.refuse(exc.code)
            reply = error_reply(request_id if exc.id is None else exc.id, exc)
            if exc.code == "internal":
                return _Reply(reply, (CLOSE_INTERNAL, "not stored: send again from the last ack"))
            return _Reply(reply)
        except Exception:
            log.exception("ingest failed")
            self.metrics.refuse("internal")
            reply = error_reply(request_id, IngestError("internal", "internal error"))
            return _Reply(reply, (CLOSE_INTERNAL, "not stored: send again from the last ack"))
        finally:
            if publishing:
                _settle(committed, stored)
            else:
                previous.add_done_callback(lambda p: _settle(committed, _result(p)))

    def _split(self, batch: Batch, data: str) -> Split:
        assert self._publisher is not None
        limit = self._publisher.max_part_bytes
        try:
            if isinstance(batch, ReserveBatch | ReserveReportBatch):
                split = split_reserves(batch, data)
                if len(split.message) > limit - 128:  # the commit around it: source, seqs
                    raise MessageTooLarge(f"{len(split.message)} bytes, above {limit - 128}")
                return split
            return split_balances(batch, self.router, limit)
        except (PartTooLarge, MessageTooLarge) as exc:
            raise IngestError("too-large", f"too large for the stream: {exc}") from None

    async def _publish(self, split: Split, previous: asyncio.Future[bool]) -> Stored:
        assert self._publisher is not None

        async def after() -> None:
            if not await asyncio.shield(previous):
                raise IngestError("internal", "an earlier message was not stored; send it again")

        messages = len(split.parts) + 1  # and the commit
        self.metrics.inflight_parts += messages
        started = time.perf_counter()
        try:
            stored = await self._publisher.publish(split, after)
            self.metrics.publish.observe(time.perf_counter() - started)
            return stored
        except MessageTooLarge as exc:
            raise IngestError("too-large", f"too large for the stream: {exc}") from None
        except (PublishFailed, nats.errors.Error) as exc:
            self._failed(f"batches not published: {type(exc).__name__}")
            log.debug("not published: %s", exc)
            raise IngestError("internal", "the batch could not be stored; retry") from None
        finally:
            self.metrics.inflight_parts -= messages


class _Session:
    """One ``/ingest`` connection: a reader starting each message as it comes
    (at most ``PIPELINE`` under way), and replies sent in order."""

    def __init__(self, frontend: Frontend, conn: ServerConnection) -> None:
        self.frontend, self.conn = frontend, conn
        self.unanswered = 0  # messages read and not answered
        self.queue: asyncio.Queue[asyncio.Task[_Reply] | None] = asyncio.Queue(PIPELINE)
        self.tasks: set[asyncio.Task[_Reply]] = set()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        try:
            while (task := await self.queue.get()) is not None:
                await asyncio.wait({task})
                if task.cancelled():  # the connection closed: no reply goes out
                    return
                reply = task.result()
                await self.conn.send(reply.text)
                self.unanswered -= 1
                self.frontend._unanswer(-1)
                if reply.close is not None:
                    await self.conn.close(*reply.close)
                    return
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            for task in self.tasks:
                task.cancel()

    async def _read(self) -> None:
        """Start each message, chained to the one before for its commit. Once
        the connection is closed, no reply can go out: cancel what is under
        way, and put the end (None)."""
        loop = asyncio.get_running_loop()
        previous: asyncio.Future[bool] = loop.create_future()
        previous.set_result(True)
        frontend = self.frontend
        try:
            async for message in self.conn:
                committed: asyncio.Future[bool] = loop.create_future()
                task = asyncio.create_task(frontend._message(message, previous, committed))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                self.unanswered += 1
                frontend._unanswer(1)
                previous = committed
                await self.queue.put(task)
        except ConnectionClosed:
            pass
        finally:
            for task in self.tasks:
                task.cancel()
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)  # else a cancelled task ends ``run``


def _result(future: asyncio.Future[bool]) -> bool:
    return not future.cancelled() and future.exception() is None and future.result()


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


async def run_frontend(
    config: Config,
    router: Router,
    nats_url: str,
    spec: StreamSpec,
    host: str,
    port: int,
    stop: asyncio.Event,
) -> None:
    """Serve as a front-end until ``stop`` is set.

    Raises:
        ProverError: the stream exists and is not the ledger's.
    """
    frontend = Frontend(config, router, nats_url, spec)
    await frontend.start(host, port)
    try:
        await stop.wait()
    finally:
        await frontend.stop()
