"""Salt periods (table ``salt_periods``): numbered from 1 without gaps, each
with its start time and a 32-byte secret from which the period's salts are
derived. A period, once started, never changes.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Row, func, select

from storage.checks import check_int
from storage.db import Database
from storage.errors import InvalidInputError, NotFoundError
from storage.rows import PeriodRow
from storage.schema import SaltPeriodRow

__all__ = ["SaltPeriods"]

_COLUMNS = select(SaltPeriodRow.number, SaltPeriodRow.started_ms, SaltPeriodRow.secret)


class SaltPeriods:
    """Starting salt periods and reading them back."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def start(self, now_ms: int, secret: bytes | None = None) -> PeriodRow:
        """Begin the next salt period (numbered from 1) with ``secret`` (32 bytes;
        fresh random bytes by default)."""
        check_int(now_ms, "now_ms")
        if secret is None:
            secret = secrets.token_bytes(32)
        if not isinstance(secret, bytes) or len(secret) != 32:
            raise InvalidInputError("a salt period's secret is 32 bytes")
        with self.db.transaction(write=True) as conn:
            last = conn.scalar(select(func.max(SaltPeriodRow.number)))
            row = PeriodRow((last or 0) + 1, now_ms, secret)
            conn.execute(
                self.db.insert(SaltPeriodRow).values(
                    number=row.number, started_ms=row.started_ms, secret=row.secret
                )
            )
        return row

    def get(self, number: int) -> PeriodRow:
        """Salt period ``number``; NotFoundError if there is none."""
        with self.db.transaction() as conn:
            row = conn.execute(_COLUMNS.where(SaltPeriodRow.number == number)).first()
        if row is None:
            raise NotFoundError(f"no salt period {number}")
        return _period_row(row)

    def latest(self) -> PeriodRow | None:
        """The last salt period started, or None before the first."""
        with self.db.transaction() as conn:
            row = conn.execute(_COLUMNS.order_by(SaltPeriodRow.number.desc()).limit(1)).first()
        return None if row is None else _period_row(row)


def _period_row(row: Row[int, int, bytes]) -> PeriodRow:
    return PeriodRow(int(row.number), int(row.started_ms), bytes(row.secret))
