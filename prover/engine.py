"""The prover's engine: the epoch close, and the wiring of ingest, trees,
storage, witnesses, the root stream and proofs, without sockets.

The server (prover/server.py) and the daemon feed it; tests drive it
directly. Order of work for one epoch (docs/PROTOCOL.md §11):

1. take the balance updates acknowledged since the last epoch;
2. the tree worker applies them and returns every asset's root;
3. build the record (reserves as last reported, stale sources flagged);
4. append its header to the log, keeping the whole record in the epoch's
   row, sign the checkpoint, commit all in one transaction; only then
5. publish to subscribers (with witnesses: once cosigned, prover/witnesses.py).

Invariants:

- One epoch closes at a time, under the epoch lock; proofs and exports take
  it too, so the trees they read match the record.
- Every storage call runs on one database thread (prover/dbthread.py), in
  order, but for an epoch's commit, which is urgent: it goes ahead of the
  ingest batches waiting. From the commit until the epoch is handed to its
  subscribers (or witnesses) the thread is ``held()`` idle.
- A committed epoch is handed to ``Publication`` (prover/publication.py):
  to the subscribers at once, or through the witnesses.
- While an epoch closes, background storage work holds back
  (``Pacing.closing``, prover/folding.py) and the switch interval is short
  (prover/runtime.py).
- A failed close keeps its cut (``_Cut``): the retry commits it as it is,
  so the trees never apply an epoch's updates twice; a retry commits only
  if the failed attempt did not commit after all.
- Construction does no I/O and starts nothing; ``start`` starts the
  database thread, the tree workers and the witnesses, ``close`` stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.backoff import Backoff
from prover.config import Config
from prover.dbthread import DbThread
from prover.epoch import Reserve, build_record, record_reports
from prover.folding import Folder, Pacing
from prover.frames import Encoding, Frame
from prover.ingest import IngestResult, Intake
from prover.mapped import MappedRecord
from prover.messages import Batch
from prover.metrics import Metrics, epoch_health
from prover.proofs import Proofs, Tip
from prover.publication import Publication
from prover.rotation import Rotation
from prover.runtime import collect_after, collector_off, quick_gil_handoffs
from prover.stored import stored_record
from prover.witnesses import WitnessStats
from prover.worker_messages import Applied, Row
from storage.errors import StorageError
from storage.store import ReserveRow, Store
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.proof import ProofFile
from verifier.stream import EpochMessage
from verifier.subscription import ALL_ASSETS, Subscription

__all__ = ["Engine", "IngestResult", "Metrics"]

log = logging.getLogger("solvency.prover")
T = TypeVar("T")
EPOCH_RETRY = Backoff(first=0.1, cap=10.0)  # seconds between attempts at a failing epoch
FINAL_ATTEMPTS = 3  # at the last epoch, on stop: then the updates wait for a restart


@dataclass(frozen=True, slots=True)
class _Cut:
    """An epoch cut and applied to the trees, not yet committed. A failed
    close keeps it, and the retry commits it as it is: the trees never apply
    an epoch's updates twice, and the trees keep one apply per epoch."""

    now: float
    rows: int
    marks: dict[tuple[str, str], int]
    reserves: dict[str, dict[str, Reserve]]
    applied: Applied


