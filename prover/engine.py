"""The prover's engine: ingest, epochs, publishing and proofs, without sockets.

The server (prover/server.py) and the CLI feed it; tests drive it directly.
Order of work for one epoch (docs/PROTOCOL.md §11):

1. take the balance updates acknowledged since the last epoch;
2. the tree worker applies them and returns every asset's root;
3. build the record (reserves as last reported, stale sources flagged);
4. append the record to the log, sign the checkpoint, commit all in one
   transaction; only then
5. publish to subscribers.

Storage calls run in one dedicated thread, so the event loop never waits on
the database and writes stay in order, but for an epoch's commit, which
goes ahead of the ingest batches waiting, after which the thread idles
until the epoch is handed to its subscribers (prover/dbthread.py). Acknowledged
balances go to the store's journal; every ``FOLD_AFTER`` of them, the
journal is folded into the balances table: read and sorted in another
thread, written in short transactions that the database thread runs between
ingest batches. A fold holds back while an epoch closes: its writes would
delay the epoch's commit, its reading and sorting the rest of the close
(through the GIL), by up to a few hundred ms at 100,000 updates/s. It also
rests after each piece of its work as long as the piece took
(``FOLD_REST``), taking half as much of the CPU and the GIL at a time, over
twice as long: at 100,000 updates/s on 2 cores, a fold of 3,000,000 updates
runs about 35 s instead of 20 and still keeps up (a larger fold merges more
updates of one account), and p99 from close to publication went from 237 to
210 ms (one 120 s run each).

For the same reason, while ``run`` runs, Python's cyclic garbage collector
runs right after each epoch instead of whenever allocations trip it: a full
collection holds the GIL for 40 to 70 ms at 100,000 updates/s, and could
fall on a close or a fan-out. It is off during ``start`` too, where loading
a million balances made it collect dozens of times over for nothing.

While an epoch closes, the event loop's thread gives up the GIL at every
wait for the tree worker or the database and at every socket write of the
fan-out (a thousand of them); each time, a thread that computes meanwhile
(the database thread journaling a batch, a fold) may keep the GIL for a
whole switch interval, 5 ms by default, before the loop gets it back. A
close therefore runs with an interval of ``CLOSE_SWITCH_INTERVAL``: in 30 s
runs at 100,000 updates/s, p99 from close to publication went from 190-260
ms to 110-190 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover import tokens
from prover.backoff import Backoff
from prover.config import Config
from prover.dbthread import DbThread
from prover.epoch import Reserve, build_record, record_reports
from prover.errors import IngestError, NotRetained, ProverError, SubscriberShed
from prover.export import create_export_dir
from prover.messages import (
    Batch,
    ReserveBatch,
    ReserveReportBatch,
    ReserveReportUpdate,
    ReserveUpdate,
    ack,
)
from prover.periods import SaltPeriod
from prover.witnesses import KEEP_EPOCHS, Witnesses, WitnessStats
from prover.worker import Applied, TreeWorker
from storage.errors import InvalidInputError, SequenceError, StorageError, UnknownAssetError
from storage.store import ApplyResult, ReserveRow, Store
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.proof import AssetPath, ProofFile
from verifier.record import EpochRecord
from verifier.stream import EpochMessage

__all__ = ["Engine", "Metrics"]

log = logging.getLogger("solvency.prover")
T = TypeVar("T")
LOAD_CHUNK = 50_000
FOLD_AFTER = 3_000_000  # journaled balance updates between two folds
FULL_COLLECTION_EVERY = 30  # epochs; the young generations are collected after every epoch
CLOSE_SWITCH_INTERVAL = 0.0002  # seconds; sys.setswitchinterval while an epoch closes
FOLD_REST = 1.0  # a fold rests this many times as long as each piece of its work took
FOLD_CHUNK = 5_000  # balances per transaction of a fold: others wait ~25 ms at most
EXPORT_CHUNK = 5_000
EPOCH_RETRY = Backoff(first=0.1, cap=10.0)  # seconds between attempts at a failing epoch
FINAL_ATTEMPTS = 3  # at the last epoch, on stop: then the updates wait for a restart


@dataclass
class Metrics:
    """Counters and gauges exported on /metrics."""

    updates: int = 0
    epoch: int = -1
    epoch_build_seconds: float = 0.0
    tree_seconds: float = 0.0
    loop_lag_seconds: float = 0.0
    last_epoch_time: float = 0.0
    last_publish_time: float = 0.0
    published_epoch: int = -1  # the last epoch handed to subscribers (witnesses: after epoch)
    subscribers: int = 0
    shed_subscribers: int = 0
    connections: int = 0
    refused_connections: int = 0
    connection_bytes: int = 0
    ingest_errors: int = 0
    unfolded_updates: int = 0
    epoch_failures: int = 0
    epoch_failing: int = 0  # failed attempts in a row at the epoch being retried
    last_epoch_error_time: float = 0.0
    last_epoch_error: str = ""  # the class of the last failure (not a metric)


@dataclass(eq=False)
class _Subscriber:
    """A root stream subscriber: frames as (epoch, text), or handed to ``offer``
    as they are published; None in the queue ends the stream."""

    queue: asyncio.Queue[tuple[int, str] | None]
    offer: Callable[[str], bool] | None = None
    overflowed: bool = False


@dataclass(frozen=True, slots=True)
class _Cut:
    """An epoch cut and applied to the trees, not yet committed. A failed
    close keeps it, and the retry commits it as it is: the trees never apply
    an epoch's updates twice, and the worker keeps one apply per epoch."""

    now: float
    rows: int
    marks: dict[tuple[str, str], int]
    reserves: dict[str, dict[str, Reserve]]
    applied: Applied


