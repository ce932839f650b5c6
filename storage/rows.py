"""What the store takes and returns: update protocols and frozen result rows.

Updates are read through protocols, so the prover's own message types (and a
test's dataclasses) are accepted as they are; everything returned is a frozen
dataclass of plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ApplyResult",
    "AssetRow",
    "BalanceUpdate",
    "EpochRow",
    "KeyRow",
    "PeriodRow",
    "ReserveReport",
    "ReserveRow",
    "ReserveUpdate",
    "Update",
]


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
    asset: str
    source: str
    amount: int
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class EpochRow:
    """An epoch: its record (log leaf ``number``), signed checkpoint and time."""

    number: int
    record: bytes
    checkpoint: bytes
    created_ms: int


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
