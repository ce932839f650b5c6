"""Producer marks (table ``source_marks``): for each producer ``(kind, source)``
(kind ``"balances"`` or ``"reserves"``), the last sequence number it had
acknowledged.

Invariants: a mark only grows, and it moves in the same transaction as the
updates it acknowledges, so an update is durable exactly when its seq is at
or below its source's mark; updates at or below it are replays. Writers of
one producer serialise on its mark (``lock``).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql

from storage.checks import KINDS, MAX_INT64, check_source
from storage.db import Database
from storage.errors import InvalidInputError, SequenceError
from storage.schema import SourceMark

__all__ = ["MAX_SEQ", "Marks", "SourceMarks", "check_marks", "is_seq"]

MAX_SEQ = MAX_INT64
Marks = Mapping[tuple[str, str], int]


class SourceMarks:
    """Reading, locking and advancing producer marks inside a transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def lock(self, conn: Connection, kind: str, source: str) -> int:
        """The producer's mark (-1 if none), locked until the transaction ends."""
        if self.db.dialect == "postgresql":
            # a placeholder row to lock, so two first batches of a new source
            # serialise too (it is rolled back or overwritten by set)
            conn.execute(
                postgresql.insert(SourceMark)
                .values(kind=kind, source=source, last_seq=-1)
                .on_conflict_do_nothing()
            )
        query = select(SourceMark.last_seq).where(
            SourceMark.kind == kind, SourceMark.source == source
        )
        if self.db.dialect == "postgresql":
            query = query.with_for_update()
        mark = conn.scalar(query)  # SQLite: BEGIN IMMEDIATE already holds the write lock
        return -1 if mark is None else int(mark)

    def set(self, conn: Connection, kind: str, source: str, seq: int) -> None:
        """Move the producer's mark (locked by ``lock``) to ``seq``."""
        stmt = self.db.insert(SourceMark).values(kind=kind, source=source, last_seq=seq)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["kind", "source"], set_={"last_seq": stmt.excluded.last_seq}
            )
        )

    def read(self, conn: Connection) -> dict[tuple[str, str], int]:
        """``(kind, source) -> last acknowledged seq`` for every producer seen."""
        rows = conn.execute(select(SourceMark.kind, SourceMark.source, SourceMark.last_seq))
        return {(r.kind, r.source): int(r.last_seq) for r in rows if r.last_seq >= 0}


def is_seq(seq: object) -> bool:
    """Whether ``seq`` is a sequence number (an int in 0..2**63-1, not a bool)."""
    return isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_SEQ


def check_marks(marks: Marks) -> dict[tuple[str, str], int]:
    """``marks`` as a dict, each key a ``(kind, source)`` and each value a seq.

    Raises:
        InvalidInputError: a malformed key. SequenceError: a bad seq.
    """
    checked: dict[tuple[str, str], int] = {}
    for key, seq in marks.items():
        if not isinstance(key, tuple) or len(key) != 2 or key[0] not in KINDS:
            raise InvalidInputError(f"mark {key!r}: want (kind, source), kind in {KINDS}")
        check_source(key[1], f"mark {key!r}")
        if not is_seq(seq):
            raise SequenceError(f"mark {key!r}: seq {seq!r} is not an integer in 0..2**63-1")
        checked[key] = seq
    return checked