@dataclass
class Engine:
    config: Config
    store: Store
    key: Ed25519PrivateKey
    previous_keys: tuple[Ed25519PrivateKey, ...] = ()  # still co-signing after a rotation
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self._db = DbThread()
        self._folding: asyncio.Task[None] | None = None
        self._worker: TreeWorker | None = None
        self._pending: list[tuple[str, str, int]] = []
        self._decimals: dict[str, int] = {}
        self._reserves: dict[str, dict[str, Reserve]] = {}
        self._subscribers: set[_Subscriber] = set()
        self._latest: EpochMessage | None = None  # the last epoch committed
        self._witnesses: Witnesses | None = None  # set by start if witnesses are configured
        self._epoch_lock = asyncio.Lock()
        self._no_close = threading.Event()  # clear while an epoch closes: folds hold back
        self._no_close.set()
        self._stopping = threading.Event()  # set by close: a fold under way stops
        self._period: SaltPeriod | None = None
        # salt rotation: the next period's worker, built in the background, and the
        # rows applied since it started loading, replayed into it before the switch
        self._next: asyncio.Task[tuple[TreeWorker, SaltPeriod]] | None = None
        self._replay: list[tuple[str, str, int]] = []
        self._marks: dict[tuple[str, str], int] = {}
        self._last_timestamp_ms = 0
        self._cut: _Cut | None = None  # set from an epoch's apply until its commit
        self._retry_at = 0.0  # time.monotonic() of the next attempt at a failing epoch
        # stopping: ingest is refused; the batches being stored meanwhile are counted
        self._refusing = False
        self._storing = 0
        self._stored = asyncio.Event()  # set while no batch is being stored
        self._stored.set()
        self.verifier_key = verifier_key_for(self.config.origin, self.key.public_key())
        self._attesters = self.config.attester_keys()  # source -> its verifier keys

    async def _db_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._db.submit(fn, *args))

    def _on_db_thread(self, step: Callable[[], None]) -> None:
        """From another thread: run a fold's write ``step`` on the db thread, in
        turn with ingest, so that neither waits on the database's lock; not
        while an epoch closes, so that its commit never queues behind a fold."""
        self._no_close.wait()
        self._db.submit(step).result()

    # Start and stop

    async def start(self) -> None:
        """Load state from storage and build every tree (a new salt period),
        with the garbage collector off (module docstring), then collect once."""
        with _collector_off():
            for asset, decimals in self.config.assets:
                await self._db_call(self.store.ensure_asset, asset, decimals)
            self._decimals = {a.id: a.decimals for a in await self._db_call(self.store.assets)}
            rows = await self._db_call(self.store.reserves)
            notes = await self._db_call(self.store.reserve_reports, [r.report_hash for r in rows])
            for r in rows:
                self._reserves.setdefault(r.asset, {})[r.source] = Reserve(
                    r.amount, r.as_of_ms, r.key_id, r.report_hash, notes.get(r.report_hash, b"")
                )
            self._marks = await self._db_call(self.store.source_marks)
            latest = await self._db_call(self.store.latest_epoch)
            if latest is not None:
                self.metrics.epoch = self.metrics.published_epoch = latest.number
                self._last_timestamp_ms = EpochRecord.decode(latest.record).timestamp_ms
                self.metrics.last_epoch_time = self._last_timestamp_ms / 1000
                await self._db_call(self.store.log_root)  # warm the log's subtree cache
            self._worker, self._period = await self._new_period()
            self.metrics.unfolded_updates = await self._db_call(self.store.journal_backlog)
            if self.config.witnesses:  # publication waits for their cosignatures (witnesses.py)
                self._witnesses = Witnesses(
                    self.config.witness_endpoints(),
                    self.config.quorum,
                    self.config.witness_timeout,
                    db=self._db,
                    store=self.store,
                    publish=self._publish_cosigned,
                    keep=max(KEEP_EPOCHS, self.config.proof_epochs + 1),
                    hurry=_quick_gil_handoffs,  # its threads get the GIL back quickly too
                )
                await self._witnesses.start(self.metrics.epoch)
        gc.collect()

    async def _new_period(self) -> tuple[TreeWorker, SaltPeriod]:
        """A worker holding every tree of a new salt period, built from the stored balances."""
        row = await self._db_call(self.store.start_salt_period, int(self.clock() * 1000))
        period = SaltPeriod(row.number, row.started_ms, row.secret)
        worker = TreeWorker()
        try:
            await worker.build(
                period,
                sorted(self._decimals),
                self.store.iter_balances(LOAD_CHUNK, self._on_db_thread, self._no_close.wait),
                self.config.proof_epochs,
                self.config.proof_memory_mb << 20,
            )
        except BaseException:
            await worker.close()
            raise
        return worker, period

    async def close(self) -> None:
        if self._witnesses is not None:  # the epochs still waiting for them are published
            await self._witnesses.close()
        for sub in list(self._subscribers):
            sub.queue.put_nowait(None)
        if self._next is not None:
            self._next.cancel()
            with contextlib.suppress(BaseException):
                worker, _ = await self._next
                await worker.close()
        if self._worker is not None:
            await self._worker.close()
        if self._folding is not None:
            self._stopping.set()  # the fold stops at its next pause (store.fold: safe)
            with contextlib.suppress(BaseException):
                await self._folding
        self._db.shutdown()

    # Ingest

    async def ingest(self, batch: Batch) -> str:
        """Durably store ``batch`` and stage it for the next epoch; return the ack frame.

        Raises:
            IngestError: if anything in the batch is refused (nothing is applied);
                ``shutting-down`` once ``run`` is stopping.
        """
        if self._refusing:
            raise IngestError("shutting-down", "the prover is stopping: send it again later")
        self._storing += 1  # no await since the check: run's last epoch waits for this batch
        self._stored.clear()
        try:
            return await self._ingest(batch)
        finally:
            self._storing -= 1
            if not self._storing:
                self._stored.set()

    async def _ingest(self, batch: Batch) -> str:
        for update in batch.updates:
            if update.asset not in self._decimals:
                raise IngestError("unknown-asset", f"asset {update.asset} is not configured", None)
        if isinstance(batch, ReserveBatch | ReserveReportBatch):
            limit = int((self.clock() + self.config.max_reserve_skew) * 1000)
            where = "reports" if isinstance(batch, ReserveReportBatch) else "updates"
            dated: tuple[ReserveUpdate | ReserveReportUpdate, ...] = batch.updates
            for i, r in enumerate(dated):
                if r.as_of_ms > limit:
                    raise IngestError("bad-update", f"{where}[{i}]: as_of_ms is in the future", i)
            if isinstance(batch, ReserveReportBatch):
                self._check_attested(batch)
                result = await self._store_batch(self.store.apply_reserve_reports, batch)
                taken = [
                    (u.asset, Reserve(u.amount, u.as_of_ms, u.key_id, u.report_hash, u.note))
                    for u in batch.updates[len(batch.updates) - len(result.applied) :]
                ]
            else:
                if batch.source in self._attesters:
                    raise IngestError(
                        "unattested",
                        f"source {batch.source} has an attester key: send its reports signed "
                        "(reserve-reports)",
                    )
                result = await self._store_batch(self.store.apply_reserves, batch)
                taken = [
                    (r.asset, Reserve(r.amount, r.as_of_ms))
                    for r in batch.updates[len(batch.updates) - len(result.applied) :]
                ]
            for asset, reserve in taken:
                self._reserves.setdefault(asset, {})[batch.source] = reserve
            self._marks[("reserves", batch.source)] = result.last_seq
        else:
            result = await self._store_batch(self.store.apply_balances, batch)
            fresh = batch.updates[len(batch.updates) - len(result.applied) :]
            rows = [(u.user, u.asset, u.amount) for u in fresh]
            if rows:
                assert self._worker is not None
                self._pending.extend(rows)
                self._worker.stage(rows)  # transferred now, applied at the close
            self._marks[("balances", batch.source)] = result.last_seq
            self.metrics.updates += len(fresh)
            self.metrics.unfolded_updates += len(fresh)
        return ack(batch.id, batch.source, len(result.applied), result.duplicates, result.last_seq)

    def _check_attested(self, batch: ReserveReportBatch) -> None:
        """Every report signed by a key configured for the batch's source
        (docs/PROTOCOL.md §13.2), else ``unattested`` naming the first that is not."""
        keys = self._attesters.get(batch.source)
        if keys is None:
            raise IngestError("unattested", f"source {batch.source} has no attester key configured")
        for i, u in enumerate(batch.updates):
            if u.signed.signer(keys) is None:
                raise IngestError(
                    "unattested",
                    f"reports[{i}]: not signed by an attester key of {batch.source} "
                    f"(signed by key id {u.key_id:08x})",
                    i,
                )

    async def _store_batch(
        self, apply: Callable[[str, Any], ApplyResult], batch: Batch
    ) -> ApplyResult:
        """Commit a batch durably, turning storage refusals into ingest errors."""
        try:
            return await self._db_call(apply, batch.source, batch.updates)
        except SequenceError as exc:
            raise IngestError("bad-seq", str(exc)) from None
        except UnknownAssetError as exc:
            raise IngestError("unknown-asset", str(exc)) from None
        except InvalidInputError as exc:  # amounts, identifiers: anything it refuses
            raise IngestError("bad-update", str(exc)) from None
        except StorageError as exc:
            log.error("could not store a batch from %s: %s", batch.source, exc)
            raise IngestError("internal", "the batch could not be stored; retry") from None

    # Epochs

    def health(self) -> str | None:
        """None while epochs keep coming, else why not: the last attempt at
        an epoch failed, or the last epoch is over two heartbeats old."""
        if failures := self.metrics.epoch_failing:
            error = self.metrics.last_epoch_error
            return f"epoch {self.metrics.epoch + 1} failing: {error} ({failures} attempts)"
        late = self.clock() - self.metrics.last_epoch_time
        if late > 2 * self.config.max_interval + 1:
            return f"late: no epoch for {late:.0f} s" if self.metrics.last_epoch_time else "late"
        return None

    def healthy(self) -> bool:
        return self.health() is None

    def _until_due(self) -> float:
        """Seconds until the next epoch closes: one interval after the last close
        if updates are waiting, else at the heartbeat; after a failure, at the
        retry (0: now)."""
        if self.metrics.epoch_failing:
            return max(0.0, self._retry_at - time.monotonic())
        limit = self.config.epoch_interval if self._pending else self.config.max_interval
        return max(0.0, self.metrics.last_epoch_time + limit - self.clock())

    async def close_epoch(self) -> EpochMessage:
        """Close one epoch (steps 1-5 of the module docstring); after a failure
        (counted, logged, reported by ``health``), the next call retries it."""
        assert self._worker is not None
        async with self._epoch_lock:
            self._no_close.clear()
            try:
                with _quick_gil_handoffs():
                    return await self._close_epoch()
            except Exception as exc:
                self._epoch_failed(exc)
                raise
            finally:
                self._worker.release()
                self._no_close.set()

    def _epoch_failed(self, exc: Exception) -> None:
        """Count a failed close, schedule its retry (``EPOCH_RETRY``) and log
        it in one line; a traceback at the first of an unforeseen kind only."""
        failures = self.metrics.epoch_failing = self.metrics.epoch_failing + 1
        self.metrics.epoch_failures += 1
        self.metrics.last_epoch_error_time = self.clock()
        self.metrics.last_epoch_error = type(exc).__name__
        delay = EPOCH_RETRY.delay(failures)
        self._retry_at = time.monotonic() + delay
        log.error(
            "epoch %d failed (%d in a row): %s: %s; retrying in %.2f s",
            self.metrics.epoch + 1,
            failures,
            type(exc).__name__,
            exc,
            delay,
            exc_info=failures == 1 and not isinstance(exc, StorageError | OSError),
        )

    async def _close_epoch(self) -> EpochMessage:
        """Steps 1-5, under the epoch lock; steps 3-5 only, for the epoch cut
        and applied by a failed attempt (``_Cut``)."""
        started = time.perf_counter()
        if self._cut is None:
            now = self.clock()  # the epoch closes here: its updates and reserves are cut
            rows, self._pending = self._pending, []
            marks = dict(self._marks)  # what this epoch covers
            reserves = {asset: dict(by_source) for asset, by_source in self._reserves.items()}
            try:
                applied = await self._apply(rows)
            except BaseException:  # still staged in the worker: the next apply takes them
                self._pending[:0] = rows
                raise
            self._cut = _Cut(now, len(rows), marks, reserves, applied)
        cut, retry = self._cut, self.metrics.epoch_failing > 0
        applied, now, reserves = cut.applied, cut.now, cut.reserves
        applied_at = time.perf_counter()
        number = self.metrics.epoch + 1
        timestamp_ms = max(int(now * 1000), self._last_timestamp_ms)  # never backwards
        built = build_record(
            epoch=number,
            timestamp_ms=timestamp_ms,
            max_reserve_age_ms=int(self.config.max_reserve_age * 1000),
            decimals=self._decimals,
            roots=applied.roots,
            reserves=reserves,
        )
        record, reports = built.encode(), record_reports(built, reserves)
        used = [
            ReserveRow(asset, source, r.amount, r.as_of_ms)
            for asset, by_source in reserves.items()
            for source, r in by_source.items()
        ]
        committing = time.perf_counter()
        commit = self._db.submit(
            self._commit_epoch, number, record, timestamp_ms, cut.marks, used, retry, urgent=True
        )
        with self._db.held():  # from the commit until the epoch is handed out (dbthread)
            message = dataclasses.replace(await asyncio.wrap_future(commit), reports=reports)
            committed, handing_cpu = time.perf_counter(), time.thread_time()
            self._cut = None
            self._last_timestamp_ms = timestamp_ms
            self.metrics.epoch = number
            self.metrics.epoch_failing = 0
            self.metrics.tree_seconds = applied.seconds
            self.metrics.epoch_build_seconds = time.perf_counter() - started
            self.metrics.last_epoch_time = now
            self._latest = message
            if self._witnesses is None:
                self._publish(number, message)
            else:  # published once cosigned, or at the deadline (prover/witnesses.py)
                self._witnesses.submit(number, message)
        published, handing_cpu = time.perf_counter(), time.thread_time() - handing_cpu
        self._fold_when_due()
        log.info(
            "epoch %d %s: %d updates, trees %.0f ms (apply %.0f ms, build %.0f ms,"
            " commit %.0f ms), total %.0f ms, then %.0f ms (%.0f ms of CPU) handing it to %s",
            number,
            "published" if self._witnesses is None else "committed",
            cut.rows,
            applied.seconds * 1000,
            (applied_at - started) * 1000,
            (committing - applied_at) * 1000,
            (committed - committing) * 1000,
            self.metrics.epoch_build_seconds * 1000,
            (published - committed) * 1000,
            handing_cpu * 1000,
            f"{self.metrics.subscribers} subscribers" if self._witnesses is None else "witnesses",
        )
        return message

    def _fold_when_due(self) -> None:
        """Start folding the journal into the balances table once ``FOLD_AFTER``
        updates wait there; one fold at a time."""
        if self.metrics.unfolded_updates < FOLD_AFTER:
            return
        if self._folding is not None and not self._folding.done():
            return
        self._folding = asyncio.create_task(self._fold())

    async def _fold(self) -> None:
        """Read and sort in a thread of its own, write each chunk on the db
        thread; pause while an epoch closes, and rest after each piece of work
        as long as it took (``FOLD_REST``)."""
        started = worked_since = time.perf_counter()

        def pause() -> None:
            nonlocal worked_since
            time.sleep((time.perf_counter() - worked_since) * FOLD_REST)
            self._no_close.wait()
            if self._stopping.is_set():
                raise _FoldStopped
            worked_since = time.perf_counter()

        def write(step: Callable[[], None]) -> None:
            pause()
            self._on_db_thread(step)

        try:
            folded = await asyncio.to_thread(self.store.fold, FOLD_CHUNK, write, pause)
            self.metrics.unfolded_updates = await self._db_call(self.store.journal_backlog)
        except _FoldStopped:
            log.info("fold stopped with the prover: the next one folds what is left")
            return
        except Exception:
            log.exception("folding the journal failed; the next epoch retries")
            return
        log.info(
            "folded %d journaled updates into the balances in %.1f s",
            folded,
            time.perf_counter() - started,
        )

    async def _apply(self, rows: list[tuple[str, str, int]]) -> Applied:
        """Apply the epoch's rows (already staged in the current worker) to the
        trees; rotate the salt period when it is due (docs/PROTOCOL.md §2.5)
        without holding up the epochs meanwhile."""
        assert self._worker is not None and self._period is not None
        age = self.clock() - self._period.started_ms / 1000
        if self._next is None and age >= self.config.salt_period:
            self._next, self._replay = asyncio.create_task(self._new_period()), []
        if self._next is None:
            return await self._worker.apply([], [])
        self._replay.extend(rows)
        if not self._next.done():
            return await self._worker.apply([], [])
        task, self._next = self._next, None
        try:
            worker, period = task.result()
        except Exception:
            log.exception("building the next salt period failed; keeping the current one")
            return await self._worker.apply([], [])
        applied = await worker.apply([], self._replay)
        old, self._worker, self._period, self._replay = self._worker, worker, period, []
        if self._pending:  # ingested since the cut, staged in the old worker only
            worker.stage(list(self._pending))
        await old.close()
        log.info("salt period %d began: new salts and slots for every user", period.number)
        return applied

    def _commit_epoch(
        self,
        number: int,
        record: bytes,
        timestamp_ms: int,
        marks: dict[tuple[str, str], int],
        reserves: list[ReserveRow],
        retry: bool,
    ) -> EpochMessage:
        """In the db thread: append, sign and commit in one transaction; on a
        ``retry``, only if the failed attempt did not commit it after all."""

        def sign(size: int, root: bytes) -> bytes:
            body = Checkpoint(self.config.origin, size, root).to_note_body()
            return sign_note(body, self.config.origin, self.key, *self.previous_keys)

        stored = self.store.latest_epoch() if retry else None
        if stored is not None and stored.number == number and stored.record == record:
            checkpoint = stored.checkpoint  # e.g. the connection failed after the commit
        else:
            checkpoint = self.store.append_epoch(
                number, record, sign, created_ms=timestamp_ms, marks=marks, reserves=reserves
            )
        return EpochMessage(
            record=record,
            checkpoint=checkpoint,
            inclusion=tuple(self.store.inclusion_proof(number, number + 1)),
            consistency=tuple(self.store.consistency_proof(number, number + 1)),
        )

    async def run(self, stop: asyncio.Event) -> bool:
        """Close epochs on schedule until ``stop`` is set; a failed epoch is
        retried after a backoff (``close_epoch``). Then refuse further ingest,
        let the batches being stored finish (they are acknowledged), and close
        one last epoch if updates are waiting, so that nothing acknowledged is
        left unpublished: True once it is, False if it failed ``FINAL_ATTEMPTS``
        times, a second apart at most (its updates are stored: the first epoch
        after a restart has them).
        Meanwhile, garbage is collected after each epoch only (module docstring)."""
        poll = self.config.epoch_interval / 20  # to notice the first update after a quiet spell
        with _collector_off():
            while not stop.is_set():
                wait = self._until_due() if self._pending else min(self._until_due(), poll)
                expected = time.perf_counter() + wait
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                self.metrics.loop_lag_seconds = max(0.0, time.perf_counter() - expected)
                if self._until_due() == 0 and not stop.is_set():
                    with contextlib.suppress(Exception):  # logged; retried when due
                        await self.close_epoch()
                    if self._witnesses is None:  # else once it is published: _publish_cosigned
                        self._collect()
            self._refusing = True
            await self._stored.wait()
            for _ in range(FINAL_ATTEMPTS):
                if not self._pending and self._cut is None:
                    return True
                if self.metrics.epoch_failing:  # a second at most: the operator waits
                    await asyncio.sleep(min(self._until_due(), 1.0))
                with contextlib.suppress(Exception):  # logged
                    await self.close_epoch()
            return not self._pending and self._cut is None

    # Root stream

    def _publish(self, number: int, message: EpochMessage) -> None:
        frame = message.to_json()
        self.metrics.published_epoch, self.metrics.last_publish_time = number, self.clock()
        for sub in list(self._subscribers):
            if sub.offer is not None:
                delivered = sub.offer(frame)
            elif delivered := sub.queue.qsize() < self.config.subscriber_queue:
                sub.queue.put_nowait((number, frame))
            if not delivered:
                self._shed(sub)
        self.metrics.subscribers = len(self._subscribers)

    def _publish_cosigned(self, number: int, message: EpochMessage) -> None:
        """The witnesses' publisher hands out an epoch, the database thread
        idle; then, while ``run`` runs, collects garbage: not before, where a
        collection would hold the GIL from the witnesses' threads."""
        with self._db.held():
            self._publish(number, message)
        if not gc.isenabled():
            self._collect()

    def _collect(self) -> None:
        """Garbage collection after an epoch (module docstring)."""
        gc.collect(2 if self.metrics.epoch % FULL_COLLECTION_EVERY == 0 else 1)

    def witness_stats(self) -> list[WitnessStats]:
        """Each configured witness's state, for /metrics."""
        return [] if self._witnesses is None else self._witnesses.stats()

    def _shed(self, sub: _Subscriber) -> None:
        """Drop ``sub`` now, counted; its stream ends with SubscriberShed."""
        sub.overflowed = True
        self._subscribers.discard(sub)
        self.metrics.shed_subscribers += 1
        self.metrics.subscribers = len(self._subscribers)
        sub.queue.put_nowait(None)  # room was reserved for this marker

    def shed(self, offer: Callable[[str], bool]) -> None:
        """The subscriber fed by ``offer`` stalled (the server saw it): drop it
        at once if it is subscribed yet, and count it as shed either way."""
        subs = [sub for sub in self._subscribers if sub.offer is offer]
        for sub in subs:
            self._shed(sub)
        if not subs:
            self.metrics.shed_subscribers += 1

    async def subscribe(
        self, since: int | None, offer: Callable[[str], bool] | None = None
    ) -> AsyncIterator[str]:
        """Frames from epoch ``since`` (or from the next one), without gap or duplicate.

        Stored epochs are yielded; live ones too, or, with ``offer``, handed to
        it as they are published, without a task switch per subscriber (it
        sends at once; False: too far behind). Ends when the engine closes.

        Raises:
            SubscriberShed: the subscriber fell too far behind and was dropped.
        """
        next_epoch = self.metrics.published_epoch + 1 if since is None else since
        # Replay from storage until caught up; the check and the registration
        # below run without an await in between, so no epoch falls in a gap.
        while next_epoch <= self.metrics.published_epoch:
            yield await self._db_call(self._stored_frame, next_epoch)
            next_epoch += 1
        sub = _Subscriber(asyncio.Queue(self.config.subscriber_queue + 1), offer)
        self._subscribers.add(sub)
        self.metrics.subscribers = len(self._subscribers)
        try:
            while (item := await sub.queue.get()) is not None:
                yield item[1]
            if sub.overflowed:
                raise SubscriberShed(f"more than {self.config.subscriber_queue} epochs behind")
        finally:
            self._subscribers.discard(sub)
            self.metrics.subscribers = len(self._subscribers)

    def _stored_frame(self, epoch: int) -> str:
        return self._stored_message(epoch).to_json()

    def _stored_message(self, epoch: int) -> EpochMessage:
        stored = self.store.epoch(epoch)
        return EpochMessage(
            record=stored.record,
            checkpoint=stored.checkpoint + self._stored_cosignatures(epoch),
            inclusion=tuple(self.store.inclusion_proof(epoch, epoch + 1)),
            consistency=tuple(self.store.consistency_proof(epoch, epoch + 1)),
            reports=self._stored_reports(stored.record),
        )

    def _stored_cosignatures(self, epoch: int) -> bytes:
        """The witnesses' cosignature lines stored for ``epoch`` (PROTOCOL §12.4)."""
        return "".join(row.line for row in self.store.cosignatures(epoch, epoch)).encode()

    def _cosigned(self, epoch: int, message: EpochMessage) -> EpochMessage:
        """``message`` with the cosignatures known of ``epoch`` attached."""
        return message if self._witnesses is None else self._witnesses.attach(epoch, message)

    def _stored_reports(self, record: bytes) -> tuple[bytes, ...]:
        """The signed reports a stored record binds, in its order (those kept)."""
        assets = EpochRecord.decode(record).assets
        hashes = [s.report_hash for a in assets for s in a.sources if s.attested]
        notes = self.store.reserve_reports(hashes) if hashes else {}
        return tuple(notes[h] for h in hashes if h in notes)

    # Proofs

    def user_token(self, user: str) -> str:
        """The bearer token the custodian hands ``user`` for /proof."""
        return tokens.user_token(self.config.proof_secret, user)

    def check_user_token(self, user: str, token: str) -> bool:
        return tokens.check_user_token(self.config.proof_secret, user, token)

    async def export_proofs(
        self, progress: Callable[[int, int], Awaitable[None]]
    ) -> tuple[int, Path, int]:
        """Write every user's proof for the latest epoch into a new directory
        under ``export_dir`` (prover/export.py).

        The trees are copied first (one pause of the tree worker), so epochs go
        on while the files are written. Returns (epoch, directory, files written).
        """
        assert self._worker is not None
        async with self._epoch_lock:
            if self._latest is None:
                raise ProverError("no epoch has been published yet")
            if self._cut is not None:  # the trees are ahead of the latest record
                raise ProverError(f"epoch {self.metrics.epoch + 1} is failing; export later")
            message, epoch, worker = self._latest, self.metrics.epoch, self._worker
            out = create_export_dir(self.config.export_path, epoch)
            users = await worker.snapshot()
        written = 0
        for start in range(0, users, EXPORT_CHUNK):
            async with self._epoch_lock:  # the worker may be swapped by a salt rotation
                if worker is not self._worker:
                    raise ProverError("the salt period changed during the export; run it again")
                cosigned = self._cosigned(epoch, message)  # those come in meanwhile too
                written += await worker.export(out, start, EXPORT_CHUNK, cosigned)
            await progress(min(start + EXPORT_CHUNK, users), users)
        return epoch, out, written

    async def proof(self, user: str, epoch: int | None = None) -> ProofFile | None:
        """``user``'s proof for ``epoch``, by default the latest epoch cosigned
        by ``witness_quorum`` witnesses if there are witnesses (PROTOCOL §11.3;
        the latest if none is, or if its trees are no longer retained), else
        the latest (see ``_proof``)."""
        witnesses = self._witnesses
        cosigned = None if witnesses is None or not witnesses.quorum else witnesses.quorum_epoch
        if epoch is None and cosigned is not None:
            with contextlib.suppress(NotRetained):
                return await self._proof(user, cosigned)
        return await self._proof(user, epoch)

    async def _proof(self, user: str, epoch: int | None = None) -> ProofFile | None:
        """``user``'s proof for the latest epoch, or for ``epoch`` if it is
        one of the last ``proof_epochs`` of this salt period, with the
        cosignatures known; None if they held nothing then.

        Raises:
            NotRetained: ``epoch`` is not (or no longer, or not yet) served;
                also the latest while an epoch waits for a retry and no
                earlier trees are retained (the current ones are ahead of it).
        """
        assert self._worker is not None
        async with self._epoch_lock:  # the trees and the record must match
            if self._latest is None:
                return None
            latest = self.metrics.epoch
            ahead = 0 if self._cut is None else 1  # applied by a close that failed
            if epoch is None or epoch == latest:
                epoch, message = latest, self._latest
                found = await self._worker.proof(user, ahead)
            elif not 0 <= epoch < latest:
                raise NotRetained(f"epoch {epoch} is not published yet (latest: {latest})")
            else:
                found = await self._worker.proof(user, latest - epoch + ahead)
                message = await self._db_call(self._stored_message, epoch)
        if found is None:
            return None
        message = self._cosigned(epoch, message)
        return ProofFile(
            user=user,
            salt=found.salt,
            assets=tuple(
                AssetPath(asset, slot, balance, path)
                for asset, slot, balance, path in found.entries
            ),
            record=message.record,
            inclusion=message.inclusion,
            checkpoint=message.checkpoint,
        )


class _FoldStopped(Exception):
    """Raised in a fold's thread at its next pause once the engine closes."""


_closing: list[float] = []  # the switch interval to restore, once per close under way


@contextlib.contextmanager
def _quick_gil_handoffs() -> Iterator[None]:
    """Python's switch interval at ``CLOSE_SWITCH_INTERVAL`` (module docstring),
    then, once no engine of the process is closing an epoch, back as it was."""
    _closing.append(sys.getswitchinterval() if not _closing else _closing[0])
    sys.setswitchinterval(CLOSE_SWITCH_INTERVAL)
    try:
        yield
    finally:
        interval = _closing.pop()
        if not _closing:
            sys.setswitchinterval(interval)


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """Python's cyclic garbage collector off, then back as it was; meanwhile the
    caller collects (module docstring)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
