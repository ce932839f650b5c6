"""The log of epochs on pymerkle: the only module that imports it.

pymerkle's ``BaseMerkleTree`` keeps storage behind five methods; ``EpochLog``
implements them over the ``epochs`` table through a SQLAlchemy connection the
store binds for one transaction (``bound``), so a leaf is the very row of its
epoch, written in the same transaction: the log and the epochs cannot diverge.

The log knows nothing of what it logs: each epoch's row holds the bytes the
caller stored (its record) and the hash of the leaf the caller names for it
(the record's header, PROTOCOL §5); the leaf itself is not kept, its hash is
all the log needs.

Pinned options: SHA-256, security prefixes on (leaf hash ``SHA-256(0x00 ||
leaf)``, node hash ``SHA-256(0x01 || left || right)``, the empty tree
``SHA-256()``: exactly RFC 9162 §2.1.1), optimised paths and the subroot
cache on. The leaf hash is stored in the row, so nothing re-hashes leaves.

pymerkle counts leaves from 1; this module's interface, like RFC 9162, from
0. Proofs are RFC 9162's PATH and PROOF as verifier/rfc9162.py generates them
(``inclusion_path``, ``consistency_path``), each hash being the root of a leaf
range that pymerkle computes from its cached subroots.

A cached subroot covers a full, aligned power-of-two range of leaves, which
never changes once committed; ``forget_after`` drops those touching leaves of
a rolled-back transaction. Subroots wider than the cache threshold are made
from their two cached halves, so after one pass over the leaves (the first
root after start-up) every root and proof costs O(log n) hashes plus at most
a few reads of fewer than ``threshold`` stored leaf hashes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymerkle import BaseMerkleTree
from sqlalchemy import Connection

from storage.errors import NotFoundError
from storage.schema import Epoch
from verifier import rfc9162

__all__ = ["CACHE_BYTES", "CACHE_THRESHOLD", "EpochLog"]

CACHE_THRESHOLD = 64  # subroots of at least this many leaves are memoised
# About two cached subroots per 64 leaves, ~300 bytes each: ~10 bytes an epoch
# (a year of 1 s epochs: ~300 MB). Past the cap, the least recently used go;
# they are recomputed from their halves (or 64 stored leaf hashes) on demand.
CACHE_BYTES = 256 * 1024**2

_T = Epoch.__tablename__
_QMARK = {
    "size": f"SELECT max(number) FROM {_T}",
    "leaf": f"SELECT leaf_hash FROM {_T} WHERE number = ?",
    "leaves": f"SELECT leaf_hash FROM {_T} WHERE number >= ? AND number < ? ORDER BY number",
    "insert": f"INSERT INTO {_T} (number, record, leaf_hash, checkpoint, created_ms)"
    " VALUES (?, ?, ?, ?, ?)",
    "checkpoint": f"UPDATE {_T} SET checkpoint = ? WHERE number = ?",
}
_SQL = {  # by the driver's parameter style: sqlite3 (qmark), psycopg (format)
    "qmark": _QMARK,
    "format": {name: sql.replace("?", "%s") for name, sql in _QMARK.items()},
}


class EpochLog(BaseMerkleTree):  # type: ignore[misc]  # pymerkle ships no type hints
    """RFC 9162 view of the ``epochs`` table (indices from 0 in every public method)."""

    def __init__(self) -> None:
        super().__init__(
            "sha256",
            threshold=CACHE_THRESHOLD,
            capacity=CACHE_BYTES,
            disable_security=False,
            disable_optimizations=False,
            disable_cache=False,
        )
        self._created_ms = 0  # stamped on the next leaf stored
        self.conn: Connection | None = None
        self._cursor: Any = None  # the driver's cursor on conn, for the hot queries
        self._sql = _SQL["qmark"]

    @contextmanager
    def bound(self, conn: Connection) -> Iterator[EpochLog]:
        """Use ``conn`` (and its transaction) for storage; one thread at a time."""
        with self.lock:
            outer = self.conn, self._cursor, self._sql
            self.conn = conn
            # The log's few statements are fixed; run on the driver's cursor they
            # cost a few microseconds instead of SQLAlchemy's ~100 per statement,
            # which is most of an epoch append and of a proof.
            self._cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            self._sql = _SQL["qmark" if conn.dialect.paramstyle == "qmark" else "format"]
            try:
                yield self
            finally:
                self._cursor.close()
                self.conn, self._cursor, self._sql = outer

    def _query(self, name: str, *params: object) -> list[Any]:
        if self._cursor is None:
            raise RuntimeError("EpochLog used outside EpochLog.bound()")
        self._cursor.execute(self._sql[name], params)
        return list(self._cursor.fetchall()) if self._cursor.description else []

    # pymerkle's storage interface (indices from 1, offsets from 0)

    def _encode_entry(self, data: tuple[bytes, bytes]) -> bytes:
        return data[0]  # (leaf, record): pymerkle hashes the leaf

    def _store_leaf(self, data: tuple[bytes, bytes], digest: bytes) -> int:
        """Insert the epoch row of ``data`` = (leaf, record): the record and the
        leaf's hash (leaf and epoch are one row); its checkpoint is filled in by
        ``set_checkpoint`` in the same transaction."""
        number = self._get_size()
        self._query("insert", number, data[1], digest, "", self._created_ms)
        return number + 1

    def _get_leaf(self, index: int) -> bytes:
        rows = self._query("leaf", index - 1)
        if not rows:
            raise NotFoundError(f"no log leaf {index - 1}")
        return bytes(rows[0][0])

    def _get_leaves(self, offset: int, width: int) -> list[bytes]:
        leaves = [bytes(r[0]) for r in self._query("leaves", offset, offset + width)]
        if len(leaves) != width:  # never cache a root over missing leaves
            raise NotFoundError(f"log leaves {offset}..{offset + width - 1} are not all stored")
        return leaves

    def _get_size(self) -> int:
        last = self._query("size")[0][0]
        return 0 if last is None else int(last) + 1  # epochs are contiguous from 0

    def _get_subroot_uncached(self, offset: int, width: int) -> bytes:
        """Root of an aligned power-of-two range: above the cache threshold, from
        its two (cached) halves, so a new large subtree costs one hash."""
        if width <= self.threshold:
            return bytes(super()._get_subroot_uncached(offset, width))
        half = width >> 1
        left = self._get_subroot(offset, half)
        right = self._get_subroot(offset + half, half)
        return bytes(self.hash_pair(left, right))

    # RFC 9162 interface (indices from 0)

    def size(self) -> int:
        """The number of leaves (committed, or written by the bound transaction)."""
        return int(self.get_size())

    def append(self, leaf: bytes, record: bytes, created_ms: int) -> int:
        """Append ``leaf`` as the next leaf, in a new epoch row holding
        ``record`` and an empty checkpoint; return its index (from 0)."""
        self._created_ms = created_ms
        return int(self.append_entry((leaf, record))) - 1

    def set_checkpoint(self, number: int, checkpoint: str) -> None:
        """Fill in the signed checkpoint of the epoch row ``number``."""
        self._query("checkpoint", checkpoint, number)

    def leaf_hash(self, leaf: bytes) -> bytes:
        """RFC 9162 leaf hash, by pymerkle's hasher: SHA-256(0x00 || leaf)."""
        return bytes(self.hash_buff(leaf))

    def node_hash(self, left: bytes, right: bytes) -> bytes:
        """RFC 9162 node hash, by pymerkle's hasher: SHA-256(0x01 || left || right)."""
        return bytes(self.hash_pair(left, right))

    def root(self, size: int) -> bytes:
        """MTH(D[0:size]) (the empty tree's root is SHA-256 of nothing)."""
        return self._range_root(0, size)

    def _range_root(self, start: int, end: int) -> bytes:
        return bytes(self._get_root(start, end))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1."""
        if not 0 <= index < size:
            raise NotFoundError(f"no leaf {index} in a log of {size}")
        if size > self.size():
            raise NotFoundError(f"no log of size {size}")
        return rfc9162.inclusion_path(index, size, self._range_root)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1; empty when the
        sizes are equal or the old tree is empty (nothing to prove)."""
        if not 0 <= old_size <= new_size:
            raise NotFoundError(f"no consistency proof from {old_size} to {new_size}")
        return rfc9162.consistency_path(old_size, new_size, self._range_root)

    def forget_after(self, size: int) -> None:
        """Drop cached subroots that cover any leaf at index >= ``size``."""
        with self.lock:
            for key in [k for k in self.cache if k[0] + k[1] > size]:
                del self.cache[key]

    def cache_entries(self) -> int:
        """How many subroots are memoised (for tests and metrics)."""
        return len(self.cache)
