"""Each known attack on Merkle sum trees, built and rejected.

The trees here come from tests/reference.py; a dishonest prover is modelled by
swapping its node rule or editing the paths it hands out. Proof-file level
attacks (other key, forged record, rewritten log, a record owing less than its
tree, files two parsers read differently) are the vectors of tests/vectors/,
checked by tests/verifier/test_proof.py. The split view (two forks of the log
signed with the custodian's one key) is built at the end, against a quorum of
witness cosignatures.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests import reference
from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog
from tests.verifier.witnesses import K1, K2, NOW, witnessed
from verifier import quorum
from verifier.audit import audit_epoch
from verifier.cli import main
from verifier.cosignature import cosign
from verifier.errors import FormatError, VerificationError
from verifier.hashing import (
    MAX_BALANCE,
    TAG_LEAF,
    TAG_NODE,
    commitment,
    leaf_hash,
    node_hash,
    subtree_cap,
)
from verifier.proof import AssetPath, ProofFile, verify_proof
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.stream import EpochMessage
from verifier.sumtree import PathStep, verify_path

USERS = {0: ("alice", 100), 1: ("bob", 250), 2: ("carol", 7), 5: ("dave", 1000)}
HEIGHT = 3


def leaf_of(user: str, amount: int, asset: str = "BTC") -> bytes:
    return leaf_hash(asset, commitment(user, reference.salt(user)), amount)


def check(levels: reference.Levels, slot: int, user: str, balance: int, **claims: object) -> str:
    """The failed check's name, or 'ok', for ``user``'s path under the tree's root."""
    root, total = levels[-1][0]
    kwargs: dict[str, object] = dict(
        height=len(levels) - 1,
        root=root,
        liabilities=total,
        slot=slot,
        leaf=leaf_of(user, balance),
        amount=balance,
        path=reference.path(levels, slot),
    )
    kwargs.update(claims)
    try:
        verify_path(**kwargs)  # type: ignore[arg-type]
    except VerificationError as exc:
        return exc.check
    return "ok"


def test_honest_tree_control() -> None:
    levels = reference.build("BTC", HEIGHT, USERS)
    assert levels[-1][0][1] == 1357
    for slot, (user, amount) in USERS.items():
        assert check(levels, slot, user, amount) == "ok"


# 1. Parent-sum-only hashing (Maxwell): the prover reports max(children).


def test_parent_max_instead_of_sum_is_rejected() -> None:
    def max_node(left: reference.Node, right: reference.Node) -> reference.Node:
        return node_hash(left[0], left[1], right[0], right[1]), max(left[1], right[1])

    levels = reference.build("BTC", HEIGHT, USERS, node=max_node)
    assert levels[-1][0][1] == 1000  # claims 1000 of the 1357 it owes
    for slot, (user, amount) in USERS.items():
        assert check(levels, slot, user, amount) in {"root-mismatch", "liabilities-mismatch"}


def test_understated_sibling_sum_is_rejected() -> None:
    """Shrinking a sibling sum in one user's path to hide liabilities breaks the root."""
    levels = reference.build("BTC", HEIGHT, USERS)
    path = reference.path(levels, 0)
    path[2] = PathStep(path[2].hash, 0)  # hide dave's subtree
    assert check(levels, 0, "alice", 100, path=path, liabilities=357) == "root-mismatch"


def test_record_understating_the_tree_total_is_rejected() -> None:
    """The root hash binds its children's sums, not the total the record states:
    a record owing less than its tree sums to fails every user's path. (The
    vector invalid/liabilities-understated.json is this attack, signed.)"""
    levels = reference.build("BTC", HEIGHT, USERS)
    for slot, (user, amount) in USERS.items():
        assert check(levels, slot, user, amount, liabilities=1356) == "liabilities-mismatch"


# 2. Negative or fake accounts, and 3. overflow / wraparound.


@pytest.mark.parametrize(
    ("level", "bad_sum"),
    [
        (0, -1),  # a negative account
        (0, 2**128 - 1),  # -1 in two's complement on 128 bits
        (0, MAX_BALANCE + 1),  # one leaf above the leaf bound
        (2, subtree_cap(2) + 1),  # a subtree above what 4 leaves can hold
        (2, 2**128 - 1357 + 100),  # would wrap the root sum to a small value
    ],
)
def test_out_of_range_sibling_sums_are_rejected(level: int, bad_sum: int) -> None:
    levels = reference.build("BTC", HEIGHT, USERS)
    path = reference.path(levels, 0)
    path[level] = PathStep(path[level].hash, bad_sum)
    assert check(levels, 0, "alice", 100, path=path) == "sibling-sum-range"


