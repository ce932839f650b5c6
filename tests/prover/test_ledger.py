"""The ledger: staged updates, slot placement, growth, and proofs that verify."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover.errors import NotRetained, ProverError
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.sizing import CLOSE_NODES, MIN_HEIGHT, flush_levels, height_for
from verifier.errors import VerificationError
from verifier.hashing import HASHER, SumTreeHasher
from verifier.sumtree import verify_path

PERIOD = SaltPeriod(1, 0, bytes(range(32)))


def balances_of(ledger: Ledger) -> dict[tuple[str, str], int]:
    return {
        (user, asset): ledger.balance(user, asset)
        for user in ledger.users
        for asset in ledger.books
        if ledger.balance(user, asset)
    }


def check_all_proofs(ledger: Ledger, hasher: SumTreeHasher = HASHER) -> None:
    roots = {r.asset: r for r in ledger.roots()}
    for user in ledger.users:
        proof = ledger.proof(user)
        if proof is None:
            continue
        c = hasher.commitment(user, proof.salt)
        for asset, slot, amount, path in proof.entries:
            r = roots[asset]
            verify_path(
                height=r.height,
                root=r.root,
                liabilities=r.total,
                slot=slot,
                leaf=hasher.leaf_hash(asset, c, amount),
                amount=amount,
                path=path,
                hasher=hasher,
            )


def test_height_policy() -> None:
    assert height_for(0) == MIN_HEIGHT
    assert height_for(1_000_000) == 20
    assert height_for(1_040_000) == 21  # too little headroom left in 2**20
    with pytest.raises(ProverError):
        height_for(2**33)


def test_build_stage_and_close() -> None:
    ledger = Ledger.build(
        PERIOD, ["BTC", "ETH"], [("a", "BTC", 5), ("b", "BTC", 7), ("a", "ETH", 1)]
    )
    assert {r.asset: r.total for r in ledger.roots()} == {"BTC": 12, "ETH": 1}
    ledger.stage("c", "ETH", 10)
    ledger.stage("a", "BTC", 0)  # a leaves BTC
    ledger.stage("b", "BTC", 8)
    ledger.stage("b", "BTC", 9)  # the last update wins
    assert {r.asset: r.total for r in ledger.roots()} == {"BTC": 12, "ETH": 1}  # staged only
    assert {r.asset: r.total for r in ledger.close_epoch()} == {"BTC": 9, "ETH": 11}
    assert balances_of(ledger) == {("b", "BTC"): 9, ("a", "ETH"): 1, ("c", "ETH"): 10}
    check_all_proofs(ledger)
    a = ledger.proof("a")
    assert a is not None and [e[0] for e in a.entries] == ["ETH"]
    assert ledger.proof("nobody") is None
    with pytest.raises(ProverError):
        ledger.stage("a", "DOGE", 1)


def test_a_ledger_hashes_with_its_hasher() -> None:
    """Commitments and every tree, rebuilt one level higher too, by the ledger's hasher."""
    other = SumTreeHasher(hashlib.sha3_256, 0x63, 0x6C, 0x70, 0x6E)
    rows = [("a", "BTC", 5), ("b", "BTC", 7), ("a", "ETH", 1)]
    ledger = Ledger.build(PERIOD, ["BTC", "ETH"], rows, hasher=other)
    assert ledger.hasher is other and Ledger.build(PERIOD, ["BTC"], []).hasher is HASHER
    assert ledger.commitments[0].tobytes() == other.commitment("a", PERIOD.salt("a"))
    height = ledger.books["BTC"].tree.height
    ledger.stage_rows([(f"u{i}", "BTC", i + 1) for i in range(1 << height)])  # a rebuild
    ledger.close_epoch()
    assert ledger.books["BTC"].tree.height > height
    assert {book.tree.hasher for book in ledger.books.values()} == {other}
    check_all_proofs(ledger, other)
    with pytest.raises(VerificationError, match="root-mismatch"):
        check_all_proofs(ledger)


