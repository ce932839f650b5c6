"""Building the epoch record from the trees and the reserves. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prover.ledger import AssetRoot
from verifier.record import UNATTESTED, AssetState, EpochRecord, ReserveSource, expected_status

__all__ = ["Reserve", "build_record", "record_reports"]


@dataclass(frozen=True, slots=True)
class Reserve:
    """A reserve source's latest report for one asset: signed (``note``, the
    signed report of hash ``report_hash`` by key ``key_id``, docs/PROTOCOL.md
    §13) or, from a source with no attester key, unattested (``note`` empty)."""

    amount: int
    as_of_ms: int
    key_id: int = 0
    report_hash: bytes = UNATTESTED
    note: bytes = b""


def build_record(
    *,
    epoch: int,
    timestamp_ms: int,
    max_reserve_age_ms: int,
    decimals: Mapping[str, int],
    roots: Sequence[AssetRoot],
    reserves: Mapping[str, Mapping[str, Reserve]],
) -> EpochRecord:
    """The record of ``epoch``: one line per asset, its status derived by the rules
    of docs/PROTOCOL.md §4.3. A report dated after ``timestamp_ms`` (clock skew
    between a source and the prover, bounded at ingest) is dated ``timestamp_ms``.
    """
    lines = []
    for root in sorted(roots, key=lambda r: r.asset):
        sources = tuple(
            ReserveSource(name, r.amount, min(r.as_of_ms, timestamp_ms), r.key_id, r.report_hash)
            for name, r in sorted(reserves.get(root.asset, {}).items())
        )
        lines.append(
            AssetState(
                asset=root.asset,
                decimals=decimals[root.asset],
                height=root.height,
                root=root.root,
                liabilities=root.total,
                reserves=sum(s.amount for s in sources),
                status=expected_status(root.total, sources, timestamp_ms, max_reserve_age_ms),
                sources=sources,
            )
        )
    return EpochRecord(epoch, timestamp_ms, max_reserve_age_ms, tuple(lines))


def record_reports(
    record: EpochRecord, reserves: Mapping[str, Mapping[str, Reserve]]
) -> tuple[bytes, ...]:
    """The signed reports the record's attested sources rest on, in the record's
    order: what its root stream frame carries (docs/PROTOCOL.md §11.2)."""
    return tuple(
        reserves[a.asset][s.name].note for a in record.assets for s in a.sources if s.attested
    )
