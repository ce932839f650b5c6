"""The journal's fold into the balances table, and the pacing of background
storage work around epoch closes.

Acknowledged balances go to the store's journal; once ``FOLD_AFTER`` of them
wait there, the journal is folded into the balances table: read and sorted
in a thread of its own, written in transactions of ``FOLD_CHUNK`` balances
that the database thread runs in turn with the ingest batches.

Invariants:

- ``Pacing``: while an epoch closes (``closing``), no background write step
  (a fold's, or a new salt period's load) is submitted to the database
  thread, so the epoch's commit never queues behind one (a step already
  submitted completes); background readers wait at their next pause too.
- A fold rests after each piece of its work ``FOLD_REST`` times as long as
  the piece took, taking a share of the CPU and the GIL, not all of it.
- One fold at a time. Once ``stop`` is called, a fold stops at its next
  pause; ``Store.fold`` is safe to stop there (the journal stays whole until
  its last step, and the next fold finishes the work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from prover.dbthread import DbThread
from prover.metrics import Metrics
from storage.store import Store

__all__ = ["FOLD_AFTER", "FOLD_CHUNK", "FOLD_REST", "Folder", "Pacing"]

log = logging.getLogger("solvency.prover")
FOLD_AFTER = 3_000_000  # journaled balance updates between two folds
FOLD_REST = 1.0  # a fold rests this many times as long as each piece of its work took
FOLD_CHUNK = 5_000  # balances per transaction of a fold: others wait ~25 ms at most


class Pacing:
    """Background storage work held back while an epoch closes (module docstring)."""

    def __init__(self, db: DbThread) -> None:
        self._db = db
        self._no_close = threading.Event()  # clear while an epoch closes
        self._no_close.set()

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        """An epoch closes inside the block: background work holds back."""
        self._no_close.clear()
        try:
            yield
        finally:
            self._no_close.set()

    def wait(self) -> None:
        """From another thread: return once no epoch is closing."""
        self._no_close.wait()

    def on_db_thread(self, step: Callable[[], None]) -> None:
        """From another thread: run a write ``step`` on the database thread, in
        turn with ingest, so that neither waits on the database's lock; not
        while an epoch closes, so that its commit never queues behind it."""
        self._no_close.wait()
        self._db.submit(step).result()


class _FoldStopped(Exception):
    """Raised in a fold's thread at its next pause once the fold is stopped."""


class Folder:
    """Starts folds when due and stops the one under way (module docstring)."""

    def __init__(self, store: Store, db: DbThread, pacing: Pacing, metrics: Metrics) -> None:
        self._store, self._db, self._pacing, self._metrics = store, db, pacing, metrics
        self._stopping = threading.Event()  # set by stop: a fold under way stops
        self.task: asyncio.Task[None] | None = None  # the last fold started

    def when_due(self) -> None:
        """Start folding the journal into the balances table once ``FOLD_AFTER``
        updates wait there; one fold at a time."""
        if self._metrics.unfolded_updates < FOLD_AFTER:
            return
        if self.task is not None and not self.task.done():
            return
        self.task = asyncio.create_task(self._fold())

    async def stop(self) -> None:
        """Stop the fold under way at its next pause, and wait for it."""
        if self.task is not None:
            self._stopping.set()
            with contextlib.suppress(BaseException):
                await self.task

    async def _fold(self) -> None:
        """Read and sort in a thread of its own, write each chunk on the db
        thread; pause while an epoch closes, and rest after each piece of work
        as long as it took (``FOLD_REST``)."""
        started = worked_since = time.perf_counter()

        def pause() -> None:
            nonlocal worked_since
            time.sleep((time.perf_counter() - worked_since) * FOLD_REST)
            self._pacing.wait()
            if self._stopping.is_set():
                raise _FoldStopped
            worked_since = time.perf_counter()

        def write(step: Callable[[], None]) -> None:
            pause()
            self._pacing.on_db_thread(step)

        try:
            folded = await asyncio.to_thread(self._store.fold, FOLD_CHUNK, write, pause)
            backlog = await asyncio.wrap_future(self._db.submit(self._store.journal_backlog))
            self._metrics.unfolded_updates = backlog
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
