"""The auditor's check of reserve attestations, pure (docs/PROTOCOL.md §13.4).

For each asset of a verified record and each of its reserve sources:

1. the record binds a signed report (a non-zero report hash), else the
   source is ``unattested`` (the custodian says so itself);
2. the root stream frame carries a report of that hash, else ``unattested``;
3. the report is well formed and signed by a key the auditor trusts, named
   as the source, with the key id the record states; else ``unattested``;
4. the report states what the record does: its source, asset and amount, and
   its as-of time (or the epoch's time, when the report is dated after it);
   else ``report-mismatch``: a violation by the custodian, who signed a
   record misstating a report it bound.

An asset's status in the auditor's report is the worst of its findings and
the record's own, in the order ``report-mismatch``, ``insolvent``,
``unattested``, ``unproven``, ``solvent``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from verifier.audit import Finding, RecordView
from verifier.checkpoint import VerifierKey
from verifier.errors import FormatError
from verifier.record import AssetState, ReserveSource
from verifier.report import SignedReport, report_hash

__all__ = [
    "REPORT_MISMATCH",
    "SEVERITY",
    "UNATTESTED",
    "SourceFinding",
    "attested_findings",
    "check_attestations",
    "parse_attester_keys",
]

UNATTESTED = "unattested"
REPORT_MISMATCH = "report-mismatch"
SEVERITY = (REPORT_MISMATCH, "insolvent", UNATTESTED, "unproven", "solvent")  # worst first


@dataclass(frozen=True, slots=True)
class SourceFinding:
    """Why one source of one asset is not attested, or misstated."""

    asset: str
    source: str
    status: str  # UNATTESTED or REPORT_MISMATCH
    detail: str


def parse_attester_keys(text: str) -> list[VerifierKey]:
    """Verifier keys, one per line; blank lines and ``#`` comments are skipped.

    Raises:
        FormatError: naming the line that is not a verifier key.
    """
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(VerifierKey.parse(line))
        except FormatError as exc:
            raise FormatError(f"line {number}: {exc}") from None
    return keys


def check_attestations(
    record: RecordView, reports: Iterable[bytes], attesters: Sequence[VerifierKey]
) -> list[SourceFinding]:
    """Every source of ``record`` not attested by a report among ``reports``
    signed by one of ``attesters``, or misstating it (module docstring)."""
    by_hash = {report_hash(note): note for note in reports}
    findings = []
    for asset in record.assets:
        for source in asset.sources:
            problem = _check_source(record, asset, source, by_hash, attesters)
            if problem is not None:
                findings.append(SourceFinding(asset.asset, source.name, *problem))
    return findings


def _check_source(
    record: RecordView,
    asset: AssetState,
    source: ReserveSource,
    by_hash: dict[bytes, bytes],
    attesters: Sequence[VerifierKey],
) -> tuple[str, str] | None:
    where = f"source {source.name}"
    if not source.attested:
        return UNATTESTED, f"{where}: the record binds no signed report"
    note = by_hash.get(source.report_hash)
    if note is None:
        return UNATTESTED, f"{where}: report {source.report_hash.hex()} was not served"
    try:
        signed = SignedReport.parse(note)
    except FormatError as exc:
        return UNATTESTED, f"{where}: report {source.report_hash.hex()} is malformed: {exc}"
    if signed.key_id != source.key_id:
        return UNATTESTED, (
            f"{where}: report signed by key {signed.key_id:08x}, the record names "
            f"{source.key_id:08x}"
        )
    if not any((k.name, k.key_id) == (source.name, source.key_id) for k in attesters):
        return UNATTESTED, f"{where}: key {source.name}+{source.key_id:08x} is not trusted"
    if signed.signer(attesters) is None:
        return UNATTESTED, f"{where}: the report's signature is invalid"
    report = signed.report
    stated = (source.name, asset.asset, source.amount, source.as_of_ms)
    reported = (
        report.source,
        report.asset,
        report.amount,
        min(report.as_of_ms, record.timestamp_ms),
    )
    if stated != reported:
        return REPORT_MISMATCH, (
            f"{where}: the record states amount {source.amount} as of {source.as_of_ms}, "
            f"the signed report of {report.source} states {report.asset} amount "
            f"{report.amount} as of {report.as_of_ms}"
        )
    return None


def attested_findings(
    record: RecordView,
    findings: Sequence[Finding],
    reports: Iterable[bytes],
    attesters: Sequence[VerifierKey],
) -> list[Finding]:
    """The record's ``findings`` (``verifier.audit``) with those of
    ``check_attestations``: one per asset that is not solvent and attested,
    the worst by ``SEVERITY``, its detail naming every problem of that status."""
    worst: dict[str, tuple[str, list[str]]] = {f.asset: (f.status, [f.detail]) for f in findings}
    for f in check_attestations(record, reports, attesters):
        status, details = worst.get(f.asset, ("solvent", []))
        if SEVERITY.index(f.status) < SEVERITY.index(status):
            worst[f.asset] = (f.status, [f.detail])
        elif f.status == status:
            details.append(f.detail)
    return [
        Finding(a.asset, worst[a.asset][0], "; ".join(worst[a.asset][1]))
        for a in record.assets
        if a.asset in worst
    ]
