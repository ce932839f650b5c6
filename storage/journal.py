"""The balance journal and its fold (tables ``balance_journal`` and
``balances``).

An acknowledged balance batch is one journal row (the ingest hot path
appends; it does not upsert), so the balances are the ``balances`` table
overlaid with the journal, a higher journal id winning over a lower one and
any journal line over the table. ``fold`` moves the journal into the table in
short transactions, idempotently (amounts are absolute), so a crash at any
point loses nothing acknowledged; ``iter_balances`` folds before it reads;
``read_balances`` reads the table and the journal as they are, from one
snapshot, without folding.

Invariants:

- journal ids follow commit order (on PostgreSQL, appenders take the journal
  lock; on SQLite, the write lock), so a fold never sees a later id before an
  earlier one has committed;
- a journal row is deleted only after the table holds its lines (or newer);
- one fold of a database at a time: a lock of the process and, on
  PostgreSQL, an advisory lock (a SQLite file must be folded by one process).
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, islice

from sqlalchemy import Connection, delete, func, insert, select

from storage.db import CHUNK, FOLD_LOCK, JOURNAL_LOCK, Database, check_chunk_size
from storage.errors import ConstraintError
from storage.rows import BalanceUpdate
from storage.schema import Asset, Balance, BalanceJournal, encode_amount

__all__ = ["JOURNAL_ROWS_PER_READ", "BalanceChunk", "Journal"]

JOURNAL_ROWS_PER_READ = 8  # journal rows (batches) a fold reads per query
_FOLDING = threading.Lock()  # one fold at a time in this process, whichever the store

Run = Callable[[Callable[[], None]], None]


@dataclass(frozen=True, slots=True)
class BalanceChunk:
    """Rows ``(user, asset, amount)`` of ``Journal.read_balances``: from the
    ``balances`` table (non-zero, one per (user, asset)) or, if ``journaled``,
    journal lines, in journal order (zero amounts included: no balance)."""

    rows: list[tuple[str, str, int]]
    journaled: bool


class Journal:
    """Appending acknowledged batches, folding them, reading the balances."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, conn: Connection, source: str, fresh: list[BalanceUpdate]) -> None:
        """Append ``fresh`` (checked, not empty) to the journal as one row, a
        line per update in batch order (of a (user, asset)'s lines, readers
        take the last). The ingest hot path: per update, one formatted line,
        then one join.

        Raises:
            ConstraintError: an asset of the batch is not registered.
        """
        lines = [f"{u.user}\t{u.asset}\t{u.amount}\n" for u in fresh]
        # balances.asset's foreign key is checked here, not at the fold, which
        # could not refuse a batch that was acknowledged
        missing = {u.asset for u in fresh}.difference(conn.scalars(select(Asset.id)))
        if missing:
            raise ConstraintError(
                f"constraint violated: asset {min(missing)!r} is not in assets"
                " (foreign key of balances.asset)"
            )
        self.db.advisory_lock(conn, JOURNAL_LOCK)  # ids in commit order (see BalanceJournal)
        conn.execute(
            insert(BalanceJournal),
            {
                "source": source,
                "first_seq": fresh[0].seq,
                "last_seq": fresh[-1].seq,
                "count": len(lines),
                "body": "".join(lines).encode(),
            },
        )

    def backlog(self) -> int:
        """How many journaled updates (journal lines) ``fold`` has yet to fold."""
        with self.db.transaction() as conn:
            return int(conn.scalar(select(func.sum(BalanceJournal.count))) or 0)

    def fold(
        self,
        chunk_size: int = CHUNK,
        run: Run | None = None,
        pause: Callable[[], object] | None = None,
    ) -> int:
        """Move the journal into the ``balances`` table; return how many journaled
        updates (journal lines) it folded.

        Reads the journal up to its last row J (the rows' ids in one
        transaction, then their bodies a few rows per read), keeps the
        latest amount of each (user, asset) (the highest id wins, then the
        last line of a row), upserts them
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
        check_chunk_size(chunk_size)
        with self._fold_lock():
            with self.db.transaction() as conn:
                query = select(BalanceJournal.id, BalanceJournal.count)
                journal = conn.execute(query.order_by(BalanceJournal.id)).all()
            if not journal:
                return 0
            wait = pause or (lambda: None)
            latest: dict[str, str] = {}  # "user\tasset" -> its last line (see BalanceJournal)
            for body in self._bodies([row_id for row_id, _ in journal], wait):
                wait()
                for line in str(body, "utf-8")[:-1].split("\n"):
                    latest[line[: line.rindex("\t")]] = line
            write = run or (lambda step: step())
            # sorted as (user, asset), since a tab sorts below any id character
            lines = chain.from_iterable(sorted_in_ranges(list(latest.values()), wait))
            while chunk := list(islice(lines, chunk_size)):
                fields = "\t".join(chunk).split("\t")  # user, asset, amount, user, ...
                rows = list(zip(fields[::3], fields[1::3], map(int, fields[2::3]), strict=True))
                write(functools.partial(self.upsert_chunk, rows))
            # deleted about chunk_size lines at a time too, so that no deletion
            # holds SQLite's write lock long
            lines_since = 0
            for row_id, count in journal:
                lines_since += count
                if lines_since >= chunk_size or row_id == journal[-1][0]:
                    write(functools.partial(self._forget_journal, row_id))
                    lines_since = 0
        return sum(count for _, count in journal)

    def iter_balances(
        self,
        chunk_size: int = CHUNK,
        run: Run | None = None,
        pause: Callable[[], object] | None = None,
    ) -> Iterator[list[tuple[str, str, int]]]:
        """Every non-zero balance as ``(user, asset, amount)``, in chunks of at most
        ``chunk_size``, in no particular order. When iteration begins it folds
        the journal (``run`` and ``pause`` as in ``fold``), so every batch
        acknowledged before then is included; the table is then streamed from
        one snapshot (a server-side cursor on PostgreSQL)."""
        check_chunk_size(chunk_size)
        self.fold(run=run, pause=pause)
        with self.db.transaction() as conn:
            yield from self._table(conn, chunk_size)

    def read_balances(
        self, chunk_size: int = CHUNK, pause: Callable[[], object] | None = None
    ) -> Iterator[BalanceChunk]:
        """The balances as of when iteration begins, without folding or waiting
        for a fold: the ``balances`` table's non-zero rows, then every journal
        line in journal order (``journaled`` chunks), all from one snapshot
        (``Database.snapshot``), in chunks of at most ``chunk_size`` rows.
        Applied in that order, the last row of a (user, asset) winning, they
        give ``iter_balances``' balances (a zero amount: none). A fold under
        way moves lines into the table and deletes them; the snapshot sees
        either side of each of its transactions, which give the same balances.
        ``pause``, if given, is called between reads, as in ``fold``.

        Raises:
            InvalidInputError: ``chunk_size`` is not a positive integer.
        """
        check_chunk_size(chunk_size)
        wait = pause or (lambda: None)
        with self.db.snapshot() as conn:
            for rows in self._table(conn, chunk_size):
                yield BalanceChunk(rows, journaled=False)
                wait()
            ids = conn.scalars(select(BalanceJournal.id).order_by(BalanceJournal.id)).all()
            lines: list[tuple[str, str, int]] = []
            for start in range(0, len(ids), JOURNAL_ROWS_PER_READ):
                first, last = ids[start], ids[min(start + JOURNAL_ROWS_PER_READ, len(ids)) - 1]
                wait()
                bodies = conn.scalars(
                    select(BalanceJournal.body)
                    .where(BalanceJournal.id.between(first, last))
                    .order_by(BalanceJournal.id)
                ).all()
                for body in bodies:
                    for line in str(body, "utf-8")[:-1].split("\n"):
                        user, asset, amount = line.split("\t")
                        lines.append((user, asset, int(amount)))
                    while len(lines) >= chunk_size:
                        yield BalanceChunk(lines[:chunk_size], journaled=True)
                        del lines[:chunk_size]
            if lines:
                yield BalanceChunk(lines, journaled=True)

    def _table(self, conn: Connection, chunk_size: int) -> Iterator[list[tuple[str, str, int]]]:
        """The ``balances`` table's non-zero rows, read in ``conn``'s transaction,
        ``chunk_size`` at a time (a server-side cursor on PostgreSQL)."""
        if self.db.dialect == "postgresql":
            query = select(Balance.user_id, Balance.asset, Balance.amount)
            result = conn.execute(
                query.where(Balance.amount != 0),
                execution_options={"stream_results": True, "yield_per": chunk_size},
            )
            for partition in result.partitions(chunk_size):
                yield [(user, asset, int(amount)) for user, asset, amount in partition]
            return
        # the driver's cursor, without per-row SQLAlchemy work: a million rows at start-up
        cursor = self.db.cursor(conn)
        cursor.execute(
            "SELECT user_id, asset, amount FROM balances WHERE amount != ?",
            (encode_amount(0, self.db.dialect),),
        )
        while rows := cursor.fetchmany(chunk_size):
            yield [(user, asset, int.from_bytes(amount, "big")) for user, asset, amount in rows]

    def upsert_chunk(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """One write transaction of a fold: upsert ``rows``."""
        with self.db.transaction(write=True) as conn:
            self._upsert_balances(conn, rows)

    def _bodies(self, ids: list[int], pause: Callable[[], object]) -> Iterator[bytes]:
        """The bodies of journal rows ``ids`` (ascending), read a few at a time,
        with ``pause`` between reads, so that no read holds the GIL long (the
        driver decodes the whole result). The rows stay as they are meanwhile:
        only a fold deletes them, and one fold runs at a time."""
        for start in range(0, len(ids), JOURNAL_ROWS_PER_READ):
            first, last = ids[start], ids[min(start + JOURNAL_ROWS_PER_READ, len(ids)) - 1]
            pause()
            with self.db.transaction() as conn:
                bodies = conn.scalars(
                    select(BalanceJournal.body)
                    .where(BalanceJournal.id.between(first, last))
                    .order_by(BalanceJournal.id)
                ).all()
            yield from bodies

    def _forget_journal(self, last: int) -> None:
        """Delete the folded journal rows up to id ``last``: the balances table
        holds their lines (or newer ones), so the journal's rule still holds."""
        with self.db.transaction(write=True) as conn:
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
            if self.db.dialect != "postgresql":
                yield
                return
            with self.db.transaction() as conn:
                self.db.advisory_lock(conn, FOLD_LOCK)
                yield

    def _upsert_balances(self, conn: Connection, rows: Sequence[tuple[str, str, int]]) -> None:
        """Write absolute balances ``(user, asset, amount)``, at most one per
        (user, asset): COPY into a staging table, then one upsert, on
        PostgreSQL; the driver's executemany of INSERT .. ON CONFLICT on SQLite.
        Both bypass per-row SQLAlchemy work."""
        cursor = self.db.cursor(conn)
        if self.db.dialect == "postgresql":
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


def sorted_in_ranges(
    keys: list[str], pause: Callable[[], object] = lambda: None, piece: int = 20_000
) -> Iterator[list[str]]:
    """``sorted(keys)`` as consecutive sorted lists, one key range at a time, so
    that no step holds the GIL much longer than sorting about ``piece`` keys
    (a range holds about ``piece`` if keys are distinct); ``pause`` is called
    between steps. Each ``piece`` of ``keys`` is sorted into a run; all runs
    are cut at common bounds; a range is the concatenation of its cuts, which
    ``sorted`` merges in linear time as the runs they are."""
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
