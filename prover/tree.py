"""One asset's Merkle sum tree, stored level by level in numpy arrays. Pure.

Hashing follows docs/PROTOCOL.md §2 in the layouts of verifier/hashing.py,
with the digest function and tags of the tree's ``SumTreeHasher`` (the
current record version's unless given).

Storage: a node's *record* is its 48 bytes ``hash[32] || sum u128 big-endian``,
so the message of an internal node is ``node tag || left record || right
record`` (``NODE_MESSAGE_SIZE`` = 1 + 2 * 48 bytes).
So level ``l`` (0 = leaves, ``h`` = root) is one C-contiguous ``(m, 97)``
uint8 array of sibling pairs: row ``r`` is ``node tag || record(2r) ||
record(2r+1)``, ``m = 2**(h-l-1)`` (one row, right half unused, at level
``h``). Row ``r`` of level ``l`` *is* the message of node ``r`` of level
``l+1``: rebuilding a level hashes rows in place, with no message assembly and
no Python object per node (about 48.5 bytes per node, 97 per leaf slot).

Hashing: with SHA-256 (every record version so far), many messages per call
in C (``prover._sumhash``, when ``speedups`` loads it); otherwise one
``hashlib``-like call per message. Both give the same bytes (tests/prover/test_sumhash.py).

Invariants: column 0 of every row is the hasher's node tag; every leaf record
is the hasher's leaf or padding hash of its slot with the amount (0 for
padding); every other record is the node hash of its two children with the
sum of theirs; a sum at level ``l`` is at most ``subtree_cap(l) < 2**96``, so
128 bits never wrap. tests/prover/test_tree.py checks every byte against
verifier.hashing.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from prover import speedups
from prover.errors import TreeError
from prover.tree_inputs import (
    EMPTY_SLOTS,
    I64,
    U8,
    U64,
    check_height,
    check_sets,
    check_slots,
    duplicate_message,
)
from verifier.errors import FormatError
from verifier.hashing import (
    DIGEST_SIZE,
    HASHER,
    NODE_MESSAGE_SIZE,
    SUM_SIZE,
    SumTreeHasher,
)

_C_HASHING = speedups.load("_sumhash")

__all__ = ["SumTree", "TreeError", "Undo", "c_hashing"]

Records = npt.NDArray[np.void]  # one "V48" element per node
_State = tuple[str, int, SumTreeHasher, int, U8, U8, list[U8], tuple[int, I64] | None]

RECORD: Final = DIGEST_SIZE + SUM_SIZE  # 48: hash || sum, one half of a row
SLOT_SIZE: Final = 8  # the padding message ends with the slot as u64
HASH_CHUNK = 2048  # rows hashed per step: keeps messages and digests in cache
# Up to this many nodes of a level are rehashed one by one: numpy's vector
# steps cost tens of microseconds per level whatever its width, which a
# tree changed in one or two leaves (an asset of many, an epoch of few
# updates) pays at every level.
SCALAR_NODES = 8

_EMPTY_RECORDS: Final[Records] = np.zeros(0, f"V{RECORD}")


@dataclass(frozen=True, slots=True)
class Undo:
    """What one ``SumTree.apply`` overwrote: for each level ``0 .. height``, the
    indices of the nodes it changed (sorted, distinct) and their records before.
    Kept to serve proofs of earlier epochs without copying the tree."""

    levels: tuple[tuple[I64, Records], ...]

    @property
    def nbytes(self) -> int:
        return sum(nodes.nbytes + old.nbytes for nodes, old in self.levels)


def c_hashing(hasher: SumTreeHasher) -> ModuleType | None:
    """``prover._sumhash`` if it hashes for ``hasher``: loaded (``speedups``)
    and ``hasher``'s digest is SHA-256."""
    return _C_HASHING if hasher.digest is hashlib.sha256 else None


def _add_sums(rows: U8) -> tuple[U64, U64]:
    """``(hi, lo)`` of left sum + right sum for node message rows ``(k, 97)``."""
    left = rows[:, 1 + DIGEST_SIZE : 1 + RECORD].view(">u8")
    right = rows[:, 1 + RECORD + DIGEST_SIZE :].view(">u8")
    l_lo = left[:, 1].astype(np.uint64)
    lo = l_lo + right[:, 1]  # modulo 2**64: the carry goes to hi
    hi: U64 = left[:, 0] + right[:, 0] + (lo < l_lo)
    return hi, lo


