"""The shard role of the sharded prover (docs/SCALING.md, "Roles"): one part
of every tree, fed from the ledger stream, closed at the coordinator's cuts.

``ShardCore`` is the shard without I/O: an ``Intake`` of the shard's part
of the stream and a ``Ledger`` of its part of every tree, answering the
coordinator's control requests (prover/shards/control.py). ``Shard`` runs
one on NATS: it reads the stream, serves the control subject, and does the
ledger's work on a thread of its own, so that hashing an epoch does not
stop the reading (only slows it, by the GIL).

Reading the stream. NATS 2.9 gives a consumer one filter subject, and a
shard wants two: its parts (``<prefix>.part.<i>``) and every commit
(``<prefix>.commit``), merged in stream order. ``Shard`` keeps one pull
consumer of each, without acks, both from the same stream sequence, and
reads them in rounds: it takes the stream's last sequence ``L``, then pulls
from whichever consumer it knows less far (``no_wait``: the server answers
at once, "no messages" when it has none left). A consumer is known as far
as its last message, or as far as ``L`` once it has none left or went past
it: nothing of it below that can come later. Everything read up to the
lesser of the two is added in stream order, and the shard has read the
stream that far (``ShardCore.passed``), other shards' parts included,
which it never receives. The alternative, one consumer of ``<prefix>.>``
skipping the others' parts, is simpler but has every shard receive the
whole stream: ``2**k`` times the bytes out of the NATS servers.

Invariants:

- Messages reach the ``Intake`` in stream order, each once; on a new
  session the consumers start after the last sequence read.
- ``ShardCore.answer`` calls never overlap; ``add`` and ``passed`` may run
  on another thread meanwhile (a lock guards the intake, held only for
  its own cheap steps, never while hashing).
- A failure while the ledger changes, or a message of the stream the
  shard cannot read, leaves the core ``broken``: it then refuses every
  request ``internal``, and the shard must be restarted. It never answers
  from a half-applied epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from prover.backoff import Backoff
from prover.errors import NotRetained, ProverError
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.routing import Router
from prover.shards import wire
from prover.shards.control import (
    Close,
    ClosedPart,
    NoProof,
    PartProof,
    PartRoot,
    Prove,
    Refused,
    Reply,
    Request,
    Stage,
    Staged,
    WireState,
    control_subject,
    decode_request,
    encode,
)
from prover.shards.intake import EXPIRE_MS, Intake, NotYet, ReaderState
from prover.sizing import MIN_HEIGHT
from prover.sources.nats import redact
from verifier.errors import FormatError
from verifier.hashing import MAX_HEIGHT, check_asset_id, check_user_id

__all__ = ["Shard", "ShardCore", "ShardStats"]

log = logging.getLogger("solvency.prover")
RESTART = Backoff(first=0.5, cap=30.0)  # before a failed session is started again


class _BadRequest(ProverError):
    """The request is malformed or out of turn; nothing changed."""


class ShardCore:
    """One shard without I/O: its ``Intake`` and its ``Ledger`` (one part
    of every tree), driven by ``add``/``passed`` in stream order and by the
    coordinator's requests (``handle``, ``answer``).

    ``epoch`` is the last epoch closed (None before the first); a staged
    epoch is closed next, or staged again at the same cut."""

    def __init__(
        self,
        ledger: Ledger,
        state: ReaderState | None = None,
        epoch: int | None = None,
        expire_ms: int = EXPIRE_MS,
    ) -> None:
        """A shard from its ledger (``part`` set) and where its reader stood
        after the epoch ``epoch`` that ledger holds (a restart), or from the
        start of the stream."""
        if ledger.part is None:
            raise ValueError("a shard's ledger holds one part")
        self.ledger = ledger
        self.part: int = ledger.part
        self.intake = Intake(self.part, state or ReaderState(0, {}, 1), expire_ms)
        self.epoch = epoch
        self.broken: str | None = None
        self._staged: Staged | None = None
        self._closed: ClosedPart | None = None
        self._intake_lock = threading.Lock()
        self._work_lock = threading.Lock()

    @classmethod
    def empty(
        cls,
        period: SaltPeriod,
        router: Router,
        part: int,
        retain: int = 0,
        expire_ms: int = EXPIRE_MS,
    ) -> ShardCore:
        """Part ``part`` of ``router``'s parts, no asset, no holder, at the
        stream's start; the proofs of ``retain`` earlier epochs kept."""
        if not 0 <= part < router.parts:
            raise ValueError(f"no part {part} of {router.parts}")
        return cls(Ledger(period, retain=retain, router=router, part=part), expire_ms=expire_ms)

    # The stream

    @property
    def read(self) -> int:
        """The stream sequence read so far: every message of this shard up to it is added."""
        with self._intake_lock:
            return self.intake.read

    def add(self, seq: int, time_ms: int, message: wire.Part | wire.Commit) -> None:
        """The message at stream sequence ``seq``, stored at ``time_ms``: a
        part of this shard's or a commit, in stream order.

        Raises:
            ProverError: out of order, or a commit naming a part not read
                (the core is then ``broken``).
        """
        with self._intake_lock:
            try:
                self.intake.add(seq, time_ms, message)
            except ProverError as exc:
                self.fail(f"stream message {seq}: {exc}")
                raise

    def passed(self, seq: int) -> None:
        """No message of this shard's up to ``seq`` remains unread: other
        shards' parts, never received, need not be waited for."""
        with self._intake_lock:
            self.intake.passed(seq)

    def fail(self, reason: str) -> None:
        """Refuse every request from now on, ``internal``: ``reason``."""
        if self.broken is None:
            self.broken = reason

    # The coordinator's requests

    def handle(self, data: bytes) -> bytes:
        """The encoded reply to the encoded request ``data`` (``bad-request``
        if it is none)."""
        try:
            request = decode_request(data)
        except ProverError as exc:
            return encode(Refused("bad-request", str(exc)))
        return encode(self.answer(request))

    def answer(self, request: Request) -> Reply:
        """The reply to ``request``; one at a time, whatever the thread."""
        with self._work_lock:
            if self.broken is not None:
                return Refused("internal", f"shard {self.part} failed: {self.broken}")
            try:
                if isinstance(request, Stage):
                    return self._stage(request)
                if isinstance(request, Close):
                    return self._close(request)
                return self._prove(request)
            except NotYet as exc:
                return Refused("not-yet", str(exc))
            except NotRetained as exc:
                return Refused("not-retained", str(exc))
            except _BadRequest as exc:
                return Refused("bad-request", str(exc))
            except Exception as exc:  # the ledger failed while changing
                log.exception("shard %d: %s failed", self.part, type(request).__name__)
                self.fail(f"{type(request).__name__}: {exc}")
                return Refused("internal", f"shard {self.part} failed: {self.broken}")

    def _stage(self, request: Stage) -> Staged:
        staged = self._staged
        if staged is not None:
            if (staged.epoch, staged.cut) == (request.epoch, request.cut):
                return staged  # asked again: the answer was lost
            raise _BadRequest(f"epoch {staged.epoch} is staged at cut {staged.cut}, not closed")
        if self.epoch is not None and request.epoch != self.epoch + 1:
            raise _BadRequest(f"epoch {request.epoch} cannot follow epoch {self.epoch}")
        assets = self._heights(request.assets)
        with self._intake_lock:
            last = self.intake.state().cut
            if request.cut < last:
                raise _BadRequest(f"cut {request.cut} is before the last one, {last}")
            if request.cut > self.intake.read:
                raise NotYet(f"shard {self.part} read as far as {self.intake.read}")
        for asset, height in sorted(assets.items()):
            self.ledger.add_asset(asset, height)  # those held already are left as they are
        with self._intake_lock:
            cut = self.intake.through(request.cut)
        self.ledger.stage_rows(cut.rows)
        self._staged = Staged(request.epoch, request.cut, cut.batches, self.ledger.growth())
        return self._staged

    def _close(self, request: Close) -> ClosedPart:
        staged = self._staged
        if staged is None:
            if self._closed is not None and self._closed.epoch == request.epoch:
                return self._closed  # asked again: the answer was lost
            raise _BadRequest(f"epoch {request.epoch} is not staged")
        if request.epoch != staged.epoch:
            raise _BadRequest(f"epoch {staged.epoch} is staged, not {request.epoch}")
        heights = self._heights(request.heights)
        ledger, bits = self.ledger, self.ledger.router.bits
        for asset, height in heights.items():
            if asset not in ledger.books:
                raise _BadRequest(f"no tree of {asset} to grow")
            if height < ledger.full_height(asset):
                raise _BadRequest(f"{asset}: height {height} below {ledger.full_height(asset)}")
        for asset, holders in ledger.growth().items():
            height = heights.get(asset, ledger.full_height(asset))
            if height == ledger.full_height(asset) or holders > 1 << (height - bits):
                raise _BadRequest(f"{asset}: {holders} holders need a height past {height}")
        roots = ledger.close_epoch(heights)
        with self._intake_lock:
            state = self.intake.state()
        closed = ClosedPart(
            staged.epoch, tuple(PartRoot.of(r, bits) for r in roots), WireState.of(state)
        )
        self.epoch, self._staged, self._closed = staged.epoch, None, closed
        return closed

    def _prove(self, request: Prove) -> PartProof | NoProof:
        try:
            check_user_id(request.user)
            part = self.ledger.router.shard(request.user)
        except FormatError as exc:
            raise _BadRequest(str(exc)) from None
        if part != self.part:
            raise _BadRequest(f"user {request.user!r} is in part {part}, not {self.part}")
        proof = self.ledger.proof(request.user, request.age)
        return NoProof() if proof is None else PartProof.of(proof)

    def _heights(self, heights: dict[str, int]) -> dict[str, int]:
        """``heights`` of whole trees, checked: real asset ids, each tree at
        least ``MIN_HEIGHT`` high in every part."""
        lowest = MIN_HEIGHT + self.ledger.router.bits
        for asset, height in heights.items():
            try:
                check_asset_id(asset)
            except FormatError as exc:
                raise _BadRequest(str(exc)) from None
            if not lowest <= height <= MAX_HEIGHT:
                raise _BadRequest(f"{asset}: height {height} outside {lowest}..{MAX_HEIGHT}")
        return heights


