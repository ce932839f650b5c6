"""What a shard of the sharded prover restarts from (tables ``shard_states``,
``shard_holdings`` and ``shard_deltas``, migrations 0008-0009;
docs/SCALING.md, "Recovery"): its state and its holders as of the last
epoch it closed, per ledger stream and part.

A shard saves each close before it answers it: ``save`` writes the new
state and appends ONE ``shard_deltas`` row, the holdings the close changed
(``HoldingChanges``) packed in msgpack, in one transaction; no per-holding
row work on the close's path. ``fold`` (run off the close, e.g. in a
thread of the shard every so many changed holdings) brings the base,
``shard_holdings``, up to date (storage/shard_deltas.py): it takes the
part's deltas, coalesces them (a holding changed in many epochs is written
once), writes the result in transactions of a bounded number of holdings,
and deletes the deltas with the last of them. A restarted shard reads
``state``, then ``holdings`` as of that state's epoch (the base with the
deltas replayed over it in epoch order, from one snapshot), rebuilds its
trees at the same slots and reads the stream again from the state's
``resume``. Rows saved before 0009 are a base with no deltas.

Invariants:

- ``save`` writes one close whole or nothing, and only over the epoch its
  caller closed last (none: nothing stored): two shard processes of one
  part, or one close saved twice, cannot both succeed
  (``EpochConflictError``).
- The part's holders as of its state's epoch are the base overlaid with
  every delta of the part in epoch order (a delta's ``replaced`` assets
  first drop every holding of theirs, then its ``gone``, then its
  ``held`` over what was there), each with a non-zero balance. A fold
  writes only what the deltas it took name, as of the last of them, and
  deletes them in its last transaction, so the overlay is the same
  before, after and between its transactions (a fold stopped midway is
  redone by the next); a delta a fold did not take (saved after it read
  the deltas) has a higher epoch than every delta it took. One fold of a
  part runs at a time (a lock held across its transactions), so the base
  never goes back in time.
- That no two hold one slot of an asset, and each a slot handed out, is
  checked where they are restored (``Ledger.restore``), not by an index,
  which would cost every fold.
- Holdings are read from one snapshot that holds the epoch asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import msgspec
from sqlalchemy import ColumnElement, Row, func, insert, select, update

from storage.checks import MAX_BALANCE, check_asset, check_int, check_source
from storage.db import CHUNK, Database, check_chunk_size
from storage.errors import EpochConflictError, InvalidInputError
from storage.schema import ShardDelta, ShardStateRow
from storage.shard_deltas import DELTA_FORMAT, Holding, fold_deltas, fold_part, overlay

__all__ = ["Holding", "HoldingChanges", "ShardState", "ShardStates", "fold_deltas"]  # re-exported

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
        (None: the part has none stored), in one transaction: the state row
        and one delta row (``changes`` packed), whatever their number.

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
        gone = changes.gone
        body = msgspec.msgpack.encode(
            (
                DELTA_FORMAT,
                sorted(changes.replaced),
                held if isinstance(held, list | tuple) else list(held),
                gone if isinstance(gone, list | tuple) else list(gone),
            )
        )
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
            conn.execute(
                insert(ShardDelta).values(
                    stream=stream,
                    part=part,
                    epoch=state.epoch,
                    count=len(held) + len(gone),
                    body=body,
                )
            )

    def fold(self, stream: str, part: int, chunk_size: int | None = None) -> int:
        """Fold the part's deltas into its base in write transactions of at
        most ``chunk_size`` holdings (None: the database's default; see
        storage/shard_deltas.py); return how many changed holdings they
        named (0: none to fold). Safe beside saves and other folds of the
        part, and at any point of a crash (see the module's invariants)."""
        _check_key(stream, part)
        return fold_part(self.db, stream, part, chunk_size)

    def pending(self, stream: str, part: int) -> int:
        """How many changed holdings the part's deltas name, not yet folded."""
        _check_key(stream, part)
        key = (ShardDelta.stream == stream, ShardDelta.part == part)
        with self.db.transaction() as conn:
            return int(conn.scalar(select(func.sum(ShardDelta.count)).where(*key)) or 0)

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
        ``chunk_size``, in no particular order, from one snapshot: the part's
        deltas read and coalesced first, then the base streamed (a
        server-side cursor on PostgreSQL) without the holdings they changed,
        then what they hold.

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
            query = select(ShardDelta.body).where(
                ShardDelta.stream == stream, ShardDelta.part == part
            )
            replaced, latest = overlay(conn.scalars(query.order_by(ShardDelta.epoch)))
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
                if replaced or latest:
                    kept = [
                        (u, a, _amount(m), s)
                        for u, a, m, s in chunk
                        if a not in replaced and (u, a) not in latest
                    ]
                    if kept:
                        yield kept
                else:
                    yield [(u, a, _amount(m), s) for u, a, m, s in chunk]
            cursor.close()
            rows = [(u, a, *now) for (u, a), now in latest.items() if now is not None]
            for start in range(0, len(rows), chunk_size):
                yield rows[start : start + chunk_size]


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
