"""A ledger's users, numbered 0, 1, ... in the order they came. Pure.

``UserIndex`` maps user ids to numbers and back. It keeps them in the C
extension ``prover._userindex`` when ``speedups`` loads it (40-60 bytes a
user beside the id's bytes, room to grow included; a lookup among a
million ids in two cache misses), otherwise in a dict and a list (about
150 bytes a user). Both
number the same way (tests/prover/test_users.py).

Invariants: ids are distinct strs of 1-255 bytes of UTF-8; numbers are
0 .. len - 1 in the order added; nothing is removed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from prover import speedups

__all__ = ["UserIndex"]

_C = speedups.load("_userindex")
MAX_ID = 255  # bytes of UTF-8 (PROTOCOL §2.2)


def _check(user: object) -> None:
    if not isinstance(user, str):
        raise TypeError(f"a user id must be a str, not {type(user).__name__}")
    size = len(user.encode("utf-8"))  # UnicodeEncodeError (a ValueError) for a lone surrogate
    if not 1 <= size <= MAX_ID:
        raise ValueError(f"a user id must be 1-{MAX_ID} bytes of UTF-8, got {size}")


class UserIndex:
    """User ids numbered in the order they came (see the module docstring)."""

    __slots__ = ("_c", "_ids", "_numbers")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._c: Any = _C.Users() if _C is not None else None
        self._numbers: dict[str, int] = {}
        self._ids: list[str] = []
        self.numbers(list(ids))

    def __len__(self) -> int:
        return len(self._c) if self._c is not None else len(self._ids)

    def __iter__(self) -> Iterator[str]:
        """The ids, in number order."""
        return iter(self.ids())

    def __contains__(self, user: object) -> bool:
        return isinstance(user, str) and self.get(user) is not None

    def __reduce__(self) -> tuple[type[UserIndex], tuple[list[str]]]:
        """Copies and pickles hold the same ids in the same order."""
        return UserIndex, (self.ids(),)

    def get(self, user: str) -> int | None:
        """The number of ``user``, or None if it was never added."""
        if not isinstance(user, str):
            raise TypeError(f"a user id must be a str, not {type(user).__name__}")
        return self._c.get(user) if self._c is not None else self._numbers.get(user)

    def number(self, user: str) -> int:
        """The number of ``user``, added first if new."""
        return int(self.numbers([user])[0])

    def numbers(self, users: list[str]) -> npt.NDArray[np.int64]:
        """The number of each of ``users``; those not known are added first,
        numbered in the order they come.

        Raises:
            TypeError, ValueError: an id is not a str of 1-255 bytes of
                UTF-8; none is added then.
        """
        if self._c is not None:
            return np.frombuffer(self._c.numbers(users), np.int64)
        known, ids = self._numbers, self._ids
        out = [known.get(user) for user in users]  # one lookup each: they miss the caches
        if None in out:
            fresh = [i for i, number in enumerate(out) if number is None]
            for i in fresh:
                _check(users[i])
            for i in fresh:
                number = known.get(users[i])  # None, unless named before in this batch
                if number is None:
                    number = known[users[i]] = len(ids)
                    ids.append(users[i])
                out[i] = number
        return np.array(out, np.int64)

    def ids(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The ids of users ``start .. stop - 1`` (``stop`` None: to the last)."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"users {start} .. {stop} are outside 0 .. {len(self)}")
        return self._c.ids(start, stop) if self._c is not None else self._ids[start:stop]

    def select(self, numbers: npt.NDArray[np.int64]) -> list[str]:
        """The ids of users ``numbers`` (each in 0 .. len - 1)."""
        if self._c is not None:
            return list(self._c.select(np.ascontiguousarray(numbers, np.int64)))
        ids, count = self._ids, len(self._ids)
        out = []
        for number in numbers.tolist():
            if not 0 <= number < count:
                raise IndexError(f"no user {number}: {count} users")
            out.append(ids[number])
        return out

    def __getitem__(self, number: int) -> str:
        if not 0 <= number < len(self):
            raise IndexError(f"no user {number}: {len(self)} users")
        return self.ids(number, number + 1)[0]

    @property
    def nbytes(self) -> int:
        """Memory held for the ids and their numbers, room to grow included
        (without C: the dict, the list and the str objects; not the ints)."""
        if self._c is not None:
            return int(self._c.nbytes)
        strs = sum(map(sys.getsizeof, self._ids))
        return sys.getsizeof(self._numbers) + sys.getsizeof(self._ids) + strs
