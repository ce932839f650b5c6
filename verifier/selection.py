"""Chosen assets of a record, proven through its asset map (docs/PROTOCOL.md
§4.4, §11.2): what a subscriber of some assets receives and verifies.

``select_entries`` picks, for a set of chosen asset ids, the entries that
prove what the record says of each: its entry if the record has it, else the
entries on either side of where it would sort. ``check_selection`` verifies
such entries against a header and returns a ``PartialRecord``: the chosen
assets' entries and the chosen assets the record provably lacks. Nothing is
said of the other assets.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from verifier.assetmap import AssetMap, verify_map_path
from verifier.errors import VerificationError
from verifier.hashing import hasher_for
from verifier.record import AssetLines, AssetState, EpochRecord, RecordHeader, decode_entry

__all__ = ["MapEntry", "PartialRecord", "check_selection", "proving_indices", "select_entries"]


@dataclass(frozen=True, slots=True)
class MapEntry:
    """An asset entry's bytes, its index in the asset map and its map path."""

    entry: bytes
    index: int
    path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PartialRecord(AssetLines):
    """What a header and some proven entries establish: the chosen ``assets``
    the record has (sorted by id) and the chosen ids it has not (``absent``).
    The record's other assets are unknown."""

    header: RecordHeader
    assets: tuple[AssetState, ...]
    absent: tuple[str, ...] = ()

    @property
    def epoch(self) -> int:
        return self.header.epoch

    @property
    def timestamp_ms(self) -> int:
        return self.header.timestamp_ms

    @property
    def max_reserve_age_ms(self) -> int:
        return self.header.max_reserve_age_ms

    @property
    def version(self) -> int:
        return self.header.version


def proving_indices(ids: Sequence[str], chosen: Iterable[str]) -> list[int]:
    """The indices of the entries (with sorted ``ids``) that prove what a
    record says of each ``chosen`` id, ascending."""
    out: set[int] = set()
    for asset in chosen:
        i = bisect_left(ids, asset)
        if i < len(ids) and ids[i] == asset:
            out.add(i)
            continue
        if i > 0:
            out.add(i - 1)
        if i < len(ids):
            out.add(i)
    return sorted(out)


def select_entries(
    record: EpochRecord, chosen: Iterable[str], asset_map: AssetMap | None = None
) -> tuple[MapEntry, ...]:
    """The entries, with their map paths, that prove what ``record`` says of
    the ``chosen`` asset ids; ``asset_map``: the record's, if already built."""
    if asset_map is None:
        asset_map = AssetMap(hasher_for(record.version), record.entries)
    ids = [a.asset for a in record.assets]
    return tuple(
        MapEntry(record.entries[i], i, tuple(asset_map.path(i)))
        for i in proving_indices(ids, chosen)
    )


def check_selection(
    header: RecordHeader, entries: Sequence[MapEntry], chosen: Iterable[str]
) -> PartialRecord:
    """Verify ``entries`` against ``header`` and that they prove, for each
    ``chosen`` asset id, the record's entry or that it has none.

    Raises:
        VerificationError: ``asset-map-mismatch`` (an entry's map path) or
            ``asset-map-incomplete`` (a chosen asset neither proven present
            nor absent).
        FormatError: an entry proven by its map path is malformed.
    """
    hasher = hasher_for(header.version)
    proven: dict[str, tuple[int, AssetState]] = {}
    for e in entries:
        verify_map_path(hasher, e.entry, e.index, e.path, header.asset_count, header.asset_map_root)
        state = decode_entry(e.entry, header)
        proven[state.asset] = (e.index, state)
    by_index = {index: state.asset for index, state in proven.values()}
    present: list[AssetState] = []
    absent: list[str] = []
    for asset in sorted(set(chosen)):
        if asset in proven:
            present.append(proven[asset][1])
        elif _proven_absent(asset, by_index, header.asset_count):
            absent.append(asset)
        else:
            raise VerificationError(
                "asset-map-incomplete",
                f"{asset}: the entries prove neither that the record has it nor that it has not",
            )
    return PartialRecord(header, tuple(present), tuple(absent))


def _proven_absent(asset: str, by_index: dict[int, str], count: int) -> bool:
    """True if proven entries at adjacent indices (or at an end of the map)
    enclose where ``asset`` would sort."""
    if count == 0:
        return True
    below = [i for i, a in by_index.items() if a < asset]
    above = [i for i, a in by_index.items() if a > asset]
    low = max(below) if below else -1  # -1: before the first entry
    high = min(above) if above else count  # count: after the last entry
    return high == low + 1
