"""Reserve reports (PROTOCOL §13): known answers, round trips, strictness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from verifier.checkpoint import VerifierKey, sign_note, verifier_key_for
from verifier.errors import FormatError
from verifier.record import MAX_RESERVE
from verifier.report import ReserveReport, SignedReport, report_hash, sign_report

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "report.json").read_text())
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(129, 161)))
VKEY = verifier_key_for("cold-1", KEY.public_key())
BODY = b"solvency-reserve/v1\nsource cold-1\nasset BTC\namount 5\nas-of 7\n"


@pytest.mark.parametrize("case", VECTORS["reports"], ids=lambda c: c["fields"]["source"])
def test_known_answers(case: dict) -> None:
    f = case["fields"]
    report = ReserveReport(
        f["source"], f["asset"], int(f["amount"]), f["as_of_ms"], f["chain"], f["block"]
    )
    assert report.to_note_body() == case["body"].encode()
    assert ReserveReport.parse(case["body"].encode()) == report
    note = case["note"].encode()
    signed = SignedReport.parse(note)
    assert (signed.report, signed.note, signed.hash.hex()) == (report, note, case["hash"])
    assert report_hash(note).hex() == case["hash"] and f"{signed.key_id:08x}" == case["key_id"]
    keys = [VerifierKey.parse(k) for k in VECTORS["attesters"].values()]
    signer = signed.signer(keys)
    assert signer is not None and signer.name == report.source
    # Ed25519 is deterministic: our signer reproduces the vector byte for byte
    seed = {"cold-1": bytes(range(129, 161)), "hot": bytes(range(161, 193))}[report.source]
    assert sign_report(report, Ed25519PrivateKey.from_private_bytes(seed)) == note


names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)
reports = st.builds(
    ReserveReport,
    source=names.filter(lambda s: "+" not in s),
    asset=st.from_regex(r"[A-Z][A-Z0-9]{0,7}", fullmatch=True),
    amount=st.integers(0, MAX_RESERVE),
    as_of_ms=st.integers(0, 2**64 - 1),
) | st.builds(
    ReserveReport,
    source=st.just("chain-src"),
    asset=st.just("ETH"),
    amount=st.integers(0, MAX_RESERVE),
    as_of_ms=st.integers(0, 2**64 - 1),
    chain=names,
    block=st.integers(0, 2**64 - 1),
)


@given(reports)
def test_round_trip(report: ReserveReport) -> None:
    body = report.to_note_body()
    assert ReserveReport.parse(body) == report
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    signed = SignedReport.parse(sign_report(report, key))
    assert signed.report == report
    assert signed.signer([verifier_key_for(report.source, key.public_key())]) is not None


@pytest.mark.parametrize(
    "body",
    [
        BODY.replace(b"amount 5", b"amount 05"),  # leading zero
        BODY.replace(b"amount 5", b"amount +5"),
        BODY.replace(b"amount 5", b"amount  5"),
        BODY.replace(b"amount 5", b"amount " + str(MAX_RESERVE + 1).encode()),
        BODY.replace(b"as-of 7", b"as-of " + str(2**64).encode()),
        BODY.replace(b"as-of 7", b"as-of -7"),
        BODY.replace(b"solvency-reserve/v1", b"solvency-reserve/v2"),
        BODY.replace(b"source cold-1\nasset BTC", b"asset BTC\nsource cold-1"),  # order
        BODY.replace(b"source cold-1", b"source cold+1"),  # not a key name
        BODY.replace(b"source cold-1", b"source cold 1"),
        BODY.replace(b"asset BTC", b"asset btc!"),
        BODY[:-1],  # no final newline
        BODY + b"chain bitcoin\n",  # chain without block
        BODY + b"chain bitcoin\nblock 01\n",
        BODY + b"block 1\nchain bitcoin\n",
        BODY + b"chain bitcoin\nblock 1\nextra 1\n",
        BODY.replace(b"\n", b"\r\n"),
        BODY.replace(b"cold-1", "c\u00f6ld".encode()),
        b"\n" + BODY,
    ],
)
def test_parse_is_strict(body: bytes) -> None:
    with pytest.raises(FormatError):
        ReserveReport.parse(body)


def test_signed_report_form() -> None:
    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    good = sign_note(BODY, "cold-1", KEY)
    assert SignedReport.parse(good).signer([VKEY]) == VKEY
    for bad, why in [
        (sign_note(BODY, "cold-1", KEY, other), "signature lines"),  # two signatures
        (sign_note(BODY, "hot", KEY), "signed as"),  # by a key not named as the source
        (good.replace(b"amount 5", b"amount 05"), "canonical"),
        (good + b"x" * 5000, "larger"),
    ]:
        with pytest.raises(FormatError, match=why):
            SignedReport.parse(bad)
    # a signature that does not verify, or by another key of that name: no signer
    forged = SignedReport.parse(sign_note(BODY.replace(b"5", b"6", 1), "cold-1", KEY))
    tampered = SignedReport(good, SignedReport.parse(good).report, VKEY.key_id, forged.signature)
    assert tampered.signer([VKEY]) is None
    assert SignedReport.parse(good).signer([verifier_key_for("cold-1", other.public_key())]) is None
    assert SignedReport.parse(good).signer([verifier_key_for("hot", KEY.public_key())]) is None


def test_report_values_are_checked() -> None:
    for kwargs in [
        {"amount": -1},
        {"amount": MAX_RESERVE + 1},
        {"as_of_ms": 2**64},
        {"chain": "bitcoin"},
        {"block": 5},
        {"chain": "has space", "block": 5},
        {"chain": "x", "block": 2**64},
        {"source": "a+b"},
    ]:
        with pytest.raises(FormatError):
            ReserveReport(**{"source": "s", "asset": "BTC", "amount": 1, "as_of_ms": 1, **kwargs})
