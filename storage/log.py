"""The log of epochs on pymerkle: the only module that imports it.

pymerkle's ``BaseMerkleTree`` keeps storage behind four methods; ``EpochLog``
implements them over the ``epochs`` table through the caller's SQLAlchemy
connection, so a leaf is written in the same transaction as its epoch. Pinned
options: SHA-256, security prefixes on (leaf ``0x00``, node ``0x01``, exactly
RFC 9162 §2.1), optimisations and subroot cache on.

Conversions done here and nowhere else:
- pymerkle counts leaves from 1; this module, like RFC 9162, from 0;
- pymerkle's consistency proofs are not in RFC 9162 form, so proofs are built
  here from the RFC's PATH and SUBPROOF recursions (§2.1.3.1, §2.1.4.1), each
  hash being a subtree root that pymerkle computes and caches.

A cached subroot covers a full power-of-two range of leaves, which never
changes once written; ``forget_after`` drops those touching leaves of a
rolled-back transaction. Subroots wider than the cache threshold are made
from their two cached halves, so after one pass over the leaves (at the first
root after start-up) every root and proof costs O(log n) hashes and at most a
few reads of fewer than 64 leaves.
"""

from __future__ import annotations

from typing import Any

from pymerkle import BaseMerkleTree
from sqlalchemy import Connection, func, insert, select

from storage.errors import NotFoundError
from storage.schema import Epoch

__all__ = ["EpochLog"]


class EpochLog(BaseMerkleTree):  # type: ignore[misc]  # pymerkle ships no type hints
    """RFC 9162 view of the ``epochs`` table."""

    def __init__(self) -> None:
        super().__init__("sha256", disable_security=False, threshold=64)
        self.conn: Connection | None = None
        self.created_ms = 0  # stamped on the next leaf stored

    # pymerkle's storage interface (indices from 1)

    def _encode_entry(self, data: bytes) -> bytes:
        return data

    def _store_leaf(self, data: Any, digest: bytes) -> int:
        """Insert the epoch row for ``data`` (its checkpoint is filled in once signed)."""
        assert self.conn is not None
        number = self._get_size()
        self.conn.execute(
            insert(Epoch).values(
                number=number,
                record=data,
                leaf_hash=digest,
                checkpoint="",
                created_ms=self.created_ms,
            )
        )
        return number + 1

    def _get_leaf(self, index: int) -> bytes:
        assert self.conn is not None
        digest = self.conn.scalar(select(Epoch.leaf_hash).where(Epoch.number == index - 1))
        if digest is None:
            raise NotFoundError(f"no log leaf {index - 1}")
        return bytes(digest)

    def _get_leaves(self, offset: int, width: int) -> list[bytes]:
        assert self.conn is not None
        rows = self.conn.scalars(
            select(Epoch.leaf_hash)
            .where(Epoch.number >= offset, Epoch.number < offset + width)
            .order_by(Epoch.number)
        ).all()
        return [bytes(r) for r in rows]

    def _get_size(self) -> int:
        assert self.conn is not None
        last = self.conn.scalar(select(func.max(Epoch.number)))  # epochs are contiguous from 0
        return 0 if last is None else int(last) + 1

    def _get_subroot_uncached(self, offset: int, width: int) -> bytes:
        """Root of an aligned power-of-two range: from its two (cached) halves
        above the cache threshold, so a new large subtree costs one hash."""
        if width <= self.threshold:
            return bytes(super()._get_subroot_uncached(offset, width))
        half = width >> 1
        return bytes(
            self.hash_pair(self._get_subroot(offset, half), self._get_subroot(offset + half, half))
        )

    # RFC 9162 interface (indices from 0)

    def append(self, record: bytes, created_ms: int) -> int:
        """Append ``record`` as the next leaf; return its index (from 0)."""
        self.created_ms = created_ms
        return int(self.append_entry(record)) - 1

    def root(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves."""
        return bytes(self._get_root(0, size))

    def _range_root(self, start: int, end: int) -> bytes:
        return bytes(self._get_root(start, end))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]), RFC 9162 §2.1.3.1."""
        if not 0 <= index < size:
            raise NotFoundError(f"no leaf {index} in a log of {size}")
        proof: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self._range_root(start + k, end))
                end = start + k
            else:
                proof.append(self._range_root(start, start + k))
                start += k
        proof.reverse()  # the recursion lists siblings from the leaf up
        return proof

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]), RFC 9162 §2.1.4.1."""
        if not 0 <= old_size <= new_size:
            raise NotFoundError(f"no consistency proof from {old_size} to {new_size}")
        if old_size in (0, new_size):
            return []
        proof: list[bytes] = []
        start, m, n, complete = 0, old_size, new_size, True
        while m != n:
            k = _split(n)
            if m <= k:
                proof.append(self._range_root(start + k, start + n))
                n = k
            else:
                proof.append(self._range_root(start, start + k))
                start, m, n, complete = start + k, m - k, n - k, False
        if not complete:
            proof.append(self._range_root(start, start + n))
        proof.reverse()
        return proof

    def forget_after(self, size: int) -> None:
        """Drop cached subroots that cover any leaf at index >= ``size``."""
        for key in [k for k in self.cache if k[0] + k[1] > size]:
            del self.cache[key]


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)
