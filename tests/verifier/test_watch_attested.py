"""solvency-verify watch --attester against a fake custodian on 127.0.0.1 that
misuses signed reserve reports (PROTOCOL §13.4): each abuse built and caught,
with its evidence on disk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.verifier.fakelog import VKEY, FakeLog
from tests.verifier.test_cli_watch import FakeProver, events
from verifier.checkpoint import verifier_key_for
from verifier.cli import main
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.report import ReserveReport, SignedReport, sign_report

T0 = 1_790_000_000_000
COLD = Ed25519PrivateKey.from_private_bytes(bytes(range(129, 161)))
COLD_VKEY = verifier_key_for("cold", COLD.public_key())
CUSTODIAN = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))


def report(epoch: int, amount: int = 150, key: Ed25519PrivateKey = COLD) -> bytes:
    return sign_report(ReserveReport("cold", "BTC", amount, T0 + epoch * 1000 - 500), key)


def record(epoch: int, note: bytes, stated: int | None = None) -> bytes:
    """Epoch ``epoch`` binding ``note``, stating its amount (or ``stated``)."""
    signed = SignedReport.parse(note)
    r = signed.report
    amount = r.amount if stated is None else stated
    source = ReserveSource("cold", amount, r.as_of_ms, signed.key_id, signed.hash)
    status = Status.SOLVENT if amount >= 100 else Status.INSOLVENT
    asset = AssetState("BTC", 8, 4, bytes(32), 100, amount, status, (source,))
    return EpochRecord(epoch, T0 + epoch * 1000, 60_000, (asset,)).encode()


def serve(*epochs: tuple[bytes, tuple[bytes, ...]]) -> FakeLog:
    """A log of the given (record, frame reports) epochs."""
    log = FakeLog()
    for data, reports in epochs:
        log.append(data)
        log.messages[-1] = dataclasses.replace(log.messages[-1], reports=reports)
    return log


def watch(url: str, state: Path, *extra: str) -> int:
    args = ["watch", url, "--key", str(VKEY), "--state", str(state), "--json"]
    return main([*args, "--attester", str(COLD_VKEY), *extra])


def test_attested_epochs_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = serve(*((record(n, report(n)), (report(n),)) for n in range(3)))
    with FakeProver(log.messages) as prover:
        assert watch(prover.url, tmp_path, "--max-epochs", "3") == 0
    found = events(capsys)
    assert [e["assets"]["BTC"]["status"] for e in found if e["event"] == "epoch"] == ["solvent"] * 3
    assert not [e for e in found if e["event"] == "violation"]


@pytest.mark.parametrize(
    ("attack", "check"),
    [
        # the record states more than the cold wallet signed
        (lambda n: (record(n, report(n), stated=10**9), (report(n),)), "report-mismatch"),
        # the custodian signs the cold wallet's report with a key of its own
        (
            lambda n: (record(n, report(n, 10**9, CUSTODIAN)), (report(n, 10**9, CUSTODIAN),)),
            "unattested",
        ),
        # the record binds a report the frame does not carry
        (lambda n: (record(n, report(n)), ()), "unattested"),
    ],
    ids=["amount-raised", "untrusted-key", "report-omitted"],
)
def test_abuse_is_caught_with_evidence(
    attack: object, check: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    honest = (record(0, report(0)), (report(0),))
    log = serve(honest, attack(1))  # type: ignore[operator]
    with FakeProver(log.messages) as prover:
        assert watch(prover.url, tmp_path) == 1
    found = events(capsys)
    epochs = [e for e in found if e["event"] == "epoch"]
    assert [e["assets"]["BTC"]["status"] for e in epochs] == ["solvent", check]
    [alarm] = [e for e in found if e["event"] == "violation"]
    assert alarm["check"] == check and alarm["reason"].startswith("BTC: source cold: ")
    evidence = json.loads(Path(alarm["evidence"]).read_text())
    assert evidence["message"]["record"] and evidence["message"]["checkpoint"]
    if check == "report-mismatch":  # the signed report that contradicts the record
        assert evidence["message"]["reports"] == [report(1).decode()]


def test_without_attester_keys_reports_are_not_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = serve((record(0, report(0)), ()))
    with FakeProver(log.messages) as prover:
        args = ["watch", prover.url, "--key", str(VKEY), "--state", str(tmp_path), "--json"]
        assert main([*args, "--max-epochs", "1"]) == 0
    assert [e["event"] for e in events(capsys)] == ["epoch"]


def test_attester_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "attesters.txt"
    keys.write_text(f"# cold wallet\n{COLD_VKEY}\n")
    log = serve((record(0, report(0)), (report(0),)))
    with FakeProver(log.messages) as prover:
        args = ["watch", prover.url, "--key", str(VKEY), "--state", str(tmp_path / "s")]
        assert main([*args, "--json", "--attester", str(keys), "--max-epochs", "1"]) == 0
        keys.write_text("cold+zz\n")
        assert main([*args, "--attester", str(keys)]) == 2  # usage: not a key
    assert "line 1" in capsys.readouterr().err
