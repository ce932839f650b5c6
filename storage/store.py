"""The prover's persistence: ``Store``, one façade over a database's parts.

``Store.open`` connects (SQLite file by default, PostgreSQL by URL) and
applies the Alembic migrations (storage/db.py). Each concern is a small class
holding the database, in a module of its own:

    assets.py        the asset registry
    marks.py         producer marks (what each source had acknowledged)
    ingest.py        applying producers' batches, durably, skipping replays
    journal.py       the balance journal, its fold, reading the balances
    reserves.py      the latest reserves and their signed reports
    periods.py       salt periods
    keys.py          the log's signing keys
    epochs.py        epochs, their marks and reserves, the log and its proofs
    cosignatures.py  witnesses' cosignatures of the epochs
    lease.py         the log writer's lease and its fencing token
    shards.py        each shard's state and holders as of its last close, as a
                     base and one delta a close, and their fold

Every public method but ``fold`` (a series of short transactions, safe to
interrupt) is one transaction: it commits whole, or raises having written
nothing (a ``StorageError`` for anything the store or the database refuses;
an exception from a caller's callback passes through unchanged). The store
may be shared between threads; a SQLite file must be folded by one process
only (the prover's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine

from storage.assets import Assets
from storage.checks import MAX_BALANCE, MAX_RESERVE
from storage.cosignatures import CosignatureRow, Cosignatures
from storage.db import CHUNK, MIGRATIONS, Database, open_engine
from storage.epochs import Epochs
from storage.ingest import Ingest
from storage.journal import BalanceChunk, Journal, Run
from storage.keys import SigningKeys
from storage.lease import Fence, Leases
from storage.log import EpochLog
from storage.marks import Marks, SourceMarks
from storage.periods import SaltPeriods
from storage.reserves import Reserves
from storage.rows import (
    ApplyResult,
    AssetRow,
    AttestedReserveUpdate,
    BalanceUpdate,
    EpochRow,
    KeyRow,
    PeriodRow,
    ReserveReport,
    ReserveRow,
    ReserveUpdate,
)
from storage.shards import Holding, HoldingChanges, ShardState, ShardStates

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = [
    "CHUNK",
    "MAX_BALANCE",
    "MAX_RESERVE",
    "MIGRATIONS",
    "ApplyResult",
    "AssetRow",
    "BalanceChunk",
    "BalanceUpdate",
    "EpochRow",
    "Holding",
    "HoldingChanges",
    "KeyRow",
    "PeriodRow",
    "ReserveRow",
    "ReserveUpdate",
    "ShardState",
    "Store",
]


def _documented_by(part: Callable[..., Any]) -> Callable[[_F], _F]:
    """Give a façade method the docstring of the part's method it calls."""

    def document(method: _F) -> _F:
        method.__doc__ = part.__doc__
        return method

    return document


