"""The shards' saved states (storage/shards.py), on SQLite and PostgreSQL:
a close is saved whole or not at all, only over the epoch its shard closed
last; the holdings read back are those saved, whatever the changes and
whichever folds of the deltas ran, failed or raced in between."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

import storage.shard_deltas
from storage.errors import EpochConflictError, InvalidInputError, StorageError
from storage.schema import encode_amount
from storage.store import MIGRATIONS, Holding, HoldingChanges, ShardState, Store
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


Ops = list[tuple[frozenset[str], list[tuple[str, str, int]], bool]]  # replaced, changes, fold


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
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=30, deadline=None)
def test_holdings_are_the_last_saved(shared_store: Store, ops: Ops) -> None:
    """Closes of a model shard (fresh slots for every new holding, every
    slot moved in a replaced asset) saved one after another, the deltas
    folded after some: the holdings read back are the model's after each."""
    stream = f"h{next(_names)}"
    model: dict[tuple[str, str], tuple[int, int]] = {}
    fresh = itertools.count()
    epoch = None
    for replaced, rows, fold in ops:
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
        if fold:
            shared_store.fold_shard(stream, 0)
            assert shared_store.shard_pending(stream, 0) == 0
        assert held(shared_store, stream) == {(u, a, m, s) for (u, a), (m, s) in model.items()}


class Model:
    """A shard's holdings through random closes (seeded): each close changes
    some holdings, drops some, now and then replaces an asset (every slot
    moved) or, as a salt switch does, every holding."""

    def __init__(self, seed: int, users: int = 60) -> None:
        self.rng = random.Random(seed)
        self.users = [f"user{i}" for i in range(users)]
        self.holdings: dict[tuple[str, str], tuple[int, int]] = {}
        self.slots = itertools.count()

    def close(self) -> HoldingChanges:
        rng, now = self.rng, self.holdings
        roll = rng.random()
        replaced = frozenset({"BTC", "ETH"} if roll < 0.05 else {"ETH"} if roll < 0.15 else ())
        for key in [k for k in now if k[1] in replaced]:
            now[key] = (now[key][0], next(self.slots))
        touched = {(rng.choice(self.users), rng.choice(["BTC", "ETH"])) for _ in range(12)}
        for key in touched:
            if rng.random() < 0.25:
                now.pop(key, None)
            else:
                now[key] = (rng.choice([1, 2**64 - 1, rng.randrange(1, 2**64)]), next(self.slots))
        changed = touched | {k for k in now if k[1] in replaced}
        return HoldingChanges(
            held=[(u, a, *now[(u, a)]) for u, a in sorted(changed) if (u, a) in now],
            gone=[(u, a) for u, a in sorted(changed) if (u, a) not in now],
            replaced=replaced,
        )

    def expected(self) -> set[Holding]:
        return {(u, a, m, s) for (u, a), (m, s) in self.holdings.items()}


