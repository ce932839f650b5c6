"""Salt periods, slot assignments (bulk) and signing keys on both databases."""

from __future__ import annotations

import pytest

from storage.errors import (
    ConstraintError,
    InvalidIdentifierError,
    InvalidInputError,
    NotFoundError,
    UnknownAssetError,
)
from storage.store import Store


def test_salt_periods_are_numbered_from_one(store: Store) -> None:
    assert store.latest_salt_period() is None
    one = store.start_salt_period(10)
    two = store.start_salt_period(20, secret=bytes(range(32)))
    assert (one.number, one.started_ms, two.number, two.secret) == (1, 10, 2, bytes(range(32)))
    assert len(one.secret) == 32 and one.secret != two.secret
    assert store.salt_period(1) == one and store.latest_salt_period() == two
    with pytest.raises(NotFoundError):
        store.salt_period(3)
    with pytest.raises(InvalidInputError):
        store.start_salt_period(30, secret=b"short")


def test_slots_are_stored_and_streamed_in_bulk(store: Store) -> None:
    period = store.start_salt_period(0).number
    rows = [(f"user{i}", "BTC" if i % 2 else "ETH", i // 2) for i in range(12_345)]
    assert store.put_slots(period, iter(rows), chunk_size=1_000) == len(rows)
    chunks = list(store.iter_slots(period, 5_000))
    assert [len(c) for c in chunks] == [5_000, 5_000, 2_345]
    got = [row for chunk in chunks for row in chunk]
    assert got == sorted(rows, key=lambda r: (r[1], r[2]))  # by asset, then slot
    assert list(store.iter_slots(period + 1)) == []


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (("u1", "BTC", 0), ConstraintError),  # user 1 already has a BTC slot
        (("u9", "BTC", 1), ConstraintError),  # slot 1 of BTC is taken
        (("u9", "DOGE", 5), UnknownAssetError),
        (("", "BTC", 5), InvalidIdentifierError),
        (("u9", "BTC", -1), InvalidInputError),
    ],
)
def test_a_bad_slot_row_writes_nothing(
    store: Store, bad: tuple[str, str, int], error: type[Exception]
) -> None:
    period = store.start_salt_period(0).number
    rows = [(f"u{i}", "BTC", i) for i in range(3_000)] + [bad]
    with pytest.raises(error):
        store.put_slots(period, rows, chunk_size=500)
    assert list(store.iter_slots(period)) == []


def test_slots_need_their_period(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.put_slots(7, [("u", "BTC", 0)])


def test_signing_keys_rotate(store: Store) -> None:
    store.add_signing_key("aabbccdd", "log.example", bytes(32), 100)
    store.add_signing_key("11223344", "log.example", bytes([1]) * 32, 200)
    keys = store.signing_keys()
    assert [(k.key_id, k.active_from_ms, k.active_to_ms) for k in keys] == [
        ("aabbccdd", 100, 200),
        ("11223344", 200, None),
    ]
    assert keys[1].public_key == bytes([1]) * 32 and keys[0].name == "log.example"
    with pytest.raises(ConstraintError, match="already registered"):
        store.add_signing_key("aabbccdd", "again", bytes(32), 300)
    assert [k.active_to_ms for k in store.signing_keys()] == [200, None]  # unchanged


@pytest.mark.parametrize(
    ("key_id", "name", "public_key"),
    [
        ("AABBCCDD", "n", bytes(32)),
        ("aabbcc", "n", bytes(32)),
        ("aabbccdd", "", bytes(32)),
        ("aabbccdd", "n", bytes(31)),
    ],
)
def test_bad_signing_keys_are_refused(
    store: Store, key_id: str, name: str, public_key: bytes
) -> None:
    with pytest.raises(InvalidInputError):
        store.add_signing_key(key_id, name, public_key, 0)
    assert store.signing_keys() == []
