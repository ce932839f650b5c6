"""Checking one inclusion path of a Merkle sum tree (docs/PROTOCOL.md §3).

A path for ``slot`` in a tree of height ``h`` lists, from the leaf level up,
the sibling at each level ``l = 0 .. h-1``: its hash and its sum. Bit ``l`` of
the slot says on which side our node is (0: left). Checks, in order:

1. ``path-length``: exactly ``h`` steps, the height the signed record states;
2. ``slot-range``: ``0 <= slot < 2**h``;
3. ``sibling-sum-range``: each sibling sum at level ``l`` is in
   ``0 .. subtree_cap(l)``, so no negative, wrapped or oversized sum passes;
4. ``root-mismatch``: the recomputed root equals the signed root;
5. ``liabilities-mismatch``: the recomputed root sum equals the signed total.

Nodes are hashed by the ``SumTreeHasher`` of the signed record's version
(``verifier.hashing.hasher_for``); the current version's unless given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from verifier.errors import FormatError, VerificationError
from verifier.hashing import DIGEST_SIZE, HASHER, MAX_BALANCE, SumTreeHasher, subtree_cap

__all__ = ["PathStep", "root_from_path", "verify_path"]


@dataclass(frozen=True, slots=True)
class PathStep:
    """A sibling on an inclusion path."""

    hash: bytes
    sum: int

    def __post_init__(self) -> None:
        if len(self.hash) != DIGEST_SIZE:
            raise FormatError(f"sibling hash must be {DIGEST_SIZE} bytes, got {len(self.hash)}")


def root_from_path(
    height: int,
    slot: int,
    leaf: bytes,
    amount: int,
    path: Sequence[PathStep],
    *,
    hasher: SumTreeHasher = HASHER,
) -> tuple[bytes, int]:
    """Recompute ``(root hash, root sum)`` from a leaf and its path (checks 1-3).

    Raises:
        VerificationError: ``path-length``, ``slot-range``, ``leaf-range`` or
            ``sibling-sum-range``.
    """
    if len(path) != height:
        raise VerificationError(
            "path-length", f"path has {len(path)} steps, the tree is {height} high"
        )
    if not 0 <= slot < (1 << height):
        raise VerificationError("slot-range", f"slot {slot} is outside a tree of height {height}")
    if not 0 <= amount <= MAX_BALANCE:
        raise VerificationError("leaf-range", f"leaf amount {amount} is outside 0..2**64-1")
    node_hash = hasher.node_hash
    node, total = leaf, amount
    for level, step in enumerate(path):
        if not 0 <= step.sum <= subtree_cap(level):
            raise VerificationError(
                "sibling-sum-range",
                f"sibling sum {step.sum} at level {level} is outside 0..2**64-1 times 2**{level}",
            )
        if (slot >> level) & 1:
            node = node_hash(step.hash, step.sum, node, total)
        else:
            node = node_hash(node, total, step.hash, step.sum)
        total += step.sum
    return node, total


def verify_path(
    *,
    height: int,
    root: bytes,
    liabilities: int,
    slot: int,
    leaf: bytes,
    amount: int,
    path: Sequence[PathStep],
    hasher: SumTreeHasher = HASHER,
) -> None:
    """Check that ``leaf`` with ``amount`` sits at ``slot`` under the signed
    ``root`` whose sum is ``liabilities`` (checks 1-5).

    Raises:
        VerificationError: naming the first failed check.
    """
    got_root, got_total = root_from_path(height, slot, leaf, amount, path, hasher=hasher)
    if got_root != root:
        raise VerificationError("root-mismatch", "the path does not lead to the signed root")
    if got_total != liabilities:
        raise VerificationError(
            "liabilities-mismatch",
            f"the path sums to {got_total}, the record states {liabilities}",
        )
