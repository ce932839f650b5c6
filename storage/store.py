"""The prover's persistence: one ``Store`` over a SQLAlchemy engine.

SQLite (one file, WAL, synchronous=FULL) by default; PostgreSQL by URL, same
code. ``Store.open`` applies the Alembic migrations. Every public method but
``fold`` (a series of short ones, safe to interrupt) is one transaction: it
commits whole, or raises having written nothing (a ``StorageError`` for
anything the store or the database refuses; an exception from a caller's
callback passes through unchanged).

Durability contract with the prover: a batch of updates is acknowledged to its
producer only after ``apply_balances``/``apply_reserves`` returns. Updates with
a sequence number at or below the source's mark are replays: counted and
ignored. An acknowledged balance batch is one row of ``balance_journal`` (the
ingest hot path appends; it does not upsert), so the balances are the
``balances`` table overlaid with the journal; ``fold`` moves the journal into
the table in short transactions, idempotently, so a crash at any point loses
nothing acknowledged, and ``iter_balances`` folds before it reads.
``append_epoch`` writes the epoch, its log leaf (the same row), its signed
checkpoint, the marks it covers and the reserves it used in one transaction,
so after a crash the store holds exactly the epochs that committed, each with
everything it covered.

Concurrency: write transactions take SQLite's write lock at BEGIN (``BEGIN
IMMEDIATE``) and, on PostgreSQL, lock the producer's mark row, so two writers
cannot both apply a batch; balance batches also take a journal lock there, so
journal ids follow commit order as they do on SQLite. The log's methods are
serialised by its lock, folds by a lock of the process (and, on PostgreSQL, an
advisory lock: one fold per database). The store may be shared between
threads; a SQLite file must be folded by one process only (the prover's).
"""

from __future__ import annotations

import bisect
import functools
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    create_engine,
    delete,
    event,
    func,
    insert,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from storage import cosignatures
from storage.checks import (
    KINDS,
    MAX_BALANCE,
    MAX_INT64,
    MAX_RESERVE,
    check_amount,
    check_asset,
    check_decimals,
    check_int,
    check_key_id,
    check_source,
    check_user,
    check_users,
)
from storage.cosignatures import CosignatureRow
from storage.errors import (
    ConstraintError,
    EpochConflictError,
    InvalidInputError,
    NotFoundError,
    SequenceError,
    StorageError,
    UnknownAssetError,
)
from storage.log import EpochLog
from storage.rows import (
    UNATTESTED,
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
    Update,
)
from storage.schema import (
    Asset,
    Balance,
    BalanceJournal,
    Epoch,
    EpochMark,
    EpochReserve,
    Reserve,
    ReserveReportRow,
    SaltPeriodRow,
    SigningKey,
    SlotAssignment,
    SourceMark,
    encode_amount,
)

