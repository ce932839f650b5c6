"""The prover's persistence: one ``Store`` over a SQLAlchemy engine.

SQLite (one file, WAL) by default; PostgreSQL by URL. ``Store.open`` applies
the Alembic migrations. Every public method is one transaction: it commits
whole or raises a ``StorageError`` having written nothing.

Durability contract with the prover: a batch of updates is acknowledged to its
producer only after ``apply_balances``/``apply_reserves`` returns. Updates with
a sequence number at or below the source's mark are replays: counted and
ignored. ``append_epoch`` writes the epoch, its log leaf, its signed
checkpoint and the marks it covers in one transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, Row, create_engine, event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from storage.errors import (
    EpochConflictError,
    InvalidAmountError,
    NotFoundError,
    SequenceError,
    StorageError,
    UnknownAssetError,
)
from storage.log import EpochLog
from storage.schema import (
    Asset,
    Balance,
    Epoch,
    EpochMark,
    Reserve,
    SaltPeriodRow,
    SigningKey,
    SourceMark,
    encode_amount,
)
from verifier.errors import FormatError
from verifier.hashing import MAX_BALANCE, check_asset_id, check_user_id

__all__ = [
    "MAX_RESERVE",
    "ApplyResult",
    "AssetRow",
    "BalanceUpdate",
    "EpochRow",
    "KeyRow",
    "PeriodRow",
    "ReserveRow",
    "ReserveUpdate",
    "Store",
]

MAX_RESERVE = 2**96 - 1
MAX_SEQ = 2**63 - 1
MIGRATIONS = Path(__file__).parent / "migrations"


class Update(Protocol):
    """What every update carries (prover.messages' update types fit)."""

    @property
    def seq(self) -> int: ...
    @property
    def asset(self) -> str: ...
    @property
    def amount(self) -> int: ...


class BalanceUpdate(Update, Protocol):
    @property
    def user(self) -> str: ...


class ReserveUpdate(Update, Protocol):
    @property
    def as_of_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a batch did: the updates applied (in order), replays ignored, the new mark."""

    applied: tuple[object, ...]
    duplicates: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class AssetRow:
    id: str
    decimals: int


@dataclass(frozen=True, slots=True)
class ReserveRow:
    asset: str
    source: str
    amount: int
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class EpochRow:
    number: int
    record: bytes
    checkpoint: bytes
    created_ms: int


@dataclass(frozen=True, slots=True)
class PeriodRow:
    number: int
    started_ms: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class KeyRow:
    key_id: str
    name: str
    public_key: bytes
    active_from_ms: int
    active_to_ms: int | None


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an ack must survive power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Store:
    """Persistence for one prover (see module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.log = EpochLog()
        self._assets: dict[str, int] | None = None

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to ``url`` and bring its schema up to date."""
        engine = create_engine(url, pool_pre_ping=True, insertmanyvalues_page_size=5000)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        if migrate:
            store.migrate()
        return store

    def migrate(self) -> None:
        """Apply the Alembic migrations up to head."""
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    # Assets

    def ensure_asset(self, asset: str, decimals: int) -> None:
        """Register ``asset``; an existing one must keep its decimals."""
        try:
            check_asset_id(asset)
        except FormatError as exc:
            raise StorageError(str(exc)) from None
        if not 0 <= decimals <= 36:
            raise StorageError(f"asset {asset}: decimals {decimals} outside 0..36")
        with self.engine.begin() as conn:
            current = conn.scalar(select(Asset.decimals).where(Asset.id == asset))
            if current is None:
                conn.execute(_insert(self.dialect, Asset).values(id=asset, decimals=decimals))
            elif current != decimals:
                raise StorageError(f"asset {asset} has {current} decimals, not {decimals}")
        self._assets = None

    def assets(self) -> list[AssetRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(Asset.id, Asset.decimals).order_by(Asset.id)).all()
        return [AssetRow(r.id, r.decimals) for r in rows]

    def _known_assets(self) -> dict[str, int]:
        if self._assets is None:
            self._assets = {a.id: a.decimals for a in self.assets()}
        return self._assets

    # Ingest

    def _check_batch(self, updates: Sequence[Update]) -> None:
        """Sequence numbers strictly increase and every asset is registered."""
        known = self._known_assets()
        last = -1
        for i, u in enumerate(updates):
            if not isinstance(u.seq, int) or not 0 <= u.seq <= MAX_SEQ or u.seq <= last:
                raise SequenceError(f"updates[{i}]: seq {u.seq} does not increase")
            last = u.seq
            if u.asset not in known:
                raise UnknownAssetError(f"updates[{i}]: unknown asset {u.asset!r}")

    def _mark(self, conn: Connection, kind: str, source: str) -> int:
        query = select(SourceMark.last_seq).where(
            SourceMark.kind == kind, SourceMark.source == source
        )
        if self.dialect == "postgresql":
            query = query.with_for_update()
        mark = conn.scalar(query)
        return -1 if mark is None else int(mark)

    def _set_mark(self, conn: Connection, kind: str, source: str, seq: int) -> None:
        stmt = _insert(self.dialect, SourceMark).values(kind=kind, source=source, last_seq=seq)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["kind", "source"], set_={"last_seq": stmt.excluded.last_seq}
            )
        )

    def apply_balances(self, source: str, updates: Sequence[BalanceUpdate]) -> ApplyResult:
        """Store a producer's batch of absolute balances, skipping replays.

        Raises:
            SequenceError, UnknownAssetError, InvalidAmountError, StorageError:
                nothing of the batch is written.
        """
        self._check_batch(updates)
        for i, u in enumerate(updates):
            if not isinstance(u.amount, int) or not 0 <= u.amount <= MAX_BALANCE:
                raise InvalidAmountError(f"updates[{i}]: balance {u.amount} outside 0..2**64-1")
            try:
                check_user_id(u.user)
            except FormatError as exc:
                raise StorageError(f"updates[{i}]: {exc}") from None
        with self._transaction() as conn:
            mark = self._mark(conn, "balances", source)
            fresh = [u for u in updates if u.seq > mark]
            if fresh:
                latest: dict[tuple[str, str], int] = {}
                for u in fresh:  # the last update of a key in the batch wins
                    latest[(u.user, u.asset)] = u.amount
                self._upsert_balances(conn, latest)
                mark = fresh[-1].seq
                self._set_mark(conn, "balances", source, mark)
        return ApplyResult(tuple(fresh), len(updates) - len(fresh), mark)

    def _upsert_balances(self, conn: Connection, latest: Mapping[tuple[str, str], int]) -> None:
        """Write absolute balances: COPY into a staging table, then one upsert, on
        PostgreSQL; the driver's executemany of INSERT .. ON CONFLICT on SQLite.
        Both bypass per-row ORM work: this is the ingest hot path."""
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        if self.dialect == "postgresql":
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS balance_stage"
                " (user_id text, asset text, amount numeric(39, 0)) ON COMMIT DELETE ROWS"
            )
            with cursor.copy("COPY balance_stage (user_id, asset, amount) FROM STDIN") as copy:
                for (user, asset), amount in latest.items():
                    copy.write_row((user, asset, amount))
            cursor.execute(
                "INSERT INTO balances (user_id, asset, amount)"
                " SELECT user_id, asset, amount FROM balance_stage"
                " ON CONFLICT (user_id, asset) DO UPDATE SET amount = EXCLUDED.amount"
            )
            return
        cursor.executemany(
            "INSERT INTO balances (user_id, asset, amount) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, asset) DO UPDATE SET amount = excluded.amount",
            [
                (user, asset, encode_amount(amount, "sqlite"))
                for (user, asset), amount in latest.items()
            ],
        )

    def apply_reserves(self, source: str, updates: Sequence[ReserveUpdate]) -> ApplyResult:
        """Store a reserve source's reports (latest per asset), skipping replays."""
        self._check_batch(updates)
        for i, u in enumerate(updates):
            if not isinstance(u.amount, int) or not 0 <= u.amount <= MAX_RESERVE:
                raise InvalidAmountError(f"updates[{i}]: reserve {u.amount} outside 0..2**96-1")
            if not isinstance(u.as_of_ms, int) or not 0 <= u.as_of_ms <= MAX_SEQ:
                raise StorageError(f"updates[{i}]: as_of_ms {u.as_of_ms} is not a time")
        with self._transaction() as conn:
            mark = self._mark(conn, "reserves", source)
            fresh = [u for u in updates if u.seq > mark]
            if fresh:
                stmt = _insert(self.dialect, Reserve)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["asset", "source"],
                        set_={
                            "amount": stmt.excluded.amount,
                            "as_of_ms": stmt.excluded.as_of_ms,
                            "seq": stmt.excluded.seq,
                        },
                    ),
                    [
                        {
                            "asset": u.asset,
                            "source": source,
                            "amount": u.amount,
                            "as_of_ms": u.as_of_ms,
                            "seq": u.seq,
                        }
                        for u in fresh
                    ],
                )
                mark = fresh[-1].seq
                self._set_mark(conn, "reserves", source, mark)
        return ApplyResult(tuple(fresh), len(updates) - len(fresh), mark)

    def source_marks(self) -> dict[tuple[str, str], int]:
        """``(kind, source) -> last applied seq`` for every producer seen."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(SourceMark.kind, SourceMark.source, SourceMark.last_seq))
            return {(r.kind, r.source): int(r.last_seq) for r in rows}

    def reserves(self) -> list[ReserveRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Reserve.asset, Reserve.source, Reserve.amount, Reserve.as_of_ms)
            ).all()
        return [ReserveRow(r.asset, r.source, int(r.amount), int(r.as_of_ms)) for r in rows]

    def iter_balances(self, chunk_size: int = 50_000) -> Iterator[list[tuple[str, str, int]]]:
        """Every non-zero balance as ``(user, asset, amount)``, in chunks, streamed
        (a server-side cursor on PostgreSQL)."""
        query = select(Balance.user_id, Balance.asset, Balance.amount).where(Balance.amount != 0)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(
                query
            )
            for partition in result.partitions(chunk_size):
                yield [(user, asset, amount) for user, asset, amount in partition]

    # Salt periods and signing keys

    def start_salt_period(self, now_ms: int) -> PeriodRow:
        """Begin a new salt period with a fresh random secret."""
        with self._transaction() as conn:
            last = conn.scalar(select(func.max(SaltPeriodRow.number)))
            row = PeriodRow((last or 0) + 1, now_ms, secrets.token_bytes(32))
            conn.execute(
                _insert(self.dialect, SaltPeriodRow).values(
                    number=row.number, started_ms=row.started_ms, secret=row.secret
                )
            )
        return row

    def add_signing_key(self, key_id: str, name: str, public_key: bytes, now_ms: int) -> None:
        """Make a key the active one; the previous active key ends now."""
        with self._transaction() as conn:
            conn.execute(
                update(SigningKey)
                .where(SigningKey.active_to_ms.is_(None))
                .values(active_to_ms=now_ms)
            )
            conn.execute(
                _insert(self.dialect, SigningKey).values(
                    key_id=key_id, name=name, public_key=public_key, active_from_ms=now_ms
                )
            )

    def signing_keys(self) -> list[KeyRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    SigningKey.key_id,
                    SigningKey.name,
                    SigningKey.public_key,
                    SigningKey.active_from_ms,
                    SigningKey.active_to_ms,
                ).order_by(SigningKey.active_from_ms)
            )
            return [
                KeyRow(r.key_id, r.name, bytes(r.public_key), r.active_from_ms, r.active_to_ms)
                for r in rows
            ]

    # Epochs and the log

    def append_epoch(
        self,
        number: int,
        record: bytes,
        sign: Callable[[int, bytes], bytes],
        *,
        created_ms: int,
        marks: Mapping[tuple[str, str], int] | None = None,
    ) -> bytes:
        """Append epoch ``number``: its record as log leaf ``number``, the checkpoint
        ``sign(size, root)`` returns for the new log, and the producer marks it
        covers, all in one transaction. Returns the checkpoint.

        Raises:
            EpochConflictError: ``number`` is not the log's size (nothing written).
        """
        with self._transaction() as conn:
            size = self.log.get_size()
            if number != size:
                raise EpochConflictError(f"epoch {number} does not extend a log of {size}")
            self.log.append(record, created_ms)
            checkpoint = sign(size + 1, self.log.root(size + 1))
            conn.execute(
                update(Epoch).where(Epoch.number == number).values(checkpoint=checkpoint.decode())
            )
            if marks:
                conn.execute(
                    _insert(self.dialect, EpochMark),
                    [
                        {"epoch": number, "kind": kind, "source": source, "last_seq": seq}
                        for (kind, source), seq in marks.items()
                    ],
                )
        return checkpoint

    def log_size(self) -> int:
        with self._log() as _:
            return int(self.log.get_size())

    def latest_epoch(self) -> EpochRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(_EPOCH_COLUMNS.order_by(Epoch.number.desc()).limit(1)).first()
        return None if row is None else _epoch_row(row)

    def epoch(self, number: int) -> EpochRow:
        with self.engine.connect() as conn:
            row = conn.execute(_EPOCH_COLUMNS.where(Epoch.number == number)).first()
        if row is None:
            raise NotFoundError(f"no epoch {number}")
        return _epoch_row(row)

    def epoch_marks(self, number: int) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(EpochMark.kind, EpochMark.source, EpochMark.last_seq).where(
                    EpochMark.epoch == number
                )
            )
            return {(r.kind, r.source): int(r.last_seq) for r in rows}

    def log_root(self, size: int | None = None) -> bytes:
        with self._log():
            current = int(self.log.get_size())
            if size is None:
                size = current
            if not 0 <= size <= current:
                raise NotFoundError(f"no log of size {size} (the log has {current})")
            return self.log.root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the log of ``size``."""
        with self._log():
            self._check_size(size)
            return self.log.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof between two sizes of the log."""
        with self._log():
            self._check_size(new_size)
            return self.log.consistency_proof(old_size, new_size)

    def _check_size(self, size: int) -> None:
        current = int(self.log.get_size())
        if not 0 <= size <= current:
            raise NotFoundError(f"no log of size {size} (the log has {current})")

    # Transactions

    def _transaction(self) -> _Transaction:
        return _Transaction(self, write=True)

    def _log(self) -> _Transaction:
        return _Transaction(self, write=False)


class _Transaction:
    """One transaction, with the log bound to its connection; database errors
    become StorageError and a rollback drops cached log subroots it may have made."""

    def __init__(self, store: Store, write: bool) -> None:
        self.store = store
        self.write = write

    def __enter__(self) -> Connection:
        engine = self.store.engine
        self.conn = engine.connect()
        self.trans = self.conn.begin()
        self.store.log.conn = self.conn
        self.size_before = -1
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        log = self.store.log
        try:
            if exc_type is None:
                self.trans.commit()
            else:
                self.trans.rollback()
                if self.write:
                    log.forget_after(_committed_size(self.conn))
        finally:
            log.conn = None
            self.conn.close()
        if isinstance(exc, IntegrityError):
            raise StorageError(f"constraint violated: {exc.orig}") from exc
        dbapi_error = getattr(self.store.engine.dialect.dbapi, "Error", ())
        if isinstance(exc, SQLAlchemyError) or (dbapi_error and isinstance(exc, dbapi_error)):
            raise StorageError(f"database error: {exc}") from exc


def _committed_size(conn: Connection) -> int:
    last = conn.scalar(select(func.max(Epoch.number)))
    return 0 if last is None else int(last) + 1


_EPOCH_COLUMNS = select(Epoch.number, Epoch.record, Epoch.checkpoint, Epoch.created_ms)


def _epoch_row(row: Row[int, bytes, str, int]) -> EpochRow:
    return EpochRow(
        int(row.number), bytes(row.record), row.checkpoint.encode(), int(row.created_ms)
    )


def _insert(dialect: str, table: object):  # type: ignore[no-untyped-def]
    """The dialect's INSERT, which has ``on_conflict_do_update``."""
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table)
