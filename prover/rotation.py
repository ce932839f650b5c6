"""The trees of the current salt period (a ``TreePool``, prover/pool.py), and
the rotation to the next period (docs/PROTOCOL.md §2.5) without holding up
the epochs.

A rotation is due once the period is ``salt_period`` seconds old, or early,
once some asset's tree would run out of room (``Applied.room``: a tree whose
period has no slot left grows a level inside an epoch's close) within
``TRIGGER`` times the time a rotation takes, at the rate its slots are
taken. The next period's trees leave room for each asset's rate for
``ROOM_LEADS`` times that time, so that they do not trigger again soon
(prover/growth.py, the rule the sharded coordinator follows too).

A rotation goes on in the background while epochs close with the current
trees:

1. the next period's trees are built from the stored balances, read from
   one snapshot without a fold (``Store.read_balances``, paced around epoch
   closes, prover/folding.py): from the ``balances`` table, the journal's
   lines being kept to stage; every row acknowledged meanwhile is kept in a
   backlog;
2. once they are built, the journal's lines, then the backlog, are staged
   into them in order, then every row
   acknowledged is staged into both the current and the next trees; the
   next trees' workers hash them ahead while idle;
3. after each apply, the next trees are asked how many staged updates they
   have not hashed yet; at the first apply after an answer of at most
   ``CAUGHT_UP``, the next trees apply the epoch instead of the current
   ones, and become the current ones. The old ones are closed in the
   background.

Invariants:

- The next trees hold the stored balances as read after their load began
  (the table, then the journal's lines over it), then every row
  acknowledged since it began, in order. A row sets a
  balance (it is no change), so one the read saw as well is set again to
  the same value in its place in the order. The switching apply applies
  what is staged in them, as the current trees' apply would have.
- The switch happens inside an epoch's apply, under the engine's epoch
  lock, so proofs and exports (under that lock too) never see half of it;
  an export under way notices that ``trees`` changed.
- A load, or a switching apply, that fails is logged and the current period
  kept; a tree whose room runs out anyway grows in the close, as without
  rotations (``grown_in_close`` counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prover.config import Config
from prover.dbthread import DbThread
from prover.folding import Pacing
from prover.growth import ROOM_LEADS, TRIGGER, Growth, early, next_room, track
from prover.periods import SaltPeriod
from prover.pool import TreePool, Trees
from prover.worker import EAGER_ROWS
from prover.worker_messages import Applied, Row
from storage.store import Store

__all__ = [
    "CAUGHT_UP",
    "LOAD_CHUNK",
    "ROOM_LEADS",
    "START_ROOM_SHARE",
    "SWITCH_EPOCHS",
    "TRIGGER",
    "Rotation",
]

log = logging.getLogger("solvency.prover")
LOAD_CHUNK = 50_000  # balances read at a time when a period's trees are built
FEED_CHUNK = 50_000  # backlog rows staged into the next trees at a time
SWITCH_EPOCHS = 2  # epochs from a build's end to the switch: backlog staged, asked, switched
CAUGHT_UP = 2 * EAGER_ROWS  # unhashed updates in the next trees that allow the switch
# The start-up trees leave room for this share of their holders: nothing is
# known of their growth yet, and until a first rotation can be built, a tree
# that fills grows in a close.
START_ROOM_SHARE = 0.125


@dataclass
class _Next:
    """The next period while it is built and catches up (module docstring)."""

    load: asyncio.Task[tuple[TreePool, SaltPeriod, list[Row]]]
    backlog: list[Row] = field(default_factory=list)  # acknowledged, not yet staged in ``trees``
    trees: TreePool | None = None  # once built
    period: SaltPeriod | None = None
    direct: bool = False  # the backlog is staged: rows go to ``trees`` as they come
    behind: int | None = None  # unhashed updates in ``trees``, as last told
    asking: bool = False  # a question about that is under way


class Rotation:
    """Salt periods and their trees, each period's held by ``workers`` tree
    workers (module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        db: DbThread,
        pacing: Pacing,
        clock: Callable[[], float],
        workers: int = 1,
    ) -> None:
        self._config, self._store, self._db, self._pacing = config, store, db, pacing
        self._clock, self._workers = clock, workers
        self._assets: list[str] = []
        self._trees: TreePool | None = None
        self._period: SaltPeriod | None = None
        self._next: _Next | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # staging, asking, closing old trees
        self._build_seconds = 0.0  # how long the last build took (by ``clock``)
        self._growth: dict[str, Growth] = {}
        self._switched = False  # since the last apply: every room is a new baseline
        self._heights: dict[str, int] = {}  # of the trees at the last apply
        self.early_rotations = 0  # started because a tree was filling up
        self.grown_in_close = 0  # trees that grew a level inside a close all the same

    @property
    def trees(self) -> Trees:
        """The current period's trees (once ``start`` has run)."""
        assert self._trees is not None
        return self._trees

    @property
    def loading(self) -> bool:
        """True from the start of a rotation until its switch."""
        return self._next is not None

    async def start(self, assets: Iterable[str]) -> None:
        """Begin a new salt period with every tree of ``assets``."""
        self._assets = sorted(assets)
        self._trees, self._period, _ = await self._new_period(room_share=START_ROOM_SHARE)

    async def close(self) -> None:
        """Stop a rotation under way, and every tree worker."""
        if (upcoming := self._next) is not None:
            self._drop(upcoming)
            with contextlib.suppress(BaseException):  # a load stops, closing its trees
                await upcoming.load
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._trees is not None:
            await self._trees.close()

    async def _new_period(
        self, room: dict[str, int] | None = None, room_share: float = 0.0, ahead: bool = False
    ) -> tuple[TreePool, SaltPeriod, list[Row]]:
        """Every tree of a new salt period (``TreePool.build``'s room and
        ``ahead``), and the rows to stage into them before any acknowledged
        since: at start-up, built from the folded balances, none to stage;
        ahead, built from the ``balances`` table as read without a fold, the
        journal's lines of that read to stage (``Store.read_balances``)."""
        began = self._clock()
        started = self._store.start_salt_period
        row = await asyncio.wrap_future(self._db.submit(started, int(began * 1000)))
        period = SaltPeriod(row.number, row.started_ms, row.secret)
        trees = TreePool(self._workers)
        journal: list[Row] = []
        if ahead:
            chunks = self._read_table(journal)
        else:
            chunks = self._store.iter_balances(
                LOAD_CHUNK, self._pacing.on_db_thread, self._pacing.wait
            )
        try:
            await trees.build(
                period,
                self._assets,
                chunks,
                self._config.proof_epochs,
                self._config.proof_memory_mb << 20,
                room,
                room_share,
                ahead,
            )
        except BaseException:
            await trees.close()
            raise
        self._build_seconds = max(0.0, self._clock() - began)
        return trees, period, journal

    def _read_table(self, journal: list[Row]) -> Iterator[list[Row]]:
        """The table's rows of ``Store.read_balances``, its journal lines put in
        ``journal`` (in order: they go over the table's, last one winning)."""
        for chunk in self._store.read_balances(LOAD_CHUNK, self._pacing.wait):
            if chunk.journaled:
                journal.extend(chunk.rows)
            else:
                yield chunk.rows

    def stage(self, rows: list[Row]) -> None:
        """Send acknowledged rows to the current trees ahead of the close, and
        to the next period's, or its backlog, during a rotation."""
        self.trees.stage(rows)
        if (upcoming := self._next) is None:
            return
        if upcoming.direct:
            assert upcoming.trees is not None
            upcoming.trees.stage(rows)
        else:
            upcoming.backlog.extend(rows)

    async def apply(self) -> Applied:
        """Apply the rows staged in the current trees, or switch to the next
        period's trees once they have caught up; then start a rotation if one
        is due, or ask how far the next trees are behind."""
        applied = None
        upcoming = self._next
        if upcoming is not None and upcoming.behind is not None and upcoming.behind <= CAUGHT_UP:
            applied = await self._switch(upcoming)
        if applied is None:
            assert self._trees is not None
            applied = await self._trees.apply([], [])
        self._watch(applied)
        if (upcoming := self._next) is not None and upcoming.direct and not upcoming.asking:
            upcoming.behind, upcoming.asking = None, True
            self._spawn(self._ask(upcoming))
        return applied

    # The next period

    def _begin(self, room: dict[str, int]) -> None:
        """Start building the next period's trees, with ``room``, in the background."""
        load = asyncio.create_task(self._new_period(room, ahead=True))
        upcoming = self._next = _Next(load)
        load.add_done_callback(functools.partial(self._built, upcoming))

    def _built(
        self, upcoming: _Next, load: asyncio.Task[tuple[TreePool, SaltPeriod, list[Row]]]
    ) -> None:
        """The next period's trees are built: stage the journal's lines of their
        read, then the backlog, into them."""
        if load.cancelled():
            return
        if (error := load.exception()) is not None:
            log.error(
                "building the next salt period failed; keeping the current one",
                exc_info=error,
            )
            if self._next is upcoming:
                self._next = None
            return
        if self._next is not upcoming:  # dropped meanwhile, its trees closed by ``_drop``
            return
        upcoming.trees, upcoming.period, journal = load.result()
        log.info(
            "salt period %d built in %.1f s; staging %d unfolded updates read"
            " and the %d updates acknowledged meanwhile",
            upcoming.period.number,
            self._build_seconds,
            len(journal),
            len(upcoming.backlog),
        )
        upcoming.backlog[:0] = journal  # first: the backlog's rows are as new or newer
        self._spawn(self._feed(upcoming))

    async def _feed(self, upcoming: _Next) -> None:
        """Stage the backlog into the next trees a chunk at a time, letting
        ingest and epochs run in between; then rows go to them as they come."""
        trees, sent = upcoming.trees, 0
        assert trees is not None
        while sent < len(upcoming.backlog):
            if self._next is not upcoming:
                return
            chunk = upcoming.backlog[sent : sent + FEED_CHUNK]
            trees.stage(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)
        upcoming.backlog, upcoming.direct = [], True

    async def _ask(self, upcoming: _Next) -> None:
        """Ask the next trees how many staged updates they have not hashed."""
        assert upcoming.trees is not None
        try:
            behind = await upcoming.trees.unhashed()
        except Exception:
            log.exception("the next salt period's trees failed; keeping the current period")
            if self._next is upcoming:
                self._drop(upcoming)
            return
        finally:
            upcoming.asking = False
        upcoming.behind = behind

    async def _switch(self, upcoming: _Next) -> Applied | None:
        """Apply the epoch to the next trees and make them the current ones;
        None (the rotation dropped) if they fail."""
        trees, period = upcoming.trees, upcoming.period
        assert trees is not None and period is not None
        try:
            applied = await trees.apply([], [])
        except Exception:
            log.exception("the next salt period's trees failed an apply; keeping the current one")
            self._drop(upcoming)
            return None
        old, self._trees, self._period, self._next = self._trees, trees, period, None
        assert old is not None
        self._spawn(old.close())
        self._switched = True
        log.info(
            "salt period %d began: new salts and slots for every user"
            " (%d updates left to hash at the switch)",
            period.number,
            applied.unhashed,
        )
        return applied

    def _drop(self, upcoming: _Next) -> None:
        """Give up the rotation under way; its trees are closed in the background."""
        if self._next is upcoming:
            self._next = None
        load = upcoming.load
        if not load.done():
            load.cancel()  # its trees are closed by ``_new_period``
        elif not load.cancelled() and load.exception() is None:
            self._spawn(load.result()[0].close())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Growth

    def _watch(self, applied: Applied) -> None:
        """Follow each tree's height and room; start a rotation if one is due."""
        now = self._clock()
        if applied.grown:
            self.grown_in_close += len(applied.grown)
            log.warning(
                "the tree of %s grew a level in an epoch's close: its room ran out"
                " before a new salt period was ready",
                ", ".join(applied.grown),
            )
        self._heights = {r.asset: r.height for r in applied.roots}
        track(self._growth, applied.room, now, self._switched)
        self._switched = False
        if self._next is None:
            self._rotate_if_due(now)

    def _rotate_if_due(self, now: float) -> None:
        """Start a rotation if the period is over, or early if a tree fills
        within ``TRIGGER`` rotation times; log why."""
        assert self._period is not None
        lead = self._build_seconds + SWITCH_EPOCHS * self._config.epoch_interval
        age = now - self._period.started_ms / 1000
        why = early(self._growth, lead)
        if age >= self._config.salt_period:
            why = f"salt period {self._period.number} is over"
        elif why is None:
            return
        else:
            self.early_rotations += 1
        room = next_room(self._growth, self._heights, lead)
        log.info("%s: building the next salt period in the background", why)
        self._begin(room)
