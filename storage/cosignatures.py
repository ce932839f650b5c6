"""Witness cosignatures of the epochs' checkpoints (table ``witness_cosignatures``,
migration 0004): the checks of a row, and writing and reading rows.

A row is one signature line a witness key gave for an epoch's checkpoint;
the prover verified it before storing it (the store checks its form only).
At most one row per (epoch, witness, key id): a second is ignored, so a
cosignature stored twice (at publication, then late) is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select

from storage.checks import check_int
from storage.db import Database
from storage.errors import InvalidInputError
from storage.schema import WitnessCosignature

__all__ = ["CosignatureRow", "Cosignatures", "check_rows"]

MAX_LINE = 1024  # characters: a cosignature/v1 line with a 255-character name is ~365
_SIG_PREFIX = "\u2014 "


@dataclass(frozen=True, slots=True)
class CosignatureRow:
    """The cosignature ``line`` by the witness key ``witness`` + ``key_id`` of
    epoch ``epoch``'s checkpoint."""

    epoch: int
    witness: str
    key_id: int
    line: str


def check_rows(rows: Iterable[CosignatureRow]) -> list[CosignatureRow]:
    """The rows, checked for form; raises InvalidInputError naming the bad one."""
    checked = []
    for i, row in enumerate(rows):
        where = f"cosignatures[{i}]"
        if not isinstance(row, CosignatureRow):
            raise InvalidInputError(f"{where}: not a CosignatureRow")
        check_int(row.epoch, "epoch", where)
        check_int(row.key_id, "key id", where, limit=2**32 - 1)
        name = row.witness
        if not isinstance(name, str) or not 1 <= len(name) <= 255 or "+" in name:
            raise InvalidInputError(f"{where}: witness name {name!r} is not a key name")
        if any(c.isspace() for c in name):
            raise InvalidInputError(f"{where}: witness name {name!r} has white space")
        line = row.line
        if (
            not isinstance(line, str)
            or len(line) > MAX_LINE
            or not line.startswith(f"{_SIG_PREFIX}{name} ")
            or not line.endswith("\n")
            or "\n" in line[:-1]
        ):
            raise InvalidInputError(f"{where}: not one signature line by {name}")
        checked.append(row)
    return checked


class Cosignatures:
    """Storing witnesses' cosignatures of committed epochs and reading them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, rows: Iterable[CosignatureRow]) -> None:
        """Store cosignatures of committed epochs; one already stored for its
        (epoch, witness, key id) is skipped.

        Raises:
            InvalidInputError: a malformed row. ConstraintError: no such epoch.
        """
        checked = check_rows(rows)
        if not checked:
            return
        with self.db.transaction(write=True) as conn:
            conn.execute(
                self.db.insert(WitnessCosignature).on_conflict_do_nothing(),
                [
                    {"epoch": r.epoch, "witness": r.witness, "key_id": r.key_id, "line": r.line}
                    for r in checked
                ],
            )

    def between(self, first: int, last: int) -> list[CosignatureRow]:
        """The cosignatures of epochs ``first`` to ``last`` inclusive, by epoch,
        witness and key id."""
        t = WitnessCosignature
        with self.db.transaction() as conn:
            rows = conn.execute(
                select(t.epoch, t.witness, t.key_id, t.line)
                .where(t.epoch >= first, t.epoch <= last)
                .order_by(t.epoch, t.witness, t.key_id)
            )
            return [CosignatureRow(int(r.epoch), r.witness, int(r.key_id), r.line) for r in rows]

    def last_cosigned(self, witnesses: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The last epoch each of ``witnesses`` (name, key id) cosigned; those
        that never did are left out. One indexed query per witness."""
        t = WitnessCosignature
        found = {}
        with self.db.transaction() as conn:
            for name, key_id in witnesses:
                epoch = conn.scalar(
                    select(func.max(t.epoch)).where(t.witness == name, t.key_id == key_id)
                )
                if epoch is not None:
                    found[(name, key_id)] = int(epoch)
        return found
