"""The witness policy (verifier/quorum.py, PROTOCOL §12.3), the auditor's rule 6,
and proof --url fetching again until its checkpoint has the quorum."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import reference
from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog, record, user_proof
from tests.verifier.witnesses import K1, K2, NOW, cosigned, witnessed
from verifier import fetch, quorum
from verifier.audit import audit_epoch, check_epoch
from verifier.cli import main
from verifier.errors import VerificationError
from verifier.quorum import MAX_SKEW, check_quorum
from verifier.record import AssetState, EpochRecord, ReserveSource, Status

RECORD_S = 1_790_000_000  # the time of record 0 of tests.verifier.fakelog, in seconds


def check_of(note: bytes, **kwargs: object) -> str:
    options: dict[str, object] = {"record_ms": RECORD_S * 1000, "now": NOW, **kwargs}
    try:
        check_quorum(note, [K1, K2], 2, **options)
    except VerificationError as exc:
        return exc.check
    return "ok"


def test_plausible_dates_are_those_of_the_policy() -> None:
    """At most MAX_SKEW after the clock; at least the record's second minus MAX_SKEW."""
    note = FakeLog().append().checkpoint
    early, late = RECORD_S - MAX_SKEW, NOW + MAX_SKEW
    assert check_of(cosigned(note, ("w1.example", early), ("w2.example", late))) == "ok"
    assert check_of(cosigned(note, ("w1.example", early - 1), ("w2.example", late))) == (
        "witness-time"
    )
    assert check_of(cosigned(note, ("w1.example", early), ("w2.example", late + 1))) == (
        "witness-time"
    )
    # Milliseconds are floored: a record at x.999 s has the lower bound of x s.
    stamps = (("w1.example", early), ("w2.example", early))
    assert check_of(cosigned(note, *stamps), record_ms=RECORD_S * 1000 + 999) == "ok"
    assert check_of(cosigned(note, *stamps), record_ms=(RECORD_S + 1) * 1000) == "witness-time"
    # No record (a bare checkpoint): no lower bound.
    assert check_of(cosigned(note, ("w1.example", 0), ("w2.example", 0)), record_ms=None) == "ok"


def test_the_clock_is_read_when_no_time_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    note = cosigned(FakeLog().append().checkpoint, ("w1.example", NOW), ("w2.example", NOW))
    monkeypatch.setattr(quorum, "clock", lambda: NOW - MAX_SKEW)
    assert check_quorum(note, [K1, K2], 2, record_ms=None)
    monkeypatch.setattr(quorum, "clock", lambda: NOW - MAX_SKEW - 1)
    with pytest.raises(VerificationError, match="witness-time"):
        check_quorum(note, [K1, K2], 2, record_ms=None)


def test_quorum_failures_name_who_cosigned() -> None:
    note = cosigned(FakeLog().append().checkpoint, ("w1.example", NOW))
    with pytest.raises(VerificationError) as info:
        check_quorum(note, [K1, K2], 2, record_ms=None, now=NOW)
    assert info.value.check == "witness-quorum" and "(w1.example)" in info.value.detail
    assert [c.witness for c in check_quorum(note, [K1, K2], 1, record_ms=None, now=NOW)] == [K1]
    assert check_quorum(note, (), 0, record_ms=None) == ()  # nothing configured: no check
    with pytest.raises(ValueError):
        check_quorum(note, [K1], 2, record_ms=None, now=NOW)


# The auditor's rule 6 (verifier/audit.py).


def test_audit_requires_the_quorum_after_the_chain_of_custody() -> None:
    log = FakeLog()
    first = witnessed(log.append(), "w1.example", "w2.example")
    lacking = witnessed(log.append(), "w1.example")
    third = witnessed(log.append(), "w1.example", "w2.example")
    policy = {"witnesses": [K1, K2], "quorum": 2, "now": NOW}
    state, _, _ = audit_epoch(None, first, VKEY, ORIGIN, **policy)
    with pytest.raises(VerificationError) as info:
        audit_epoch(state, lacking, VKEY, ORIGIN, **policy)
    assert info.value.check == "witness-quorum"
    # check_epoch returns that failure with the verified state, for watch --keep-going.
    audit = check_epoch(state, lacking, VKEY, ORIGIN, **policy)
    assert audit.state.size == 2 and [c.witness for c in audit.cosignatures] == [K1]
    assert audit.witness_failure is not None and audit.witness_failure.check == "witness-quorum"
    state, _, _ = audit_epoch(audit.state, third, VKEY, ORIGIN, **policy)
    # A failure of rules 1-5 is raised first, whatever the cosignatures.
    with pytest.raises(VerificationError, match="replayed-checkpoint"):
        check_epoch(state, lacking, VKEY, ORIGIN, **policy)