# I/O


@dataclass
class ShardStats:
    """What a ``Shard`` did since start."""

    messages: int = 0  # added to the intake: its parts and every commit
    rounds: int = 0  # reading rounds that found something new
    pulls: int = 0  # pull requests
    requests: int = 0  # control requests answered
    sessions: int = 0  # connections made, 1 plus one per restarted session


Held = tuple[int, int, bytes]  # stream sequence, stored time (ms), payload


class _Puller:
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


class Shard:
    """Shard ``part`` of the prover on NATS: reads ``stream`` (``<prefix>.part.<part>``
    and ``<prefix>.commit``) into its ``ShardCore`` and answers the coordinator
    on ``<prefix>.shard.<part>.control``; see the module docstring."""

    def __init__(
        self,
        url: str,
        stream: str,
        period: SaltPeriod,
        router: Router,
        part: int,
        prefix: str = wire.DEFAULT_PREFIX,
        *,
        retain: int = 0,
        core: ShardCore | None = None,
        batch: int = 1024,
        max_bytes: int = 8 << 20,
        idle: float = 0.05,
        stage_wait: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        """``core``: the shard as recovered (its ledger of ``period``, split
        by ``router``); by default, empty at the stream's start. ``idle``:
        seconds between looks at a stream with nothing new; ``stage_wait``:
        how long a ``Stage`` past what was read waits for the reading before
        it is refused ``not-yet``; ``timeout``: of every NATS request."""
        self.core = core or ShardCore.empty(period, router, part, retain)
        if self.core.part != part or self.core.ledger.router != router:
            raise ValueError(f"the core is not part {part} of this router's parts")
        self.url, self.stream, self.prefix = url, stream, prefix
        self.batch, self.max_bytes = batch, max_bytes
        self.idle, self.stage_wait, self.timeout = idle, stage_wait, timeout
        self.stats = ShardStats()
        self.serving = asyncio.Event()  # set while the control subject is served
        self._wake = asyncio.Event()  # a Stage waits for the reading
        self._progress = asyncio.Condition()  # notified whenever more was read
        self._tasks: set[asyncio.Task[None]] = set()
        self._work = ThreadPoolExecutor(1, thread_name_prefix=f"shard-{part}")

    @property
    def part(self) -> int:
        return self.core.part

    async def run(self, stop: asyncio.Event) -> None:
        """Read and serve until ``stop`` is set; a failed session is started
        again after a backoff, reading on from where the last one got to."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._session(stop)
                    return
                except (nats.errors.Error, OSError, ProverError) as exc:
                    failures += 1
                    delay = RESTART.delay(failures)
                    log.error(
                        "shard %d: %s; starting again in %.1f s",
                        self.part,
                        exc or type(exc).__name__,
                        delay,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            for task in list(self._tasks):
                task.cancel()
            self._work.shutdown(wait=False, cancel_futures=True)

    async def _session(self, stop: asyncio.Event) -> None:
        nc = await nats.connect(
            [u.strip() for u in self.url.split(",")],
            name=f"solvency-shard-{self.part}",
            connect_timeout=2,
            max_reconnect_attempts=3,
        )
        try:
            self.stats.sessions += 1
            js = nc.jetstream(timeout=self.timeout)
            start = self.core.read + 1
            info = await js.stream_info(self.stream)
            if start < info.state.first_seq and start <= info.state.last_seq:
                reason = f"the stream starts at {info.state.first_seq}, after {start}"
                self.core.fail(reason)  # what the shard has not read is gone
                log.error("shard %d: %s", self.part, reason)
            subjects = [wire.part_subject(self.prefix, self.part), wire.commit_subject(self.prefix)]
            pullers = [await self._consumer(nc, js, subject, start) for subject in subjects]
            serving = await nc.subscribe(
                control_subject(self.prefix, self.part), cb=self._on_request
            )
            self.serving.set()
            log.info(
                "shard %d: reading %s from %d at %s",
                self.part,
                self.stream,
                start,
                redact(self.url),
            )
            try:
                await self._read(js, pullers[0], pullers[1], stop)
            finally:
                self.serving.clear()
                await serving.unsubscribe()
                for puller in pullers:
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await js.delete_consumer(self.stream, puller.name)
        finally:
            await nc.close()

    async def _consumer(
        self, nc: Client, js: JetStreamContext, subject: str, start: int
    ) -> _Puller:
        """An ephemeral pull consumer of ``subject`` from stream sequence ``start``, no acks."""
        config = ConsumerConfig(
            name=nc.new_inbox().rpartition(".")[2],
            description=f"solvency shard {self.part}",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            filter_subject=subject,
            inactive_threshold=max(60.0, 10 * self.timeout),
        )
        created = await js.add_consumer(self.stream, config)
        assert created.name is not None
        puller = _Puller(nc, self.stream, created.name, subject, start - 1)
        await puller.start()
        return puller

    async def _read(
        self, js: JetStreamContext, parts: _Puller, commits: _Puller, stop: asyncio.Event
    ) -> None:
        """Rounds of reading (module docstring) until ``stop``."""
        while not stop.is_set():
            last = (await js.stream_info(self.stream)).state.last_seq
            upto = min(parts.known, commits.known)
            if last <= upto or self.core.broken is not None:  # look again after ``idle``,
                await self._rest(stop)  # or as soon as a Stage waits for more
                continue
            self.stats.rounds += 1
            while upto < last and self.core.broken is None:
                behind = parts if parts.known <= commits.known else commits
                await behind.pull(self.batch, self.max_bytes, last, self.timeout)
                self.stats.pulls += 1
                upto = min(parts.known, commits.known)
                self._take(parts, commits, upto)
                async with self._progress:
                    self._progress.notify_all()
                await asyncio.sleep(0)  # let requests in between pulls

    def _take(self, parts: _Puller, commits: _Puller, upto: int) -> None:
        """Add the messages held up to ``upto``, in stream order; read that far."""
        core = self.core
        for seq, time_ms, data in _merged(parts.held, commits.held, upto):
            try:
                core.add(seq, time_ms, wire.decode(data))
            except ProverError as exc:
                core.fail(f"stream message {seq}: {exc}")
                log.error("shard %d: %s", self.part, core.broken)
                return
            self.stats.messages += 1
        core.passed(upto)

    async def _rest(self, stop: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
        await asyncio.wait(waits, timeout=self.idle, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        self._wake.clear()

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._serve(msg))  # requests do not wait for each other
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        try:
            request = decode_request(msg.data)
        except ProverError as exc:
            reply: Reply = Refused("bad-request", str(exc))
        else:
            reply = await self._answer(request)
        self.stats.requests += 1
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(encode(reply))

    async def _answer(self, request: Request) -> Reply:
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self._work, self.core.answer, request)
        waits = isinstance(reply, Refused) and reply.code == "not-yet"
        if waits and isinstance(request, Stage) and await self._caught_up(request.cut):
            reply = await loop.run_in_executor(self._work, self.core.answer, request)
        return reply

    async def _caught_up(self, cut: int) -> bool:
        """Wait at most ``stage_wait`` for the reading to reach ``cut``."""
        self._wake.set()
        core = self.core
        with contextlib.suppress(TimeoutError):
            async with self._progress:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: core.read >= cut or core.broken is not None),
                    self.stage_wait,
                )
        return core.read >= cut


def _merged(first: deque[Held], second: deque[Held], upto: int) -> Iterator[Held]:
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
