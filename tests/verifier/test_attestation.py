"""Record version 2's attested sources and the auditor's attestation policy
(PROTOCOL §4, §13.4): each way a custodian can misuse a report, built and caught."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.attestation import (
    REPORT_MISMATCH,
    UNATTESTED,
    attested_findings,
    check_attestations,
    parse_attester_keys,
)
from verifier.audit import Finding
from verifier.checkpoint import verifier_key_for
from verifier.errors import FormatError
from verifier.record import (
    UNATTESTED as NO_REPORT,
)
from verifier.record import (
    AssetState,
    EpochRecord,
    ReserveSource,
    Status,
    expected_status,
)
from verifier.report import ReserveReport, SignedReport, report_hash, sign_report

NOW = 1_790_000_000_000
COLD = Ed25519PrivateKey.from_private_bytes(bytes(range(129, 161)))
HOT = Ed25519PrivateKey.from_private_bytes(bytes(range(161, 193)))
ATTESTERS = (
    verifier_key_for("cold", COLD.public_key()),
    verifier_key_for("hot", HOT.public_key()),
)


def signed(source: str, asset: str, amount: int, as_of: int, key: Ed25519PrivateKey) -> bytes:
    return sign_report(ReserveReport(source, asset, amount, as_of), key)


def entry(note: bytes) -> ReserveSource:
    """The record's entry an honest prover writes for a signed report."""
    s = SignedReport.parse(note)
    return ReserveSource(s.report.source, s.report.amount, s.report.as_of_ms, s.key_id, s.hash)


def record_of(
    *sources_by_asset: tuple[str, tuple[ReserveSource, ...]], liabilities: int = 10
) -> EpochRecord:
    assets = tuple(
        AssetState(
            asset,
            8,
            2,
            bytes(32),
            liabilities,
            sum(s.amount for s in sources),
            expected_status(liabilities, sources, NOW, 60_000),
            sources,
        )
        for asset, sources in sources_by_asset
    )
    return EpochRecord(3, NOW, 60_000, assets)


COLD_BTC = signed("cold", "BTC", 100, NOW - 1000, COLD)
HOT_BTC = signed("hot", "BTC", 50, NOW - 500, HOT)


def honest() -> tuple[EpochRecord, list[bytes]]:
    return record_of(("BTC", (entry(COLD_BTC), entry(HOT_BTC)))), [COLD_BTC, HOT_BTC]


def test_record_v2_round_trips_attested_and_unattested_sources() -> None:
    record = record_of(
        ("BTC", (entry(COLD_BTC), ReserveSource("plain", 5, NOW - 1))),
    )
    data = record.encode()
    assert data[4] == 2
    assert EpochRecord.decode(data) == record
    plain = EpochRecord.decode(data).asset("BTC").sources[1]
    assert (plain.key_id, plain.report_hash, plain.attested) == (0, NO_REPORT, False)
    with pytest.raises(FormatError, match="version 1"):
        EpochRecord.decode(data[:4] + b"\x01" + data[5:])


def test_record_refuses_a_key_id_without_a_report() -> None:
    with pytest.raises(FormatError, match="unattested, but names key id"):
        ReserveSource("cold", 1, 0, key_id=7)
    with pytest.raises(FormatError, match="32 bytes"):
        ReserveSource("cold", 1, 0, key_id=7, report_hash=b"\x01" * 31)
    with pytest.raises(FormatError, match="u32"):
        ReserveSource("cold", 1, 0, key_id=2**32, report_hash=b"\x01" * 32)
    # the same refusal on decode: an unattested entry whose key id was set to 1
    data = bytearray(record_of(("BTC", (ReserveSource("plain", 5, NOW - 1),))).encode())
    data[-33] = 1  # the low byte of key_id, before the 32-byte hash
    with pytest.raises(FormatError, match="unattested"):
        EpochRecord.decode(bytes(data))


def test_honest_record_is_attested() -> None:
    record, reports = honest()
    assert check_attestations(record, reports, ATTESTERS) == []
    assert attested_findings(record, [], reports, ATTESTERS) == []


def test_a_report_dated_after_the_epoch_is_stated_at_the_epoch() -> None:
    """The prover dates a report from a source's clock ahead of its own at the
    epoch's time (PROTOCOL §4); the auditor accepts exactly that."""
    ahead = signed("cold", "BTC", 100, NOW + 2000, COLD)
    clamped = dataclasses.replace(entry(ahead), as_of_ms=NOW)
    assert check_attestations(record_of(("BTC", (clamped,))), [ahead], ATTESTERS) == []
    earlier = dataclasses.replace(entry(ahead), as_of_ms=NOW - 1)
    [finding] = check_attestations(record_of(("BTC", (earlier,))), [ahead], ATTESTERS)
    assert finding.status == REPORT_MISMATCH


