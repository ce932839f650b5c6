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

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Final

from verifier.hashing import DIGEST_SIZE

__all__ = ["MAX_BITS", "SINGLE", "Router"]

MAX_BITS: Final = 8  # at most 256 shards
BLOCK: Final = 64  # SHA-256's block size


@dataclass(frozen=True)
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
        """The part of every tree that holds ``user`` (a valid user id: the
        ingest checked it)."""
        if not self.bits:
            return 0
        inner, outer = self._pads
        mac, message = outer.copy(), inner.copy()
        message.update(user.encode())
        mac.update(message.digest())
        first: int = mac.digest()[0]
        return first >> (8 - self.bits)

    @functools.cached_property
    def _pads(self) -> tuple[Any, Any]:
        """HMAC-SHA256 (RFC 2104) keyed and begun with "shard": the inner
        and outer hashes, copied for each user (twice as fast as ``hmac``)."""
        key = self.key.ljust(BLOCK, b"\0")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + b"shard")
        return inner, hashlib.sha256(bytes(b ^ 0x5C for b in key))


SINGLE: Final = Router(bytes(DIGEST_SIZE))  # one part: the single process
