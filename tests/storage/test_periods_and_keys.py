"""Salt periods and signing keys on both databases."""

from __future__ import annotations

import pytest

from storage.errors import ConstraintError, InvalidInputError, NotFoundError
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
