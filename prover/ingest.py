"""Ingest: batches checked, stored durably, and staged for the next epoch.

Invariants:

- A batch is acknowledged (its ``IngestResult`` returned) only once it is
  committed on the database thread; a refused batch applies nothing.
- What is acknowledged and not yet in an epoch is held here: the balance
  rows (``pending``, also staged in the current tree worker at once), each
  asset's reserves as last reported, and each source's last sequence
  number. An epoch's close takes all three at one instant (``cut``, no
  await) and, if its apply fails, puts the rows back in front (``restore``).
- Once ``refuse`` is called, every new batch is refused (``shutting-down``);
  ``drained`` waits for the batches being stored meanwhile (they are
  acknowledged). Between the refusal check and counting a batch as being
  stored there is no await.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prover.config import Config
from prover.dbthread import DbThread
from prover.epoch import Reserve
from prover.errors import IngestError
from prover.messages import (
    Batch,
    RequestId,
    ReserveBatch,
    ReserveReportBatch,
    ReserveReportUpdate,
    ReserveUpdate,
)
from prover.metrics import Metrics
from prover.worker import Row
from storage.errors import InvalidInputError, SequenceError, StorageError, UnknownAssetError
from storage.store import ApplyResult, Store
from verifier.checkpoint import VerifierKey

__all__ = ["BatchChecks", "IngestResult", "Intake"]

log = logging.getLogger("solvency.prover")
T = TypeVar("T")

Marks = dict[tuple[str, str], int]  # (kind, source) -> last sequence number stored
Reserves = dict[str, dict[str, Reserve]]  # asset -> source -> its latest report


@dataclass(frozen=True, slots=True)
class IngestResult:
    """A batch stored durably: what the ack reports (prover/messages.py ``ack``)."""

    id: RequestId
    source: str
    applied: int  # updates applied, the others being duplicates
    duplicates: int
    last_seq: int


@dataclass(frozen=True)
class BatchChecks:
    """What ingest checks of a parsed batch with no stored state: its assets
    are registered, no reserve is dated ahead of the clock by more than the
    allowed skew, and a source with attester keys sends signed reports,
    signed by one of its keys (docs/PROTOCOL.md §13.2). The daemon's intake
    and the sharded prover's front-ends both check these."""

    assets: frozenset[str]
    attesters: dict[str, tuple[VerifierKey, ...]]
    max_reserve_skew: float

    @classmethod
    def from_config(cls, config: Config) -> BatchChecks:
        return cls(
            frozenset(a.id for a in config.assets),
            config.attester_keys(),
            config.max_reserve_skew,
        )

    def check(self, batch: Batch, now: float) -> None:
        """Raises:
        IngestError: ``unknown-asset``, ``bad-update`` (an ``as_of_ms`` too
            far ahead of ``now``) or ``unattested``."""
        for update in batch.updates:
            if update.asset not in self.assets:
                raise IngestError("unknown-asset", f"asset {update.asset} is not configured", None)
        if not isinstance(batch, ReserveBatch | ReserveReportBatch):
            return
        limit = int((now + self.max_reserve_skew) * 1000)
        where = "reports" if isinstance(batch, ReserveReportBatch) else "updates"
        dated: tuple[ReserveUpdate | ReserveReportUpdate, ...] = batch.updates
        for i, r in enumerate(dated):
            if r.as_of_ms > limit:
                raise IngestError("bad-update", f"{where}[{i}]: as_of_ms is in the future", i)
        if isinstance(batch, ReserveReportBatch):
            self._check_signed(batch)
        elif batch.source in self.attesters:
            raise IngestError(
                "unattested",
                f"source {batch.source} has an attester key: send its reports signed "
                "(reserve-reports)",
            )

    def _check_signed(self, batch: ReserveReportBatch) -> None:
        """Every report signed by a key configured for the batch's source,
        else ``unattested`` naming the first that is not."""
        keys = self.attesters.get(batch.source)
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


