"""solvency-prover attester-key and sign-reports (prover/attest.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from prover.attest import AttesterKey, load_attester_key, sign_lines
from prover.cli import main
from prover.errors import ConfigError, KeyFileError
from prover.messages import ReserveReportBatch, parse_ingest
from verifier.checkpoint import VerifierKey
from verifier.report import SignedReport


def make_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, VerifierKey]:
    path = tmp_path / "cold.key"
    assert main(["attester-key", "--source", "cold-wallet", "--out", str(path)]) == 0
    vkey = VerifierKey.parse(capsys.readouterr().out.splitlines()[2])
    return path, vkey


def test_attester_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, vkey = make_key(tmp_path, capsys)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().startswith(f"PRIVATE+KEY+cold-wallet+{vkey.key_id:08x}+")
    key = load_attester_key(path)
    assert (key.source, key.verifier_key) == ("cold-wallet", vkey)
    assert AttesterKey.parse(key.to_text()).verifier_key == vkey
    assert main(["attester-key", "--source", "cold-wallet", "--out", str(path)]) == 2  # exists
    assert main(["attester-key", "--source", "a+b", "--out", str(tmp_path / "x")]) == 2
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_attester_key(path)
    path.chmod(0o600)
    text = path.read_text()
    tampered = text.replace(f"+{vkey.key_id:08x}+", "+00000000+")
    with pytest.raises(Exception, match="key id"):
        AttesterKey.parse(tampered)


def test_sign_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, vkey = make_key(tmp_path, capsys)
    lines = [
        '{"asset": "BTC", "amount": "60000000000", "as_of_ms": 1790000000000,'
        ' "chain": "bitcoin", "block": 917000}',
        "",
        '{"asset": "ETH", "amount": 5, "as_of_ms": 1790000000001}',
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["sign-reports", "--key", str(path)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    signed = [SignedReport.parse(doc["report"].encode()) for doc in out]
    assert [(s.report.asset, s.report.amount, s.report.chain) for s in signed] == [
        ("BTC", 60_000_000_000, "bitcoin"),
        ("ETH", 5, None),
    ]
    assert all(s.signer([vkey]) == vkey for s in signed)
    # --ingest: messages the prover's ingest parses as they are
    monkeypatch.setattr("sys.stdin", io.StringIO(lines[2] + "\n" + lines[2] + "\n"))
    assert main(["sign-reports", "--key", str(path), "--ingest", "--first-seq", "41"]) == 0
    batches = [parse_ingest(line) for line in capsys.readouterr().out.splitlines()]
    assert all(isinstance(b, ReserveReportBatch) for b in batches)
    assert [(b.source, b.updates[0].seq) for b in batches] == [
        ("cold-wallet", 41),
        ("cold-wallet", 42),
    ]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("not json", "line 1"),
        ('{"asset": "BTC", "amount": "05", "as_of_ms": 1}', "canonical"),
        ('{"asset": "BTC", "amount": 1.5, "as_of_ms": 1}', "integer"),
        ('{"asset": "BTC", "amount": 1}', "missing"),
        ('{"asset": "BTC", "amount": 1, "as_of_ms": 1, "note": "x"}', "unknown"),
        ('{"asset": "BTC", "amount": 1, "as_of_ms": 1, "chain": "bitcoin"}', "chain"),
        ('{"asset": "BTC", "amount": 1, "as_of_ms": 1, "chain": 5, "block": 1}', "line 1"),
        ('{"asset": "bad asset", "amount": 1, "as_of_ms": 1}', "line 1"),
        ("[1]", "object"),
    ],
)
def test_bad_input_is_named(line: str, why: str, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = AttesterKey("cold", Ed25519PrivateKey.generate())
    with pytest.raises(ConfigError, match=why):
        list(sign_lines(key, [line]))