class Engine:
    """One prover's ingest, epochs, root stream and proofs (module docstring);
    the trees are held by ``config.tree_workers`` processes (prover/pool.py)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        key: Ed25519PrivateKey,
        previous_keys: tuple[Ed25519PrivateKey, ...] = (),  # still co-signing after a rotation
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.config, self.store, self.key, self.previous_keys = config, store, key, previous_keys
        self.clock = clock
        self.metrics = Metrics() if metrics is None else metrics
        self.verifier_key = verifier_key_for(config.origin, key.public_key())
        self._db = DbThread()
        self._epoch_lock = asyncio.Lock()
        self._latest: EpochMessage | None = None  # the last epoch committed in this run
        self._latest_record: MappedRecord | None = None  # and its record
        self._last_timestamp_ms = 0
        self._cut: _Cut | None = None  # set from an epoch's apply until its commit
        self._retry_at = 0.0  # time.monotonic() of the next attempt at a failing epoch
        self._pacing = Pacing(self._db)
        self._folder = Folder(store, self._db, self._pacing, self.metrics)
        self._rotation = Rotation(config, store, self._db, self._pacing, clock, config.tree_workers)
        self._intake = Intake(config, store, self._db, self.metrics, clock, self._stage)
        self._publication = Publication(config, store, self._db, self.metrics, clock)
        self._witnesses = self._publication.witnesses  # publication waits for their cosignatures
        self._proofs = Proofs(
            config, store, self._db, self._epoch_lock, self._rotation, self._witnesses, self._tip
        )

    async def _db_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._db.submit(fn, *args))

    def _stage(self, rows: list[Row]) -> None:
        """Send acknowledged rows to the trees ahead of the close (prover/rotation.py)."""
        self._rotation.stage(rows)

    def _tip(self) -> Tip | None:
        if self._latest is None or self._latest_record is None:
            return None
        return Tip(self.metrics.epoch, self._latest, self._latest_record, self._cut is not None)

    # Start and stop

    async def start(self) -> None:
        """Start the database thread, load state from storage and build every
        tree (a new salt period), with the garbage collector off, then
        collect once; start the witnesses.

        Raises:
            UnreadableEpoch: the last stored epoch is of another layout.
        """
        self._db.start()
        with collector_off():
            await self._intake.load()
            latest = await self._db_call(self.store.latest_epoch)
            last: MappedRecord | None = None  # its record: the one before the next epoch's
            if latest is not None:
                self.metrics.epoch = self.metrics.published_epoch = latest.number
                last = MappedRecord(stored_record(latest))
                self._last_timestamp_ms = last.record.timestamp_ms
                self.metrics.last_epoch_time = self._last_timestamp_ms / 1000
                await self._db_call(self.store.log_root)  # warm the log's subtree cache
            await self._rotation.start(self._intake.decimals)
            self.metrics.unfolded_updates = await self._db_call(self.store.journal_backlog)
            await self._publication.start(self.metrics.epoch, last)
        gc.collect()

    async def close(self) -> None:
        """Publish the epochs waiting for witnesses, end every root stream,
        stop the trees and a fold under way, then the database thread."""
        await self._publication.close()
        await self._rotation.close()
        await self._folder.stop()  # it stops at its next pause (store.fold: safe)
        self._db.shutdown()

    # Ingest

    async def ingest(self, batch: Batch) -> IngestResult:
        """Durably store ``batch`` and stage it for the next epoch (prover/ingest.py).

        Raises:
            IngestError: if anything in the batch is refused (nothing is applied);
                ``shutting-down`` once ``run`` is stopping.
        """
        return await self._intake.ingest(batch)

    # Epochs

    def health(self) -> str | None:
        """None while epochs keep coming, else why not: the last attempt at
        an epoch failed, or the last epoch is over two heartbeats old."""
        return epoch_health(self.metrics, self.clock(), self.config.max_interval)

    def _until_due(self) -> float:
        """Seconds until the next epoch closes: one interval after the last close
        if updates are waiting, else at the heartbeat; after a failure, at the
        retry (0: now)."""
        if self.metrics.epoch_failing:
            return max(0.0, self._retry_at - time.monotonic())
        pending = self._intake.pending
        limit = self.config.epoch_interval if pending else self.config.max_interval
        return max(0.0, self.metrics.last_epoch_time + limit - self.clock())

    async def run(self, stop: asyncio.Event) -> bool:
        """Close epochs on schedule until ``stop`` is set; a failed epoch is
        retried after a backoff (``close_epoch``). Then refuse further ingest,
        let the batches being stored finish (they are acknowledged), and close
        one last epoch if updates are waiting, so that nothing acknowledged is
        left unpublished: True once it is, False if it failed ``FINAL_ATTEMPTS``
        times, a second apart at most (its updates are stored: the first epoch
        after a restart has them).
        Meanwhile, garbage is collected after each epoch only (prover/runtime.py)."""
        poll = self.config.epoch_interval / 20  # to notice the first update after a quiet spell
        with collector_off():
            while not stop.is_set():
                due = self._until_due()
                wait = due if self._intake.pending else min(due, poll)
                expected = time.perf_counter() + wait
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                self.metrics.loop_lag_seconds = max(0.0, time.perf_counter() - expected)
                if self._until_due() == 0 and not stop.is_set():
                    with contextlib.suppress(Exception):  # logged; retried when due
                        await self.close_epoch()
                    if self._witnesses is None:  # else once it is published (Publication)
                        collect_after(self.metrics.epoch)
            self._intake.refuse()
            await self._intake.drained()
            for _ in range(FINAL_ATTEMPTS):
                if not self._intake.pending and self._cut is None:
                    return True
                if self.metrics.epoch_failing:  # a second at most: the operator waits
                    await asyncio.sleep(min(self._until_due(), 1.0))
                with contextlib.suppress(Exception):  # logged
                    await self.close_epoch()
            return not self._intake.pending and self._cut is None

    async def close_epoch(self) -> EpochMessage:
        """Close one epoch (steps 1-5 of the module docstring); after a failure
        (counted, logged, reported by ``health``), the next call retries it."""
        async with self._epoch_lock:
            with self._pacing.closing():
                try:
                    with quick_gil_handoffs():
                        return await self._close_epoch()
                except Exception as exc:
                    self._epoch_failed(exc)
                    raise
                finally:
                    self._rotation.trees.release()

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
            rows, marks, reserves = self._intake.cut()
            try:
                applied = await self._rotation.apply()
            except BaseException:  # still staged in the trees: the next apply takes them
                self._intake.restore(rows)
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
            decimals=self._intake.decimals,
            roots=applied.roots,
            reserves=reserves,
        )
        leaf, record = built.header.encode(), built.encode()
        reports, mapped = record_reports(built, reserves), MappedRecord(built)
        used = [
            ReserveRow(asset, source, r.amount, r.as_of_ms)
            for asset, by_source in reserves.items()
            for source, r in by_source.items()
        ]
        committing = time.perf_counter()
        commit = self._db.submit(
            self._commit_epoch,
            number,
            leaf,
            record,
            timestamp_ms,
            cut.marks,
            used,
            retry,
            urgent=True,
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
            self.metrics.epoch_close.observe(committed - started)
            self.metrics.last_epoch_time = now
            self._latest, self._latest_record = message, mapped
            self._publication.committed(number, message, mapped, committed)
        published, handing_cpu = time.perf_counter(), time.thread_time() - handing_cpu
        self._folder.when_due()
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

    def _commit_epoch(
        self,
        number: int,
        leaf: bytes,
        record: bytes,
        timestamp_ms: int,
        marks: dict[tuple[str, str], int],
        reserves: list[ReserveRow],
        retry: bool,
    ) -> EpochMessage:
        """In the db thread: append (the ``leaf``, the record's header, to the
        log, the whole ``record`` in the epoch's row), sign and commit in one
        transaction; on a ``retry``, only if the failed attempt did not commit
        it after all."""

        def sign(size: int, root: bytes) -> bytes:
            body = Checkpoint(self.config.origin, size, root).to_note_body()
            return sign_note(body, self.config.origin, self.key, *self.previous_keys)

        stored = self.store.latest_epoch() if retry else None
        if stored is not None and stored.number == number and stored.record == record:
            checkpoint = stored.checkpoint  # e.g. the connection failed after the commit
        else:
            checkpoint = self.store.append_epoch(
                number, leaf, record, sign, created_ms=timestamp_ms, marks=marks, reserves=reserves
            )
        return EpochMessage(
            record=record,
            checkpoint=checkpoint,
            inclusion=tuple(self.store.inclusion_proof(number, number + 1)),
        )

    # Publication (prover/publication.py): the root stream and the witnesses

    def witness_stats(self) -> list[WitnessStats]:
        """Each configured witness's state, for /metrics."""
        return self._publication.witness_stats()

    def subscribe(
        self,
        since: int | None,
        offer: Callable[[Frame], bool] | None = None,
        subscription: Subscription = ALL_ASSETS,
        encoding: Encoding = Encoding.JSON,
    ) -> AsyncIterator[Frame]:
        """Frames of ``subscription`` in ``encoding`` from epoch ``since`` on,
        without gap or duplicate (``Fanout.subscribe``)."""
        return self._publication.fanout.subscribe(since, offer, subscription, encoding)

    def shed(self, offer: Callable[[Frame], bool]) -> None:
        """The subscriber fed by ``offer`` stalled: drop it (``Fanout.shed``)."""
        self._publication.fanout.shed(offer)

    # Proofs (prover/proofs.py)

    def user_token(self, user: str) -> str:
        """The bearer token the custodian hands ``user`` for /proof."""
        return self._proofs.user_token(user)

    def check_user_token(self, user: str, token: str) -> bool:
        return self._proofs.check_user_token(user, token)

    async def proof(self, user: str, epoch: int | None = None) -> ProofFile | None:
        """``user``'s proof for ``epoch`` (``Proofs.proof``)."""
        return await self._proofs.proof(user, epoch)

    async def export_proofs(
        self, progress: Callable[[int, int], Awaitable[None]]
    ) -> tuple[int, Path, int]:
        """Write every user's proof for the latest epoch into a new directory
        under ``export_dir``; (epoch, directory, files written) (``Proofs.export``)."""
        return await self._proofs.export(progress)
