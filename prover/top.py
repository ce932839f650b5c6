"""The top levels of a sum tree split into parts (docs/SCALING.md). Pure.

A tree of height ``h`` split by the top ``k`` bits of the slot is ``2**k``
subtrees of height ``h - k`` (the parts, one per shard) under ``k`` levels
that combine their roots with the node hash of PROTOCOL §2.4. The whole
tree's root, total and paths are those of the unsplit tree: a part's path
(``h - k`` steps) followed by ``TopTree.path`` (``k`` steps) is the path of
PROTOCOL §3.

Invariant: ``levels[0]`` are the parts' (hash, sum) in part order, each
level above pairs the one below, and ``levels[k]`` is the root alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prover.errors import ProverError
from verifier.hashing import HASHER, SumTreeHasher

__all__ = ["TopTree"]

Record = tuple[bytes, int]  # (hash, sum)


@dataclass(frozen=True, slots=True)
class TopTree:
    """The top ``bits`` levels over the roots of ``2**bits`` parts."""

    levels: tuple[tuple[Record, ...], ...]

    @classmethod
    def combine(cls, parts: Sequence[Record], hasher: SumTreeHasher = HASHER) -> TopTree:
        """The levels above ``parts``, the roots of a tree's parts in part order.

        Raises:
            ProverError: the number of parts is not a power of two.
        """
        if not parts or len(parts) & (len(parts) - 1):
            raise ProverError(f"a tree splits into a power of two parts, not {len(parts)}")
        levels = [tuple(parts)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            levels.append(
                tuple(
                    (hasher.node_hash(lh, ls, rh, rs), ls + rs)
                    for (lh, ls), (rh, rs) in zip(below[::2], below[1::2], strict=True)
                )
            )
        return cls(tuple(levels))

    @property
    def bits(self) -> int:
        return len(self.levels) - 1

    @property
    def root(self) -> bytes:
        return self.levels[-1][0][0]

    @property
    def total(self) -> int:
        return self.levels[-1][0][1]

    def path(self, part: int) -> list[Record]:
        """The siblings from part ``part``'s root up to the root, lowest first."""
        return [self.levels[level][(part >> level) ^ 1] for level in range(self.bits)]
