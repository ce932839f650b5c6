"""Reserves (table ``reserves``) and the signed reserve reports behind them
(table ``reserve_reports``, docs/PROTOCOL.md §13).

Invariants: ``reserves`` holds one row per (asset, source), the latest
report; it names its signed report (key id and hash) or none (NULLs, read as
0 and ``UNATTESTED``). Every signed report accepted is kept by its hash, in
the same transaction as the reserve it set, so a reserve never names a
report the store lacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, select

from storage.db import Database
from storage.rows import UNATTESTED, AttestedReserveUpdate, ReserveRow, ReserveUpdate
from storage.schema import Reserve, ReserveReportRow

__all__ = ["Reserves"]

_IN_BATCH = 500  # hashes per query of reserve_reports


class Reserves:
    """Writing the latest reserves and their reports; reading them back."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def write(
        self,
        conn: Connection,
        source: str,
        fresh: Sequence[ReserveUpdate],
        signed: dict[int, AttestedReserveUpdate],
    ) -> None:
        """Make ``fresh`` (checked, not empty, by seq) ``source``'s latest reports,
        the last of an asset winning; ``signed`` maps the seq of each signed
        one to it (empty for unsigned reports), whose notes are kept too."""
        latest = {u.asset: u for u in fresh}  # one row per asset and statement
        stmt = self.db.insert(Reserve)
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
            reports = self.db.insert(ReserveReportRow)
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

    def all(self) -> list[ReserveRow]:
        """Each reserve source's latest report per asset, with its signed
        report's key id and hash (0 and ``UNATTESTED`` for none)."""
        with self.db.transaction() as conn:
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

    def reports(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        """The signed notes of the accepted reports of ``hashes`` (those known)."""
        wanted = sorted(set(hashes))
        found: dict[bytes, bytes] = {}
        with self.db.transaction() as conn:
            for start in range(0, len(wanted), _IN_BATCH):
                rows = conn.execute(
                    select(ReserveReportRow.report_hash, ReserveReportRow.note).where(
                        ReserveReportRow.report_hash.in_(wanted[start : start + _IN_BATCH])
                    )
                )
                found.update((bytes(r.report_hash), bytes(r.note)) for r in rows)
        return found
