"""What a sum tree (prover/tree.py) is given, checked before it changes
anything: a height, slots, commitments and amounts, in numpy arrays and
without a Python loop over their elements. Pure.

Every refusal is a ``TreeError`` naming the first offending value, so a bad
batch leaves the tree as it was.
"""

from __future__ import annotations

import operator
from typing import Final

import numpy as np
import numpy.typing as npt

from prover.errors import TreeError
from verifier.hashing import DIGEST_SIZE, MAX_BALANCE, MAX_HEIGHT

__all__ = [
    "EMPTY_SLOTS",
    "I64",
    "U8",
    "U64",
    "check_height",
    "check_sets",
    "check_slots",
    "duplicate_message",
]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

EMPTY_SLOTS: Final[I64] = np.zeros(0, np.int64)
EMPTY_SLOTS.flags.writeable = False


def check_height(height: int) -> int:
    if isinstance(height, bool):
        raise TreeError("height must be an integer, got bool")
    try:
        value = operator.index(height)
    except TypeError as exc:
        raise TreeError(f"height must be an integer, got {type(height).__name__}") from exc
    if not 0 <= value <= MAX_HEIGHT:
        raise TreeError(f"height {value} is outside 0..{MAX_HEIGHT}")
    return value


def check_slots(height: int, slots: npt.ArrayLike, what: str) -> I64:
    array = np.asarray(slots)
    if array.ndim != 1:
        raise TreeError(f"{what} slots must be a one-dimensional array, got shape {array.shape}")
    if not array.size:
        return EMPTY_SLOTS
    if array.dtype.kind not in "iu":
        raise TreeError(f"{what} slots must be integers, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= 1 << height:
        raise TreeError(
            f"{what} slot {low if low < 0 else high} is outside 0..{(1 << height) - 1} "
            f"(tree of height {height})"
        )
    return array.astype(np.int64, copy=False)


def check_sets(
    height: int, slots: npt.ArrayLike, commitments: npt.ArrayLike, amounts: npt.ArrayLike
) -> tuple[I64, U8, U64]:
    """Validate user leaves (vectorised: no Python loop over elements)."""
    slot_a = check_slots(height, slots, "leaf")
    n = len(slot_a)
    commitment_a = np.asarray(commitments)
    if commitment_a.size == 0 and n == 0:
        commitment_a = np.zeros((0, DIGEST_SIZE), np.uint8)
    if commitment_a.dtype != np.uint8:
        raise TreeError(f"commitments must be a uint8 array, got dtype {commitment_a.dtype}")
    if commitment_a.shape != (n, DIGEST_SIZE):
        raise TreeError(
            f"commitments must have shape ({n}, {DIGEST_SIZE}), got {commitment_a.shape}"
        )
    return slot_a, commitment_a, _check_amounts(amounts, n)


def _check_amounts(amounts: npt.ArrayLike, n: int) -> U64:
    """Amounts as uint64, checked to be integers in 0..MAX_BALANCE (vectorised).

    A list mixing ints above 2**63 with small ones would become float64 under
    numpy's promotion; such lists are taken as Python ints (an object array)
    and checked exactly instead: type ``int`` only, then the range.
    """
    array = np.asarray(amounts)
    if array.dtype.kind in "fO" and not isinstance(amounts, np.ndarray):
        array = np.asarray(amounts, dtype=object)
    if array.shape != (n,):
        raise TreeError(f"need one amount per slot: shape ({n},), got {array.shape}")
    if not n:
        return np.zeros(0, np.uint64)
    kind = array.dtype.kind
    if kind == "O":
        types = np.frompyfunc(type, 1, 1)(array)
        if not (types == int).all():  # noqa: E721  (an elementwise array comparison)
            raise TreeError("amounts must be integers in 0..2**64-1")
        bad = (array < 0) | (array > MAX_BALANCE)
        if bad.any():
            raise TreeError(f"amount {array[bad][0]} is outside 0..2**64-1")
    elif kind not in "iu":
        raise TreeError(f"amounts must be integers in 0..2**64-1, got dtype {array.dtype}")
    elif kind == "i" and int(array.min()) < 0:
        raise TreeError(f"amount {int(array.min())} is outside 0..2**64-1")
    return array.astype(np.uint64)


def duplicate_message(slots: I64, clears: I64, where: str) -> str:
    """Name the first slot given twice (cold path: only after a duplicate is found)."""
    for name, group in (("set", slots), ("cleared", clears)):
        ordered = np.sort(group)
        twice = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(twice):
            return f"slot {int(twice[0])} is {name} twice {where}"
    both = np.intersect1d(slots, clears)
    return f"slot {int(both[0])} is both set and cleared {where}"
