"""The shards' saved states (storage/shards.py), on SQLite and PostgreSQL:
a close is saved whole or not at all, only over the epoch its shard closed
last; the holdings read back are those saved, whatever the changes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.errors import EpochConflictError, InvalidInputError
from storage.store import Holding, HoldingChanges, ShardState, Store
from verifier.hashing import MAX_BALANCE

_names = itertools.count()


def state(epoch: int, **trees: tuple[int, int]) -> ShardState:
    return ShardState(
        epoch, 1, 10 * epoch, 10 * epoch + 1, {"p0": epoch, "p1": 2**63 - 1}, trees, b"r%d" % epoch
    )


def held(store: Store, stream: str, part: int = 0) -> set[Holding]:
    saved = store.shard_state(stream, part)
    assert saved is not None
    return {h for chunk in store.shard_holdings(stream, part, saved.epoch, 2) for h in chunk}


def test_closes_saved_and_read_back(store: Store) -> None:
    assert store.shard_state("s", 0) is None
    first = [("alice", "BTC", MAX_BALANCE, 2**32 - 1), ("bob", "BTC", 1, 7), ("bob", "ETH", 5, 0)]
    store.save_shard("s", 0, None, state(3, BTC=(32, 40), ETH=(5, 1)), HoldingChanges(first))
    assert store.shard_state("s", 0) == state(3, BTC=(32, 40), ETH=(5, 1))
    assert held(store, "s") == set(first)
    assert store.shard_state("s", 1) is None and store.shard_state("t", 0) is None
    changes = HoldingChanges(
        held=[("alice", "BTC", 2, 12), ("carol", "BTC", 3, 13)],  # alice moved, carol came
        gone=[("bob", "BTC"), ("nobody", "BTC")],  # nobody: took a slot and gave it up
    )
    store.save_shard("s", 0, 3, state(4, BTC=(32, 42), ETH=(5, 1)), changes)
    assert held(store, "s") == {
        ("alice", "BTC", 2, 12),
        ("carol", "BTC", 3, 13),
        ("bob", "ETH", 5, 0),
    }
    grown = HoldingChanges(
        held=[("bob", "ETH", 5, 33), ("dave", "ETH", 1, 12)], replaced=frozenset({"ETH"})
    )
    store.save_shard("s", 0, 4, state(5, BTC=(32, 42), ETH=(6, 2)), grown)
    assert held(store, "s") == {
        ("alice", "BTC", 2, 12),
        ("carol", "BTC", 3, 13),
        ("bob", "ETH", 5, 33),
        ("dave", "ETH", 1, 12),  # slot 12 of ETH: another asset's slot 12 is no matter
    }
    assert store.shard_state("s", 0) == state(5, BTC=(32, 42), ETH=(6, 2))


def test_a_close_saved_over_another_epoch_writes_nothing(store: Store) -> None:
    store.save_shard("s", 1, None, state(1, BTC=(5, 1)), HoldingChanges([("a", "BTC", 1, 3)]))
    other = HoldingChanges([("b", "BTC", 1, 4)])
    with pytest.raises(EpochConflictError, match="holds epoch 1 already"):
        store.save_shard("s", 1, None, state(2, BTC=(5, 2)), other)  # a shard that started empty
    with pytest.raises(EpochConflictError, match="epoch 1 stored, not 4"):
        store.save_shard("s", 1, 4, state(5, BTC=(5, 2)), other)
    store.save_shard("s", 1, 1, state(2, BTC=(5, 2)), other)
    with pytest.raises(EpochConflictError, match="epoch 2 stored, not 1"):
        store.save_shard("s", 1, 1, state(2, BTC=(5, 2)), other)  # the same close again
    with pytest.raises(EpochConflictError):
        next(store.shard_holdings("s", 1, 1))  # not that epoch's any more
    assert store.shard_state("s", 1) == state(2, BTC=(5, 2))
    assert held(store, "s", 1) == {("a", "BTC", 1, 3), ("b", "BTC", 1, 4)}


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        (HoldingChanges([("a", "BTC", 0, 3)]), "amount 0 outside"),
        (HoldingChanges([("a", "BTC", MAX_BALANCE + 1, 3)]), "outside 1..2\\*\\*64-1"),
        (HoldingChanges([("a", "BTC", 1, -1)]), "slot -1 outside"),
        (HoldingChanges([("a", "BTC", 1, 2**32)]), "slot 4294967296 outside"),
        (HoldingChanges(replaced=frozenset({"btc"})), "invalid asset id"),
    ],
)
def test_malformed_holdings_are_refused(store: Store, changes: HoldingChanges, says: str) -> None:
    with pytest.raises(InvalidInputError, match=says):
        store.save_shard("s", 0, None, state(1, BTC=(5, 1)), changes)
    assert store.shard_state("s", 0) is None


def test_malformed_states_are_refused(store: Store) -> None:
    empty = HoldingChanges()
    for bad, says in [
        (state(1, BTC=(33, 0)), "height 33"),
        (state(1, BTC=(5, 33)), "slots handed out 33"),
        (state(-1), "epoch -1"),
        (ShardState(1, 1, 1, 1, {"p 0": 1}, {}, b""), "invalid source"),
    ]:
        with pytest.raises(InvalidInputError, match=says):
            store.save_shard("s", 0, None, bad, empty)
    with pytest.raises(InvalidInputError, match="does not follow"):
        store.save_shard("s", 0, 1, state(3), empty)
    with pytest.raises(InvalidInputError, match="stream name"):
        store.shard_state("", 0)
    assert store.shard_state("s", 0) is None


Ops = list[tuple[frozenset[str], list[tuple[str, str, int]]]]  # per close: replaced, changes


@given(
    st.lists(
        st.tuples(
            st.frozensets(st.sampled_from(["BTC", "ETH"]), max_size=1),
            st.lists(
                st.tuples(
                    st.sampled_from([f"u{i}" for i in range(12)]),
                    st.sampled_from(["BTC", "ETH"]),
                    st.sampled_from([0, 1, 2**64 - 1]),
                ),
                max_size=10,
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=25, deadline=None)
def test_holdings_are_the_last_saved(shared_store: Store, ops: Ops) -> None:
    """Closes of a model shard (fresh slots for every new holding, every
    slot moved in a replaced asset) saved one after another: the holdings
    read back are the model's after each."""
    stream = f"h{next(_names)}"
    model: dict[tuple[str, str], tuple[int, int]] = {}
    fresh = itertools.count()
    epoch = None
    for replaced, rows in ops:
        last = {(u, a): m for u, a, m in rows}
        for asset in replaced:
            for key in [k for k in model if k[1] == asset]:
                model[key] = (model[key][0], next(fresh))
        for key, amount in last.items():
            if amount:
                kept = key in model and key[1] not in replaced and model[key][0] == amount
                model[key] = (amount, model[key][1] if kept else next(fresh))
            else:
                model.pop(key, None)
        changed = {k for k in last} | {k for k in model if k[1] in replaced}
        changes = HoldingChanges(
            held=[(u, a, *model[(u, a)]) for u, a in sorted(changed) if (u, a) in model],
            gone=[(u, a) for u, a in sorted(changed) if (u, a) not in model],
            replaced=replaced,
        )
        number = 0 if epoch is None else epoch + 1
        shared_store.save_shard(stream, 0, epoch, state(number), changes)
        epoch = number
        assert held(shared_store, stream) == {(u, a, m, s) for (u, a), (m, s) in model.items()}
