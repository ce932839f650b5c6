"""What a ledger keeps to serve proofs of earlier epochs (prover/ledger.py):
per epoch, what its batches overwrote, and a user's leaves and paths read
back through it. Pure.

Invariant: applying an epoch's ``EpochUndo`` records backwards, newest
first, gives the trees and slots as they were before that epoch; reading a
node or slot through the oldest record that changed it gives the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from prover.book import NO_SLOT, Book
from prover.tree import Undo
from verifier.sumtree import PathStep

__all__ = ["Entry", "EpochUndo", "leaves_as_of"]

Entry = tuple[str, int, int, tuple[PathStep, ...]]  # asset, slot in the whole tree, balance, path


@dataclass(frozen=True, slots=True)
class EpochUndo:
    """What the batches of one epoch overwrote, per asset and in order: the
    trees' ``Undo`` records, and the holders whose slot changed (user indices,
    their slots before)."""

    trees: dict[str, list[Undo]] = field(default_factory=dict)
    slots: dict[str, list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]] = field(
        default_factory=dict
    )

    @property
    def nbytes(self) -> int:
        trees = sum(u.nbytes for undos in self.trees.values() for u in undos)
        slots = sum(a.nbytes + b.nbytes for moves in self.slots.values() for a, b in moves)
        return trees + slots


def leaves_as_of(books: Mapping[str, Book], index: int, since: Sequence[EpochUndo]) -> list[Entry]:
    """User ``index``'s leaf and path in every tree that held it before the
    epochs ``since`` (oldest first), in asset order."""
    entries = []
    for asset, book in sorted(books.items()):
        slot = int(book.slots[index]) if index < len(book.slots) else NO_SLOT
        moves = [m for epoch in since for m in epoch.slots.get(asset, [])]
        for moved, before in moves:  # the oldest change after that epoch knows the slot
            found = np.flatnonzero(moved == index)
            if len(found):
                slot = int(before[found[0]])
                break
        if slot == NO_SLOT:
            continue
        undo = [u for epoch in since for u in epoch.trees.get(asset, [])]
        _, amount = book.tree.leaf(slot, undo)
        path = tuple(PathStep(h, s) for h, s in book.tree.path(slot, undo))
        entries.append((asset, slot + book.tree.first_slot, amount, path))
    return entries