def _distinct(nodes: I64) -> I64:
    """Sorted ``nodes`` without repeats."""
    keep = np.empty(len(nodes), bool)
    keep[:1] = True
    np.not_equal(nodes[1:], nodes[:-1], out=keep[1:])
    return nodes[keep]


def _union(a: I64, b: I64) -> I64:
    """The union of two sorted arrays of distinct nodes, sorted. A stable sort
    merges the two runs in linear time (timsort); ``np.union1d`` sorted from
    scratch, 20 times as long for 35,000 nodes."""
    both = np.concatenate([a, b])
    both.sort(kind="stable")
    return _distinct(both)


def _records(digests: U8, hi: U64 | int, lo: U64 | int) -> Records:
    """``k`` records (``V48``) from digests and 128-bit sums split in halves."""
    out = np.empty((len(digests), RECORD), np.uint8)
    out[:, :DIGEST_SIZE] = digests
    sums = out[:, DIGEST_SIZE:].view(">u8")
    sums[:, 0] = hi
    sums[:, 1] = lo
    return out.view(f"V{RECORD}").ravel()


class SumTree:
    """A Merkle sum tree over ``2**height`` slots of one asset (see the module docstring).

    Build with ``SumTree.build``; change with ``apply``; read ``root``, ``total``,
    ``leaf(slot)`` and ``path(slot)``. Growing capacity means building a new tree.
    """

    __slots__ = (
        "_asset",
        "_c",
        "_first_slot",
        "_hasher",
        "_height",
        "_leaf_prefix",
        "_nodes",
        "_pad_prefix",
        "_rows",
        "_stale",
    )

    _asset: str
    _c: ModuleType | None  # c_hashing(_hasher)
    _first_slot: int  # the slot of leaf 0 in the whole tree (a part's subtree: not 0)
    _hasher: SumTreeHasher
    _height: int
    _leaf_prefix: U8  # hasher.leaf_prefix(asset)
    _pad_prefix: U8  # hasher.padding_prefix(asset) || padding key
    _rows: list[U8]  # level l: (m, 97) uint8 sibling pairs, see the module docstring
    _nodes: list[Records]  # the same memory as (m, 2) V48 records: node i at [i >> 1, i & 1]
    _stale: tuple[int, I64] | None  # (level, nodes) whose ancestors a partial apply left

    @classmethod
    def build(
        cls,
        asset: str,
        height: int,
        padding_key: bytes,
        slots: npt.ArrayLike,
        commitments: npt.ArrayLike,
        amounts: npt.ArrayLike,
        *,
        hasher: SumTreeHasher = HASHER,
        first_slot: int = 0,
    ) -> SumTree:
        """A tree with user leaves ``(commitments[i], amounts[i])`` at ``slots[i]``
        and padding in every other slot, hashed by ``hasher``. The only way to
        make a tree.

        Args:
            asset: asset id (1-16 of ``A-Z 0-9 . _ -``).
            height: 0..32; the tree has ``2**height`` slots.
            padding_key: 32 secret bytes keying the padding leaves.
            slots: distinct integers in ``0 .. 2**height - 1``, in any order.
            commitments: uint8 array of shape ``(len(slots), 32)``.
            amounts: integers in ``0 .. 2**64 - 1``, one per slot.
            hasher: the hashing rules of the record version the tree is for.
            first_slot: for a subtree of a larger tree (a part of a sharded
                tree), the slot of its leaf 0 in that tree: padding leaves
                hash the slot they have there. A multiple of ``2**height``.

        Raises:
            TreeError: on a bad asset id, height or padding key, or bad leaves.
        """
        height = check_height(height)
        try:
            leaf_prefix = hasher.leaf_prefix(asset)
            pad_prefix = hasher.padding_prefix(asset)
        except FormatError as exc:
            raise TreeError(str(exc)) from exc
        if not isinstance(padding_key, bytes) or len(padding_key) != DIGEST_SIZE:
            raise TreeError(f"padding key must be {DIGEST_SIZE} bytes")
        if first_slot % (1 << height) or not 0 <= first_slot < 1 << 32:
            raise TreeError(f"a subtree of height {height} cannot start at slot {first_slot}")
        slot_a, commitment_a, amount_a = check_sets(height, slots, commitments, amounts)
        occupied = np.zeros(1 << height, bool)
        occupied[slot_a] = True
        if np.count_nonzero(occupied) != len(slot_a):
            raise TreeError(duplicate_message(slot_a, EMPTY_SLOTS, "among the leaves"))

        tree = cls.__new__(cls)  # no __init__: a tree exists only fully hashed
        tree._asset = asset
        tree._first_slot = first_slot
        tree._hasher = hasher
        tree._c = c_hashing(hasher)
        tree._height = height
        tree._leaf_prefix = np.frombuffer(leaf_prefix, np.uint8)
        tree._pad_prefix = np.frombuffer(pad_prefix + padding_key, np.uint8)
        tree._stale = None
        levels = []
        for level in range(height + 1):
            rows = np.zeros(
                (1 << (height - level - 1) if level < height else 1, NODE_MESSAGE_SIZE), np.uint8
            )
            rows[:, 0] = hasher.node_tag
            levels.append(rows)
        tree._attach(levels)
        tree._put_leaves(slot_a, commitment_a, amount_a)
        tree._put_padding(np.flatnonzero(~occupied))
        del occupied
        for level in range(height):
            tree._rehash(level, None)
        return tree

    def apply(
        self,
        set_slots: npt.ArrayLike,
        set_commitments: npt.ArrayLike,
        set_amounts: npt.ArrayLike,
        clear_slots: npt.ArrayLike | None = None,
        undo: list[Undo] | None = None,
        upto: int | None = None,
    ) -> int:
        """Apply one batch: set user leaves (insert or update) at ``set_slots`` and
        turn ``clear_slots`` back into padding. Each dirty node is rehashed once.
        With ``undo``, append to it what the batch overwrites (see ``Undo``).

        With ``upto``, rehash levels ``1 .. upto`` only (or up to the level a
        partial apply before stopped at, if higher): the nodes above stay as
        they were, root and total included, until an apply without ``upto``
        rehashes them once for every partial apply since. Batches that share
        upper nodes (as an epoch's batches do) hash them once, not per batch.

        Returns:
            The number of hashes computed (dirty leaves plus dirty internal nodes).

        Raises:
            TreeError: on a slot out of range or named twice (within or across the
                two sets), a bad commitment shape or an amount outside
                0..2**64-1. The tree is unchanged then.
        """
        h = self._height
        slots, commitments, amounts = check_sets(h, set_slots, set_commitments, set_amounts)
        clears = EMPTY_SLOTS if clear_slots is None else check_slots(h, clear_slots, "clear")
        dirty = np.sort(np.concatenate([slots, clears]))
        if np.any(dirty[1:] == dirty[:-1]):
            raise TreeError(duplicate_message(slots, clears, "in one batch"))
        stale_level, stale = self._stale or (-1, EMPTY_SLOTS)
        top = h if upto is None else min(h, max(upto, stale_level))
        levels = [dirty]  # the dirty nodes of every level, sorted and distinct
        for level in range(top):
            nodes = levels[-1] if level != stale_level else _union(levels[-1], stale)
            levels.append(_distinct(nodes >> 1))
        olds = None  # with undo: each level's dirty nodes before, each copied as it changes
        if undo is not None:
            olds = [self._nodes[0][dirty >> 1, dirty & 1].copy()]
            olds += [np.empty(len(nodes), f"V{RECORD}") for nodes in levels[1:]]
        self._put_leaves(slots, commitments, amounts)
        self._put_padding(clears)
        for level in range(top):
            if len(levels[level + 1]):
                self._rehash(level, levels[level + 1], None if olds is None else olds[level + 1])
        if undo is not None and olds is not None:
            kept = list(zip(levels, olds, strict=True))
            undo.append(Undo(tuple(kept + [(EMPTY_SLOTS, _EMPTY_RECORDS)] * (h - top))))
        if top == h:
            self._stale = None
        else:  # with the nodes a partial apply before left there, if any
            nodes = levels[top] if stale_level != top else _union(levels[top], stale)
            self._stale = (top, nodes)
        return sum(len(nodes) for nodes in levels)

    @property
    def stale(self) -> bool:
        """True while a partial apply's upper levels wait (``apply``'s ``upto``)."""
        return self._stale is not None

    def finish(self, undo: list[Undo] | None = None) -> int:
        """Rehash what partial applies left: ``apply`` of an empty batch."""
        none = np.zeros(0, np.uint64)
        return self.apply(EMPTY_SLOTS, np.zeros((0, DIGEST_SIZE), np.uint8), none, None, undo)

    # Storage

    def _attach(self, rows: list[U8]) -> None:
        """Take ``rows`` as the levels and make the record views over them."""
        self._rows = rows
        self._nodes = [
            np.ndarray((len(r), 2), f"V{RECORD}", r, offset=1, strides=(NODE_MESSAGE_SIZE, RECORD))
            for r in rows
        ]

    def __getstate__(self) -> _State:
        """Pickle and deepcopy the levels only: the record views are remade over them."""
        return (
            self._asset,
            self._first_slot,
            self._hasher,
            self._height,
            self._leaf_prefix,
            self._pad_prefix,
            self._rows,
            self._stale,
        )

    def __setstate__(self, state: _State) -> None:
        (
            self._asset,
            self._first_slot,
            self._hasher,
            self._height,
            self._leaf_prefix,
            self._pad_prefix,
            rows,
            self._stale,
        ) = state
        self._c = c_hashing(self._hasher)
        self._attach(rows)

    # Writing leaves and rehashing levels

    def _put_leaves(self, slots: I64, commitments: U8, amounts: U64) -> None:
        """Hash user leaves into level 0, one chunk at a time."""
        p = len(self._leaf_prefix)
        message = np.empty((min(len(slots), HASH_CHUNK), p + DIGEST_SIZE + SUM_SIZE), np.uint8)
        message[:, :p] = self._leaf_prefix
        message[:, p + DIGEST_SIZE : p + DIGEST_SIZE + 8] = 0  # amount < 2**64: high half 0
        amount_view = message[:, p + DIGEST_SIZE + 8 :].view(">u8")[:, 0]
        for start in range(0, len(slots), HASH_CHUNK):
            stop = min(start + HASH_CHUNK, len(slots))
            k = stop - start
            message[:k, p : p + DIGEST_SIZE] = commitments[start:stop]
            amount_view[:k] = amounts[start:stop]
            where = slots[start:stop]
            self._nodes[0][where >> 1, where & 1] = _records(
                self._digests(message[:k]), 0, amounts[start:stop]
            )

    def _put_padding(self, slots: I64) -> None:
        """Hash padding leaves (sum 0) into level 0, one chunk at a time."""
        p = len(self._pad_prefix)
        message = np.empty((min(len(slots), HASH_CHUNK), p + SLOT_SIZE), np.uint8)
        message[:, :p] = self._pad_prefix
        slot_view = message[:, p:].view(">u8")[:, 0]
        for start in range(0, len(slots), HASH_CHUNK):
            stop = min(start + HASH_CHUNK, len(slots))
            k = stop - start
            where = slots[start:stop]
            slot_view[:k] = where + self._first_slot
            self._nodes[0][where >> 1, where & 1] = _records(self._digests(message[:k]), 0, 0)

    def _rehash(self, level: int, parents: I64 | None, old: Records | None = None) -> None:
        """Recompute nodes ``parents`` (sorted, distinct; None: all) of level
        ``level + 1`` from their children, which are rows of level ``level``;
        their records before to ``old`` if given."""
        if self._c is not None:
            self._c.hash_parents(self._rows[level], self._rows[level + 1], parents, old)
            return
        rows, above = self._rows[level], self._nodes[level + 1]
        if old is not None and parents is not None:
            old[:] = above[parents >> 1, parents & 1]
        if parents is not None and len(parents) <= SCALAR_NODES:
            digest = self._hasher.digest
            for p in parents.tolist():
                message = rows[p].tobytes()  # tag, left hash and sum, right hash and sum
                total = int.from_bytes(message[1 + DIGEST_SIZE : 1 + RECORD]) + int.from_bytes(
                    message[1 + RECORD + DIGEST_SIZE :]
                )
                above[p >> 1, p & 1] = np.void(digest(message).digest() + total.to_bytes(SUM_SIZE))
            return
        pairs = rows.view(f"V{NODE_MESSAGE_SIZE}").ravel()
        count = len(rows) if parents is None else len(parents)
        step = max(2, HASH_CHUNK & ~1)  # even: a contiguous chunk fills whole pairs above
        for start in range(0, count, step):
            stop = min(start + step, count)
            if parents is None:  # contiguous rows in, contiguous pairs out
                messages = rows[start:stop]
            else:  # gather whole rows through a one-element-per-row view
                where = parents[start:stop]
                messages = pairs[where].view(np.uint8).reshape(-1, NODE_MESSAGE_SIZE)
            hi, lo = _add_sums(messages)
            records = _records(self._digests(messages), hi, lo)
            if parents is not None:
                above[where >> 1, where & 1] = records
            elif count == 1:  # the root
                above[0, 0] = records[0]
            else:  # step and count are even: whole pairs
                above[start // 2 : stop // 2] = records.reshape(-1, 2)

    def _digests(self, rows: U8) -> U8:
        """The digest of each row of a C-contiguous ``(k, w)`` uint8 array, as ``(k, 32)``.

        Without C: ``tolist`` on a ``V{w}`` view makes one bytes object per
        row in C, and hashing those in a list comprehension runs within a
        few percent of bare ``hashlib.sha256(m).digest()`` calls.
        """
        if self._c is not None:
            joined = self._c.sha256_rows(rows)
        else:
            digest = self._hasher.digest
            messages: list[Any] = rows.view(f"V{rows.shape[1]}").ravel().tolist()
            joined = b"".join([digest(m).digest() for m in messages])
        return np.frombuffer(joined, np.uint8).reshape(len(rows), DIGEST_SIZE)

    # Reading

    def __repr__(self) -> str:
        return f"SumTree(asset={self._asset!r}, height={self._height}, total={self.total})"

    @property
    def asset(self) -> str:
        return self._asset

    @property
    def height(self) -> int:
        return self._height

    @property
    def first_slot(self) -> int:
        """The slot of leaf 0 in the whole tree (0 unless a part of one)."""
        return self._first_slot

    @property
    def hasher(self) -> SumTreeHasher:
        """The hashing rules the tree was built with."""
        return self._hasher

    @property
    def capacity(self) -> int:
        """Number of leaf slots, ``2**height``."""
        return 1 << self._height

    @property
    def root(self) -> bytes:
        return self._record(self._height, 0)[0]

    @property
    def total(self) -> int:
        """The root sum: the sum of every leaf amount."""
        return self._record(self._height, 0)[1]

    def _record(self, level: int, index: int) -> tuple[bytes, int]:
        raw = self._nodes[level][index >> 1, index & 1].tobytes()
        return raw[:DIGEST_SIZE], int.from_bytes(raw[DIGEST_SIZE:], "big")

    def _check_slot(self, slot: int) -> int:
        try:
            index = operator.index(slot)
        except TypeError as exc:
            raise TreeError(f"slot must be an integer, got {type(slot).__name__}") from exc
        if not 0 <= index < self.capacity:
            raise TreeError(
                f"slot {index} is outside 0..{self.capacity - 1} (tree of height {self._height})"
            )
        return index

    def leaf(self, slot: int, undo: Sequence[Undo] = ()) -> tuple[bytes, int]:
        """``(hash, amount)`` of the leaf at ``slot``; amount 0 for padding.

        With ``undo``, the records of the batches since some earlier state,
        oldest first: the leaf as it was in that state."""
        return self._old_record(0, self._check_slot(slot), undo)

    def path(self, slot: int, undo: Sequence[Undo] = ()) -> list[tuple[bytes, int]]:
        """The inclusion path of ``slot``: ``(sibling hash, sibling sum)`` at each
        level ``l = 0 .. height-1``, the sibling being node ``(slot >> l) ^ 1``
        (as it was before the batches of ``undo``, if given, as in ``leaf``)."""
        slot = self._check_slot(slot)
        return [self._old_record(level, (slot >> level) ^ 1, undo) for level in range(self._height)]

    def _old_record(self, level: int, index: int, undo: Sequence[Undo]) -> tuple[bytes, int]:
        for batch in undo:  # the oldest batch that overwrote the node kept its value
            nodes, old = batch.levels[level]
            at = int(np.searchsorted(nodes, index))
            if at < len(nodes) and nodes[at] == index:
                raw = old[at].tobytes()
                return raw[:DIGEST_SIZE], int.from_bytes(raw[DIGEST_SIZE:], "big")
        return self._record(level, index)

    def amounts(self) -> U64:
        """Every slot's amount (0 for padding), as a new read-only uint64 array."""
        rows = self._rows[0]
        out = np.empty((len(rows), 2), np.uint64)
        out[:, 0] = rows[:, RECORD - 7 : RECORD + 1].view(">u8")[:, 0]
        out[:, 1] = rows[:, 2 * RECORD - 7 :].view(">u8")[:, 0]
        out = out.reshape(-1)[: self.capacity]
        out.flags.writeable = False
        return out
