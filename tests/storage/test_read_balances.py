"""``Store.read_balances`` on both databases: the table, then the journal's
lines, from one snapshot, without folding: applied last-wins they give
``iter_balances``' balances, whatever was folded, and a fold running
meanwhile changes nothing in a read."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import journal
from storage.errors import InvalidInputError
from storage.journal import BalanceChunk
from storage.store import Store
from tests.storage.conftest import B, balances
from tests.storage.test_journal import table


def applied(chunks: Iterable[BalanceChunk]) -> dict[tuple[str, str], int]:
    """The chunks applied in order, the last row of a (user, asset) winning;
    the table's chunks checked to come first, non-zero and one per key."""
    got: dict[tuple[str, str], int] = {}
    journaled = False
    for chunk in chunks:
        journaled = journaled or chunk.journaled
        assert chunk.journaled == journaled  # the table, then the journal
        if not chunk.journaled:
            assert all(m != 0 and (u, a) not in got for u, a, m in chunk.rows)
        got.update(((u, a), m) for u, a, m in chunk.rows)
    return {k: m for k, m in got.items() if m}


def test_the_table_then_the_journal_in_order(store: Store) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", 5), B(2, "b", "BTC", 6), B(3, "c", "ETH", 1)])
    assert store.fold() == 3
    store.apply_balances("core", [B(4, "a", "BTC", 0), B(5, "b", "BTC", 7)])
    store.apply_balances("other", [B(1, "b", "BTC", 8), B(2, "d", "ETH", 2)])
    chunks = list(store.read_balances(2))
    shape = [(False, 2), (False, 1), (True, 2), (True, 2)]
    assert [(c.journaled, len(c.rows)) for c in chunks] == shape
    assert sorted(r for c in chunks[:2] for r in c.rows) == [
        ("a", "BTC", 5),
        ("b", "BTC", 6),
        ("c", "ETH", 1),
    ]
    assert sorted(chunks[2].rows) == [("a", "BTC", 0), ("b", "BTC", 7)]  # one journal row
    assert sorted(chunks[3].rows) == [("b", "BTC", 8), ("d", "ETH", 2)]  # the next
    assert store.journal_backlog() == 4  # not folded
    assert applied(chunks) == {("b", "BTC"): 8, ("c", "ETH"): 1, ("d", "ETH"): 2}
    assert applied(chunks) == balances(store)
    with pytest.raises(InvalidInputError):
        list(store.read_balances(0))


def test_a_read_does_not_wait_for_a_fold(store: Store) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", 5)])
    got: list[dict[tuple[str, str], int]] = []
    with journal._FOLDING:  # a fold under way, in this process
        reader = threading.Thread(target=lambda: got.append(applied(store.read_balances())))
        reader.start()
        reader.join(30)
        assert not reader.is_alive()
    assert got == [{("a", "BTC"): 5}]


RUNS = itertools.count()
UPDATE = st.tuples(
    st.sampled_from("abcd"),
    st.sampled_from(["BTC", "ETH"]),
    st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1)),
)
STEP = st.one_of(st.lists(UPDATE, max_size=6), st.integers(1, 4))  # a batch, or a fold


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=10), chunk_size=st.integers(1, 5))
def test_a_read_gives_the_folded_balances(
    shared_store: Store, steps: list[list[tuple[str, str, int]] | int], chunk_size: int
) -> None:
    """Batches, zeros included, some folded and some not: the read, applied
    last-wins, is what ``iter_balances`` reads after folding them all."""
    run = next(RUNS)
    seq = itertools.count()
    for step in steps:
        if isinstance(step, int):
            shared_store.fold(step)
        elif step:
            batch = [B(next(seq), f"r{run}-{u}", a, m) for u, a, m in step]
            shared_store.apply_balances(f"r{run}", batch)
    chunks = list(shared_store.read_balances(chunk_size))
    assert all(0 < len(c.rows) <= chunk_size for c in chunks)
    mine = f"r{run}-"
    got = {k: m for k, m in applied(chunks).items() if k[0].startswith(mine)}
    assert got == {k: m for k, m in balances(shared_store).items() if k[0].startswith(mine)}


def test_a_fold_during_a_read_changes_nothing_it_reads(store: Store) -> None:
    """A read under way sees the balances as they were when it began: a whole
    fold (upserts into the table, journal rows deleted) in another thread
    meanwhile changes none of its rows; a read after it sees the same."""
    users = [f"u{i:02d}" for i in range(30)]
    store.apply_balances("core", [B(i, u, "BTC", 1) for i, u in enumerate(users)])
    store.fold()
    store.apply_balances("core", [B(30 + i, u, "BTC", 2) for i, u in enumerate(users[::2])])
    store.apply_balances("other", [B(i, u, "ETH", 3) for i, u in enumerate(users[::3])])
    store.apply_balances("other", [B(10 + i, u, "BTC", 0) for i, u in enumerate(users[::5])])
    btc = {(u, "BTC"): 0 if i % 5 == 0 else 2 if i % 2 == 0 else 1 for i, u in enumerate(users)}
    before = {k: m for k, m in btc.items() if m} | {(u, "ETH"): 3 for u in users[::3]}
    reading = store.read_balances(4)
    first = next(reading)  # the snapshot is taken
    assert not first.journaled
    folded: list[int] = []
    folder = threading.Thread(target=lambda: folded.append(store.fold(3)))
    folder.start()
    folder.join(30)
    assert not folder.is_alive() and folded == [15 + 10 + 6]
    assert store.journal_backlog() == 0  # the fold has moved the journal into the table
    assert table(store)[(users[0], "BTC")] == 0
    assert applied([first, *reading]) == before
    assert applied(store.read_balances(4)) == before == balances(store)