def test_audit_dates_cosignatures_by_the_checkpoints_record() -> None:
    log = FakeLog()
    state, _, _ = audit_epoch(None, log.append(), VKEY, ORIGIN)
    stale = witnessed(log.append(), "w1.example", "w2.example", delay=-MAX_SKEW - 1)
    audit = check_epoch(state, stale, VKEY, ORIGIN, witnesses=[K1, K2], quorum=1, now=NOW)
    assert audit.witness_failure is not None and audit.witness_failure.check == "witness-time"


# proof --url against a prover that cosigns a moment after serving.


def proof_file(cosigners: tuple[str, ...]) -> bytes:
    """alice's proof in a one-epoch log, its checkpoint cosigned by ``cosigners``."""
    timestamp = RECORD_S * 1000
    levels = reference.build("BTC", 2, {1: ("alice", 150), 2: ("bob", 50)})
    root, total = levels[-1][0]
    sources = (ReserveSource("cold", 1000, timestamp - 500),)
    asset = AssetState("BTC", 8, 2, root, total, 1000, Status.SOLVENT, sources)
    data = EpochRecord(0, timestamp, 60_000, (asset,)).encode()
    message = witnessed(FakeLog().append(data), *cosigners)
    leaf = (1, 150, tuple(reference.path(levels, 1)))
    proof = user_proof(message, "alice", reference.salt("alice"), {"BTC": leaf})
    return proof.to_json().encode()


class FakeProofServer:
    """Answers GET /proof with ``bodies`` in turn (the last one from then on)."""

    def __init__(self, bodies: list[bytes]) -> None:
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = bodies[min(outer.requests, len(bodies) - 1)]
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeProofServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(quorum, "clock", lambda: NOW)
    yield


def fetch_args(url: str, *extra: str) -> list[str]:
    argv = ["proof", "--url", url, "--user", "alice", "--token", "t", "--key", str(VKEY)]
    return [*argv, "--witness", str(K1), "--witness", str(K2), "--json", *extra]


UNCOSIGNED, COSIGNED = proof_file(()), proof_file(("w1.example", "w2.example"))


@pytest.mark.timeout(20)
def test_proof_url_fetches_again_until_cosigned(
    clock: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProofServer([UNCOSIGNED, proof_file(("w1.example",)), COSIGNED]) as prover:
        start = time.monotonic()
        assert main(fetch_args(prover.url)) == 0
        assert prover.requests == 3 and time.monotonic() - start < 2  # after 0.25 s, 0.5 s
    doc = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in doc["cosigned_by"]] == ["w1.example", "w2.example"]


@pytest.mark.timeout(20)
def test_proof_url_gives_up_after_the_wait(
    clock: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fetch, "QUORUM_WAIT", 0.6)
    with FakeProofServer([UNCOSIGNED]) as prover:
        start = time.monotonic()
        assert main(fetch_args(prover.url)) == 1
        assert prover.requests == 3 and 0.6 <= time.monotonic() - start < 3  # 0, 0.25, 0.6 s
    doc = json.loads(capsys.readouterr().out)
    assert (doc["check"], doc["exit"]) == ("witness-quorum", 1)
    # --quorum 1 of the two: the checkpoint cosigned by w1 alone is enough at once.
    with FakeProofServer([proof_file(("w1.example",))]) as prover:
        assert main(fetch_args(prover.url, "--quorum", "1")) == 0
        assert prover.requests == 1


@pytest.mark.timeout(20)
def test_proof_url_does_not_retry_other_failures(
    clock: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cosignature dated in the future is the custodian's or a witness's doing: no retry."""
    note = json.loads(UNCOSIGNED)["checkpoint"].encode()
    doc = json.loads(UNCOSIGNED)
    doc["checkpoint"] = cosigned(note, ("w1.example", NOW + 3600)).decode()
    with FakeProofServer([json.dumps(doc).encode(), COSIGNED]) as prover:
        assert main(fetch_args(prover.url)) == 1
        assert prover.requests == 1
    assert json.loads(capsys.readouterr().out)["check"] == "witness-time"


def test_until_witnessed_backs_off_and_stops_at_the_deadline() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    def lacking() -> None:
        raise VerificationError("witness-quorum", "not yet")

    with pytest.raises(VerificationError, match="witness-quorum"):
        fetch.until_witnessed(lacking, sleep=sleep, clock=lambda: now[0])
    assert sleeps == [0.25, 0.5, 1.0, 2.0, 1.25] and now[0] == fetch.QUORUM_WAIT


def test_quorum_failure_of_a_file_is_exit_1(
    clock: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.json").write_bytes(proof_file(("w2.example",)))
    argv = ["proof", str(tmp_path / "p.json"), "--key", str(VKEY), "--witness", str(K1)]
    assert main([*argv, "--witness", str(K2)]) == 1
    assert capsys.readouterr().err.startswith("INVALID witness-quorum: 1 configured witness(es)")
    assert main([*argv, "--witness", str(K2), "--quorum", "1"]) == 0
    assert "cosigned by w2.example (a quorum of 1 required)" in capsys.readouterr().out


def test_record_helper_is_the_fakelog_time() -> None:
    assert EpochRecord.decode(record(0)).timestamp_ms == RECORD_S * 1000
