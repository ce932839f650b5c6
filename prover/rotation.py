"""The trees of the current salt period (a ``TreePool``, prover/pool.py), and
the rotation to the next period (docs/PROTOCOL.md §2.5) without holding up
the epochs.

Once the period is ``salt_period`` seconds old, an epoch's apply starts
loading the next period's trees in the background, from the stored
balances (paced around epoch closes, prover/folding.py); epochs go on with
the current trees meanwhile. The first apply after the load completes
switches to them.

Invariants:

- Every balance update reaches the new trees exactly once: the rows applied
  since the load started are replayed into the new trees at the switch,
  and the rows ingested since the epoch's cut (staged in the old trees
  only) are staged in the new ones.
- The switch happens inside an epoch's apply, under the engine's epoch
  lock, so proofs and exports (under that lock too) never see half of it;
  an export under way notices that ``trees`` changed.
- A load that fails is logged and the current period kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence

from prover.config import Config
from prover.dbthread import DbThread
from prover.folding import Pacing
from prover.periods import SaltPeriod
from prover.pool import TreePool, Trees
from prover.worker_messages import Applied, Row
from storage.store import Store

__all__ = ["LOAD_CHUNK", "Rotation"]

log = logging.getLogger("solvency.prover")
LOAD_CHUNK = 50_000  # balances read at a time when a period's trees are built


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
        # the next period's trees, built in the background, and the rows
        # applied since they started loading, replayed into them before the switch
        self._next: asyncio.Task[tuple[TreePool, SaltPeriod]] | None = None
        self._replay: list[Row] = []

    @property
    def trees(self) -> Trees:
        """The current period's trees (once ``start`` has run)."""
        assert self._trees is not None
        return self._trees

    @property
    def loading(self) -> bool:
        """True while the next period's trees are being built."""
        return self._next is not None

    async def start(self, assets: Iterable[str]) -> None:
        """Begin a new salt period with every tree of ``assets``."""
        self._assets = sorted(assets)
        self._trees, self._period = await self._new_period()

    async def close(self) -> None:
        """Stop the next period's load, if under way, and every tree worker."""
        if self._next is not None:
            self._next.cancel()
            with contextlib.suppress(BaseException):
                trees, _ = await self._next
                await trees.close()
        if self._trees is not None:
            await self._trees.close()

    async def _new_period(self) -> tuple[TreePool, SaltPeriod]:
        """Every tree of a new salt period, built from the stored balances."""
        started = self._store.start_salt_period
        row = await asyncio.wrap_future(self._db.submit(started, int(self._clock() * 1000)))
        period = SaltPeriod(row.number, row.started_ms, row.secret)
        trees = TreePool(self._workers)
        try:
            await trees.build(
                period,
                self._assets,
                self._store.iter_balances(LOAD_CHUNK, self._pacing.on_db_thread, self._pacing.wait),
                self._config.proof_epochs,
                self._config.proof_memory_mb << 20,
            )
        except BaseException:
            await trees.close()
            raise
        return trees, period

    async def apply(self, rows: list[Row], staged: Callable[[], Sequence[Row]]) -> Applied:
        """Apply an epoch's ``rows`` (already staged in the current trees) to
        them; start or complete a rotation when due. ``staged`` gives the
        rows ingested since the epoch's cut, at the switch."""
        current = self._trees
        assert current is not None and self._period is not None
        age = self._clock() - self._period.started_ms / 1000
        if self._next is None and age >= self._config.salt_period:
            self._next, self._replay = asyncio.create_task(self._new_period()), []
        if self._next is None:
            return await current.apply([], [])
        self._replay.extend(rows)
        if not self._next.done():
            return await current.apply([], [])
        task, self._next = self._next, None
        try:
            trees, period = task.result()
        except Exception:
            log.exception("building the next salt period failed; keeping the current one")
            return await current.apply([], [])
        applied = await trees.apply([], self._replay)
        self._trees, self._period, self._replay = trees, period, []
        if pending := staged():  # ingested since the cut, staged in the old trees only
            trees.stage(list(pending))
        await current.close()
        log.info("salt period %d began: new salts and slots for every user", period.number)
        return applied
