"""The auditor's rules (verifier/audit.py): a good history passes, every bad one is named."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog, record
from verifier import rfc9162
from verifier.audit import AuditState, audit_epoch, restore
from verifier.checkpoint import verify_checkpoint
from verifier.errors import FormatError, VerificationError
from verifier.proof import header_in_log
from verifier.record import HEADER_SIZE
from verifier.stream import EpochMessage
from verifier.subscription import Subscription


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
    )
    assert check_of(None, older) == "epoch-size-mismatch"
    bad_inclusion = EpochMessage(messages[2].record, messages[2].checkpoint, messages[1].inclusion)
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


@pytest.mark.parametrize("diverges_at", [0, 1, 3])
def test_a_fork_is_caught_by_the_prefix_root_of_the_inclusion_path(diverges_at: int) -> None:
    """The custodian's other log, one record longer than the log verified: the
    frame's record is truly at its last index (the inclusion path leads to the
    signed root), but the first 4 leaves that path stands for are not the log
    verified: ``fork``, for a subscriber of every asset and of chosen assets."""
    log, twin = FakeLog(), FakeLog()
    state = follow([log.append() for _ in range(4)])
    for epoch in range(4):
        twin.append(record(epoch, liabilities=7) if epoch == diverges_at else None)
    forked = twin.append()
    checkpoint = verify_checkpoint(forked.checkpoint, VKEY, ORIGIN)
    header_in_log(forked.record[:HEADER_SIZE], forked.inclusion, checkpoint)  # it holds
    assert rfc9162.prefix_root(forked.inclusion) == rfc9162.root_from_leaf_hashes(twin.hashes[:4])
    assert rfc9162.prefix_root(forked.inclusion) != state.root
    with pytest.raises(VerificationError, match="its first 4 records are not the log") as info:
        audit_epoch(state, forked, VKEY, ORIGIN)
    assert info.value.check == "fork"
    chosen = Subscription(assets=frozenset({"BTC"}))
    with pytest.raises(VerificationError) as info:
        audit_epoch(state, twin.assets_frame(4, {"BTC"}), VKEY, ORIGIN, subscription=chosen)
    assert info.value.check == "fork"
    # the honest log's next frame extends it
    assert audit_epoch(state, log.append(), VKEY, ORIGIN)[0].size == 5


def test_a_frame_needs_no_consistency_proof() -> None:
    """The inclusion path of the last leaf is the consistency proof: what the
    prover sends from size 1 on, the root of the first leaves, follows from it
    (RFC 9162 §2.1.4's proof from ``epoch`` to ``epoch + 1``: the same hashes)."""
    log = FakeLog()
    state = None
    for epoch in range(9):
        message = log.append()
        assert rfc9162.prefix_root(message.inclusion) == rfc9162.root_from_leaf_hashes(
            log.hashes[:epoch]
        )
        state, _, _ = audit_epoch(state, message, VKEY, ORIGIN)
