"""Slots are handed out as updates are staged: where each holder sits depends
on the order of the updates alone, never on when a flush applied them."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.sizing import MIN_HEIGHT, height_for

PERIOD = SaltPeriod(1, 0, bytes(range(32)))
ASSETS = ["BTC", "ETH"]


@dataclass
class Model:
    """PROTOCOL §2.5's slot rules for one asset, one row at a time."""

    asset: str
    height: int = MIN_HEIGHT
    taken: int = 0
    slots: dict[str, int] = field(default_factory=dict)  # holders: their slot
    waiting: list[str] = field(default_factory=list)

    def stage(self, user: str, amount: int) -> None:
        if not amount:
            self.slots.pop(user, None)
            if user in self.waiting:
                self.waiting.remove(user)
        elif user not in self.slots and user not in self.waiting:
            order = PERIOD.slot_order(self.asset, self.height)
            if self.taken < len(order):
                self.slots[user] = int(order[self.taken])
                self.taken += 1
            else:
                self.waiting.append(user)

    def close(self) -> None:
        """At the close, a tree with holders waiting grows: every holder in the
        order its slot was handed out, then those waiting, in staging order."""
        if not self.waiting:
            return
        position = {int(s): i for i, s in enumerate(PERIOD.slot_order(self.asset, self.height))}
        users = sorted(self.slots, key=lambda u: position[self.slots[u]]) + self.waiting
        self.height = max(self.height + 1, height_for(len(users)))
        order = PERIOD.slot_order(self.asset, self.height)
        self.slots = {u: int(order[i]) for i, u in enumerate(users)}
        self.taken, self.waiting = len(users), []


def slots_of(ledger: Ledger, asset: str) -> dict[str, int]:
    book = ledger.books[asset]
    return {
        user: int(book.slots[i])
        for i, user in enumerate(ledger.users)
        if i < len(book.slots) and book.slots[i] >= 0
    }


rows = st.lists(
    st.tuples(
        st.sampled_from([f"u{i}" for i in range(24)]),
        st.sampled_from(ASSETS),
        st.sampled_from([0, 0, 1, 2, 7]),
        st.sampled_from(["", "", "", "flush", "close"]),
    ),
    max_size=120,
)


@given(rows, st.integers(1, 30))
@settings(max_examples=150, deadline=None)
def test_slots_follow_the_order_of_updates_whenever_flushed(script: list, batch: int) -> None:
    """Two ledgers given the same rows and closes, one flushed at arbitrary
    points (batches of ``batch`` rows staged at once), give the model's slots
    and the same roots and proofs at every close."""
    flushed, plain = Ledger.build(PERIOD, ASSETS, []), Ledger.build(PERIOD, ASSETS, [])
    models = {asset: Model(asset) for asset in ASSETS}
    queue: list[tuple[str, str, int]] = []

    def stage_queue() -> None:
        flushed.stage_rows(queue)
        plain.stage_rows(queue)
        queue.clear()

    for user, asset, amount, then in [*script, ("u0", "BTC", 1, "close")]:
        queue.append((user, asset, amount))
        models[asset].stage(user, amount)
        if len(queue) >= batch or then:
            stage_queue()
        if then == "flush":
            flushed.flush()
        elif then == "close":
            assert flushed.close_epoch() == plain.close_epoch()
            for model in models.values():
                model.close()
                assert slots_of(plain, model.asset) == model.slots
                assert slots_of(flushed, model.asset) == model.slots
            for user in plain.users:
                assert flushed.proof(user) == plain.proof(user)


def test_a_holder_that_came_and_went_within_an_epoch_kept_its_slot_taken() -> None:
    """X set to 5 and 0 within one epoch held a slot in between, flushed or
    not: Y, new after it, gets the next slot of the order either way."""
    order = PERIOD.slot_order("BTC", MIN_HEIGHT)
    for flush in (False, True):
        ledger = Ledger.build(PERIOD, ["BTC"], [])
        ledger.stage("X", "BTC", 5)
        if flush:
            ledger.flush()
        ledger.stage("X", "BTC", 0)
        ledger.stage("Y", "BTC", 3)
        ledger.close_epoch()
        assert slots_of(ledger, "BTC") == {"Y": int(order[1])}
        assert ledger.room()["BTC"] == len(order) - 2


def test_a_holder_that_left_and_came_back_gets_a_new_slot() -> None:
    ledger = Ledger.build(PERIOD, ["BTC"], [("a", "BTC", 5)])
    order = PERIOD.slot_order("BTC", ledger.roots()[0].height)
    assert slots_of(ledger, "BTC") == {"a": int(order[0])}
    ledger.stage_rows([("a", "BTC", 0), ("a", "BTC", 6)])
    ledger.close_epoch()
    assert slots_of(ledger, "BTC") == {"a": int(order[1])}
    proof = ledger.proof("a")
    assert proof is not None and proof.entries[0][1:3] == (int(order[1]), 6)


def test_a_holder_staged_twice_with_no_slot_left_waits_once() -> None:
    """A new holder staged twice in one lot after the last slot went waits
    for the tree to grow, and the close grows it."""
    ledger = Ledger.build(PERIOD, ["BTC"], [(f"u{i}", "BTC", 1) for i in range(15)])
    free = ledger.room()["BTC"]
    ledger.stage_rows(
        [(f"x{i}", "BTC", 1) for i in range(free)] + [("new", "BTC", 1), ("new", "BTC", 2)]
    )
    assert ledger.growth() == {"BTC": 15 + free + 1}
    ledger.close_epoch()
    assert ledger.grown == ("BTC",) and ledger.balance("new", "BTC") == 2
