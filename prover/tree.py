"""One asset's Merkle sum tree, stored level by level in numpy arrays. Pure.

Hashing follows docs/PROTOCOL.md §2 through the layouts of verifier/hashing.py.
Level ``l`` (0 = leaves) holds ``2**(h-l)`` nodes as three arrays: hashes
``(n, 32) uint8`` and the 128-bit sums split into ``hi`` and ``lo`` uint64
halves. No Python object exists per node: a level's node messages are
assembled in one ``(n, 97)`` buffer by column slicing and hashed in one tight
loop, so the cost stays close to the SHA-256 calls themselves.

Invariants: every node's hash and sum are those of its children (or of its
leaf); ``hi`` is 0 at level 0; sums never exceed ``subtree_cap(level) < 2**96``.
"""

from __future__ import annotations

from hashlib import sha256

import numpy as np
import numpy.typing as npt

from prover.errors import TreeError
from verifier.hashing import (
    DIGEST_SIZE,
    MAX_HEIGHT,
    NODE_MESSAGE_SIZE,
    TAG_LEAF,
    TAG_NODE,
    TAG_PADDING,
    asset_prefix,
)

__all__ = ["SumTree"]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
HASH_CHUNK = 4096  # rows per chunk: ~400 KB of node messages, cache-sized


def _hash_rows(buf: U8) -> U8:
    """SHA-256 of each row of ``buf``, as an ``(n, 32)`` array.

    Rows become bytes objects and digests are joined one chunk at a time, so the
    working set stays in cache; this runs at about the speed of bare
    ``sha256(m).digest()`` calls over ready-made messages.
    """
    n, width = buf.shape
    rows = buf.view(f"V{width}").ravel()
    out = bytearray()
    for start in range(0, n, HASH_CHUNK):
        out += b"".join([sha256(m).digest() for m in rows[start : start + HASH_CHUNK].tolist()])
    return np.frombuffer(out, np.uint8).reshape(n, DIGEST_SIZE)  # writable: a bytearray


def _put_sums(columns: U8, hi: U64, lo: U64) -> None:
    """Write 16-byte big-endian sums into a ``(n, 16)`` column block of a message buffer."""
    view = columns.view(">u8")
    view[:, 0] = hi
    view[:, 1] = lo


