"""A shard's deltas (table ``shard_deltas``, migration 0009; see
storage/shards.py): the body one close's delta packs, how deltas overlay
the base ``shard_holdings``, and the fold that writes them into it.

A fold of a part, under the part's fold lock: one read takes the part's
deltas (up to the highest epoch it saw) and coalesces them (a holding
changed in many epochs is written once); then write transactions of at
most ``chunk_size`` holdings each drop the holdings of the assets the
deltas replaced, delete the (user, asset) they left with nothing and
upsert the last holding of the others (sorted by key); the last of them
also deletes the deltas taken.

Invariants:

- Until that last transaction commits, every delta taken is still stored,
  and the overlay (the base with every delta of the part replayed over it
  in epoch order) is the same after each chunk as before the fold: each
  chunk writes only holdings the deltas name, at their value as of the
  last delta taken (or drops base holdings of an asset a delta replaced),
  and the replay puts those deltas' holdings back over them. So a fold
  stopped after any chunk (a crash, a database error) leaves the last
  close saved readable, and the next fold redoes its work: every step
  writes absolute values, so doing one twice is harmless.
- A delta saved during a fold has a higher epoch than every delta it
  took: the fold neither writes nor deletes it.
- One fold of a part at a time: on PostgreSQL, a transaction-scoped
  advisory lock per (stream, part), held on a connection of its own for
  the fold's length (it holds no snapshot and blocks no save); on SQLite,
  a lock of the process (a SQLite file is folded by one process). Two
  folds interleaved could leave an older value over a newer one; the
  last transaction checks it deletes exactly the deltas it took.
- On SQLite, the fold pauses between its transactions longer than
  SQLite's busy handler sleeps, so a save waiting for the write lock gets
  it: a save waits for one chunk at most, never the whole fold.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter

import msgspec
from sqlalchemy import Connection, delete, select, text

from storage.db import Database, check_chunk_size
from storage.errors import StorageError
from storage.schema import ShardDelta, ShardHolding, encode_amount

__all__ = [
    "DELTA_FORMAT",
    "FOLD_CHUNK",
    "SQLITE_FOLD_CHUNK",
    "Holding",
    "fold_deltas",
    "fold_part",
    "overlay",
]

Holding = tuple[str, str, int, int]  # user, asset, amount, slot in the whole tree
DELTA_FORMAT = 1  # a delta's body: msgpack [format, replaced, held, gone]
Body = tuple[int, list[str], list[Holding], list[tuple[str, str]]]
_body = msgspec.msgpack.Decoder(Body)
Overlay = dict[tuple[str, str], tuple[int, int] | None]  # (user, asset) -> (amount, slot), gone

FOLD_CHUNK = 50_000  # holdings written (or dropped) per transaction of a fold, PostgreSQL
SQLITE_FOLD_CHUNK = 20_000  # on SQLite, where a save waits for the chunk's write lock
SHARD_FOLD_LOCK = 0x50524F5A  # class of the (class, key) PostgreSQL advisory locks of folds
SQLITE_PAUSE = 0.15  # seconds between a fold's transactions: above SQLite's 100 ms busy sleeps
_SQLITE_FOLDS = threading.Lock()


@dataclass(frozen=True, slots=True)
class Taken:
    """The deltas of a part one fold took, coalesced: ``last``, the highest
    epoch among them; ``rows``, how many they are; ``count``, how many
    changed holdings they name; ``replaced``, the assets any of them
    replaced; ``held``, the last holding of each (user, asset) they name
    that holds one, sorted by user; ``gone``, those that hold nothing (outside
    ``replaced``, whose holdings are dropped whole)."""

    last: int
    rows: int
    count: int
    replaced: tuple[str, ...]
    held: list[Holding]
    gone: list[tuple[str, str]]


def overlay(bodies: Iterable[bytes]) -> tuple[set[str], Overlay]:
    """Deltas' bodies, in epoch order, coalesced: the assets any replaced
    (the base's holdings of those do not count), and each (user, asset)
    they name with its last holding, or None if it holds nothing."""
    replaced: set[str] = set()
    latest: Overlay = {}
    for body in bodies:
        try:
            form, dropped, held, gone = _body.decode(body)
        except msgspec.DecodeError as exc:
            raise StorageError(f"a malformed shard delta: {exc}") from None
        if form != DELTA_FORMAT:
            raise StorageError(f"a shard delta of format {form}, not {DELTA_FORMAT}")
        if dropped:
            replaced.update(dropped)
            latest = {key: now for key, now in latest.items() if key[1] not in dropped}
        for key in gone:
            latest[key] = None
        for user, asset, amount, slot in held:
            latest[user, asset] = (amount, slot)
    return replaced, latest


def fold_part(db: Database, stream: str, part: int, chunk_size: int | None = None) -> int:
    """Fold the part's deltas into its base in transactions of at most
    ``chunk_size`` holdings (None: ``FOLD_CHUNK``, on SQLite
    ``SQLITE_FOLD_CHUNK``; see the module's invariants); return how many
    changed holdings the deltas taken named (0: none to fold)."""
    if chunk_size is None:
        chunk_size = SQLITE_FOLD_CHUNK if db.dialect == "sqlite" else FOLD_CHUNK
    check_chunk_size(chunk_size)
    with _fold_lock(db, stream, part):
        with db.transaction() as conn:
            taken = _take(conn, stream, part)
        if taken is None:
            return 0
        for asset in taken.replaced:
            dropped = chunk_size
            while dropped == chunk_size:
                with db.transaction(write=True) as conn:
                    dropped = _drop(conn, stream, part, asset, chunk_size)
                _pause(db)
        gone, held = taken.gone, taken.held
        pieces: list[tuple[list[tuple[str, str]], list[Holding]]]
        pieces = [(gone[i : i + chunk_size], []) for i in range(0, len(gone), chunk_size)]
        pieces += [([], held[i : i + chunk_size]) for i in range(0, len(held), chunk_size)]
        pieces = pieces or [([], [])]
        for number, (some_gone, some_held) in enumerate(pieces, 1):
            with db.transaction(write=True) as conn:
                _write(conn, db.dialect, stream, part, some_held, some_gone)
                if number == len(pieces):
                    _forget(conn, stream, part, taken)
            if number < len(pieces):
                _pause(db)
        return taken.count


def fold_deltas(conn: Connection, dialect: str, stream: str, part: int) -> int:
    """``fold_part``'s work in ``conn``'s one transaction, without the fold
    lock (for a migration, which holds the database alone); return how
    many changed holdings the deltas named."""
    taken = _take(conn, stream, part)
    if taken is None:
        return 0
    for asset in taken.replaced:
        _drop(conn, stream, part, asset, None)
    _write(conn, dialect, stream, part, taken.held, taken.gone)
    _forget(conn, stream, part, taken)
    return taken.count


def _take(conn: Connection, stream: str, part: int) -> Taken | None:
    """The part's deltas, coalesced in epoch order; None if it has none."""
    rows = conn.execute(
        select(ShardDelta.epoch, ShardDelta.count, ShardDelta.body)
        .where(ShardDelta.stream == stream, ShardDelta.part == part)
        .order_by(ShardDelta.epoch)
    ).all()
    if not rows:
        return None
    replaced, latest = overlay(body for _, _, body in rows)
    held: list[Holding] = [(u, a, *now) for (u, a), now in latest.items() if now is not None]
    held.sort(key=itemgetter(0))  # by user: each chunk's keys close together in the index
    gone = [key for key, now in latest.items() if now is None and key[1] not in replaced]
    return Taken(
        int(rows[-1][0]),
        len(rows),
        sum(int(count) for _, count, _ in rows),
        tuple(sorted(replaced)),
        held,
        gone,
    )


def _drop(conn: Connection, stream: str, part: int, asset: str, limit: int | None) -> int:
    """Delete at most ``limit`` (None: every) base holding of ``asset``;
    return how many were deleted."""
    key = (ShardHolding.stream == stream, ShardHolding.part == part, ShardHolding.asset == asset)
    query = delete(ShardHolding).where(*key)
    if limit is not None:
        some = select(ShardHolding.user_id).where(*key).limit(limit)
        query = query.where(ShardHolding.user_id.in_(some))
    return int(conn.execute(query).rowcount)


def _write(
    conn: Connection,
    dialect: str,
    stream: str,
    part: int,
    held: Sequence[Holding],
    gone: Sequence[tuple[str, str]],
) -> None:
    """Delete ``gone``, then upsert ``held`` in the base, bypassing per-row
    SQLAlchemy work: the driver's executemany for the deletes (each by the
    whole key, so its plan never depends on the table's statistics; on
    PostgreSQL pipelined); on PostgreSQL, ``held`` COPYed into a staging
    table, then one upsert from it; on SQLite, an executemany upsert."""
    cursor = Database.cursor(conn)
    if dialect == "postgresql":
        if gone:
            cursor.executemany(
                "DELETE FROM shard_holdings WHERE stream = %s AND part = %s AND asset = %s"
                " AND user_id = %s",
                [(stream, part, asset, user) for user, asset in gone],
            )
        if held:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS shard_holding_stage (user_id text, asset text,"
                " amount numeric(39, 0), slot bigint) ON COMMIT DELETE ROWS"
            )
            with cursor.copy(
                "COPY shard_holding_stage (user_id, asset, amount, slot) FROM STDIN"
            ) as copy:
                for row in held:
                    copy.write_row(row)
            cursor.execute(
                "INSERT INTO shard_holdings (stream, part, asset, user_id, amount, slot)"
                " SELECT %s, %s, asset, user_id, amount, slot FROM shard_holding_stage"
                " ON CONFLICT (stream, part, asset, user_id)"
                " DO UPDATE SET amount = EXCLUDED.amount, slot = EXCLUDED.slot",
                (stream, part),
            )
        return
    cursor.executemany(
        "DELETE FROM shard_holdings WHERE stream = ? AND part = ? AND asset = ? AND user_id = ?",
        [(stream, part, asset, user) for user, asset in gone],
    )
    cursor.executemany(
        "INSERT INTO shard_holdings (stream, part, asset, user_id, amount, slot)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream, part, asset, user_id)"
        " DO UPDATE SET amount = excluded.amount, slot = excluded.slot",
        [
            (stream, part, asset, user, encode_amount(amount, "sqlite"), slot)
            for user, asset, amount, slot in held
        ],
    )


def _forget(conn: Connection, stream: str, part: int, taken: Taken) -> None:
    """Delete the deltas ``taken``: the base holds what they did now.

    Raises:
        StorageError: the part's deltas up to ``taken.last`` are not the
            ones taken (another fold took some meanwhile).
    """
    done = conn.execute(
        delete(ShardDelta).where(
            ShardDelta.stream == stream,
            ShardDelta.part == part,
            ShardDelta.epoch <= taken.last,
        )
    )
    if done.rowcount != taken.rows:
        raise StorageError(
            f"{stream} part {part}: {done.rowcount} deltas up to epoch {taken.last} stored,"
            f" not the {taken.rows} folded (another fold of the part ran meanwhile)"
        )


@contextmanager
def _fold_lock(db: Database, stream: str, part: int) -> Iterator[None]:
    """Held for a whole fold of the part (see the module's invariants)."""
    if db.dialect != "postgresql":
        with _SQLITE_FOLDS:
            yield
        return
    key = zlib.crc32(f"{part}/{stream}".encode()) - (1 << 31)  # an int4
    with db.transaction() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:c, :k)"), {"c": SHARD_FOLD_LOCK, "k": key})
        yield


def _pause(db: Database) -> None:
    """Between two transactions of a fold, on SQLite: let a waiting save in."""
    if db.dialect == "sqlite":
        time.sleep(SQLITE_PAUSE)
