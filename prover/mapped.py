"""A committed record with its asset map (docs/PROTOCOL.md §4.4), and what
every proof file of its epoch shares (§6). Pure.

Invariants:

- A record's ``AssetMap`` is built at most once, on first use: by the first
  root stream frame of chosen assets, or the first proof, of its epoch; an
  epoch nobody asks about never builds it. A ``MappedRecord`` may be made
  anywhere, but its map and paths are asked for on one thread only (the
  event loop's): they are built without a lock.
- ``consistency`` needs no read of the log: the inclusion path of the
  record's header, the log's last leaf, holds the roots of the complete
  subtrees of the log before it (``verifier.rfc9162.last_consistency``).
- A ``ProofBasis`` holds every asset's entry with its index and map path,
  computed once per epoch: the proof files of many users (an export) are
  assembled from it without hashing. It travels to the tree workers as it is
  (msgspec reads dataclasses).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prover.errors import ProverError
from prover.ledger import UserProof
from verifier import rfc9162
from verifier.assetmap import AssetMap
from verifier.hashing import hasher_for
from verifier.proof import AssetPath, ProofFile
from verifier.record import EpochRecord
from verifier.selection import MapEntry, select_entries
from verifier.stream import EpochMessage

__all__ = ["MappedRecord", "ProofBasis"]


@dataclass(frozen=True, slots=True)
class ProofBasis:
    """What every proof file of one epoch shares: the record's ``header``,
    each asset's entry with its index and map path (by asset id), the
    inclusion proof of the header in the log and the checkpoint (with the
    cosignatures known when it was made)."""

    header: bytes
    entries: dict[str, MapEntry]
    inclusion: tuple[bytes, ...]
    checkpoint: bytes

    def proof(self, found: UserProof) -> ProofFile:
        """``found``'s proof file: for each asset the user holds, its entry,
        index and map path, then the user's slot, balance and path.

        Raises:
            ProverError: an asset of ``found`` has no entry in the record
                (the trees and the record do not match).
        """
        assets = []
        for asset, slot, balance, path in found.entries:
            entry = self.entries.get(asset)
            if entry is None:
                raise ProverError(f"{found.user!r} holds {asset}, which the record does not list")
            assets.append(AssetPath(entry.entry, entry.index, entry.path, slot, balance, path))
        return ProofFile(
            user=found.user,
            salt=found.salt,
            header=self.header,
            assets=tuple(assets),
            inclusion=self.inclusion,
            checkpoint=self.checkpoint,
        )


class MappedRecord:
    """An epoch's record and, built on first use, its asset map and every
    entry's map path (module docstring)."""

    __slots__ = ("_entries", "_map", "record")

    def __init__(self, record: EpochRecord) -> None:
        self.record = record
        self._map: AssetMap | None = None
        self._entries: dict[str, MapEntry] | None = None

    @property
    def asset_map(self) -> AssetMap:
        """The record's asset map, built at the first call."""
        if self._map is None:
            self._map = AssetMap(hasher_for(self.record.version), self.record.entries)
        return self._map

    def entries(self) -> dict[str, MapEntry]:
        """Every asset's entry with its index and map path, by asset id."""
        if self._entries is None:
            asset_map = self.asset_map
            self._entries = {
                a.asset: MapEntry(entry, i, tuple(asset_map.path(i)))
                for i, (a, entry) in enumerate(
                    zip(self.record.assets, self.record.entries, strict=True)
                )
            }
        return self._entries

    def consistency(self, inclusion: Sequence[bytes]) -> tuple[bytes, ...]:
        """The RFC 9162 consistency proof from the log of ``epoch`` records to
        the log of ``epoch + 1``, given ``inclusion``, the inclusion path of
        this record's header at index ``epoch`` in the latter."""
        leaf = rfc9162.leaf_hash(self.record.header.encode())
        return tuple(rfc9162.last_consistency(self.record.epoch + 1, inclusion, leaf))

    def select(self, chosen: Iterable[str]) -> tuple[MapEntry, ...]:
        """The entries that prove what the record says of the ``chosen`` asset
        ids (``verifier.selection.select_entries``)."""
        return select_entries(self.record, chosen, self.asset_map)

    def basis(self, message: EpochMessage) -> ProofBasis:
        """The proof basis of this record with ``message``'s inclusion proof and
        checkpoint (``message`` is this record's epoch)."""
        return ProofBasis(
            self.record.header.encode(), self.entries(), message.inclusion, message.checkpoint
        )