def test_leaf_amount_above_bound_is_rejected() -> None:
    levels = reference.build("BTC", HEIGHT, USERS)
    with pytest.raises(FormatError):
        leaf_of("alice", MAX_BALANCE + 1)
    assert (
        check(levels, 0, "alice", 100, amount=MAX_BALANCE + 1, leaf=leaf_of("alice", 100))
        == "leaf-range"
    )


def test_a_full_tree_of_maximum_leaves_cannot_overflow() -> None:
    levels = reference.build("BTC", 2, {s: (f"u{s}", MAX_BALANCE) for s in range(4)})
    assert levels[-1][0][1] == 4 * MAX_BALANCE == subtree_cap(2)
    assert check(levels, 3, "u3", MAX_BALANCE) == "ok"


# 4. Truncated hashes.


def test_truncated_sibling_hash_is_rejected() -> None:
    with pytest.raises(FormatError):
        PathStep(bytes(8), 0)


# 5. No user binding: two users with the same balance.


def test_users_with_equal_balances_get_distinct_leaves() -> None:
    twins = {0: ("erin", 50), 3: ("frank", 50)}
    levels = reference.build("BTC", 2, twins)
    assert levels[0][0][0] != levels[0][3][0]
    # frank cannot be shown erin's leaf: her path does not verify for him
    assert check(levels, 0, "frank", 50) == "root-mismatch"
    assert check(levels, 3, "frank", 50) == "ok"


def test_same_user_new_salt_gives_unlinkable_leaf() -> None:
    c1 = commitment("alice", reference.salt("alice"))
    c2 = commitment("alice", reference.salt("alice2"))
    assert leaf_hash("BTC", c1, 100) != leaf_hash("BTC", c2, 100)


# 7. Structural ambiguity: leaves and nodes, other heights, other assets.


def test_node_passed_off_as_leaf_needs_a_shorter_path() -> None:
    """Claiming a level-1 node is a leaf means a path one step short: rejected."""
    levels = reference.build("BTC", HEIGHT, USERS)
    node_as_leaf, node_sum = levels[1][0]
    root, total = levels[-1][0]
    with pytest.raises(VerificationError) as info:
        verify_path(
            height=HEIGHT,
            root=root,
            liabilities=total,
            slot=0,
            leaf=node_as_leaf,
            amount=node_sum,
            path=reference.path(levels, 0)[1:],
        )
    assert info.value.check == "path-length"


def test_leaf_and_node_messages_cannot_coincide() -> None:
    """Domain tags: the first byte of every leaf and node message differs."""
    assert TAG_LEAF != TAG_NODE


def test_leaf_passed_off_as_node_changes_the_root() -> None:
    """A padding or leaf hash presented as an internal node of another height fails."""
    levels = reference.build("BTC", HEIGHT, USERS)
    path = reference.path(levels, 0)
    extended = [*path, PathStep(levels[0][7][0], 0)]  # a leaf used as a top-level sibling
    assert check(levels, 0, "alice", 100, path=extended) == "path-length"
    assert check(levels, 0, "alice", 100, path=extended, height=HEIGHT + 1) == "root-mismatch"


def test_proof_from_another_asset_tree_is_rejected() -> None:
    btc = reference.build("BTC", HEIGHT, USERS)
    eth = reference.build("ETH", HEIGHT, USERS)  # same users, amounts and slots
    eth_root, eth_total = eth[-1][0]
    assert eth_root != btc[-1][0][0]
    assert check(btc, 0, "alice", 100, root=eth_root, liabilities=eth_total) == "root-mismatch"


def test_proof_of_another_height_is_rejected() -> None:
    small = reference.build("BTC", 2, {0: ("alice", 100)})
    big = reference.build("BTC", HEIGHT, USERS)
    big_root, big_total = big[-1][0]
    assert (
        check(small, 0, "alice", 100, root=big_root, liabilities=big_total, height=HEIGHT)
        == "path-length"
    )


