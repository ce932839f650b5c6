"""Salt periods: per-user salts, padding keys and slot placement (docs/PROTOCOL.md §2.5).

A period has one 32-byte random secret ``S``; everything else is derived from it
with HMAC-SHA256, so a period can be rebuilt exactly from ``S``:

    salt(user)        = HMAC(S, "salt" || user id)
    padding_key(asset) = HMAC(S, "padding" || asset id)
    slot order(asset)  = a permutation of 0 .. 2**h - 1 seeded by HMAC(S, "slots" || asset || u8 h)

A tree split into ``2**k`` parts (docs/SCALING.md) hands out each part's
slots in an order of its own: part ``i`` is the slots whose top ``k`` bits
are ``i``, permuted with the seed HMAC(S, "slots" || asset || u8 h || u8 k ||
u16 i). With ``k = 0`` there is one part and the seed above.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from verifier.hashing import SALT_SIZE, check_asset_id, check_user_id, commitment

__all__ = ["SaltPeriod", "SlotAllocator"]


@dataclass(frozen=True, slots=True)
class SaltPeriod:
    """One salt period: its number, start time and secret."""

    number: int
    started_ms: int
    secret: bytes

    @classmethod
    def fresh(cls, number: int, started_ms: int) -> SaltPeriod:
        return cls(number, started_ms, secrets.token_bytes(SALT_SIZE))

    def _derive(self, label: bytes, data: bytes) -> bytes:
        return hmac.new(self.secret, label + data, hashlib.sha256).digest()

    def salt(self, user: str) -> bytes:
        return self._derive(b"salt", check_user_id(user))

    def commitment(self, user: str) -> bytes:
        return commitment(user, self.salt(user))

    def padding_key(self, asset: str) -> bytes:
        return self._derive(b"padding", check_asset_id(asset))

    def slot_order(
        self, asset: str, height: int, bits: int = 0, part: int = 0
    ) -> npt.NDArray[np.int64]:
        """The order in which this period hands out the slots of ``asset``'s
        tree of ``height``, or of part ``part`` of its ``2**bits`` parts."""
        if not 0 <= bits <= height or not 0 <= part < 1 << bits:
            raise ValueError(f"no part {part} of 2**{bits} in a tree of height {height}")
        data = check_asset_id(asset) + bytes((height,))
        if bits:
            data += bytes((bits,)) + part.to_bytes(2, "big")
        seed = self._derive(b"slots", data)
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
        return rng.permutation(1 << (height - bits)).astype(np.int64) + (part << (height - bits))


class SlotAllocator:
    """Hands out the slots of one tree in the period's pseudo-random order.

    A released slot is not handed out again within the period (its neighbours
    would otherwise learn that a holder left and another came). ``take`` returns
    None once the order is exhausted: the caller then rebuilds one level higher.
    """

    def __init__(self, order: npt.NDArray[np.int64]) -> None:
        self._order = order
        self._next = 0

    @property
    def order(self) -> npt.NDArray[np.int64]:
        """Every slot, in the order they are handed out."""
        return self._order

    @property
    def remaining(self) -> int:
        return len(self._order) - self._next

    def take(self, count: int) -> npt.NDArray[np.int64] | None:
        """The next ``count`` slots, or None if fewer remain."""
        if count > self.remaining:
            return None
        slots = self._order[self._next : self._next + count]
        self._next += count
        return slots
