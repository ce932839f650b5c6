"""A shard's fold in bounded transactions (storage/shard_deltas.py), on
SQLite and PostgreSQL: stopped after any of its transactions, the store
still restores the last close saved exactly, saves go on between its
transactions, and the next fold finishes the work."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import event

import storage.shard_deltas
from storage.db import Database
from storage.errors import StorageError
from storage.shards import ShardStates
from storage.store import HoldingChanges, Store
from tests.storage.test_shards import Model, held, state


class Stopped(Exception):
    """The fold was stopped between two of its transactions (a crash)."""


@pytest.fixture
def writes(store: Store) -> Iterator[list[int]]:
    """The number of write transactions begun on ``store``, in a list."""
    count = [0]

    def begun(conn: object) -> None:
        if conn.get_execution_options().get("solvency_write"):  # type: ignore[attr-defined]
            count[0] += 1

    event.listen(store.engine, "begin", begun)
    yield count
    event.remove(store.engine, "begin", begun)


def saved(store: Store, model: Model, first: int, closes: int) -> int:
    """Save ``closes`` closes of ``model`` after epoch ``first - 1`` (none if
    ``first`` is 0); return the last epoch saved."""
    for number in range(first, first + closes):
        store.save_shard("s", 0, None if number == 0 else number - 1, state(number), model.close())
    return first + closes - 1


def test_a_fold_runs_in_transactions_of_bounded_size(
    store: Store, writes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold of many holdings with a chunk of 5: several write transactions,
    each of at most 5 holdings written or dropped, the last deleting the
    deltas; the holdings read back are the last close's."""
    model = Model(21, users=40)
    saved(store, model, 0, 12)
    written: list[int] = []
    write = storage.shard_deltas._write

    def counted(*args: object) -> None:
        written.append(len(args[4]) + len(args[5]))  # type: ignore[arg-type]
        write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(storage.shard_deltas, "_write", counted)
    monkeypatch.setattr(storage.shard_deltas, "SQLITE_PAUSE", 0.0)
    before = writes[0]
    folded = ShardStates(Database(store.engine)).fold("s", 0, chunk_size=5)
    assert folded > 5 and max(written) <= 5 and len(written) > 2
    assert writes[0] - before >= len(written)  # one transaction each, at least
    assert store.shard_pending("s", 0) == 0
    assert held(store, "s") == model.expected()


@pytest.mark.parametrize("seed", [31, 32])
def test_a_fold_stopped_after_any_transaction_restores_the_last_close(
    db_url: str, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """For each k, a fold (chunks of 4) stopped after its k-th transaction
    committed, the store closed and opened again (the shard restarted): the
    state and holdings are the last close's, every delta is still there;
    a close saved then restores too, and the next fold leaves the last
    close's holdings with no delta."""
    monkeypatch.setattr(storage.shard_deltas, "SQLITE_PAUSE", 0.0)
    stops = 0
    k = 0
    while True:
        k += 1
        model = Model(seed, users=25)
        stream = f"s{k}"
        with Store.open(db_url) as store:
            for number in range(8):  # some replace assets: their holdings are dropped in chunks
                after = number - 1 if number else None
                store.save_shard(stream, 0, after, state(number), model.close())
            pending = store.shard_pending(stream, 0)
            done = [0]

            def stop(_db: Database, after: int = k, done: list[int] = done) -> None:
                done[0] += 1
                if done[0] == after:
                    raise Stopped

            with monkeypatch.context() as patch:
                patch.setattr(storage.shard_deltas, "_pause", stop)
                try:
                    ShardStates(Database(store.engine)).fold(stream, 0, chunk_size=4)
                except Stopped:
                    stops += 1
                else:
                    break  # k is past the fold's last transaction
        with Store.open(db_url) as store:
            assert store.shard_state(stream, 0) == state(7)
            assert store.shard_pending(stream, 0) == pending
            assert held(store, stream) == model.expected()
            store.save_shard(stream, 0, 7, state(8), model.close())
            assert held(store, stream) == model.expected()
            assert store.fold_shard(stream, 0) > 0
            assert store.shard_pending(stream, 0) == 0
            assert held(store, stream) == model.expected()
    assert stops >= 4  # the fold had that many transactions before its last


def test_saves_go_on_between_a_folds_transactions(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close saved (another connection) between each two transactions of a
    fold: no save waits for the fold to end (on SQLite it would time out on
    the write lock), the fold leaves the deltas saved meanwhile, and the
    holdings read back are the last close's throughout."""
    model = Model(41, users=30)
    with Store.open(db_url) as folder, Store.open(db_url) as saver:
        epoch = saved(saver, model, 0, 10)
        between: list[HoldingChanges] = []

        def save_between(db: Database) -> None:
            nonlocal epoch
            changes = model.close()
            saver.save_shard("s", 0, epoch, state(epoch + 1), changes)
            epoch += 1
            between.append(changes)
            assert held(saver, "s") == model.expected()

        with monkeypatch.context() as patch:
            patch.setattr(storage.shard_deltas, "_pause", save_between)
            ShardStates(Database(folder.engine)).fold("s", 0, chunk_size=4)
        assert len(between) >= 3
        assert saver.shard_pending("s", 0) == sum(len(c.held) + len(c.gone) for c in between)
        assert held(saver, "s") == model.expected()
        saver.fold_shard("s", 0)
        assert saver.shard_pending("s", 0) == 0
        assert held(saver, "s") == model.expected()


def test_a_fold_whose_deltas_another_fold_took_is_refused(store: Store) -> None:
    """A fold's last transaction deletes exactly the deltas it took: if
    another fold took them meanwhile, it fails and deletes nothing, and a
    close saved after restores as the last."""
    model = Model(51)
    saved(store, model, 0, 4)
    with store.engine.begin() as conn:
        stale = storage.shard_deltas._take(conn, "s", 0)
    assert stale is not None and stale.rows == 4
    assert store.fold_shard("s", 0) > 0  # the other fold
    store.save_shard("s", 0, 3, state(4), model.close())
    refused = pytest.raises(StorageError, match="0 deltas up to epoch 3 stored, not the 4 folded")
    with refused, store.engine.begin() as conn:
        storage.shard_deltas._forget(conn, "s", 0, stale)
    assert store.shard_pending("s", 0) > 0
    assert held(store, "s") == model.expected()