# 8. Split view: the custodian signs two forks of its log with its one key, shows
# fork A (alice's balance left out) to the witnesses and auditors, and fork B (her
# balance counted) to alice. Each fork is consistent in itself (PROTOCOL §12).


def epoch_2(users: dict[int, tuple[str, int]]) -> tuple[reference.Levels, bytes]:
    """The BTC tree of ``users`` and the record of epoch 2 over it (reserves 1000)."""
    levels = reference.build("BTC", 2, users)
    root, total = levels[-1][0]
    timestamp = 1_790_000_002_000
    sources = (ReserveSource("cold", 1000, timestamp - 500),)
    asset = AssetState("BTC", 8, 2, root, total, 1000, Status.SOLVENT, sources)
    return levels, EpochRecord(2, timestamp, 60_000, (asset,)).encode()


def split_view() -> tuple[list[EpochMessage], ProofFile, bytes]:
    """Fork A's epochs cosigned by both honest witnesses, alice's proof in fork B,
    and fork B's checkpoint wearing fork A's cosignatures."""
    fork_a, fork_b = FakeLog(), FakeLog()
    for log in (fork_a, fork_b):  # a common history, then the forks part
        log.append()
        log.append()
    _, record_a = epoch_2({2: ("bob", 50)})
    levels_b, record_b = epoch_2({1: ("alice", 150), 2: ("bob", 50)})
    fork_a.append(record_a)
    message_b = fork_b.append(record_b)
    seen_by_witnesses = [witnessed(m, "w1.example", "w2.example") for m in fork_a.messages]
    full_b = EpochRecord.decode(record_b)
    path = AssetPath(full_b.entries[0], 0, (), 1, 150, tuple(reference.path(levels_b, 1)))
    proof = ProofFile(
        "alice",
        reference.salt("alice"),
        full_b.header.encode(),
        (path,),
        message_b.inclusion,
        message_b.checkpoint,
    )
    lines = seen_by_witnesses[2].checkpoint[len(fork_a.messages[2].checkpoint) :]
    return seen_by_witnesses, proof, message_b.checkpoint + lines


def test_split_view_fails_the_customers_quorum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    auditor_view, proof, borrowed = split_view()
    witnesses = [K1, K2]
    # Without witnesses the attack works: alice's proof verifies in fork B...
    assert verify_proof(proof, VKEY, user="alice").assets[0].balance == 150
    # ...and the auditor following fork A sees a consistent, cosigned log.
    state = None
    for message in auditor_view:
        state, _, _ = audit_epoch(
            state, message, VKEY, ORIGIN, witnesses=witnesses, quorum=2, now=NOW
        )
    assert state is not None and state.size == 3
    # With a quorum of 2, no honest witness cosigned fork B: alice's check fails.
    with pytest.raises(VerificationError) as info:
        verify_proof(proof, VKEY, user="alice", witnesses=witnesses, quorum=2, now=NOW)
    assert info.value.check == "witness-quorum"
    # Fork A's cosignatures copied onto fork B's checkpoint do not verify over it.
    dressed = dataclasses.replace(proof, checkpoint=borrowed)
    with pytest.raises(VerificationError) as info:
        verify_proof(dressed, VKEY, user="alice", witnesses=witnesses, quorum=2, now=NOW)
    assert info.value.check == "witness-signature-invalid"
    # A witness the custodian runs itself, under an honest witness's name, is ignored.
    rogue = Ed25519PrivateKey.from_private_bytes(bytes([66]) * 32)
    body = proof.checkpoint.split(b"\n\n")[0] + b"\n"
    forged = proof.checkpoint + cosign(body, "w1.example", rogue, NOW)
    with pytest.raises(VerificationError, match="witness-quorum"):
        verify_proof(
            dataclasses.replace(proof, checkpoint=forged),
            VKEY,
            witnesses=witnesses,
            quorum=2,
            now=NOW,
        )
    # The same through the command line alice runs.
    monkeypatch.setattr(quorum, "clock", lambda: NOW)
    (tmp_path / "alice.json").write_text(proof.to_json())
    argv = ["proof", str(tmp_path / "alice.json"), "--key", str(VKEY), "--user", "alice"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--witness", str(K1), "--witness", str(K2), "--quorum", "2"]) == 1
    assert capsys.readouterr().err.startswith("INVALID witness-quorum: 0 configured witness")
