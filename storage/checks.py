"""Argument checks, run before anything is written. Each raises a subclass of
``InvalidInputError`` whose message names the offending row (``where``).

User ids, asset ids and source names are checked by ``verifier.hashing`` and
``verifier.record`` (the protocol's rules), not re-implemented here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from storage.errors import InvalidAmountError, InvalidIdentifierError, InvalidInputError
from verifier.errors import FormatError
from verifier.hashing import MAX_BALANCE, check_asset_id, check_user_id, find_invalid_user_id
from verifier.record import MAX_RESERVE, check_source_name

__all__ = [
    "KINDS",
    "MAX_BALANCE",
    "MAX_DECIMALS",
    "MAX_INT64",
    "MAX_RESERVE",
    "check_amount",
    "check_asset",
    "check_decimals",
    "check_int",
    "check_key_id",
    "check_source",
    "check_user",
    "is_int",
]

MAX_INT64 = 2**63 - 1  # sequence numbers and millisecond times (BIGINT)
MAX_DECIMALS = 36
# the kinds of producer a mark belongs to; "stream": not a producer but the
# ledger stream a sharded prover's epoch is cut from, its last sequence covered
KINDS = ("balances", "reserves", "stream")

_KEY_ID = re.compile(r"[0-9a-f]{8}")


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: object, what: str, where: str = "", *, limit: int = MAX_INT64) -> int:
    """``value`` is an int in 0..limit (sequence numbers, slots, times)."""
    if not is_int(value) or not 0 <= value <= limit:  # type: ignore[operator]
        raise InvalidInputError(f"{_at(where)}{what} {value!r} is not an integer in 0..{limit}")
    return value  # type: ignore[return-value]


def check_amount(value: object, limit: int, what: str, where: str = "") -> int:
    """``value`` is an int in 0..limit (``MAX_BALANCE`` or ``MAX_RESERVE``)."""
    if not is_int(value) or not 0 <= value <= limit:  # type: ignore[operator]
        bound = "2**64-1" if limit == MAX_BALANCE else "2**96-1" if limit == MAX_RESERVE else limit
        raise InvalidAmountError(f"{_at(where)}{what} {value!r} is outside 0..{bound}")
    return value  # type: ignore[return-value]


def check_asset(asset: object, where: str = "") -> str:
    try:
        check_asset_id(asset)  # type: ignore[arg-type]
    except FormatError as exc:
        raise InvalidIdentifierError(f"{_at(where)}{exc}") from None
    return asset  # type: ignore[return-value]


def check_user(user: object, where: str = "") -> str:
    try:
        check_user_id(user)  # type: ignore[arg-type]
    except FormatError as exc:
        raise InvalidIdentifierError(f"{_at(where)}{exc}") from None
    return user  # type: ignore[return-value]


def check_users(users: Sequence[str]) -> None:
    """``check_user`` for each of a batch's ``users`` (``updates[i]``), all at
    once (verifier.hashing.find_invalid_user_id)."""
    bad = find_invalid_user_id(users)
    if bad is not None:
        check_user(users[bad], f"updates[{bad}]")


def check_source(source: object, where: str = "") -> str:
    """A producer's name: 1-64 printable ASCII characters, no spaces."""
    try:
        check_source_name(source)  # type: ignore[arg-type]
    except FormatError:
        raise InvalidIdentifierError(
            f"{_at(where)}invalid source {source!r}: want 1-64 printable ASCII, no spaces"
        ) from None
    return source  # type: ignore[return-value]


def check_decimals(decimals: object, asset: str) -> int:
    if not is_int(decimals) or not 0 <= decimals <= MAX_DECIMALS:  # type: ignore[operator]
        raise InvalidIdentifierError(
            f"asset {asset}: decimals {decimals!r} outside 0..{MAX_DECIMALS}"
        )
    return decimals  # type: ignore[return-value]


def check_key_id(key_id: object) -> str:
    """A signing key id: 8 lowercase hex digits (C2SP note key id, big-endian)."""
    if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
        raise InvalidIdentifierError(f"invalid key id {key_id!r}: want 8 lowercase hex digits")
    return key_id