def test_rows_naming_an_unknown_asset_stage_nothing() -> None:
    ledger = Ledger.build(PERIOD, ["BTC"], [("a", "BTC", 5)])
    with pytest.raises(ProverError, match="unknown asset DOGE"):
        ledger.stage_rows([("b", "BTC", 1), ("a", "DOGE", 1)])
    assert ledger.pending == {} and ledger.proof("b") is None
    ledger.stage_rows([("b", "BTC", 1), ("b", "BTC", 2), ("c", "BTC", 3)])
    assert {r.asset: r.total for r in ledger.close_epoch()} == {"BTC": 10}


def test_slots_are_not_reused_within_a_period() -> None:
    ledger = Ledger.build(PERIOD, ["BTC"], [("a", "BTC", 5)])
    first = ledger.proof("a")
    assert first is not None
    ledger.stage("a", "BTC", 0)
    ledger.close_epoch()
    ledger.stage("b", "BTC", 5)
    ledger.close_epoch()
    b = ledger.proof("b")
    assert b is not None and b.entries[0][1] != first.entries[0][1]


def test_growth_rebuilds_one_level_higher() -> None:
    ledger = Ledger.build(PERIOD, ["BTC"], [])
    assert ledger.roots()[0].height == MIN_HEIGHT
    for i in range(40):  # more than 2**4 slots
        ledger.stage(f"user{i}", "BTC", i + 1)
        if i % 7 == 0:
            ledger.close_epoch()
    ledger.close_epoch()
    root = ledger.roots()[0]
    assert root.height > MIN_HEIGHT and root.total == sum(range(1, 41))
    check_all_proofs(ledger)


def test_other_period_other_salts_and_slots() -> None:
    rows = [(f"u{i}", "BTC", i + 1) for i in range(10)]
    one = Ledger.build(PERIOD, ["BTC"], rows)
    two = Ledger.build(SaltPeriod(2, 0, bytes(32)), ["BTC"], rows)
    assert one.roots()[0].total == two.roots()[0].total
    assert one.roots()[0].root != two.roots()[0].root
    p1, p2 = one.proof("u3"), two.proof("u3")
    assert p1 is not None and p2 is not None and p1.salt != p2.salt


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.sampled_from(["BTC", "ETH"]), st.integers(0, 50)),
        max_size=60,
    ),
    st.integers(1, 6),
)
@settings(max_examples=60, deadline=None)
def test_any_update_sequence_keeps_totals_and_proofs(updates: list, epochs: int) -> None:
    ledger = Ledger.build(PERIOD, ["BTC", "ETH"], [])
    expected: dict[tuple[str, str], int] = {}
    step = max(1, len(updates) // epochs)
    for i, (user, asset, amount) in enumerate(updates):
        ledger.stage(user, asset, amount)
        expected[(user, asset)] = amount
        if i % step == 0:
            ledger.close_epoch()
    ledger.close_epoch()
    assert balances_of(ledger) == {k: v for k, v in expected.items() if v}
    totals = {r.asset: r.total for r in ledger.roots()}
    for asset in ("BTC", "ETH"):
        assert totals[asset] == sum(v for (_, a), v in expected.items() if a == asset)
    check_all_proofs(ledger)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c", "d", "e", "f"]),
                st.sampled_from(["BTC", "ETH"]),
                st.sampled_from([0, 0, 1, 7, 2**64 - 1]),
            ),
            max_size=8,
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 4),
    st.lists(st.integers(0, 8), max_size=8),
)
def test_retained_epochs_serve_the_proofs_they_had(
    epochs: list, retain: int, flush_at: list[int]
) -> None:
    """``proof(user, age)`` equals the proof taken at that epoch, for every user,
    every retained age, also while the next epoch's updates are partly flushed
    into the trees; older ones are refused, not served wrong."""
    ledger = Ledger.build(PERIOD, ["BTC", "ETH"], [("a", "BTC", 3), ("b", "ETH", 4)])
    ledger.retain = retain
    users = ["a", "b", "c", "d", "e", "f"]
    seen: list[dict[str, object]] = []  # the proofs of every epoch, as taken then
    for number, updates in enumerate(epochs):
        for i, (user, asset, amount) in enumerate(updates):
            ledger.stage(user, asset, amount)
            if i in flush_at[number : number + 2]:  # an eager batch, mid-epoch
                ledger.flush()
                if seen:
                    assert {u: ledger.proof(u) for u in users} == seen[-1]
        ledger.close_epoch()
        seen.append({u: ledger.proof(u) for u in users})
    assert ledger.retained == min(retain, len(epochs) - 1)
    for age in range(ledger.retained + 1):
        then = seen[len(seen) - 1 - age]
        assert {u: ledger.proof(u, age) for u in users} == then
    with pytest.raises(ProverError, match="not retained"):
        ledger.proof("a", ledger.retained + 1)