__all__ = [
    "MAX_BALANCE",
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

MAX_SEQ = MAX_INT64
MIGRATIONS = Path(__file__).parent / "migrations"
CHUNK = 50_000  # default rows per chunk of the bulk paths
JOURNAL_ROWS_PER_READ = 8  # journal rows (batches) a fold reads per query
_MIGRATION_LOCK = 0x50524F56  # PostgreSQL advisory lock keys: migrating,
_APPEND_LOCK = 0x50524F57  # appending an epoch,
_JOURNAL_LOCK = 0x50524F58  # appending to the balance journal,
_FOLD_LOCK = 0x50524F59  # folding it
_FOLDING = threading.Lock()  # one fold at a time in this process, whichever the store

Marks = Mapping[tuple[str, str], int]


def _sqlite_on_connect(dbapi_connection: Any, _record: object) -> None:
    # SQLAlchemy, not the sqlite3 module, emits BEGIN (see _sqlite_on_begin), so
    # SELECTs run inside the transaction and writers can take the lock up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an ack must survive power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _create_private(database: str | None) -> None:
    """Create a missing SQLite file owner-only (0600) before SQLite opens it:
    it holds every balance and the salts. SQLite gives its -wal and -shm
    files the database file's mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot create database file {database}: {exc.strerror}") from None


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("solvency_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Store:
    """Persistence for one prover (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.log = EpochLog()
        self._assets: dict[str, int] | None = None

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to ``url`` (SQLite file or PostgreSQL) and bring its schema up
        to date. On SQLite: WAL, synchronous=FULL, foreign keys, busy timeout."""
        try:
            parsed = make_url(url)
            engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            shown = url.split("@")[-1]  # never a password in an error message
            raise StorageError(f"cannot open database ...@{shown}: {exc}") from None
        if engine.dialect.name == "sqlite":
            _create_private(parsed.database)
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        store = cls(engine)
        if migrate:
            try:
                store.migrate()
            except BaseException:
                engine.dispose()
                raise
        return store

    def migrate(self) -> None:
        """Apply the Alembic migrations up to head (one writer at a time)."""
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._transaction(write=True) as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Assets

    def ensure_asset(self, asset: str, decimals: int) -> None:
        """Register ``asset`` (its id is its symbol); an existing one must keep
        its decimals.

        Raises:
            InvalidIdentifierError: a malformed id, or decimals outside 0..36.
            ConstraintError: the asset exists with other decimals.
        """
        check_asset(asset)
        check_decimals(decimals, asset)
        with self._transaction(write=True) as conn:
            current = conn.scalar(select(Asset.decimals).where(Asset.id == asset))
            if current is None:
                conn.execute(self._insert(Asset).values(id=asset, decimals=decimals))
            elif current != decimals:
                raise ConstraintError(f"asset {asset} has {current} decimals, not {decimals}")
        self._assets = None

    def assets(self) -> list[AssetRow]:
        """Every registered asset, by id."""
        with self._transaction() as conn:
            rows = conn.execute(select(Asset.id, Asset.decimals).order_by(Asset.id)).all()
        return [AssetRow(r.id, r.decimals) for r in rows]

    def _check_known(self, asset: str, where: str) -> None:
        if self._assets is None or asset not in self._assets:
            self._assets = {a.id: a.decimals for a in self.assets()}  # refresh on a miss
            if asset not in self._assets:
                raise UnknownAssetError(f"{where}: unknown asset {asset!r}")

    # Ingest

    def _check_updates(self, updates: Sequence[Update], amount_limit: int, what: str) -> None:
        """Sequence numbers strictly increase, assets are registered, amounts fit."""
        last = -1
        known = self._assets or {}
        for i, u in enumerate(updates):
            seq = u.seq
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
                raise SequenceError(f"updates[{i}]: seq {seq!r} is not an integer in 0..2**63-1")
            if seq <= last:
                raise SequenceError(f"updates[{i}]: seq {seq} does not increase (after {last})")
            last = seq
            if u.asset not in known:
                check_asset(u.asset, f"updates[{i}]")
                self._check_known(u.asset, f"updates[{i}]")
                known = self._assets or {}
            amount = u.amount
            if type(amount) is not int or not 0 <= amount <= amount_limit:
                check_amount(amount, amount_limit, what, f"updates[{i}] (asset {u.asset})")

    def _lock_mark(self, conn: Connection, kind: str, source: str) -> int:
        """The producer's mark (-1 if none), locked until the transaction ends."""
        if self.dialect == "postgresql":
            # a placeholder row to lock, so two first batches of a new source
            # serialise too (it is rolled back or overwritten by _set_mark)
            conn.execute(
                postgresql.insert(SourceMark)
                .values(kind=kind, source=source, last_seq=-1)
                .on_conflict_do_nothing()
            )
        query = select(SourceMark.last_seq).where(
            SourceMark.kind == kind, SourceMark.source == source
        )
        if self.dialect == "postgresql":
            query = query.with_for_update()
        mark = conn.scalar(query)  # SQLite: BEGIN IMMEDIATE already holds the write lock
        return -1 if mark is None else int(mark)

    def _set_mark(self, conn: Connection, kind: str, source: str, seq: int) -> None:
        stmt = self._insert(SourceMark).values(kind=kind, source=source, last_seq=seq)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["kind", "source"], set_={"last_seq": stmt.excluded.last_seq}
            )
        )

    def apply_balances(self, source: str, updates: Sequence[BalanceUpdate]) -> ApplyResult:
        """Durably store a producer's batch of absolute balances, skipping replays.

        Updates must have strictly increasing ``seq``; those at or below the
        source's mark are replays (counted, not written). The fresh ones become
        one ``balance_journal`` row, the last update of a (user, asset) in the
        batch winning, and the mark advances to the last seq, in one
        transaction: on return the batch is durable and ``iter_balances`` sees
        it; ``fold`` moves it into the ``balances`` table later.

        Raises:
            InvalidIdentifierError, SequenceError, UnknownAssetError,
            InvalidAmountError: the batch is refused; nothing of it is written.
            ConstraintError: an asset of the batch is registered no more (it
                was deleted behind the store's back); nothing is written.
        """
        check_source(source)
        self._check_updates(updates, MAX_BALANCE, "balance")
        check_users([u.user for u in updates])
        if not updates:
            return ApplyResult((), 0, self.source_marks().get(("balances", source), -1))
        with self._transaction(write=True) as conn:
            mark = self._lock_mark(conn, "balances", source)
            fresh = [u for u in updates if u.seq > mark]
            if fresh:
                self._journal(conn, source, fresh)
                mark = fresh[-1].seq
                self._set_mark(conn, "balances", source, mark)
        return ApplyResult(tuple(fresh), len(updates) - len(fresh), mark)

    def _journal(self, conn: Connection, source: str, fresh: list[BalanceUpdate]) -> None:
        """Append ``fresh`` (checked, not empty) to the journal as one row. The
        ingest hot path: per update, one dict entry, then one join."""
        lines = {(u.user, u.asset): f"{u.user}\t{u.asset}\t{u.amount}\n" for u in fresh}
        # balances.asset's foreign key is checked here, not at the fold, which
        # could not refuse a batch that was acknowledged
        missing = {asset for _, asset in lines}.difference(conn.scalars(select(Asset.id)))
        if missing:
            raise ConstraintError(
                f"constraint violated: asset {min(missing)!r} is not in assets"
                " (foreign key of balances.asset)"
            )
        if self.dialect == "postgresql":  # ids in commit order (see BalanceJournal)
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _JOURNAL_LOCK})
        conn.execute(
            insert(BalanceJournal),
            {
                "source": source,
                "first_seq": fresh[0].seq,
                "last_seq": fresh[-1].seq,
                "count": len(lines),
                "body": "".join(lines.values()).encode(),
            },
        )

    def journal_backlog(self) -> int:
        """How many journaled updates (journal lines) ``fold`` has yet to fold."""
        with self._transaction() as conn:
            return int(conn.scalar(select(func.sum(BalanceJournal.count))) or 0)

    def fold(
        self,
        chunk_size: int = CHUNK,
        run: Callable[[Callable[[], None]], None] | None = None,
        pause: Callable[[], object] | None = None,
    ) -> int:
        """Move the journal into the ``balances`` table; return how many journaled
        updates (journal lines) it folded.

        Reads the journal up to its last row J (the rows' ids in one
        transaction, then their bodies a few rows per read), keeps the
        latest amount of each (user, asset) (the highest id wins), upserts them
        sorted by (user, asset), ``chunk_size`` rows per write transaction, then
        deletes the journal rows up to J, about ``chunk_size`` lines' worth per
        transaction. Other writers wait for one such transaction at most (on
        SQLite; on PostgreSQL, not at all); batches journaled meanwhile get ids
        above J and stay. A failure or crash midway changes no balance: until
        the deletions, the journal is whole and overrides the table; after,
        it only lacks rows whose lines (or newer) the table holds. The next
        fold redoes what is left (absolute amounts: same values). One fold at a
        time (see ``_fold_lock``): a second waits for the first. ``run``, if
        given, runs each write transaction (e.g. on the thread doing the
        caller's other writes, so that they take turns without waiting on the
        database's lock); reading and sorting stay in the calling thread.
        ``pause``, if given, is called between pieces of that work (a few ms
        each) and may block, to let the caller's more urgent work have the GIL.

        Raises:
            InvalidInputError: ``chunk_size`` is not a positive integer.
        """
        _check_chunk_size(chunk_size)
        with self._fold_lock():
            with self._transaction() as conn:
                query = select(BalanceJournal.id, BalanceJournal.count)
                journal = conn.execute(query.order_by(BalanceJournal.id)).all()
            if not journal:
                return 0
            wait = pause or (lambda: None)
            latest: dict[str, str] = {}  # "user\tasset" -> its last line (see BalanceJournal)
            for body in self._journal_bodies([row_id for row_id, _ in journal], wait):
                wait()
                for line in str(body, "utf-8")[:-1].split("\n"):
                    latest[line[: line.rindex("\t")]] = line
            write = run or (lambda step: step())
            # sorted as (user, asset), since a tab sorts below any id character
            lines = chain.from_iterable(_sorted_in_ranges(list(latest.values()), wait))
            while chunk := list(islice(lines, chunk_size)):
                fields = "\t".join(chunk).split("\t")  # user, asset, amount, user, ...
                rows = list(zip(fields[::3], fields[1::3], map(int, fields[2::3]), strict=True))
                write(functools.partial(self._upsert_chunk, rows))
            # deleted about chunk_size lines at a time too: a million lines' blobs
            # at once held SQLite's write lock for most of a second
            lines_since = 0
            for row_id, count in journal:
                lines_since += count
                if lines_since >= chunk_size or row_id == journal[-1][0]:
                    write(functools.partial(self._forget_journal, row_id))
                    lines_since = 0
        return sum(count for _, count in journal)

    def _journal_bodies(self, ids: list[int], pause: Callable[[], object]) -> Iterator[bytes]:
        """The bodies of journal rows ``ids`` (ascending), read a few at a time,
        with ``pause`` between reads: 3,000,000 lines' bodies read at once held
        the GIL for 0.5 s on PostgreSQL (its driver decoding them). The rows
        stay as they are meanwhile: only a fold deletes them, and one fold
        runs at a time."""
        for start in range(0, len(ids), JOURNAL_ROWS_PER_READ):
            first, last = ids[start], ids[min(start + JOURNAL_ROWS_PER_READ, len(ids)) - 1]
            pause()
            with self._transaction() as conn:
                bodies = conn.scalars(
                    select(BalanceJournal.body)
                    .where(BalanceJournal.id.between(first, last))
                    .order_by(BalanceJournal.id)
                ).all()
            yield from bodies

    def _upsert_chunk(self, rows: Sequence[tuple[str, str, int]]) -> None:
        with self._transaction(write=True) as conn:
            self._upsert_balances(conn, rows)

    def _forget_journal(self, last: int) -> None:
        """Delete the folded journal rows up to id ``last``: the balances table
        holds their lines (or newer ones), so the journal's rule still holds."""
        with self._transaction(write=True) as conn:
            conn.execute(delete(BalanceJournal).where(BalanceJournal.id <= last))

    @contextmanager
    def _fold_lock(self) -> Iterator[None]:
        """Held for a whole fold, as two folds of one database at once could write
        a stale amount over a newer one: a lock of the process (SQLite has no
        lock a process could hold across transactions, so a SQLite file must be
        folded by one process only) and, on PostgreSQL, an advisory lock. A fold
        is several transactions, so that lock belongs to a transaction of its
        own connection, open for the fold's duration: it is released however
        the fold ends, with the process or the connection if need be."""
        with _FOLDING:
            if self.dialect != "postgresql":
                yield
                return
            with self._transaction() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FOLD_LOCK})
                yield

    def _upsert_balances(self, conn: Connection, rows: Sequence[tuple[str, str, int]]) -> None:
        """Write absolute balances ``(user, asset, amount)``, at most one per
        (user, asset): COPY into a staging table, then one upsert, on
        PostgreSQL; the driver's executemany of INSERT .. ON CONFLICT on SQLite.
        Both bypass per-row SQLAlchemy work."""
        cursor = self._cursor(conn)
        if self.dialect == "postgresql":
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS balance_stage"
                " (user_id text, asset text, amount numeric(39, 0)) ON COMMIT DELETE ROWS"
            )
            with cursor.copy("COPY balance_stage (user_id, asset, amount) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
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
                (user, asset, amount.to_bytes(16, "big"))  # encode_amount's SQLite form
                for user, asset, amount in rows
            ],
        )

    def apply_reserves(self, source: str, updates: Sequence[ReserveUpdate]) -> ApplyResult:
        """Durably store a reserve source's reports, keeping the latest per asset,
        skipping replays (same rules as ``apply_balances``; amounts up to 2**96-1).
        Each becomes the source's unattested figure for its asset.

        Raises:
            InvalidInputError (any subclass): nothing of the batch is written.
        """
        return self._apply_reserves(source, updates, ())

    def apply_reserve_reports(
        self, source: str, updates: Sequence[AttestedReserveUpdate]
    ) -> ApplyResult:
        """As ``apply_reserves``, for signed reports (their signatures checked by
        the caller): each fresh one is also kept by its hash (``reserve_reports``)
        and named beside its reserve (key id and hash), in the same transaction.

        Raises:
            InvalidInputError (any subclass): nothing of the batch is written.
        """
        for i, u in enumerate(updates):
            check_int(u.key_id, "key_id", f"updates[{i}]")
            if not isinstance(u.report_hash, bytes) or len(u.report_hash) != 32:
                raise InvalidInputError(f"updates[{i}]: report_hash must be 32 bytes")
            if u.report_hash == UNATTESTED or not isinstance(u.note, bytes) or not u.note:
                raise InvalidInputError(f"updates[{i}]: a signed report needs its note")
        return self._apply_reserves(source, updates, updates)

    def _apply_reserves(
        self,
        source: str,
        updates: Sequence[ReserveUpdate],
        attested: Sequence[AttestedReserveUpdate],
    ) -> ApplyResult:
        """Both of the above; ``attested`` is ``updates`` or empty."""
        check_source(source)
        self._check_updates(updates, MAX_RESERVE, "reserve")
        for i, u in enumerate(updates):
            check_int(u.as_of_ms, "as_of_ms", f"updates[{i}]")
        if not updates:
            return ApplyResult((), 0, self.source_marks().get(("reserves", source), -1))
        with self._transaction(write=True) as conn:
            mark = self._lock_mark(conn, "reserves", source)
            fresh = [u for u in updates if u.seq > mark]
            if fresh:
                signed = {u.seq: u for u in attested if u.seq > mark}
                latest = {u.asset: u for u in fresh}  # one row per asset and statement
                stmt = self._insert(Reserve)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["asset", "source"],
                        set_={
                            "amount": stmt.excluded.amount,
                            "as_of_ms": stmt.excluded.as_of_ms,
                            "seq": stmt.excluded.seq,
                            "key_id": stmt.excluded.key_id,
                            "report_hash": stmt.excluded.report_hash,
                        },
                    ),
                    [
                        {
                            "asset": u.asset,
                            "source": source,
                            "amount": u.amount,
                            "as_of_ms": u.as_of_ms,
                            "seq": u.seq,
                            "key_id": signed[u.seq].key_id if signed else None,
                            "report_hash": signed[u.seq].report_hash if signed else None,
                        }
                        for u in latest.values()
                    ],
                )
                if signed:
                    reports = self._insert(ReserveReportRow)
                    conn.execute(
                        reports.on_conflict_do_nothing(index_elements=["report_hash"]),
                        [
                            {
                                "report_hash": u.report_hash,
                                "source": source,
                                "asset": u.asset,
                                "note": u.note,
                            }
                            for u in {u.report_hash: u for u in signed.values()}.values()
                        ],
                    )
                mark = fresh[-1].seq
                self._set_mark(conn, "reserves", source, mark)
        return ApplyResult(tuple(fresh), len(updates) - len(fresh), mark)

    def source_marks(self) -> dict[tuple[str, str], int]:
        """``(kind, source) -> last applied seq`` for every producer seen
        (kind is ``"balances"`` or ``"reserves"``)."""
        with self._transaction() as conn:
            return self._source_marks(conn)

    def _source_marks(self, conn: Connection) -> dict[tuple[str, str], int]:
        rows = conn.execute(select(SourceMark.kind, SourceMark.source, SourceMark.last_seq))
        return {(r.kind, r.source): int(r.last_seq) for r in rows if r.last_seq >= 0}

    def reserves(self) -> list[ReserveRow]:
        """Each reserve source's latest report per asset, with its signed
        report's key id and hash (0 and ``UNATTESTED`` for none)."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(
                    Reserve.asset,
                    Reserve.source,
                    Reserve.amount,
                    Reserve.as_of_ms,
                    Reserve.key_id,
                    Reserve.report_hash,
                ).order_by(Reserve.asset, Reserve.source)
            ).all()
        return [
            ReserveRow(
                r.asset,
                r.source,
                int(r.amount),
                int(r.as_of_ms),
                int(r.key_id or 0),
                bytes(r.report_hash) if r.report_hash is not None else UNATTESTED,
            )
            for r in rows
        ]

    def reserve_reports(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        """The signed notes of the accepted reports of ``hashes`` (those known)."""
        wanted = sorted(set(hashes))
        found: dict[bytes, bytes] = {}
        with self._transaction() as conn:
            for start in range(0, len(wanted), 500):
                rows = conn.execute(
                    select(ReserveReportRow.report_hash, ReserveReportRow.note).where(
                        ReserveReportRow.report_hash.in_(wanted[start : start + 500])
                    )
                )
                found.update((bytes(r.report_hash), bytes(r.note)) for r in rows)
        return found

    def iter_balances(
        self,
        chunk_size: int = CHUNK,
        run: Callable[[Callable[[], None]], None] | None = None,
        pause: Callable[[], object] | None = None,
    ) -> Iterator[list[tuple[str, str, int]]]:
        """Every non-zero balance as ``(user, asset, amount)``, in chunks of at most
        ``chunk_size``, in no particular order. When iteration begins it folds
        the journal (``run`` and ``pause`` as in ``fold``), so every batch
        acknowledged before then is included; the table is then streamed from
        one snapshot (a server-side cursor on PostgreSQL)."""
        _check_chunk_size(chunk_size)
        self.fold(run=run, pause=pause)
        if self.dialect == "postgresql":
            query = select(Balance.user_id, Balance.asset, Balance.amount)
            yield from self._stream(query.where(Balance.amount != 0), chunk_size)
            return
        # the driver's cursor, without per-row SQLAlchemy work: a million rows at start-up
        with self._transaction() as conn:
            cursor = self._cursor(conn)
            cursor.execute(
                "SELECT user_id, asset, amount FROM balances WHERE amount != ?",
                (encode_amount(0, self.dialect),),
            )
            while rows := cursor.fetchmany(chunk_size):
                yield [(user, asset, int.from_bytes(amount, "big")) for user, asset, amount in rows]

    def _stream(self, query: Any, chunk_size: int) -> Iterator[list[tuple[str, str, int]]]:
        _check_chunk_size(chunk_size)
        with self._transaction() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(
                query
            )
            for partition in result.partitions(chunk_size):
                yield [(a, b, int(c)) for a, b, c in partition]

    # Salt periods and slot assignments

    def start_salt_period(self, now_ms: int, secret: bytes | None = None) -> PeriodRow:
        """Begin the next salt period (numbered from 1) with ``secret`` (32 bytes;
        fresh random bytes by default)."""
        check_int(now_ms, "now_ms")
        if secret is None:
            secret = secrets.token_bytes(32)
        if not isinstance(secret, bytes) or len(secret) != 32:
            raise InvalidInputError("a salt period's secret is 32 bytes")
        with self._transaction(write=True) as conn:
            last = conn.scalar(select(func.max(SaltPeriodRow.number)))
            row = PeriodRow((last or 0) + 1, now_ms, secret)
            conn.execute(
                self._insert(SaltPeriodRow).values(
                    number=row.number, started_ms=row.started_ms, secret=row.secret
                )
            )
        return row

    def salt_period(self, number: int) -> PeriodRow:
        """Salt period ``number``; NotFoundError if there is none."""
        with self._transaction() as conn:
            row = conn.execute(_PERIOD_COLUMNS.where(SaltPeriodRow.number == number)).first()
        if row is None:
            raise NotFoundError(f"no salt period {number}")
        return PeriodRow(int(row.number), int(row.started_ms), bytes(row.secret))

    def latest_salt_period(self) -> PeriodRow | None:
        with self._transaction() as conn:
            row = conn.execute(
                _PERIOD_COLUMNS.order_by(SaltPeriodRow.number.desc()).limit(1)
            ).first()
        return None if row is None else PeriodRow(row.number, row.started_ms, bytes(row.secret))

    def put_slots(
        self, period: int, slots: Iterable[tuple[str, str, int]], chunk_size: int = CHUNK
    ) -> int:
        """Store ``(user, asset, slot)`` assignments of ``period``, all in one
        transaction (read and written ``chunk_size`` rows at a time: millions of
        rows at a period's start). Returns how many were stored.

        Raises:
            NotFoundError: no such period. InvalidInputError (any subclass): a
                bad row. ConstraintError: a (user, asset) or (asset, slot) is
                assigned twice in the period. Nothing is written in each case.
        """
        check_int(chunk_size, "chunk_size")
        rows = iter(slots)
        total = 0
        with self._transaction(write=True) as conn:
            if (
                conn.scalar(select(SaltPeriodRow.number).where(SaltPeriodRow.number == period))
                is None
            ):
                raise NotFoundError(f"no salt period {period}")
            while chunk := list(islice(rows, max(chunk_size, 1))):
                for i, (user, asset, slot) in enumerate(chunk, start=total):
                    where = f"slots[{i}]"
                    check_user(user, where)
                    if self._assets is None or asset not in self._assets:
                        check_asset(asset, where)
                        self._check_known(asset, where)
                    if type(slot) is not int or not 0 <= slot <= MAX_INT64:
                        check_int(slot, "slot", where)
                self._insert_slots(conn, period, chunk)
                total += len(chunk)
        return total

    def _insert_slots(
        self, conn: Connection, period: int, chunk: list[tuple[str, str, int]]
    ) -> None:
        cursor = self._cursor(conn)
        if self.dialect == "postgresql":
            with cursor.copy(
                "COPY slot_assignments (period, asset, user_id, slot) FROM STDIN"
            ) as copy:
                for user, asset, slot in chunk:
                    copy.write_row((period, asset, user, slot))
            return
        cursor.executemany(
            "INSERT INTO slot_assignments (period, asset, user_id, slot) VALUES (?, ?, ?, ?)",
            [(period, asset, user, slot) for user, asset, slot in chunk],
        )

    def iter_slots(
        self, period: int, chunk_size: int = CHUNK
    ) -> Iterator[list[tuple[str, str, int]]]:
        """``(user, asset, slot)`` of ``period`` in chunks, streamed, ordered by
        asset then slot."""
        query = (
            select(SlotAssignment.user_id, SlotAssignment.asset, SlotAssignment.slot)
            .where(SlotAssignment.period == period)
            .order_by(SlotAssignment.asset, SlotAssignment.slot)
        )
        yield from self._stream(query, chunk_size)

    # Signing keys

    def add_signing_key(self, key_id: str, name: str, public_key: bytes, now_ms: int) -> None:
        """Make a key (8 hex digit id, 32-byte Ed25519 public key) the active one;
        the previously active key's activity ends at ``now_ms``.

        Raises:
            InvalidInputError (any subclass): a malformed argument.
            ConstraintError: ``key_id`` is already registered.
        """
        check_key_id(key_id)
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise InvalidInputError(f"key {key_id}: the name must be 1-255 characters")
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise InvalidInputError(f"key {key_id}: an Ed25519 public key is 32 bytes")
        check_int(now_ms, "now_ms")
        with self._transaction(write=True) as conn:
            if conn.scalar(select(SigningKey.key_id).where(SigningKey.key_id == key_id)):
                raise ConstraintError(f"signing key {key_id} is already registered")
            conn.execute(
                update(SigningKey)
                .where(SigningKey.active_to_ms.is_(None))
                .values(active_to_ms=now_ms)
            )
            conn.execute(
                self._insert(SigningKey).values(
                    key_id=key_id, name=name, public_key=public_key, active_from_ms=now_ms
                )
            )

    def signing_keys(self) -> list[KeyRow]:
        """Every key, oldest first."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(
                    SigningKey.key_id,
                    SigningKey.name,
                    SigningKey.public_key,
                    SigningKey.active_from_ms,
                    SigningKey.active_to_ms,
                ).order_by(SigningKey.active_from_ms, SigningKey.key_id)
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
        marks: Marks | None = None,
        reserves: Iterable[ReserveReport] | None = None,
    ) -> bytes:
        """Append epoch ``number``, all in one transaction: its record as log leaf
        ``number`` (the epoch's own row), the checkpoint ``sign(size, root)``
        returns for the log with that leaf (the root is computed inside the
        transaction, hence a callback), the producer marks the epoch covers
        (``(kind, source) -> seq``) and the reserve reports its record used.
        Returns the checkpoint.

        Raises:
            EpochConflictError: ``number`` is not the log's size.
            SequenceError: a mark exceeds what was acknowledged for its source, or
                is below (or drops) one of the previous epoch's marks.
            InvalidInputError, UnknownAssetError, InvalidAmountError: bad
                arguments.
            Whatever ``sign`` raises. In every case nothing is written.
        """
        check_int(number, "epoch number")
        check_int(created_ms, "created_ms")
        if not isinstance(record, bytes):
            raise InvalidInputError(f"epoch {number}: the record must be bytes")
        mark_rows = self._check_marks(marks or {})
        reserve_rows = self._check_reserves(reserves or ())
        size: int | None = None
        try:
            with self.log.lock, self._transaction(write=True) as conn, self.log.bound(conn):
                if self.dialect == "postgresql":  # one appender at a time, so the
                    # size read below stays the size until this transaction ends
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _APPEND_LOCK})
                size = self.log.size()
                if number != size:
                    raise EpochConflictError(f"epoch {number} does not extend a log of {size}")
                self._check_marks_against(conn, number, mark_rows)
                self.log.append(record, created_ms)
                checkpoint = sign(size + 1, self.log.root(size + 1))
                if not isinstance(checkpoint, bytes):
                    raise InvalidInputError("sign() must return the checkpoint as bytes")
                try:
                    text_ = checkpoint.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInputError("the checkpoint is not UTF-8 text") from None
                self.log.set_checkpoint(number, text_)
                if mark_rows:
                    conn.execute(
                        self._insert(EpochMark),
                        [
                            {"epoch": number, "kind": k, "source": s, "last_seq": q}
                            for (k, s), q in mark_rows.items()
                        ],
                    )
                if reserve_rows:
                    conn.execute(
                        self._insert(EpochReserve),
                        [
                            {
                                "epoch": number,
                                "asset": r.asset,
                                "source": r.source,
                                "amount": r.amount,
                                "as_of_ms": r.as_of_ms,
                            }
                            for r in reserve_rows
                        ],
                    )
        except BaseException:
            if size is not None:
                self.log.forget_after(size)  # subroots over the rolled-back leaf
            raise
        return checkpoint

    def _check_marks(self, marks: Marks) -> dict[tuple[str, str], int]:
        checked: dict[tuple[str, str], int] = {}
        for key, seq in marks.items():
            if not isinstance(key, tuple) or len(key) != 2 or key[0] not in KINDS:
                raise InvalidInputError(f"mark {key!r}: want (kind, source), kind in {KINDS}")
            check_source(key[1], f"mark {key!r}")
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
                raise SequenceError(f"mark {key!r}: seq {seq!r} is not an integer in 0..2**63-1")
            checked[key] = seq
        return checked

    def _check_reserves(self, reserves: Iterable[ReserveReport]) -> list[ReserveRow]:
        checked: dict[tuple[str, str], ReserveRow] = {}
        for i, r in enumerate(reserves):
            where = f"reserves[{i}]"
            check_asset(r.asset, where)
            self._check_known(r.asset, where)
            check_source(r.source, where)
            check_amount(r.amount, MAX_RESERVE, "reserve", where)
            check_int(r.as_of_ms, "as_of_ms", where)
            if (r.asset, r.source) in checked:
                raise InvalidInputError(f"{where}: a second report of {r.asset} from {r.source}")
            checked[(r.asset, r.source)] = ReserveRow(r.asset, r.source, r.amount, r.as_of_ms)
        return list(checked.values())

    def _check_marks_against(
        self, conn: Connection, number: int, marks: dict[tuple[str, str], int]
    ) -> None:
        """An epoch covers only acknowledged updates, and never fewer than the
        epoch before it."""
        acknowledged = self._source_marks(conn)
        for key, seq in marks.items():
            if seq > acknowledged.get(key, -1):
                raise SequenceError(
                    f"epoch {number} covers {key[0]} of {key[1]} up to seq {seq}, but only "
                    f"{acknowledged.get(key, 'none')} was acknowledged"
                )
        if number == 0:
            return
        for key, seq in self._epoch_marks(conn, number - 1).items():
            if marks.get(key, -1) < seq:
                raise SequenceError(
                    f"epoch {number} covers {key[0]} of {key[1]} up to "
                    f"{marks.get(key, 'nothing')}, less than epoch {number - 1} ({seq})"
                )

    def log_size(self) -> int:
        """The number of leaves of the log (= the number of epochs)."""
        with self.log.lock, self._transaction() as conn, self.log.bound(conn):
            return self.log.size()

    def latest_epoch(self) -> EpochRow | None:
        """The last committed epoch, or None before the first."""
        with self._transaction() as conn:
            row = conn.execute(_EPOCH_COLUMNS.order_by(Epoch.number.desc()).limit(1)).first()
        return None if row is None else _epoch_row(row)

    def epoch(self, number: int) -> EpochRow:
        """Epoch ``number``; NotFoundError if there is none."""
        with self._transaction() as conn:
            row = conn.execute(_EPOCH_COLUMNS.where(Epoch.number == number)).first()
        if row is None:
            raise NotFoundError(f"no epoch {number}")
        return _epoch_row(row)

    def epoch_marks(self, number: int) -> dict[tuple[str, str], int]:
        """The producer marks epoch ``number`` covers (empty if it has none)."""
        with self._transaction() as conn:
            return self._epoch_marks(conn, number)

    def _epoch_marks(self, conn: Connection, number: int) -> dict[tuple[str, str], int]:
        rows = conn.execute(
            select(EpochMark.kind, EpochMark.source, EpochMark.last_seq).where(
                EpochMark.epoch == number
            )
        )
        return {(r.kind, r.source): int(r.last_seq) for r in rows}

    def epoch_reserves(self, number: int) -> list[ReserveRow]:
        """The reserve reports epoch ``number``'s record used, by asset and source."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(
                    EpochReserve.asset,
                    EpochReserve.source,
                    EpochReserve.amount,
                    EpochReserve.as_of_ms,
                )
                .where(EpochReserve.epoch == number)
                .order_by(EpochReserve.asset, EpochReserve.source)
            ).all()
        return [ReserveRow(r.asset, r.source, int(r.amount), int(r.as_of_ms)) for r in rows]

    def log_root(self, size: int | None = None) -> bytes:
        """RFC 9162 root of the log's first ``size`` leaves (default: all)."""
        with self.log.lock, self._transaction() as conn, self.log.bound(conn):
            current = self.log.size()
            if size is None:
                size = current
            _check_size(size, current)
            return self.log.root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the log of ``size`` leaves."""
        with self.log.lock, self._transaction() as conn, self.log.bound(conn):
            _check_size(size, self.log.size())
            return self.log.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof from the log of ``old_size`` leaves to the
        log of ``new_size`` (empty when equal, or from the empty log)."""
        with self.log.lock, self._transaction() as conn, self.log.bound(conn):
            _check_size(new_size, self.log.size())
            return self.log.consistency_proof(old_size, new_size)

    # Witness cosignatures (storage/cosignatures.py)

    def add_cosignatures(self, rows: Iterable[CosignatureRow]) -> None:
        """Store witnesses' cosignatures of committed epochs; one already stored
        for its (epoch, witness, key id) is skipped.

        Raises:
            InvalidInputError: a malformed row. ConstraintError: no such epoch.
        """
        checked = cosignatures.check_rows(rows)
        with self._transaction(write=True) as conn:
            cosignatures.insert_rows(conn, self._insert, checked)

    def cosignatures(self, first: int, last: int) -> list[CosignatureRow]:
        """The cosignatures of epochs ``first`` to ``last`` inclusive, by epoch."""
        with self._transaction() as conn:
            return cosignatures.select_rows(conn, first, last)

    def last_cosigned(self, witnesses: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The last epoch each witness key (name, key id) cosigned, if any."""
        with self._transaction() as conn:
            return cosignatures.last_cosigned(conn, witnesses)

    # Plumbing

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction: committed if the body returns, rolled back if it
        raises. Database errors become StorageError (ConstraintError for
        integrity violations); storage errors and a callback's own exceptions
        pass through unchanged."""
        try:
            with self.engine.connect() as conn:
                if write:
                    conn = conn.execution_options(solvency_write=True)
                with conn.begin():
                    yield conn
        except (SQLAlchemyError, self._dbapi_error) as exc:
            raise self._translate(exc) from exc

    @property
    def _dbapi_error(self) -> type[Exception]:
        error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        return error

    def _translate(self, exc: Exception) -> StorageError:
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        integrity = getattr(self.engine.dialect.loaded_dbapi, "IntegrityError", ())
        if isinstance(exc, IntegrityError) or isinstance(orig, integrity):
            detail = str(orig).strip().splitlines()
            return ConstraintError(f"constraint violated: {' / '.join(detail)}")
        return StorageError(f"database error: {orig}")

    def _cursor(self, conn: Connection) -> Any:
        """The driver's cursor on ``conn`` (inside its transaction), for the bulk paths."""
        return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def _insert(self, table: Any) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT, which has ``on_conflict_do_update``."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)


def _check_chunk_size(chunk_size: int) -> None:
    check_int(chunk_size, "chunk_size")
    if chunk_size < 1:
        raise InvalidInputError("chunk_size must be at least 1")


def _sorted_in_ranges(
    keys: list[str], pause: Callable[[], object] = lambda: None, piece: int = 20_000
) -> Iterator[list[str]]:
    """``sorted(keys)`` as consecutive sorted lists, one key range at a time: a
    single ``sorted`` of a million keys would hold the GIL for most of a second,
    stalling the event loop; here no step holds it much longer than sorting
    about ``piece`` keys (a range holds about ``piece`` if keys are distinct),
    and ``pause`` is called between steps. Each ``piece`` of ``keys`` is sorted
    into a run; all runs are cut at common bounds; a range is the concatenation
    of its cuts, which ``sorted`` merges in linear time as the runs they are."""
    if len(keys) <= piece:
        yield sorted(keys)
        return
    runs: list[list[str]] = []
    for start in range(0, len(keys), piece):
        pause()
        runs.append(sorted(keys[start : start + piece]))
    step = max(1, piece // 16)  # a sample of every step-th key of each run ...
    bounds = sorted(chain.from_iterable(run[::step] for run in runs))[16::16]  # ... every piece-th
    cuts = [[0, *(bisect.bisect_right(run, b) for b in bounds), len(run)] for run in runs]
    for i in range(len(bounds) + 1):
        pause()
        pieces = (run[c[i] : c[i + 1]] for run, c in zip(runs, cuts, strict=True))
        yield sorted(chain.from_iterable(pieces))


def _check_size(size: int, current: int) -> None:
    if not isinstance(size, int) or not 0 <= size <= current:
        raise NotFoundError(f"no log of size {size} (the log has {current})")


_EPOCH_COLUMNS = select(Epoch.number, Epoch.record, Epoch.checkpoint, Epoch.created_ms)
_PERIOD_COLUMNS = select(SaltPeriodRow.number, SaltPeriodRow.started_ms, SaltPeriodRow.secret)


def _epoch_row(row: Row[int, bytes, str, int]) -> EpochRow:
    return EpochRow(
        int(row.number), bytes(row.record), row.checkpoint.encode(), int(row.created_ms)
    )
