"""What the store takes and returns: update protocols and frozen result rows.

Updates are read through protocols, so the prover's own message types (and a
test's dataclasses) are accepted as they are; everything returned is a frozen
dataclass of plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "UNATTESTED",
    "ApplyResult",
    "AssetRow",
    "AttestedReserveUpdate",
    "BalanceUpdate",
    "EpochRow",
    "KeyRow",
    "PeriodRow",
    "ReserveReport",
    "ReserveRow",
    "ReserveUpdate",
    "Update",
]

UNATTESTED = bytes(32)  # the report hash of a reserve no signed report backs


class Update(Protocol):
    """What every update carries (prover.messages' update types fit)."""

    @property
    def seq(self) -> int: ...
    @property
    def asset(self) -> str: ...
    @property
    def amount(self) -> int: ...


class BalanceUpdate(Update, Protocol):
    """Sets ``user``'s balance of ``asset`` to ``amount`` (absolute, not a delta)."""

    @property
    def user(self) -> str: ...


class ReserveUpdate(Update, Protocol):
    """A reserve source's report of ``amount`` of ``asset`` held at ``as_of_ms``."""

    @property
    def as_of_ms(self) -> int: ...


class AttestedReserveUpdate(ReserveUpdate, Protocol):
    """A reserve update backed by a signed report (docs/PROTOCOL.md §13):
    ``note`` is the signed note, ``report_hash`` its SHA-256, ``key_id`` the
    key that signed it; the caller has checked the signature."""

    @property
    def key_id(self) -> int: ...
    @property
    def report_hash(self) -> bytes: ...
    @property
    def note(self) -> bytes: ...


class ReserveReport(Protocol):
    """One reserve report of an epoch's snapshot (``ReserveRow`` fits)."""

    @property
    def asset(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def as_of_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a batch did: the updates applied (a suffix of the batch, in order),
    the replays ignored (the prefix at or below the mark), and the new mark."""

    applied: tuple[object, ...]
    duplicates: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class AssetRow:
    id: str
    decimals: int


@dataclass(frozen=True, slots=True)
class ReserveRow:
    """A reserve source's report of an asset; from ``Store.reserves`` with the
    signed report's key id and hash (``UNATTESTED`` and 0: none)."""

    asset: str
    source: str
    amount: int
    as_of_ms: int
    key_id: int = 0
    report_hash: bytes = UNATTESTED


@dataclass(frozen=True, slots=True)
class EpochRow:
    """An epoch: the record stored, the signed checkpoint and time, and the
    hash of its log leaf ``number`` (``SHA-256(0x00 || leaf)``, the leaf the
    appender named: the record's header)."""

    number: int
    record: bytes
    checkpoint: bytes
    created_ms: int
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class PeriodRow:
    """A salt period (numbered from 1)."""

    number: int
    started_ms: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A signing key; ``active_to_ms`` is None while it is the active one."""

    key_id: str
    name: str
    public_key: bytes
    active_from_ms: int
    active_to_ms: int | None