def test_a_rebuild_forgets_the_retained_epochs() -> None:
    ledger = Ledger.build(PERIOD, ["BTC"], [])
    ledger.retain = 5
    for epoch in range(3):
        ledger.stage(f"u{epoch}", "BTC", 1)
        ledger.close_epoch()
    assert ledger.retained == 2
    height = ledger.books["BTC"].tree.height
    for i in range(2**height):  # more holders than the slot order has room for
        ledger.stage(f"many{i}", "BTC", 1)
    ledger.close_epoch()
    assert ledger.books["BTC"].tree.height > height
    assert ledger.retained == 0
    ledger.stage("u0", "BTC", 2)
    ledger.close_epoch()
    assert ledger.retained == 1
    proof = ledger.proof("u0", 1)
    assert proof is not None and proof.entries[0][2] == 1


def test_retained_epochs_fit_their_memory_budget() -> None:
    ledger = Ledger.build(PERIOD, ["BTC"], [(f"u{i}", "BTC", 1) for i in range(100)])
    ledger.retain = 50
    for epoch in range(5):
        ledger.stage(f"u{epoch}", "BTC", 2)
        ledger.close_epoch()
    one_epoch = ledger.history[-1].nbytes
    assert ledger.retained == 4 and ledger.history_bytes == sum(h.nbytes for h in ledger.history)
    ledger.retain_bytes = 2 * one_epoch
    ledger.stage("u9", "BTC", 2)
    ledger.close_epoch()
    assert ledger.retained == 2 and ledger.history_bytes <= 2 * one_epoch


@pytest.mark.parametrize("holders", [5, 40])  # 40 outgrows the slot order: rebuilt at close
def test_flushing_early_gives_the_same_epoch(holders: int) -> None:
    eager = Ledger.build(PERIOD, ["BTC", "ETH"], [("a", "BTC", 3)])
    lazy = Ledger.build(PERIOD, ["BTC", "ETH"], [("a", "BTC", 3)])
    for i in range(holders):
        for ledger in (eager, lazy):
            ledger.stage(f"u{i}", "BTC", i + 1)
            ledger.stage("a", "BTC", 0 if i % 4 == 1 else i + 1)  # a leaves, comes back
        if i % 3 == 0:
            eager.flush()
    assert eager.close_epoch() == lazy.close_epoch()
    assert balances_of(eager) == balances_of(lazy)
    check_all_proofs(eager)


@pytest.mark.parametrize(
    ("height", "epoch_rows", "upto"),
    [
        (20, 0, None),  # no epoch counted yet: every level
        (20, 1_000, 9),  # level 9 has 2,048 nodes, twice the rows
        (20, 100_000, 5),  # level 5 has CLOSE_NODES: the close hashes levels 6..20
        (20, 10**9, 5),
        (10, 100, 2),
        (10, 1_000, 0),  # a small tree: nothing above the leaves before the close
    ],
)
def test_a_flush_hashes_the_wide_levels(height: int, epoch_rows: int, upto: int | None) -> None:
    assert CLOSE_NODES == 2**15
    assert flush_levels(height, epoch_rows) == upto


def test_an_epoch_flushed_in_part_closes_as_one_batch() -> None:
    """From the second epoch on, a flush hashes the lower levels only; the
    close finishes every tree, also one with nothing staged since its flush,
    and the epoch is the one a single batch gives."""
    start = [(f"h{i}", "BTC", 1) for i in range(40)]
    eager, lazy = (
        Ledger.build(PERIOD, ["BTC", "ETH"], start),
        Ledger.build(PERIOD, ["BTC", "ETH"], start),
    )
    partial = []
    for epoch in range(3):
        for i in range(30):
            for ledger in (eager, lazy):
                ledger.stage(f"h{(7 * i + epoch) % 40}", "BTC", 100 * epoch + i + 1)
                if i < 10:  # ETH only before the first flush
                    ledger.stage(f"e{i}", "ETH", epoch + i + 1)
            if i % 10 == 9:
                eager.flush()
                partial.append(eager.books["BTC"].tree.stale)
        assert eager.close_epoch() == lazy.close_epoch()
        assert not any(book.tree.stale for book in eager.books.values())
        assert balances_of(eager) == balances_of(lazy)
        check_all_proofs(eager)
    assert partial == [False] * 3 + [True] * 6  # the first epoch's count is unknown


