"""The auditor's rules (verifier/audit.py): a good history passes, every bad one is named."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog, record
from verifier import rfc9162
from verifier.audit import AuditState, audit_epoch, restore
from verifier.errors import FormatError, VerificationError
from verifier.stream import EpochMessage


def follow(messages: list[EpochMessage]) -> AuditState:
    state = None
    for m in messages:
        state, _, _ = audit_epoch(state, m, VKEY, ORIGIN)
    assert state is not None
    return state


def check_of(state: AuditState | None, message: EpochMessage) -> str:
    with pytest.raises(VerificationError) as info:
        audit_epoch(state, message, VKEY, ORIGIN)
    return info.value.check


def test_good_history() -> None:
    log = FakeLog()
    state = follow([log.append() for _ in range(10)])
    assert state.size == 10
    assert restore(state.to_json(), VKEY, ORIGIN) == state


def test_fork_at_same_size_is_caught() -> None:
    log, twin = FakeLog(), FakeLog()
    state = follow([log.append() for _ in range(3)])
    for _ in range(2):
        twin.append()
    forked = twin.append(record(2, liabilities=1))  # epoch 2 rewritten
    assert check_of(state, forked) == "fork"


def test_rewritten_history_is_caught_by_consistency() -> None:
    log, twin = FakeLog(), FakeLog()
    state = follow([log.append() for _ in range(4)])
    twin.append()
    twin.append(record(1, liabilities=5))  # history differs from epoch 1 on
    for _ in range(2, 4):
        twin.append()
    assert check_of(state, twin.append()) == "fork"


def test_replayed_and_skipped_epochs() -> None:
    log = FakeLog()
    messages = [log.append() for _ in range(5)]
    state = follow(messages[:3])
    assert check_of(state, messages[1]) == "replayed-checkpoint"
    assert check_of(state, messages[4]) == "epoch-gap"


def test_unknown_key_and_other_origin() -> None:
    rogue = FakeLog(key=Ed25519PrivateKey.from_private_bytes(bytes(range(33, 65))))
    assert check_of(None, rogue.append()) == "unknown-key"
    with pytest.raises(VerificationError) as info:
        audit_epoch(None, FakeLog().append(), VKEY, "other.example/log")
    assert info.value.check == "origin-mismatch"


def test_record_must_be_the_newest_leaf() -> None:
    log = FakeLog()
    messages = [log.append() for _ in range(3)]
    # an older record, truly in the log, passed off as the newest one
    older = EpochMessage(
        messages[1].record,
        messages[2].checkpoint,
        tuple(rfc9162.inclusion_proof(log.hashes, 1, 3)),
        messages[2].consistency,
    )
    assert check_of(None, older) == "epoch-size-mismatch"
    bad_inclusion = EpochMessage(
        messages[2].record, messages[2].checkpoint, messages[1].inclusion, messages[2].consistency
    )
    assert check_of(None, bad_inclusion).startswith("inclusion")


def test_time_must_not_go_back() -> None:
    log = FakeLog()
    state = follow([log.append() for _ in range(2)])
    older = record(2, timestamp=1_790_000_000_000)  # the time of epoch 0
    assert check_of(state, log.append(older)) == "time-went-back"


def test_insolvency_and_stale_reserves_are_findings() -> None:
    log = FakeLog()
    _, _, findings = audit_epoch(None, log.append(record(0, liabilities=200)), VKEY, ORIGIN)
    assert [(f.asset, f.status) for f in findings] == [("BTC", "insolvent")]
    _, _, findings = audit_epoch(None, FakeLog().append(record(0, stale=True)), VKEY, ORIGIN)
    assert [f.status for f in findings] == ["unproven"] and "cold" in findings[0].detail


def test_tampered_state_file_is_refused() -> None:
    log = FakeLog()
    state = follow([log.append() for _ in range(2)])
    tampered = state.to_json().replace('"size": 2', '"size": 1')
    with pytest.raises(FormatError):
        restore(tampered, VKEY, ORIGIN)
