"""Ingest on both databases: idempotent replays, whole batches or nothing,
clear errors, streamed loading, and concurrent writers."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from storage.errors import (
    ConstraintError,
    InvalidAmountError,
    InvalidIdentifierError,
    InvalidInputError,
    SequenceError,
    StorageError,
    UnknownAssetError,
)
from storage.store import MAX_RESERVE, Store
from tests.storage.conftest import B, R, balances
from verifier.hashing import MAX_BALANCE


def test_replays_are_ignored_and_marks_are_per_source(store: Store) -> None:
    first = store.apply_balances("core", [B(1, "a", "BTC", 5), B(2, "b", "BTC", 6)])
    assert (len(first.applied), first.duplicates, first.last_seq) == (2, 0, 2)
    again = store.apply_balances("core", [B(1, "a", "BTC", 99), B(2, "b", "BTC", 99)])
    assert (again.applied, again.duplicates, again.last_seq) == ((), 2, 2)
    partial = store.apply_balances("core", [B(2, "b", "BTC", 99), B(5, "b", "BTC", 7)])
    assert (partial.applied, partial.duplicates, partial.last_seq) == ((B(5, "b", "BTC", 7),), 1, 5)
    other = store.apply_balances("other", [B(1, "a", "BTC", 8)])
    assert other.last_seq == 1
    assert balances(store) == {("a", "BTC"): 8, ("b", "BTC"): 7}
    assert store.source_marks() == {("balances", "core"): 5, ("balances", "other"): 1}


def test_a_replayed_batch_writes_nothing(store: Store) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", 5)])
    with store.engine.connect() as conn:
        before = conn.execute(text("SELECT * FROM source_marks")).all()
    assert store.apply_balances("core", [B(0, "a", "BTC", 1), B(1, "a", "BTC", 2)]).duplicates == 2
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT * FROM source_marks")).all() == before
    assert balances(store) == {("a", "BTC"): 5}


def test_an_empty_batch_reports_the_mark(store: Store) -> None:
    assert store.apply_balances("core", []).last_seq == -1
    store.apply_balances("core", [B(3, "a", "BTC", 5)])
    assert store.apply_balances("core", []).last_seq == 3
    assert store.source_marks() == {("balances", "core"): 3}


def test_balances_are_absolute_and_the_last_of_a_batch_wins(store: Store) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", 5), B(2, "a", "BTC", 0), B(3, "a", "BTC", 9)])
    store.apply_balances("core", [B(4, "a", "ETH", 1), B(5, "a", "BTC", 2)])
    assert balances(store) == {("a", "BTC"): 2, ("a", "ETH"): 1}
    store.apply_balances("core", [B(6, "a", "BTC", 0)])  # zero: no balance
    assert balances(store) == {("a", "ETH"): 1}


GOOD = B(1, "alice", "BTC", 5)


@pytest.mark.parametrize(
    ("batch", "error", "message"),
    [
        ([GOOD, B(1, "b", "BTC", 5)], SequenceError, r"updates\[1\]: seq 1 does not increase"),
        ([B(2, "a", "BTC", 5), B(1, "b", "BTC", 5)], SequenceError, "does not increase"),
        ([GOOD, B(-1, "b", "BTC", 5)], SequenceError, "seq -1"),
        ([GOOD, B(2**63, "b", "BTC", 5)], SequenceError, "seq"),
        ([GOOD, B(2, "b", "DOGE", 5)], UnknownAssetError, r"updates\[1\]: unknown asset 'DOGE'"),
        ([GOOD, B(2, "b", "btc", 5)], InvalidIdentifierError, "asset id"),
        ([GOOD, B(2, "b", "BTC", -1)], InvalidAmountError, r"updates\[1\] \(asset BTC\)"),
        ([GOOD, B(2, "b", "BTC", MAX_BALANCE + 1)], InvalidAmountError, r"0\.\.2\*\*64-1"),
        ([GOOD, B(2, "b", "BTC", 1.5)], InvalidAmountError, "1.5"),  # type: ignore[arg-type]
        ([GOOD, B(2, "", "BTC", 1)], InvalidIdentifierError, r"updates\[1\]: user id"),
        ([GOOD, B(2, "x" * 256, "BTC", 1)], InvalidIdentifierError, "1-255 bytes"),
        ([GOOD, B(2, "a\nb", "BTC", 1)], InvalidIdentifierError, r"U\+000A, a Cc"),
    ],
)
def test_a_bad_batch_is_refused_whole(
    store: Store, batch: list[B], error: type[Exception], message: str
) -> None:
    store.apply_balances("core", [B(0, "zed", "ETH", 3)])
    with pytest.raises(error, match=message):
        store.apply_balances("core", batch)
    assert balances(store) == {("zed", "ETH"): 3}
    assert store.source_marks() == {("balances", "core"): 0}


def test_the_errors_form_one_hierarchy() -> None:
    for cls in (UnknownAssetError, InvalidAmountError, InvalidIdentifierError, SequenceError):
        assert issubclass(cls, InvalidInputError) and issubclass(cls, StorageError)
    assert issubclass(ConstraintError, StorageError)


@pytest.mark.parametrize("source", ["", "has space", "x" * 65, "caf\u00e9", "tab\t"])
def test_source_names_are_checked(store: Store, source: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="source"):
        store.apply_balances(source, [GOOD])
    assert store.source_marks() == {}


def test_utf8_user_ids_of_255_bytes(store: Store) -> None:
    user = "\u00e9" * 127 + "x"  # 255 bytes of UTF-8
    store.apply_balances("core", [B(1, user, "BTC", 1)])
    assert balances(store) == {(user, "BTC"): 1}


def test_a_constraint_violation_is_a_constraint_error(store: Store) -> None:
    """An asset deleted behind the store's back: the foreign key refuses the
    batch, the error names the constraint, and nothing is written."""
    store.apply_balances("core", [B(1, "a", "ETH", 1)])
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM assets WHERE id = 'BTC'"))
    with pytest.raises(ConstraintError, match=r"(?i)foreign key"):
        store.apply_balances("core", [B(2, "a", "ETH", 2), B(3, "b", "BTC", 1)])
    assert balances(store) == {("a", "ETH"): 1}
    assert store.source_marks() == {("balances", "core"): 1}


def test_reserves_keep_the_latest_report_per_asset_and_source(store: Store) -> None:
    store.apply_reserves("cold", [R(1, "BTC", 10, 100), R(2, "ETH", 3, 100), R(3, "BTC", 11, 150)])
    store.apply_reserves("cold", [R(4, "BTC", 12, 200)])
    store.apply_reserves("hot", [R(1, "BTC", 1, 150)])
    assert store.apply_reserves("hot", [R(1, "BTC", 99, 999)]).duplicates == 1
    got = [(r.asset, r.source, r.amount, r.as_of_ms) for r in store.reserves()]
    assert got == [("BTC", "cold", 12, 200), ("BTC", "hot", 1, 150), ("ETH", "cold", 3, 100)]
    assert store.source_marks() == {("reserves", "cold"): 4, ("reserves", "hot"): 1}


@pytest.mark.parametrize(
    ("update", "error"),
    [
        (R(9, "BTC", MAX_RESERVE + 1, 1), InvalidAmountError),
        (R(9, "BTC", -5, 1), InvalidAmountError),
        (R(9, "XRP", 5, 1), UnknownAssetError),
        (R(9, "BTC", 5, -1), InvalidInputError),
        (R(3, "BTC", 5, 1), SequenceError),
    ],
)
def test_a_bad_reserve_batch_is_refused_whole(
    store: Store, update: R, error: type[Exception]
) -> None:
    store.apply_reserves("cold", [R(5, "ETH", 1, 1)])
    with pytest.raises(error):
        store.apply_reserves("cold", [R(6, "BTC", 7, 1), update])
    assert [(r.asset, r.amount) for r in store.reserves()] == [("ETH", 1)]
    assert store.source_marks() == {("reserves", "cold"): 5}


def test_balances_load_in_streamed_chunks(store: Store) -> None:
    rows = [B(i + 1, f"user{i:05d}", "BTC" if i % 3 else "ETH", i) for i in range(2_500)]
    for start in range(0, len(rows), 1_000):
        store.apply_balances("bulk", rows[start : start + 1_000])
    chunks = list(store.iter_balances(400))
    assert [len(c) for c in chunks] == [400] * 6 + [99]  # user00000 has 0: not loaded
    assert {(u, a): m for c in chunks for u, a, m in c} == {
        (r.user, r.asset): r.amount for r in rows if r.amount
    }
    with pytest.raises(InvalidInputError):
        next(store.iter_balances(0))


def test_assets(store: Store) -> None:
    store.ensure_asset("BTC", 8)  # idempotent
    with pytest.raises(ConstraintError, match="8 decimals, not 6"):
        store.ensure_asset("BTC", 6)
    with pytest.raises(InvalidIdentifierError):
        store.ensure_asset("btc", 8)
    with pytest.raises(InvalidIdentifierError, match="decimals"):
        store.ensure_asset("DOGE", 37)
    store.ensure_asset("USDT.E", 0)
    assert [(a.id, a.decimals) for a in store.assets()] == [("BTC", 8), ("ETH", 18), ("USDT.E", 0)]


def test_concurrent_writers_apply_each_update_once(store: Store) -> None:
    """Two threads deliver the same stream of batches from one source (a
    producer retrying on a second connection): every update is applied once."""
    batches = [[B(b * 10 + i, f"u{i}", "BTC", b * 10 + i) for i in range(10)] for b in range(30)]
    applied: list[int] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            for batch in batches:
                applied.append(len(store.apply_balances("core", batch).applied))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(applied) == 300
    assert store.source_marks() == {("balances", "core"): 299}
    assert balances(store) == {(f"u{i}", "BTC"): 290 + i for i in range(10)}


# Property: any delivery of slices of a producer's stream (replays, overlaps,
# retries) applies exactly the updates above the mark, each once.


SOURCES = itertools.count()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    updates=st.lists(
        st.tuples(
            st.sampled_from("abc"), st.sampled_from(["BTC", "ETH"]), st.integers(0, 2**64 - 1)
        ),
        min_size=1,
        max_size=12,
    ),
    cuts=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=6),
)
def test_any_delivery_applies_each_update_once(
    shared_store: Store, updates: list[tuple[str, str, int]], cuts: list[tuple[int, int]]
) -> None:
    source = f"p{next(SOURCES)}"
    stream = [B(i, f"{source}-{u}", a, m) for i, (u, a, m) in enumerate(updates)]
    model: dict[tuple[str, str], int] = {}
    mark = -1
    for a, b in [*cuts, (0, len(stream))]:  # slices of the stream, the last one whole
        batch = stream[min(a, b) : max(a, b)]
        result = shared_store.apply_balances(source, batch)
        fresh = [u for u in batch if u.seq > mark]  # at or below the mark: replays
        assert list(result.applied) == fresh
        assert result.duplicates == len(batch) - len(fresh)
        for u in fresh:
            model[(u.user, u.asset)] = u.amount
        mark = max(mark, batch[-1].seq if batch else -1)
        assert result.last_seq == mark
    got = {k: v for k, v in balances(shared_store).items() if k[0].startswith(f"{source}-")}
    assert got == {k: v for k, v in model.items() if v}
