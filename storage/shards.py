"""What a shard of the sharded prover restarts from (tables ``shard_states``
and ``shard_holdings``, migration 0008; docs/SCALING.md, "Recovery"): its
state and its holders as of the last epoch it closed, per ledger stream and
part.

A shard saves each close before it answers it: ``save`` writes the new
state and the holdings the close changed (``HoldingChanges``), in one
transaction. A restarted shard reads ``state``, then ``holdings`` as of
that state's epoch, rebuilds its trees at the same slots and reads the
stream again from the state's ``resume``.

Invariants:

- ``save`` writes one close whole or nothing, and only over the epoch its
  caller closed last (none: nothing stored): two shard processes of one
  part, or one close saved twice, cannot both succeed
  (``EpochConflictError``).
- After a ``save`` the holdings are the part's holders as of its epoch,
  each with a non-zero balance. That no two hold one slot of an asset, and
  each a slot handed out, is checked where they are restored
  (``Ledger.restore``), not by an index, which would cost every save.
- Holdings are read from one snapshot that holds the epoch asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Connection, Row, delete, select, update

from storage.checks import MAX_BALANCE, check_asset, check_int, check_source
from storage.db import CHUNK, Database, check_chunk_size
from storage.errors import EpochConflictError, InvalidInputError
from storage.schema import ShardHolding, ShardStateRow, encode_amount

__all__ = ["Holding", "HoldingChanges", "ShardState", "ShardStates"]

Holding = tuple[str, str, int, int]  # user, asset, amount, slot in the whole tree
MAX_SLOT = (1 << 32) - 1  # trees are at most 32 high


@dataclass(frozen=True, slots=True)
class ShardState:
    """A shard after closing ``epoch`` of salt period ``period``: its
    reader's state (``cut``, ``marks``, ``resume``), each asset's tree as
    ``(whole height, slots of the part's order handed out)``, and
    ``replies``, its encoded answers to the epoch's Stage and Close (opaque
    here). ``marks`` read back in the order they were saved in."""

    epoch: int
    period: int
    cut: int
    resume: int
    marks: dict[str, int]
    trees: dict[str, tuple[int, int]]
    replies: bytes


@dataclass(frozen=True, slots=True)
class HoldingChanges:
    """What a close changed: every holding of the assets of ``replaced``
    goes first (their trees were rebuilt: every slot moved); ``held`` are
    written over what was held before, ``gone`` (user, asset) hold nothing."""

    held: Sequence[Holding] = ()
    gone: Sequence[tuple[str, str]] = ()
    replaced: frozenset[str] = field(default_factory=frozenset)


class ShardStates:
    """Saving a shard's closes and reading the last one back."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(
        self,
        stream: str,
        part: int,
        after: int | None,
        state: ShardState,
        changes: HoldingChanges,
    ) -> None:
        """Save ``state`` and ``changes`` over the state of epoch ``after``
        (None: the part has none stored), in one transaction.

        Raises:
            EpochConflictError: the stored state is not ``after``'s.
            InvalidInputError: a malformed state or holding.
        """
        _check_key(stream, part)
        _check_state(state)
        if after is not None and state.epoch != after + 1:
            raise InvalidInputError(f"epoch {state.epoch} does not follow {after}")
        held = _checked(changes.held)
        for asset in changes.replaced:
            check_asset(asset)
        values = {
            "epoch": state.epoch,
            "period": state.period,
            "cut": state.cut,
            "resume": state.resume,
            "marks": json.dumps(state.marks),
            "trees": json.dumps(state.trees),
            "replies": state.replies,
        }
        key = _key(stream, part)
        with self.db.transaction(write=True) as conn:
            if after is None:  # a second writer's insert fails on the key
                stored = conn.scalar(select(ShardStateRow.epoch).where(*key))
                if stored is not None:
                    raise EpochConflictError(f"{stream} part {part} holds epoch {stored} already")
                conn.execute(
                    self.db.insert(ShardStateRow).values(stream=stream, part=part, **values)
                )
            else:
                done = conn.execute(
                    update(ShardStateRow).where(*key, ShardStateRow.epoch == after).values(**values)
                )
                if not done.rowcount:
                    stored = conn.scalar(select(ShardStateRow.epoch).where(*key))
                    raise EpochConflictError(
                        f"{stream} part {part}: epoch {stored} stored, not {after}"
                    )
            if changes.replaced:
                conn.execute(
                    delete(ShardHolding).where(
                        ShardHolding.stream == stream,
                        ShardHolding.part == part,
                        ShardHolding.asset.in_(sorted(changes.replaced)),
                    )
                )
            self._write(conn, stream, part, held, changes.gone)

    def state(self, stream: str, part: int) -> ShardState | None:
        """The state of ``stream``'s part ``part`` last saved, or None."""
        _check_key(stream, part)
        with self.db.transaction() as conn:
            row = conn.execute(_STATE.where(*_key(stream, part))).first()
        return None if row is None else _state(row)

    def holdings(
        self, stream: str, part: int, epoch: int, chunk_size: int = CHUNK
    ) -> Iterator[list[Holding]]:
        """Every holding of the part as of ``epoch``, in chunks of at most
        ``chunk_size``, in no particular order, from one snapshot (a
        server-side cursor on PostgreSQL).

        Raises:
            EpochConflictError: the part's state is not ``epoch``'s (any more).
        """
        _check_key(stream, part)
        check_chunk_size(chunk_size)
        with self.db.snapshot() as conn:
            stored = conn.scalar(select(ShardStateRow.epoch).where(*_key(stream, part)))
            if stored != epoch:
                raise EpochConflictError(
                    f"{stream} part {part}: epoch {stored} stored, not {epoch}"
                )
            if self.db.dialect == "postgresql":  # a server-side cursor, amounts as text
                raw = conn.connection.dbapi_connection
                cursor = raw.cursor(name="shard_holdings")  # type: ignore[union-attr]
                cursor.execute(
                    "SELECT user_id, asset, amount::text, slot FROM shard_holdings"
                    " WHERE stream = %s AND part = %s",
                    (stream, part),
                )
            else:
                cursor = self.db.cursor(conn)
                cursor.execute(
                    "SELECT user_id, asset, amount, slot FROM shard_holdings"
                    " WHERE stream = ? AND part = ?",
                    (stream, part),
                )
            while chunk := cursor.fetchmany(chunk_size):  # no per-row SQLAlchemy work
                yield [(u, a, _amount(m), s) for u, a, m, s in chunk]
            cursor.close()

    def _write(
        self,
        conn: Connection,
        stream: str,
        part: int,
        held: Sequence[Holding],
        gone: Sequence[tuple[str, str]],
    ) -> None:
        """Delete ``gone``, then upsert ``held``, bypassing per-row SQLAlchemy
        work: the driver's executemany (on PostgreSQL pipelined; each delete
        by the whole key, so its plan never depends on the table's
        statistics), and on PostgreSQL one upsert of arrays."""
        cursor = self.db.cursor(conn)
        if self.db.dialect == "postgresql":
            cursor.executemany(
                "DELETE FROM shard_holdings WHERE stream = %s AND part = %s AND asset = %s"
                " AND user_id = %s",
                [(stream, part, asset, user) for user, asset in gone],
            )
            if held:
                cursor.execute(
                    "INSERT INTO shard_holdings (stream, part, asset, user_id, amount, slot)"
                    " SELECT %s, %s, asset, user_id, amount, slot FROM unnest(%s::text[],"
                    " %s::text[], %s::numeric[], %s::bigint[]) AS h(user_id, asset, amount, slot)"
                    " ON CONFLICT (stream, part, asset, user_id)"
                    " DO UPDATE SET amount = EXCLUDED.amount, slot = EXCLUDED.slot",
                    (stream, part, *map(list, zip(*held, strict=True))),
                )
            return
        cursor.executemany(
            "DELETE FROM shard_holdings WHERE stream = ? AND part = ? AND asset = ?"
            " AND user_id = ?",
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


_STATE = select(
    ShardStateRow.epoch,
    ShardStateRow.period,
    ShardStateRow.cut,
    ShardStateRow.resume,
    ShardStateRow.marks,
    ShardStateRow.trees,
    ShardStateRow.replies,
)


def _key(stream: str, part: int) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return ShardStateRow.stream == stream, ShardStateRow.part == part


def _state(row: Row[int, int, int, int, str, str, bytes]) -> ShardState:
    trees = {a: (int(h), int(t)) for a, (h, t) in json.loads(row.trees).items()}
    marks = {s: int(m) for s, m in json.loads(row.marks).items()}
    return ShardState(
        int(row.epoch),
        int(row.period),
        int(row.cut),
        int(row.resume),
        marks,
        trees,
        bytes(row.replies),
    )


def _amount(value: bytes | str) -> int:
    """An amount as read: SQLite's 16-byte BLOB, PostgreSQL's numeric as text."""
    return int.from_bytes(value, "big") if isinstance(value, bytes) else int(value)


def _check_key(stream: str, part: int) -> None:
    if not isinstance(stream, str) or not 1 <= len(stream) <= 128:
        raise InvalidInputError("a stream name is 1-128 characters")
    check_int(part, "part", limit=(1 << 16) - 1)


def _check_state(state: ShardState) -> None:
    for what in ("epoch", "period", "cut", "resume"):
        check_int(getattr(state, what), what)
    for source, seq in state.marks.items():
        check_source(source, "marks")
        check_int(seq, "mark", source)
    for asset, (height, taken) in state.trees.items():
        check_asset(asset, "trees")
        check_int(height, "height", asset, limit=32)
        check_int(taken, "slots handed out", asset, limit=1 << height)
    if not isinstance(state.replies, bytes):
        raise InvalidInputError("replies are bytes")


def _checked(held: Sequence[Holding]) -> Sequence[Holding]:
    """``held``, each amount in 1..MAX_BALANCE and each slot in 0..MAX_SLOT
    (the users and assets: a shard ledger's own, checked as it took them)."""
    for user, asset, amount, slot in held:
        if type(amount) is not int or not 0 < amount <= MAX_BALANCE:
            raise InvalidInputError(f"{user} {asset}: amount {amount!r} outside 1..2**64-1")
        if type(slot) is not int or not 0 <= slot <= MAX_SLOT:
            raise InvalidInputError(f"{user} {asset}: slot {slot!r} outside 0..{MAX_SLOT}")
    return held