@pytest.fixture
def failing_fold(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Folds that write the whole base, then raise inside their transaction
    (a crash mid-fold) while the list given holds a True."""
    fail: list[int] = []
    write = storage.shard_deltas._write

    def broken(*args: object) -> None:
        write(*args)  # type: ignore[arg-type]
        if fail:
            raise StorageError("killed inside the fold")

    monkeypatch.setattr(storage.shard_deltas, "_write", broken)
    yield fail


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_closes_restore_whatever_the_folds(
    store: Store, failing_fold: list[int], seed: int
) -> None:
    """Forty closes, the deltas folded at random, a fold failing at random
    after writing the base (rolled back whole): after each close the
    holdings read back are the model's, and after a fold no delta is left."""
    model = Model(seed)
    rng = random.Random(seed + 100)
    epoch = None
    for number in range(5, 45):
        store.save_shard("s", 0, epoch, state(number), model.close())
        epoch = number
        roll = rng.random()
        if roll < 0.2:
            failing_fold.append(1)
            pending = store.shard_pending("s", 0)
            with pytest.raises(StorageError, match="killed inside the fold"):
                store.fold_shard("s", 0)
            failing_fold.clear()
            assert store.shard_pending("s", 0) == pending > 0  # the deltas are all there
        elif roll < 0.4:
            assert store.fold_shard("s", 0) > 0
            assert store.shard_pending("s", 0) == 0
        assert held(store, "s") == model.expected()
    store.fold_shard("s", 0)
    assert store.fold_shard("s", 0) == 0  # nothing left to fold
    assert held(store, "s") == model.expected()
    assert store.shard_state("s", 0) == state(44)


def test_a_crash_between_append_and_fold_restores_the_saved(db_url: str) -> None:
    """Closes saved and never folded, the store closed (the shard killed)
    and opened again: the holdings are those saved; a fold that fails, and
    then one that succeeds, change nothing read back."""
    model = Model(7)
    with Store.open(db_url) as store:
        for number in range(10):
            store.save_shard(
                "s", 3, None if number == 0 else number - 1, state(number), model.close()
            )
    with Store.open(db_url) as store:
        assert store.shard_pending("s", 3) > 0
        assert held(store, "s", 3) == model.expected()
        store.fold_shard("s", 3)
        assert held(store, "s", 3) == model.expected()


def test_two_savers_of_one_part_conflict_with_folds_between(db_url: str) -> None:
    """Two stores (two shard processes of one part) at the same epoch: the
    second's save fails and writes nothing, whether or not a fold of the
    first's deltas ran, and folds by either change nothing read back."""
    model = Model(9)
    with Store.open(db_url) as one, Store.open(db_url) as two:
        one.save_shard("s", 2, None, state(1), model.close())
        stale = Model(9)  # the same first close, then another second one
        stale.close()
        other = stale.close()
        one.save_shard("s", 2, 1, state(2), model.close())
        with pytest.raises(EpochConflictError, match="epoch 2 stored, not 1"):
            two.save_shard("s", 2, 1, state(2), other)
        two.fold_shard("s", 2)
        with pytest.raises(EpochConflictError, match="holds epoch 2 already"):
            two.save_shard("s", 2, None, state(2), other)
        one.save_shard("s", 2, 2, state(3), model.close())
        assert held(two, "s", 2) == held(one, "s", 2) == model.expected()


def test_concurrent_folds_and_saves_keep_the_last_saved(db_url: str) -> None:
    """Folds from two other threads in a loop while a shard saves closes:
    no fold takes a delta another took, the base never goes back, and the
    holdings read back after each close are the model's."""
    model = Model(11, users=30)
    stop = threading.Event()
    errors: list[BaseException] = []
    with Store.open(db_url) as saver, Store.open(db_url) as folder:

        def folding() -> None:
            try:
                while not stop.wait(0.001):  # SQLite's lock is not fair: let saves in
                    folder.fold_shard("s", 0)
            except StorageError as exc:  # a deadlock detected would be one
                errors.append(exc)

        threads = [threading.Thread(target=folding) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            for number in range(60):
                changes = model.close()
                saver.save_shard(
                    "s", 0, None if number == 0 else number - 1, state(number), changes
                )
                assert held(saver, "s") == model.expected()
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert not errors
        saver.fold_shard("s", 0)
        assert held(saver, "s") == model.expected()


def test_a_malformed_delta_is_refused_at_restore(store: Store) -> None:
    store.save_shard("s", 0, None, state(1), HoldingChanges([("a", "BTC", 1, 3)]))
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE shard_deltas SET body = :b"), {"b": b"\x93\x02\x90\x90"})
    with pytest.raises(StorageError, match="malformed shard delta"):
        held(store, "s")
    with pytest.raises(StorageError, match="malformed shard delta"):
        store.fold_shard("s", 0)
    assert store.shard_pending("s", 0) == 1  # the fold wrote nothing


def test_states_saved_at_0008_restore_after_0009_and_back(db_url: str) -> None:
    """A shard saved by 0008 (a state and its holdings, no deltas) restores
    the same after the upgrade, saves on with deltas, and a downgrade to
    0008 folds them first, so the 0008 tables alone still hold the last
    close's holdings."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    store = Store.open(db_url, migrate=False)
    old = [("alice", "BTC", 2**64 - 1, 4), ("bob", "BTC", 1, 9), ("bob", "ETH", 7, 0)]
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0008")
        conn.execute(
            text(
                "INSERT INTO shard_states VALUES ('s', 1, 3, 1, 30, 31,"
                ' \'{"p0": 3, "p1": 9223372036854775807}\', \'{"BTC": [5, 10]}\', :r)'
            ),
            {"r": b"r3"},
        )
        for user, asset, amount, slot in old:
            conn.execute(
                text("INSERT INTO shard_holdings VALUES ('s', 1, :a, :u, :m, :s)"),
                {"a": asset, "u": user, "m": encode_amount(amount, store.dialect), "s": slot},
            )
    store.close()
    with Store.open(db_url) as store:
        assert store.shard_state("s", 1) == state(3, BTC=(5, 10))
        assert held(store, "s", 1) == set(old)
        store.save_shard(
            "s",
            1,
            3,
            state(4, BTC=(5, 11)),
            HoldingChanges([("carol", "BTC", 5, 10)], [("bob", "BTC")]),
        )
        now = {("alice", "BTC", 2**64 - 1, 4), ("bob", "ETH", 7, 0), ("carol", "BTC", 5, 10)}
        assert held(store, "s", 1) == now
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0008")
            rows = conn.execute(text("SELECT user_id, asset, amount, slot FROM shard_holdings"))
            assert {
                (u, a, int.from_bytes(m, "big") if isinstance(m, bytes) else int(m), s)
                for u, a, m, s in rows
            } == now
            command.upgrade(config, "head")
        assert held(store, "s", 1) == now