class Intake:
    """Ingest and the state acknowledged since the last epoch (module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        db: DbThread,
        metrics: Metrics,
        clock: Callable[[], float],
        stage: Callable[[list[Row]], None],
    ) -> None:
        self._config, self._store, self._db = config, store, db
        self._metrics, self._clock, self._stage = metrics, clock, stage
        self.decimals: dict[str, int] = {}
        self.pending: list[Row] = []
        self._reserves: Reserves = {}
        self._marks: Marks = {}
        self._attesters = config.attester_keys()  # source -> its verifier keys
        self._refusing = False
        self._storing = 0  # batches being stored
        self._stored = asyncio.Event()  # set while no batch is being stored
        self._stored.set()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._db.submit(fn, *args))

    async def load(self) -> None:
        """Register the configured assets, then load what storage holds."""
        for asset in self._config.assets:
            await self._call(self._store.ensure_asset, asset.id, asset.decimals)
        self.decimals = {a.id: a.decimals for a in await self._call(self._store.assets)}
        rows = await self._call(self._store.reserves)
        notes = await self._call(self._store.reserve_reports, [r.report_hash for r in rows])
        for r in rows:
            self._reserves.setdefault(r.asset, {})[r.source] = Reserve(
                r.amount, r.as_of_ms, r.key_id, r.report_hash, notes.get(r.report_hash, b"")
            )
        self._marks = await self._call(self._store.source_marks)

    def cut(self) -> tuple[list[Row], Marks, Reserves]:
        """What the closing epoch covers: the pending rows (taken), and copies
        of the marks and reserves."""
        rows, self.pending = self.pending, []
        reserves = {asset: dict(by_source) for asset, by_source in self._reserves.items()}
        return rows, dict(self._marks), reserves

    def restore(self, rows: list[Row]) -> None:
        """Put back the rows of a cut whose apply failed, ahead of newer ones."""
        self.pending[:0] = rows

    def refuse(self) -> None:
        """Refuse every batch from now on."""
        self._refusing = True

    async def drained(self) -> None:
        """Return once no batch is being stored."""
        await self._stored.wait()

    async def ingest(self, batch: Batch) -> IngestResult:
        """Durably store ``batch`` and stage it for the next epoch.

        Raises:
            IngestError: if anything in the batch is refused (nothing is applied);
                ``shutting-down`` once ``refuse`` was called.
        """
        if self._refusing:
            raise IngestError("shutting-down", "the prover is stopping: send it again later")
        self._storing += 1  # no await since the check: ``drained`` waits for this batch
        self._stored.clear()
        try:
            started = time.perf_counter()
            result = await self._ingest(batch)
            self._metrics.ingest_batch.observe(time.perf_counter() - started)
            return result
        finally:
            self._storing -= 1
            if not self._storing:
                self._stored.set()

    async def _ingest(self, batch: Batch) -> IngestResult:
        BatchChecks(frozenset(self.decimals), self._attesters, self._config.max_reserve_skew).check(
            batch, self._clock()
        )
        if isinstance(batch, ReserveBatch | ReserveReportBatch):
            if isinstance(batch, ReserveReportBatch):
                result = await self._store_batch(self._store.apply_reserve_reports, batch)
                taken = [
                    (u.asset, Reserve(u.amount, u.as_of_ms, u.key_id, u.report_hash, u.note))
                    for u in batch.updates[len(batch.updates) - len(result.applied) :]
                ]
            else:
                result = await self._store_batch(self._store.apply_reserves, batch)
                taken = [
                    (r.asset, Reserve(r.amount, r.as_of_ms))
                    for r in batch.updates[len(batch.updates) - len(result.applied) :]
                ]
            for asset, reserve in taken:
                self._reserves.setdefault(asset, {})[batch.source] = reserve
            self._marks[("reserves", batch.source)] = result.last_seq
        else:
            result = await self._store_batch(self._store.apply_balances, batch)
            fresh = batch.updates[len(batch.updates) - len(result.applied) :]
            rows = [(u.user, u.asset, u.amount) for u in fresh]
            if rows:
                self.pending.extend(rows)
                self._stage(rows)  # transferred now, applied at the close
            self._marks[("balances", batch.source)] = result.last_seq
            self._metrics.updates += len(fresh)
            self._metrics.unfolded_updates += len(fresh)
        return IngestResult(
            batch.id, batch.source, len(result.applied), result.duplicates, result.last_seq
        )

    async def _store_batch(
        self, apply: Callable[[str, Any], ApplyResult], batch: Batch
    ) -> ApplyResult:
        """Commit a batch durably, turning storage refusals into ingest errors."""
        try:
            result = await self._call(apply, batch.source, batch.updates)
        except SequenceError as exc:
            raise IngestError("bad-seq", str(exc)) from None
        except UnknownAssetError as exc:
            raise IngestError("unknown-asset", str(exc)) from None
        except InvalidInputError as exc:  # amounts, identifiers: anything it refuses
            raise IngestError("bad-update", str(exc)) from None
        except StorageError as exc:
            log.error("could not store a batch from %s: %s", batch.source, exc)
            raise IngestError("internal", "the batch could not be stored; retry") from None
        return result
