"""How big the prover makes its trees and per-user arrays, and how much of a
tree a flush hashes ahead of an epoch's close (docs/PROTOCOL.md §2.5 for
the heights). Pure."""

from __future__ import annotations

from prover.errors import ProverError
from verifier.hashing import MAX_HEIGHT

__all__ = [
    "CLOSE_NODES",
    "MIN_HEIGHT",
    "flush_levels",
    "grown_height",
    "height_for",
    "height_for_parts",
    "spare",
]

MIN_HEIGHT = 4
CLOSE_NODES = 1 << 15  # a flush hashes every level this wide or wider (see flush_levels)


def flush_levels(height: int, epoch_rows: int) -> int | None:
    """How high a flush hashes a tree of ``height`` (``SumTree.apply``'s
    ``upto``): every level of at least ``CLOSE_NODES`` nodes, so that the
    levels left to the close hold fewer than ``CLOSE_NODES`` nodes in
    all; and every level of at least twice ``epoch_rows`` nodes (the last
    epoch's updates of the asset), where the epoch's batches share few
    nodes. All levels (None) before an epoch's count is known."""
    if epoch_rows <= 0:
        return None
    shared = min((2 * epoch_rows - 1).bit_length(), (CLOSE_NODES - 1).bit_length())
    return max(0, height - shared)


def spare(count: int) -> int:
    """The length to grow a per-user array to when it must hold ``count``:
    a quarter more, so that users arriving a few at a time cost amortized
    constant time instead of a copy of every user's entry each time."""
    return count + count // 4 + 1024


def height_for(holders: int, room: int = 0) -> int:
    """Smallest height >= MIN_HEIGHT leaving ~3% + 16 slots of headroom for new
    holders, and at least ``room`` free slots as far as ``MAX_HEIGHT`` allows."""
    need = holders + holders // 32 + 16
    height = max(MIN_HEIGHT, (need - 1).bit_length())
    if height > MAX_HEIGHT:
        raise ProverError(f"{holders} holders do not fit a tree of height {MAX_HEIGHT}")
    while height < MAX_HEIGHT and (1 << height) - holders < room:
        height += 1
    return height


def height_for_parts(largest: int, bits: int, room: int = 0) -> int:
    """The height of a tree split into ``2**bits`` parts whose largest holds
    ``largest`` holders, each part with ``room`` / ``2**bits`` free slots:
    ``height_for`` of a part, plus ``bits`` (``height_for`` itself for one part)."""
    height = height_for(largest, -(-room >> bits)) + bits
    if height > MAX_HEIGHT:
        raise ProverError(f"{largest} holders of a part do not fit a tree of height {MAX_HEIGHT}")
    return height


def grown_height(height: int, largest: int, bits: int) -> int:
    """The height a tree of ``height`` in ``2**bits`` parts grows to when
    holders wait for a slot, its fullest part with some waiting holding
    ``largest`` (``Ledger.growth``): at least one level higher."""
    return max(height + 1, height_for_parts(largest, bits))
