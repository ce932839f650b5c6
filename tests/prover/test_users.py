"""UserIndex (prover/users.py): its C half (prover._userindex) against its
dict and list, and both against a plain model."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prover.users
from prover.users import UserIndex
from tests.prover.test_speedups import built


@pytest.fixture(params=["c", "python"])
def kind(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "c":
        built(prover.users._C)
    yield request.param


def make(kind: str) -> UserIndex:
    """A new index kept in C, or in Python whatever is built."""
    saved = prover.users._C
    if kind == "python":
        prover.users._C = None
    try:
        return UserIndex()
    finally:
        prover.users._C = saved


ids = st.one_of(
    st.sampled_from(["a", "ab", "b", "acct1", "acct10", "x" * 255, "é", "e\u0301", "用户"]),
    st.text(min_size=1, max_size=8),
)


@given(st.lists(st.lists(ids, max_size=12), max_size=8), st.sampled_from(["c", "python"]))
@settings(max_examples=150, deadline=None)
def test_numbers_in_the_order_users_came(batches: list[list[str]], kind: str) -> None:
    if kind == "c" and prover.users._C is None:
        return
    index, model = make(kind), dict[str, int]()  # the model: a dict in insertion order
    for batch in batches:
        numbers = index.numbers(batch)
        for user in batch:
            model.setdefault(user, len(model))
        assert numbers.dtype == np.int64
        assert numbers.tolist() == [model[u] for u in batch]
    assert len(index) == len(model)
    assert list(index) == index.ids() == list(model)
    for user, number in model.items():
        assert index.get(user) == number and user in index and index[number] == user
    chosen = np.array(list(model.values())[::-1], np.int64)
    assert index.select(chosen) == list(model)[::-1]
    for twin in (copy.deepcopy(index), pickle.loads(pickle.dumps(index))):
        assert twin.ids() == index.ids()
        assert twin.number("new one") == len(model) and "new one" not in index


def test_many_users_grow_the_table(kind: str) -> None:
    index = make(kind)
    users = [f"acct{i}" for i in range(100_000)]
    assert index.numbers(users).tolist() == list(range(100_000))
    assert index.numbers(users[::-1]).tolist() == list(range(100_000))[::-1]
    assert index.get("acct99999") == 99_999 and index.get("acct100000") is None
    assert index.ids(99_998, 100_000) == ["acct99998", "acct99999"]
    assert index.nbytes > 0


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (7, TypeError, "a user id must be a str, not int"),
        (b"bytes", TypeError, "a user id must be a str, not bytes"),
        ("", ValueError, "1-255 bytes of UTF-8, got 0"),
        ("é" * 128, ValueError, "1-255 bytes of UTF-8, got 256"),
        ("a\ud800", UnicodeEncodeError, "surrogate"),
    ],
)
def test_bad_ids_add_none_of_the_batch(
    kind: str, bad: object, error: type[Exception], message: str
) -> None:
    index = make(kind)
    index.numbers(["kept"])
    with pytest.raises(error, match=message):
        index.numbers(["new", bad, "other"])  # type: ignore[list-item]
    assert index.ids() == ["kept"] and "new" not in index


def test_reading_outside_the_users_is_refused(kind: str) -> None:
    index = make(kind)
    index.numbers(["a", "b"])
    with pytest.raises(IndexError, match="no user 2: 2 users"):
        index[2]
    with pytest.raises(IndexError, match="no user -1: 2 users"):
        index.select(np.array([0, -1], np.int64))
    with pytest.raises(IndexError, match=r"users 1 \.\. 3 are outside 0 \.\. 2"):
        index.ids(1, 3)
    with pytest.raises(TypeError, match="a user id must be a str"):
        index.get(1)  # type: ignore[arg-type]
    assert 1 not in index and index.get("é" * 200) is None