def test_a_tree_built_with_room_leaves_it_free() -> None:
    assert height_for(1_000_000, room=0) == 20
    assert height_for(1_000_000, room=48_576) == 20  # exactly the slots 2**20 leaves
    assert height_for(1_000_000, room=48_577) == 21
    assert height_for(10, room=2**40) == 32  # as far as the protocol's largest tree
    rows = [(f"u{i}", "BTC", 1) for i in range(100)] + [(f"u{i}", "ETH", 1) for i in range(100)]
    plain = Ledger.build(PERIOD, ["BTC", "ETH", "SOL"], rows)
    assert plain.room() == {"BTC": 128 - 100, "ETH": 128 - 100, "SOL": 16}
    roomy = Ledger.build(PERIOD, ["BTC", "ETH", "SOL"], rows, room={"BTC": 200}, room_share=0.5)
    assert {r.asset: r.height for r in roomy.roots()} == {"BTC": 9, "ETH": 8, "SOL": 4}
    assert roomy.room() == {"BTC": 512 - 100, "ETH": 256 - 100, "SOL": 16}
    roomy.stage_rows([(f"n{i}", "BTC", 1) for i in range(12)] + [("u0", "BTC", 0)])
    roomy.close_epoch()
    assert roomy.room()["BTC"] == 512 - 112  # a holder leaving gives no slot back


def _catching_up(ahead: bool, new_holders: int) -> Ledger:
    """A ledger of 40 BTC holders (a tree of 64 slots) that stages and flushes
    updates of them and of ``new_holders`` more, then closes."""
    start = [(f"h{i}", "BTC", 1) for i in range(40)] + [("e", "ETH", 1)]
    ledger = Ledger.build(PERIOD, ["BTC", "ETH"], start)
    ledger.ahead = ahead
    for i in range(60):
        ledger.stage(f"h{(7 * i) % 40}", "BTC", i + 2)
        if i < new_holders:
            ledger.stage(f"n{i}", "BTC", 1)
        if i % 10 == 9:
            ledger.flush()
            if ahead:  # nothing kept to undo, nothing left staged
                assert ledger.open.nbytes == 0 and ledger.staged == 0
                with pytest.raises(NotRetained, match="closed no epoch yet"):
                    ledger.proof("h0")
    return ledger


def test_trees_built_ahead_catch_up_without_undo_and_close_as_any() -> None:
    """A ledger ``ahead`` of its first epoch keeps nothing to undo while it
    flushes, and leaves only the levels above CLOSE_NODES nodes to the close;
    its first close gives the epoch a ledger that serves proofs gives."""
    ahead, serving = _catching_up(True, 20), _catching_up(False, 20)
    assert serving.open.nbytes > 0
    assert ahead.close_epoch() == serving.close_epoch()
    assert not ahead.ahead and ahead.proof("h0") == serving.proof("h0")
    assert balances_of(ahead) == balances_of(serving)
    check_all_proofs(ahead)


def test_trees_built_ahead_grow_in_a_flush_not_in_the_close() -> None:
    ahead = _catching_up(True, 60)  # 100 holders: more than the 64 slots
    assert ahead.books["BTC"].tree.height == 7 and ahead.staged == 0  # grown before the close
    deferred = _catching_up(False, 60)
    assert deferred.books["BTC"].tree.height == 6 and deferred.staged > 0  # left to the close
    ahead.close_epoch()
    deferred.close_epoch()
    assert ahead.grown == () and deferred.grown == ("BTC",)
    assert balances_of(ahead) == balances_of(deferred)
    assert {r.asset: (r.height, r.total) for r in ahead.roots()} == {
        r.asset: (r.height, r.total) for r in deferred.roots()
    }
    check_all_proofs(ahead)