def test_custodian_raises_a_signed_amount_in_the_record() -> None:
    """Attack: the record binds the cold wallet's signed report but states more
    than it says. The report, in the frame, is the evidence."""
    record = record_of(("BTC", (dataclasses.replace(entry(COLD_BTC), amount=1000),)))
    [finding] = check_attestations(record, [COLD_BTC], ATTESTERS)
    assert (finding.asset, finding.source, finding.status) == ("BTC", "cold", REPORT_MISMATCH)
    assert "1000" in finding.detail and "100 " in finding.detail
    # a report of another asset, bound under this one, is misstated too
    eth = signed("cold", "ETH", 100, NOW - 1000, COLD)
    [finding] = check_attestations(record_of(("BTC", (entry(eth),))), [eth], ATTESTERS)
    assert finding.status == REPORT_MISMATCH
    # a report of another source, bound under this name
    as_cold = dataclasses.replace(entry(HOT_BTC), name="cold")
    [finding] = check_attestations(record_of(("BTC", (as_cold,))), [HOT_BTC], ATTESTERS)
    assert finding.status == UNATTESTED  # signed by "hot": no trusted key of "cold" signed it


def test_report_signed_by_a_key_the_auditor_does_not_trust() -> None:
    """Attack: the custodian signs a report with a key of its own, named as the source."""
    own = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))
    fake = signed("cold", "BTC", 10**6, NOW - 1000, own)
    [finding] = check_attestations(record_of(("BTC", (entry(fake),))), [fake], ATTESTERS)
    assert finding.status == UNATTESTED and "not trusted" in finding.detail


def test_omitted_or_unattested_reports() -> None:
    record, _ = honest()
    [finding] = check_attestations(record, [COLD_BTC], ATTESTERS)  # hot's report omitted
    assert (finding.source, finding.status) == ("hot", UNATTESTED)
    assert "not served" in finding.detail
    plain = record_of(("BTC", (ReserveSource("cold", 100, NOW - 1),)))
    [finding] = check_attestations(plain, [COLD_BTC], ATTESTERS)
    assert finding.status == UNATTESTED and "binds no signed report" in finding.detail


def test_bad_signature_or_key_id_is_unattested() -> None:
    line = COLD_BTC.rstrip(b"\n").rpartition(b" ")[2]
    cold = entry(COLD_BTC)
    # the signature line of another note with the same key: the hash changes with it
    other = signed("cold", "BTC", 101, NOW - 1000, COLD)
    forged = COLD_BTC.replace(line, other.rstrip(b"\n").rpartition(b" ")[2])
    bound = dataclasses.replace(cold, report_hash=SignedReport.parse(forged).hash)
    [finding] = check_attestations(record_of(("BTC", (bound,))), [forged], ATTESTERS)
    assert finding.status == UNATTESTED and "invalid" in finding.detail
    wrong_id = dataclasses.replace(cold, key_id=cold.key_id ^ 1)
    [finding] = check_attestations(record_of(("BTC", (wrong_id,))), [COLD_BTC], ATTESTERS)
    assert finding.status == UNATTESTED and "record names" in finding.detail
    junk = b"not a report\n\n\xe2\x80\x94 cold AAAA\n"
    bound = dataclasses.replace(cold, report_hash=report_hash(junk))
    [finding] = check_attestations(record_of(("BTC", (bound,))), [junk], ATTESTERS)
    assert finding.status == UNATTESTED and "malformed" in finding.detail


def test_findings_merge_by_severity() -> None:
    record = record_of(
        ("BTC", (entry(COLD_BTC), ReserveSource("plain", 1, NOW - 1))),
        ("ETH", (ReserveSource("plain", 1, NOW - 1),)),
    )
    assert record.asset("ETH").status is Status.INSOLVENT
    recorded = [Finding("ETH", "insolvent", "reserves 1 < liabilities 10")]
    merged = attested_findings(record, recorded, [COLD_BTC], ATTESTERS)
    # BTC is solvent by the record but rests on an unattested source; ETH's
    # insolvency (by the custodian's own figures) outranks its unattested source
    assert [(f.asset, f.status) for f in merged] == [("BTC", UNATTESTED), ("ETH", "insolvent")]
    lie = dataclasses.replace(entry(COLD_BTC), amount=2000)
    record = record_of(("BTC", (lie, ReserveSource("plain", 1, NOW - 1))))
    [finding] = attested_findings(record, [], [COLD_BTC], ATTESTERS)
    assert finding.status == REPORT_MISMATCH
    record = record_of(("BTC", (ReserveSource("a", 50, NOW), ReserveSource("b", 50, NOW))))
    [finding] = attested_findings(record, [], [], ATTESTERS)
    assert finding.status == UNATTESTED and "a:" in finding.detail and "b:" in finding.detail


def test_attester_key_lists() -> None:
    text = f"# the custodian's sources\n{ATTESTERS[0]}\n\n  {ATTESTERS[1]}  \n"
    assert parse_attester_keys(text) == list(ATTESTERS)
    with pytest.raises(FormatError, match="line 2"):
        parse_attester_keys(f"{ATTESTERS[0]}\nnot-a-key\n")


def test_status_is_unchanged_by_attestation() -> None:
    """Attestation is the auditor's finding, not the record's: the record's
    status rules (§4.3) ignore it."""
    record, _ = honest()
    assert record.asset("BTC").status is Status.SOLVENT
