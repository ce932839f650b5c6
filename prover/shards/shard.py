"""The shard role of the sharded prover on NATS (docs/SCALING.md, "Roles"):
one part of every tree, fed from the ledger stream, closed at the
coordinator's cuts, saved at each close when it has a store.

``Shard`` runs a ``ShardCore`` (prover/shards/core.py): it reads the
stream (two pull consumers merged in stream order, prover/shards/pull.py),
serves the control subject, and does the ledger's work on a thread of its
own, so that hashing an epoch does not stop the reading (only slows it, by
the GIL).

With a store (docs/SCALING.md, "Recovery"), a shard saves each close
before it answers it (storage/shards.py), and starts from what it saved
last: its ledger rebuilt at the same slots, under the salt period it
saved (after a rotation, not the one it was started with), its reader at
the saved ``resume``; the salt periods it rotates to are read from the
store too (docs/SCALING.md, "Salt rotation across shards"). A shard
killed at any point and started again gives the same answers as one that
never stopped; the epoch it closed last is answered again as it was. A
core that breaks (a save that failed, say) is restored from the store in
the same way, after a backoff. A save appends one delta row whatever the
close changed; a thread of the shard folds the deltas into the saved
holdings (``Store.fold_shard``) once they name ``fold_every`` changed
holdings, off the closes, so a restore replays at most about that many.
The first fold after a start comes earlier by ``part / parts`` of
``fold_every`` (``first_fold``), so that under even traffic the parts'
folds (each a burst of database work) take turns instead of running at
the same moment; each later one comes ``fold_every`` after.

Invariants:

- Messages reach the core in stream order, each once; on a new session
  the consumers start after the last sequence read.
- With a store, no ``ClosedPart`` is answered before its close is saved.
- A control request received is answered before its session's connection
  closes (a ``Stage`` waiting for the reading: ``not-yet`` at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from prover.backoff import Backoff
from prover.errors import ProverError
from prover.periods import SaltPeriod
from prover.routing import Router
from prover.shards import wire
from prover.shards.control import (
    ClosedPart,
    Refused,
    Reply,
    Request,
    Stage,
    control_subject,
    decode_request,
    encode,
)
from prover.shards.core import ShardCore
from prover.shards.pull import Puller, merged, open_puller, stream_state
from prover.sources.nats import redact
from storage.errors import StorageError
from storage.store import HoldingChanges, ShardState, Store

__all__ = ["Shard", "ShardCore", "ShardStats", "first_fold"]

log = logging.getLogger("solvency.prover")
RESTART = Backoff(first=0.5, cap=30.0)  # before a failed session is started again
SESSION_OK = 30.0  # s a session ran before failing: its restart backs off from the start
FOLD_EVERY = 500_000  # changed holdings saved in deltas before a fold: bounds a restore's replay
DELETE_WAIT = 1.0  # s a session's end waits for each consumer's deletion (unused, it expires)


def first_fold(part: int, parts: int, fold_every: int) -> int:
    """How many changed holdings the saved deltas of part ``part`` (of
    ``parts``) name when its first fold after a start is due:
    ``fold_every`` less ``part / parts`` of it, so under even traffic the
    parts' folds are spread evenly over each ``fold_every``; at least 1."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not one of {parts} parts")
    return fold_every - fold_every * part // parts