class SumTree:
    """A Merkle sum tree of fixed height over ``2**height`` slots (see module docstring)."""

    def __init__(self, asset: str, height: int, padding_key: bytes) -> None:
        """An all-padding tree; use ``build`` to fill it."""
        if not 0 <= height <= MAX_HEIGHT:
            raise TreeError(f"height {height} is outside 0..{MAX_HEIGHT}")
        if len(padding_key) != DIGEST_SIZE:
            raise TreeError(f"padding key must be {DIGEST_SIZE} bytes")
        self.asset = asset
        self.height = height
        self._leaf_prefix = np.frombuffer(asset_prefix(TAG_LEAF, asset), np.uint8)
        self._pad_prefix = np.frombuffer(asset_prefix(TAG_PADDING, asset) + padding_key, np.uint8)
        self._hashes: list[U8] = []
        self._hi: list[U64] = []
        self._lo: list[U64] = []
        for level in range(height + 1):
            n = 1 << (height - level)
            self._hashes.append(np.zeros((n, DIGEST_SIZE), np.uint8))
            self._hi.append(np.zeros(n, np.uint64))
            self._lo.append(np.zeros(n, np.uint64))

    # Construction and updates

    @classmethod
    def build(
        cls,
        asset: str,
        height: int,
        padding_key: bytes,
        slots: npt.ArrayLike,
        commitments: npt.ArrayLike,
        amounts: npt.ArrayLike,
    ) -> SumTree:
        """A tree with user leaves at ``slots`` and padding everywhere else."""
        tree = cls(asset, height, padding_key)
        slots_a, commitments_a, amounts_a = tree._check_sets(slots, commitments, amounts)
        occupied = np.zeros(tree.capacity, bool)
        occupied[slots_a] = True
        tree._write_leaves(slots_a, commitments_a, amounts_a)
        tree._write_padding(np.flatnonzero(~occupied))
        for level in range(1, height + 1):
            tree._rehash(level, None)
        return tree

    def apply(
        self,
        set_slots: npt.ArrayLike,
        set_commitments: npt.ArrayLike,
        set_amounts: npt.ArrayLike,
        clear_slots: npt.ArrayLike | None = None,
    ) -> int:
        """Set user leaves and clear slots back to padding, in one batch; each
        dirty node is rehashed once. Returns the number of nodes rehashed.

        Raises:
            TreeError: on a slot out of range or named twice, a bad commitment
                shape or an amount outside 0..2**64-1. Nothing is changed then.
        """
        slots, commitments, amounts = self._check_sets(set_slots, set_commitments, set_amounts)
        clears = self._check_slots(np.zeros(0, np.int64) if clear_slots is None else clear_slots)
        dirty = np.concatenate([slots, clears])
        if len(np.unique(dirty)) != len(dirty):
            raise TreeError("a slot is both set and cleared in one batch")
        self._write_leaves(slots, commitments, amounts)
        self._write_padding(clears)
        rehashed = len(dirty)
        dirty = np.unique(dirty)
        for level in range(1, self.height + 1):
            dirty = np.unique(dirty >> 1)
            self._rehash(level, dirty)
            rehashed += len(dirty)
        return rehashed

    def _check_slots(self, slots: npt.ArrayLike) -> I64:
        array = np.asarray(slots)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise TreeError("slots must be a one-dimensional integer array")
        array = array.astype(np.int64)
        if array.size and (array.min() < 0 or array.max() >= self.capacity):
            raise TreeError(f"slot outside 0..{self.capacity - 1} (tree of height {self.height})")
        if len(array) > self.capacity >> 4:  # large batch: a mask is cheaper than sorting
            seen = np.zeros(self.capacity, bool)
            seen[array] = True
            duplicates = int(seen.sum()) != len(array)
        else:
            duplicates = len(np.unique(array)) != len(array)
        if duplicates:
            raise TreeError("a slot appears twice in one batch")
        return array

    def _check_sets(
        self, slots: npt.ArrayLike, commitments: npt.ArrayLike, amounts: npt.ArrayLike
    ) -> tuple[I64, U8, U64]:
        slots_a = self._check_slots(slots)
        commitments_a = np.asarray(commitments, np.uint8)
        if commitments_a.shape != (len(slots_a), DIGEST_SIZE):
            raise TreeError(f"commitments must have shape ({len(slots_a)}, {DIGEST_SIZE})")
        raw = np.asarray(amounts)
        if raw.shape != slots_a.shape:
            raise TreeError("need one amount per slot")
        if raw.size and (raw.dtype.kind not in "iu" or (raw.dtype.kind == "i" and raw.min() < 0)):
            raise TreeError("amounts must be integers in 0..2**64-1")
        return slots_a, commitments_a, raw.astype(np.uint64)

    def _write_leaves(self, slots: I64, commitments: U8, amounts: U64) -> None:
        if not len(slots):
            return
        p = len(self._leaf_prefix)
        buf = np.empty((len(slots), p + DIGEST_SIZE + 16), np.uint8)
        buf[:, :p] = self._leaf_prefix
        buf[:, p : p + DIGEST_SIZE] = commitments
        _put_sums(buf[:, p + DIGEST_SIZE :], np.zeros(len(slots), np.uint64), amounts)
        self._hashes[0][slots] = _hash_rows(buf)
        self._lo[0][slots] = amounts

    def _write_padding(self, slots: I64) -> None:
        if not len(slots):
            return
        p = len(self._pad_prefix)
        buf = np.empty((len(slots), p + 8), np.uint8)
        buf[:, :p] = self._pad_prefix
        buf[:, p:].view(">u8")[:, 0] = slots
        self._hashes[0][slots] = _hash_rows(buf)
        self._lo[0][slots] = 0

    def _rehash(self, level: int, nodes: I64 | None) -> None:
        """Recompute ``nodes`` of ``level`` (sorted indices, or None for all)
        from their children, one cache-sized chunk at a time."""
        count = len(self._lo[level]) if nodes is None else len(nodes)
        buf = np.empty((min(count, HASH_CHUNK), NODE_MESSAGE_SIZE), np.uint8)
        buf[:, 0] = TAG_NODE
        for start in range(0, count, HASH_CHUNK):
            stop = min(start + HASH_CHUNK, count)
            if nodes is None:  # a whole level: contiguous ranges, no gathering
                where: I64 | slice = slice(start, stop)
                left: I64 | slice = slice(2 * start, 2 * stop, 2)
                right: I64 | slice = slice(2 * start + 1, 2 * stop, 2)
            else:
                where = nodes[start:stop]
                left, right = where * 2, where * 2 + 1
            self._combine(level, where, left, right, buf[: stop - start])

    def _combine(
        self, level: int, where: I64 | slice, left: I64 | slice, right: I64 | slice, buf: U8
    ) -> None:
        below_h, below_hi, below_lo = (
            self._hashes[level - 1],
            self._hi[level - 1],
            self._lo[level - 1],
        )
        l_hi, l_lo, r_hi, r_lo = below_hi[left], below_lo[left], below_hi[right], below_lo[right]
        buf[:, 1:33] = below_h[left]
        _put_sums(buf[:, 33:49], l_hi, l_lo)
        buf[:, 49:81] = below_h[right]
        _put_sums(buf[:, 81:97], r_hi, r_lo)
        self._hashes[level][where] = _hash_rows(buf)
        lo = l_lo + r_lo  # wraps modulo 2**64: the carry goes to hi
        self._lo[level][where] = lo
        self._hi[level][where] = l_hi + r_hi + (lo < l_lo)

    # Reading

    @property
    def capacity(self) -> int:
        return 1 << self.height

    @property
    def root(self) -> bytes:
        return bytes(self._hashes[self.height][0])

    @property
    def total(self) -> int:
        return self._sum(self.height, 0)

    def _sum(self, level: int, index: int) -> int:
        return (int(self._hi[level][index]) << 64) | int(self._lo[level][index])

    def leaf(self, slot: int) -> tuple[bytes, int]:
        """Hash and amount of the leaf at ``slot`` (amount 0 for padding)."""
        if not 0 <= slot < self.capacity:
            raise TreeError(f"slot {slot} outside 0..{self.capacity - 1}")
        return self._hashes[0][slot].tobytes(), int(self._lo[0][slot])

    def amounts(self) -> U64:
        """A read-only view of every slot's amount (0 for padding)."""
        view = self._lo[0].view()
        view.flags.writeable = False
        return view

    def path(self, slot: int) -> list[tuple[bytes, int]]:
        """The inclusion path of ``slot``: (sibling hash, sibling sum) from the leaves up."""
        if not 0 <= slot < self.capacity:
            raise TreeError(f"slot {slot} outside 0..{self.capacity - 1}")
        steps = []
        for level in range(self.height):
            sibling = (slot >> level) ^ 1
            steps.append((self._hashes[level][sibling].tobytes(), self._sum(level, sibling)))
        return steps
