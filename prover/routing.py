"""Users to shards: which part of every tree holds a user (docs/SCALING.md).

A sharded prover splits each asset's tree into ``2**bits`` parts by the top
``bits`` bits of the slot; shard ``i`` holds part ``i`` of every tree. A user
belongs to the shard ``top bits of HMAC-SHA256(key, "shard" || user id)``
for good: the routing key is the deployment's, not a salt period's, so a
new salt period moves no user to another shard. Front-ends route updates by
the user id alone, with no state and no lookup. Pure.

Invariant: with ``bits = 0`` every user is in part 0, and nothing is hashed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from verifier.hashing import DIGEST_SIZE, check_user_id

__all__ = ["MAX_BITS", "SINGLE", "Router"]

MAX_BITS: Final = 8  # at most 256 shards


@dataclass(frozen=True, slots=True)
class Router:
    """The routing key and the number of bits of the part index."""

    key: bytes
    bits: int = 0

    def __post_init__(self) -> None:
        if len(self.key) != DIGEST_SIZE:
            raise ValueError(f"a routing key is {DIGEST_SIZE} bytes")
        if not 0 <= self.bits <= MAX_BITS:
            raise ValueError(f"shard bits must be 0..{MAX_BITS}, got {self.bits}")

    @property
    def parts(self) -> int:
        return 1 << self.bits

    def shard(self, user: str) -> int:
        """The part of every tree that holds ``user``."""
        if not self.bits:
            return 0
        mac = hmac.new(self.key, b"shard" + check_user_id(user), hashlib.sha256).digest()
        return mac[0] >> (8 - self.bits)


SINGLE: Final = Router(bytes(DIGEST_SIZE))  # one part: the single process
