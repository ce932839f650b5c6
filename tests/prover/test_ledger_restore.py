"""``Ledger.restore``: a ledger rebuilt from its holders (at their slots)
and each tree's height and allocator position, taken through its public
API after any close, has the original's roots and proofs, and hands out
the same slots next: driven on with the same updates, growth included, it
stays equal to the original. What does not hold together is refused."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover.errors import ProverError
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.routing import SINGLE, Router
from prover.sizing import grown_height

PERIOD = SaltPeriod(3, 0, bytes(range(7, 39)))
ASSETS = ["BTC", "ETH"]
Rows = list[tuple[str, str, int]]
Trees = dict[str, tuple[int, int]]
Holdings = list[tuple[str, str, int, int]]


def saved(ledger: Ledger) -> tuple[Trees, Holdings]:
    """What a restore needs, from the public API: each tree's whole height
    and slots handed out (its height less the slots left), every holding."""
    bits = ledger.router.bits if ledger.part is not None else 0
    trees = {
        r.asset: (ledger.full_height(r.asset), (1 << (ledger.full_height(r.asset) - bits)) - left)
        for r, left in zip(ledger.roots(), ledger.room().values(), strict=True)
    }
    holdings = []
    for user in ledger.users:
        proof = ledger.proof(user)
        for asset, slot, amount, _ in proof.entries if proof else ():
            holdings.append((user, asset, amount, slot))
    random.Random(len(holdings)).shuffle(holdings)  # in no particular order
    return trees, holdings


def state(ledger: Ledger) -> tuple[object, ...]:
    """Everything a verifier or the next epoch sees of a ledger."""
    proofs = {user: ledger.proof(user) for user in ledger.users}
    return tuple(ledger.roots()), ledger.room(), {u: p for u, p in proofs.items() if p}


def close(ledger: Ledger) -> None:
    """Close an epoch; a shard's trees grow at the heights its growth asks
    (the coordinator's rule, with this shard the fullest part)."""
    bits = ledger.router.bits
    if ledger.part is None:
        ledger.close_epoch()
        return
    heights = {a: grown_height(ledger.full_height(a), n, bits) for a, n in ledger.growth().items()}
    ledger.close_epoch(heights)


def restore(ledger: Ledger) -> Ledger:
    trees, holdings = saved(ledger)
    return Ledger.restore(PERIOD, trees, holdings, router=ledger.router, part=ledger.part)


def epochs_strategy() -> st.SearchStrategy[list[Rows]]:
    users = [f"u{i}" for i in range(60)]
    row = st.tuples(st.sampled_from(users), st.sampled_from(ASSETS), st.sampled_from([0, 1, 9]))
    return st.lists(st.lists(row, max_size=30), min_size=1, max_size=6)


@given(st.integers(0, 2), epochs_strategy(), st.integers(0, 5), st.data())
@settings(max_examples=60, deadline=None)
def test_a_restored_ledger_equals_the_original(
    bits: int, epochs: list[Rows], at: int, data: st.DataObject
) -> None:
    router = Router(bytes(range(32)), bits) if bits else SINGLE
    part = data.draw(st.integers(0, router.parts - 1)) if bits else None
    original = Ledger(PERIOD, router=router, part=part)
    for asset in ASSETS:
        original.add_asset(asset, 4 + bits)
    copy = None
    for number, rows in enumerate(epochs):
        mine = [r for r in rows if part is None or router.shard(r[0]) == part]
        for ledger in (original, copy) if copy is not None else (original,):
            ledger.stage_rows(mine)
            close(ledger)
        if copy is not None:
            assert state(copy) == state(original), f"epoch {number}, restored at {at}"
        assert state(restore(original)) == state(original)
        if number == at:
            copy = restore(original)


def test_restore_refuses_what_does_not_hold_together() -> None:
    router = Router(bytes(range(32)), 1)
    ledger = Ledger(PERIOD, router=router, part=0)
    ledger.add_asset("BTC", 5)
    users = [u for u in (f"u{i}" for i in range(40)) if router.shard(u) == 0]
    ledger.stage_rows([(u, "BTC", 1 + i) for i, u in enumerate(users[:3])])
    close(ledger)
    trees, holdings = saved(ledger)
    slot = holdings[0][3]

    def refused(trees: Trees, holdings: Holdings, says: str, part: int | None = 0) -> None:
        with pytest.raises((ProverError, ValueError), match=says):
            Ledger.restore(PERIOD, trees, holdings, router=router, part=part)

    refused({"BTC": (5, 2)}, holdings, "BTC: a holder at a slot not handed out")
    refused({"BTC": (5, 17)}, holdings, "BTC: a holder at a slot not handed out")  # > 16 slots
    refused(trees, [*holdings, (users[5], "BTC", 1, 31)], "a holder at a slot not handed out")
    refused(
        trees, [*holdings, (users[5], "BTC", 1, slot + 16)], "not handed out"
    )  # the other part's
    refused(trees, [*holdings, (users[5], "BTC", 1, slot)], "slot")  # two at one slot
    other = next(u for u in (f"u{i}" for i in range(40)) if router.shard(u) == 1)
    refused(trees, [*holdings, (other, "BTC", 1, slot)], "not a holding of this ledger")
    refused(trees, [*holdings, (users[5], "ETH", 1, 0)], "not a holding of this ledger")
    refused(trees, [*holdings[1:], (*holdings[0][:2], 0, slot)], "holds 0 BTC")
    refused(trees, holdings, "only a shard's ledger", part=None)
    assert state(Ledger.restore(PERIOD, trees, holdings, router=router, part=0)) == state(ledger)
