"""The asset map: the Merkle tree by which a record header commits to its
asset entries (docs/PROTOCOL.md §4.4).

RFC 9162's tree shape over the entries in the record's order, with the
record version's own hashes: leaf ``H(0x45 || entry)``, node ``H(0x4D ||
left || right)``, the empty map ``H(0x4D)``. An entry's map path is RFC
9162's inclusion path at its index, so one entry is proven with
``log2(asset_count)`` hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from verifier import rfc9162
from verifier.errors import FormatError, VerificationError
from verifier.hashing import SumTreeHasher

__all__ = ["AssetMap", "map_root", "verify_map_path"]


def map_root(hasher: SumTreeHasher, entries: Sequence[bytes]) -> bytes:
    """The asset map root over ``entries`` (encoded asset entries, in order)."""
    leaves = [hasher.entry_hash(e) for e in entries]
    return rfc9162.root_from_leaf_hashes(leaves, hasher.map_node_hash, hasher.empty_map())


class AssetMap:
    """The asset map of one record, for proving its entries: each subtree root
    is computed once, so the paths of all entries cost O(asset_count) hashes."""

    def __init__(self, hasher: SumTreeHasher, entries: Sequence[bytes]) -> None:
        self.size = len(entries)
        leaves = [hasher.entry_hash(e) for e in entries]

        @cache
        def range_root(start: int, end: int) -> bytes:
            if end - start == 1:
                return leaves[start]
            k = 1 << ((end - start - 1).bit_length() - 1)
            return hasher.map_node_hash(range_root(start, start + k), range_root(start + k, end))

        self._range_root = range_root
        self.root = range_root(0, self.size) if self.size else hasher.empty_map()

    def path(self, index: int) -> list[bytes]:
        """The map path of the entry at ``index``, leaf side first."""
        return rfc9162.inclusion_path(index, self.size, self._range_root)


def verify_map_path(
    hasher: SumTreeHasher,
    entry: bytes,
    index: int,
    path: Sequence[bytes],
    asset_count: int,
    root: bytes,
) -> None:
    """Check that ``entry`` is at ``index`` in the asset map of ``asset_count``
    entries with ``root``.

    Raises:
        VerificationError: ``asset-map-mismatch``, naming what does not hold.
    """
    try:
        rfc9162.verify_inclusion(
            hasher.entry_hash(entry), index, asset_count, path, root, hasher.map_node_hash
        )
    except (VerificationError, FormatError) as exc:
        detail = exc.detail if isinstance(exc, VerificationError) else str(exc)
        raise VerificationError(
            "asset-map-mismatch", f"entry {index} of {asset_count}: {detail}"
        ) from exc