@dataclass
class ShardStats:
    """What a ``Shard`` did since start."""

    messages: int = 0  # added to the intake: its parts and every commit
    rounds: int = 0  # reading rounds that found something new
    pulls: int = 0  # pull requests
    requests: int = 0  # control requests answered
    sessions: int = 0  # connections made, 1 plus one per restarted session
    restores: int = 0  # cores restored from the store
    restore_seconds: float = 0.0  # how long the last restore took
    restoring: bool = False  # a core is being loaded from the store
    epoch: int = -1  # the last epoch closed (restored, after a restart); -1: none
    cut: int = 0  # its cut: the stream sequence it was closed at
    saves: int = 0  # closes saved to the store
    save_seconds: float = 0.0  # how long the last save took
    folds: int = 0  # folds of the saved deltas that succeeded
    fold_failures: int = 0  # folds that failed
    fold_failing: int = 0  # folds failed in a row; 0: the last one succeeded (or none ran)
    fold_error: str = ""  # why the last fold failed


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
        retain_bytes: int = 512 << 20,
        core: ShardCore | None = None,
        store: Store | None = None,
        batch: int = 1024,
        max_bytes: int = 8 << 20,
        idle: float = 0.05,
        stage_wait: float = 2.0,
        timeout: float = 5.0,
        fold_every: int = FOLD_EVERY,
    ) -> None:
        """``core``: the shard as recovered (its ledger of ``period``, split
        by ``router``); by default, empty at the stream's start. ``store``:
        where each close is saved, and what ``run`` restores the shard from
        (not with ``core``). ``idle``: seconds between looks at a stream
        with nothing new; ``stage_wait``: how long a ``Stage`` past what was
        read waits for the reading before it is refused ``not-yet``;
        ``timeout``: of every NATS request. ``retain``, ``retain_bytes``:
        how many epochs before the last the core keeps proofs of, in how
        much memory (``config.proof_epochs``, ``proof_memory_mb``); a core
        restored from the store keeps none from before its restore.
        ``fold_every``: how many changed holdings the saved deltas name
        before a fold is started (at least 1)."""
        if fold_every < 1:
            raise ValueError(f"fold_every {fold_every} is not at least 1")
        if core is not None and store is not None:
            raise ValueError("a shard with a store starts from what it saved, not from a core")
        self.core = core or ShardCore.empty(period, router, part, retain, retain_bytes=retain_bytes)
        if self.core.part != part or self.core.ledger.router != router:
            raise ValueError(f"the core is not part {part} of this router's parts")
        self.period, self.router, self.retain, self.store = period, router, retain, store
        self.retain_bytes = retain_bytes
        self.url, self.stream, self.prefix = url, stream, prefix
        self.batch, self.max_bytes = batch, max_bytes
        self.idle, self.stage_wait, self.timeout = idle, stage_wait, timeout
        self.stats = ShardStats()
        self.serving = asyncio.Event()  # set while the control subject is served
        self._wake = asyncio.Event()  # a Stage waits for the reading
        self._progress = asyncio.Condition()  # notified whenever more was read
        self._tasks: set[asyncio.Task[None]] = set()
        self._work = ThreadPoolExecutor(1, thread_name_prefix=f"shard-{part}")
        self._folds = ThreadPoolExecutor(1, thread_name_prefix=f"shard-{part}-fold")
        self.fold_every = fold_every
        self._fold_due = first_fold(part, router.parts, fold_every)  # unfolded starting a fold
        self._unfolded = 0  # changed holdings in the deltas saved, as far as this shard knows
        self._folding = False  # a fold is queued or running
        self._fold_lock = threading.Lock()  # guards the three above
        self._loaded = store is None  # the core is the one to serve
        self._reading = False  # a session reads: a Stage past ``read`` may wait for it

    @property
    def part(self) -> int:
        return self.core.part

    @property
    def unfolded(self) -> int:
        """Changed holdings named by the saved deltas and not folded yet, as
        far as this shard knows."""
        with self._fold_lock:
            return self._unfolded

    async def run(self, stop: asyncio.Event) -> None:
        """Read and serve until ``stop`` is set, after restoring the core
        from the store if there is one; a failed session is started again
        after a backoff, reading on from where the last one got to (with a
        store, a broken core is restored first)."""
        failures, started = 0, time.monotonic()
        try:
            while not stop.is_set():
                try:
                    if not self._loaded or (self.store and self.core.broken):
                        loop = asyncio.get_running_loop()
                        await loop.run_in_executor(self._work, self._load)
                    started = time.monotonic()
                    await self._session(stop)
                    return
                except (nats.errors.Error, OSError, ProverError, StorageError) as exc:
                    if time.monotonic() - started > SESSION_OK:  # it ran: start over quickly
                        failures = 0
                    failures += 1
                    delay = RESTART.delay(failures)
                    log.error(
                        "shard %d: %s; starting again in %.1f s",
                        self.part,
                        str(exc) or type(exc).__name__,
                        delay,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            for task in list(self._tasks):
                task.cancel()
            self._work.shutdown(wait=False, cancel_futures=True)
            self._folds.shutdown(wait=False, cancel_futures=True)
            self.core.rotation.stop()

    def _load(self) -> None:
        """The core as the store saved it, or empty if it saved none; each
        close saved from now on. In the worker thread."""
        assert self.store is not None
        store, stream, part = self.store, self.stream, self.part
        started = time.perf_counter()
        self.stats.restoring = True
        try:
            self._restore(store, stream, part)
        finally:
            self.stats.restoring = False
        self.stats.restore_seconds = time.perf_counter() - started
        self._loaded = True
        log.info(
            "shard %d: %s in %.2f s, reading on from %d",
            part,
            "empty" if self.stats.epoch < 0 else f"restored after epoch {self.stats.epoch}",
            self.stats.restore_seconds,
            self.core.read + 1,
        )

    def _restore(self, store: Store, stream: str, part: int) -> None:
        """``_load``'s work: the core and the counts of unfolded holdings."""
        save = functools.partial(self._save, part)
        state = store.shard_state(stream, part)
        with self._fold_lock:
            self._unfolded = store.shard_pending(stream, part)
        self._fold_if_due()
        self.core.rotation.stop()  # a build of the core before this one
        if state is not None and state.period != self.period.number:  # rotated since
            self.period = self._period(state.period)
        if state is None:
            self.core = ShardCore.empty(
                self.period,
                self.router,
                part,
                self.retain,
                save=save,
                retain_bytes=self.retain_bytes,
            )
        else:
            holdings = store.shard_holdings(stream, part, state.epoch)
            self.core = ShardCore.restore(
                state,
                holdings,
                self.period,
                self.router,
                part,
                self.retain,
                save=save,
                retain_bytes=self.retain_bytes,
            )
            self.stats.restores += 1
        self.core.rotation.periods = self._period
        self.stats.epoch, self.stats.cut = (-1, 0) if state is None else (state.epoch, state.cut)

    def _save(
        self, part: int, after: int | None, state: ShardState, changes: HoldingChanges
    ) -> None:
        """Save a close of part ``part`` (one delta row), then start a fold
        if one is due. In the worker thread, before the close is answered."""
        assert self.store is not None
        started = time.perf_counter()
        self.store.save_shard(self.stream, part, after, state, changes)
        self.stats.saves += 1
        self.stats.save_seconds = time.perf_counter() - started
        with self._fold_lock:
            self._unfolded += len(changes.held) + len(changes.gone)
        self._fold_if_due()

    def _fold_if_due(self) -> None:
        """Start a fold in the fold thread if the deltas name enough changed
        holdings (``first_fold``'s count before the first fold that
        succeeded, ``fold_every`` after) and none is queued or running."""
        with self._fold_lock:
            if self._folding or self._unfolded < self._fold_due:
                return
            self._folding = True
        try:
            self._folds.submit(self._fold, self.part)
        except RuntimeError:  # shut down: the shard stops
            with self._fold_lock:
                self._folding = False

    def _fold(self, part: int) -> None:
        """Fold part ``part``'s deltas into its saved holdings. In the fold
        thread; a failure is logged and left for the next fold (the deltas
        stay, and a restore replays them)."""
        assert self.store is not None
        started, folded = time.perf_counter(), 0
        try:
            folded = self.store.fold_shard(self.stream, part)
            with self._fold_lock:
                self._fold_due = self.fold_every
            self.stats.folds += 1
            self.stats.fold_failing = 0
        except StorageError as exc:
            log.warning("shard %d: folding the saved deltas: %s", part, exc)
            self.stats.fold_failures += 1
            self.stats.fold_failing += 1
            self.stats.fold_error = str(exc) or type(exc).__name__
        finally:
            with self._fold_lock:
                self._unfolded = max(0, self._unfolded - folded)
                self._folding = False
        if folded:
            log.info(
                "shard %d: folded %d saved holdings in %.2f s",
                part,
                folded,
                time.perf_counter() - started,
            )

    def _period(self, number: int) -> SaltPeriod:
        """Salt period ``number`` as the store keeps it (a rotation's)."""
        assert self.store is not None
        row = self.store.salt_period(number)
        return SaltPeriod(row.number, row.started_ms, row.secret)

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
            first, last = await stream_state(nc, self.stream, self.timeout)
            if start < first and start <= last:
                reason = f"the stream starts at {first}, after {start}"
                self.core.fail(reason)  # what the shard has not read is gone
                log.error("shard %d: %s", self.part, reason)
            subjects = [wire.part_subject(self.prefix, self.part), wire.commit_subject(self.prefix)]
            pullers = [await self._consumer(nc, js, subject, start) for subject in subjects]
            self._reading = True
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
                await self._read(nc, pullers[0], pullers[1], stop)
            finally:
                self.serving.clear()
                await self._answer_pending()
                with contextlib.suppress(nats.errors.Error, OSError):
                    await serving.unsubscribe()
                for puller in pullers:
                    with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                        await asyncio.wait_for(
                            js.delete_consumer(self.stream, puller.name), DELETE_WAIT
                        )
        finally:
            self._reading = False
            await nc.close()

    async def _answer_pending(self) -> None:
        """The reading stopped: the control requests being served are
        answered before the connection closes (a ``Stage`` waiting for the
        reading, ``not-yet`` at once), so the coordinator does not wait for
        them its whole timeout."""
        self._reading = False
        async with self._progress:
            self._progress.notify_all()
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=self.timeout)

    async def _consumer(self, nc: Client, js: JetStreamContext, subject: str, start: int) -> Puller:
        description = f"solvency shard {self.part}"
        inactive = max(60.0, 10 * self.timeout)
        return await open_puller(nc, js, self.stream, subject, start, description, inactive)

    async def _read(self, nc: Client, parts: Puller, commits: Puller, stop: asyncio.Event) -> None:
        """Rounds of reading (prover/shards/pull.py) until ``stop``; with a
        store, until the core breaks."""
        while not stop.is_set():
            if self.store is not None and self.core.broken is not None:
                raise ProverError(f"restoring shard {self.part}: {self.core.broken}")
            _, last = await stream_state(nc, self.stream, self.timeout)
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

    def _take(self, parts: Puller, commits: Puller, upto: int) -> None:
        """Add the messages held up to ``upto``, in stream order; read that far."""
        core = self.core
        for seq, time_ms, data in merged(parts.held, commits.held, upto):
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
        if isinstance(reply, ClosedPart) and reply.epoch > self.stats.epoch:
            self.stats.epoch, self.stats.cut = reply.epoch, reply.state.cut
        return reply

    async def _caught_up(self, cut: int) -> bool:
        """Wait at most ``stage_wait`` for the reading to reach ``cut``."""
        self._wake.set()
        core = self.core
        with contextlib.suppress(TimeoutError):
            async with self._progress:
                await asyncio.wait_for(
                    self._progress.wait_for(
                        lambda: core.read >= cut or core.broken is not None or not self._reading
                    ),
                    self.stage_wait,
                )
        return core.read >= cut