class Store:
    """Persistence for one prover: the database's parts (module docstring)
    behind the method names the prover uses; each method is documented by
    the part it delegates to."""

    def __init__(self, engine: Engine) -> None:
        self._db = Database(engine)
        self._assets = Assets(self._db)
        marks = SourceMarks(self._db)
        self._journal = Journal(self._db)
        self._reserves = Reserves(self._db)
        self._ingest = Ingest(self._db, self._assets, marks, self._journal, self._reserves)
        self._periods = SaltPeriods(self._db)
        self._keys = SigningKeys(self._db)
        self._epochs = Epochs(self._db, self._assets, marks)
        self._cosignatures = Cosignatures(self._db)
        self._shards = ShardStates(self._db)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to ``url`` (SQLite file or PostgreSQL) and bring its schema up
        to date. On SQLite: WAL, synchronous=FULL, foreign keys, busy timeout."""
        store = cls(open_engine(url))
        if migrate:
            try:
                store.migrate()
            except BaseException:
                store.close()
                raise
        return store

    @property
    def engine(self) -> Engine:
        return self._db.engine

    @property
    def dialect(self) -> str:
        return self._db.dialect

    @property
    def log(self) -> EpochLog:
        return self._epochs.log

    @_documented_by(Database.migrate)
    def migrate(self) -> None:
        self._db.migrate()

    @_documented_by(Database.close)
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Assets (assets.py)

    @_documented_by(Assets.ensure)
    def ensure_asset(self, asset: str, decimals: int) -> None:
        self._assets.ensure(asset, decimals)

    @_documented_by(Assets.all)
    def assets(self) -> list[AssetRow]:
        return self._assets.all()

    # Ingest (ingest.py), the journal (journal.py), reserves (reserves.py)

    @_documented_by(Ingest.apply_balances)
    def apply_balances(self, source: str, updates: Sequence[BalanceUpdate]) -> ApplyResult:
        return self._ingest.apply_balances(source, updates)

    @_documented_by(Ingest.apply_reserves)
    def apply_reserves(self, source: str, updates: Sequence[ReserveUpdate]) -> ApplyResult:
        return self._ingest.apply_reserves(source, updates)

    @_documented_by(Ingest.apply_reserve_reports)
    def apply_reserve_reports(
        self, source: str, updates: Sequence[AttestedReserveUpdate]
    ) -> ApplyResult:
        return self._ingest.apply_reserve_reports(source, updates)

    @_documented_by(Ingest.source_marks)
    def source_marks(self) -> dict[tuple[str, str], int]:
        return self._ingest.source_marks()

    @_documented_by(Journal.backlog)
    def journal_backlog(self) -> int:
        return self._journal.backlog()

    @_documented_by(Journal.fold)
    def fold(
        self,
        chunk_size: int = CHUNK,
        run: Run | None = None,
        pause: Callable[[], object] | None = None,
    ) -> int:
        return self._journal.fold(chunk_size, run, pause)

    @_documented_by(Journal.iter_balances)
    def iter_balances(
        self,
        chunk_size: int = CHUNK,
        run: Run | None = None,
        pause: Callable[[], object] | None = None,
    ) -> Iterator[list[tuple[str, str, int]]]:
        return self._journal.iter_balances(chunk_size, run, pause)

    @_documented_by(Journal.read_balances)
    def read_balances(
        self, chunk_size: int = CHUNK, pause: Callable[[], object] | None = None
    ) -> Iterator[BalanceChunk]:
        return self._journal.read_balances(chunk_size, pause)

    @property
    def _upsert_chunk(self) -> Callable[[Sequence[tuple[str, str, int]]], None]:
        """The journal's write step of a fold; settable, so that a test can
        watch (or hold up) a fold's write transactions."""
        return self._journal.upsert_chunk

    @_upsert_chunk.setter
    def _upsert_chunk(self, step: Callable[[Sequence[tuple[str, str, int]]], None]) -> None:
        self._journal.upsert_chunk = step  # type: ignore[method-assign,assignment]

    @_documented_by(Reserves.all)
    def reserves(self) -> list[ReserveRow]:
        return self._reserves.all()

    @_documented_by(Reserves.reports)
    def reserve_reports(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        return self._reserves.reports(hashes)

    # Salt periods (periods.py) and signing keys (keys.py)

    @_documented_by(SaltPeriods.start)
    def start_salt_period(self, now_ms: int, secret: bytes | None = None) -> PeriodRow:
        return self._periods.start(now_ms, secret)

    @_documented_by(SaltPeriods.get)
    def salt_period(self, number: int) -> PeriodRow:
        return self._periods.get(number)

    @_documented_by(SaltPeriods.latest)
    def latest_salt_period(self) -> PeriodRow | None:
        return self._periods.latest()

    @_documented_by(SigningKeys.add)
    def add_signing_key(self, key_id: str, name: str, public_key: bytes, now_ms: int) -> None:
        self._keys.add(key_id, name, public_key, now_ms)

    @_documented_by(SigningKeys.all)
    def signing_keys(self) -> list[KeyRow]:
        return self._keys.all()

    # Epochs and the log (epochs.py)

    @_documented_by(Epochs.append)
    def append_epoch(
        self,
        number: int,
        leaf: bytes,
        record: bytes,
        sign: Callable[[int, bytes], bytes],
        *,
        created_ms: int,
        marks: Marks | None = None,
        reserves: Iterable[ReserveReport] | None = None,
        fence: Fence | None = None,
    ) -> bytes:
        return self._epochs.append(
            number,
            leaf,
            record,
            sign,
            created_ms=created_ms,
            marks=marks,
            reserves=reserves,
            fence=fence,
        )

    # The log writer's lease (lease.py)

    @_documented_by(Leases.acquire)
    def acquire_lease(self, name: str, holder: str, now_ms: int, ttl_ms: int) -> Fence | None:
        return self._epochs.leases.acquire(name, holder, now_ms, ttl_ms)

    @_documented_by(Leases.renew)
    def renew_lease(self, fence: Fence, holder: str, now_ms: int, ttl_ms: int) -> bool:
        return self._epochs.leases.renew(fence, holder, now_ms, ttl_ms)

    @_documented_by(Leases.release)
    def release_lease(self, fence: Fence, holder: str) -> None:
        self._epochs.leases.release(fence, holder)

    @_documented_by(Epochs.latest)
    def latest_epoch(self) -> EpochRow | None:
        return self._epochs.latest()

    @_documented_by(Epochs.get)
    def epoch(self, number: int) -> EpochRow:
        return self._epochs.get(number)

    @_documented_by(Epochs.marks_of)
    def epoch_marks(self, number: int) -> dict[tuple[str, str], int]:
        return self._epochs.marks_of(number)

    @_documented_by(Epochs.reserves_of)
    def epoch_reserves(self, number: int) -> list[ReserveRow]:
        return self._epochs.reserves_of(number)

    @_documented_by(Epochs.log_size)
    def log_size(self) -> int:
        return self._epochs.log_size()

    @_documented_by(Epochs.log_root)
    def log_root(self, size: int | None = None) -> bytes:
        return self._epochs.log_root(size)

    @_documented_by(Epochs.inclusion_proof)
    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self._epochs.inclusion_proof(index, size)

    @_documented_by(Epochs.consistency_proof)
    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return self._epochs.consistency_proof(old_size, new_size)

    # Witness cosignatures (cosignatures.py)

    @_documented_by(Cosignatures.add)
    def add_cosignatures(self, rows: Iterable[CosignatureRow]) -> None:
        self._cosignatures.add(rows)

    @_documented_by(Cosignatures.between)
    def cosignatures(self, first: int, last: int) -> list[CosignatureRow]:
        return self._cosignatures.between(first, last)

    @_documented_by(Cosignatures.last_cosigned)
    def last_cosigned(self, witnesses: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return self._cosignatures.last_cosigned(witnesses)

    # The shards' states (shards.py)

    @_documented_by(ShardStates.save)
    def save_shard(
        self,
        stream: str,
        part: int,
        after: int | None,
        state: ShardState,
        changes: HoldingChanges,
    ) -> None:
        self._shards.save(stream, part, after, state, changes)

    @_documented_by(ShardStates.state)
    def shard_state(self, stream: str, part: int) -> ShardState | None:
        return self._shards.state(stream, part)

    @_documented_by(ShardStates.holdings)
    def shard_holdings(
        self, stream: str, part: int, epoch: int, chunk_size: int = CHUNK
    ) -> Iterator[list[Holding]]:
        return self._shards.holdings(stream, part, epoch, chunk_size)

    @_documented_by(ShardStates.fold)
    def fold_shard(self, stream: str, part: int) -> int:
        return self._shards.fold(stream, part)

    @_documented_by(ShardStates.pending)
    def shard_pending(self, stream: str, part: int) -> int:
        return self._shards.pending(stream, part)
