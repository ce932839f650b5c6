"""The asset map and chosen assets (docs/PROTOCOL.md §4.4, §11.2): known
answers checked against a recursive definition written from the text, and
the attacks a prover or relay could try on a subscriber of some assets."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.assetmap import AssetMap, map_root, verify_map_path
from verifier.errors import FormatError, VerificationError
from verifier.hashing import HASHER
from verifier.record import AssetState, EpochRecord, RecordHeader, ReserveSource, Status
from verifier.selection import check_selection, select_entries

VECTOR = json.loads((Path(__file__).parent.parent / "vectors" / "asset-map.json").read_text())


def mth(entries: list[bytes]) -> bytes:
    """PROTOCOL §4.4 as written: the recursive definition, no shortcuts."""
    if not entries:
        return hashlib.sha256(b"\x4d").digest()
    if len(entries) == 1:
        return hashlib.sha256(b"\x45" + entries[0]).digest()
    k = 1
    while k * 2 < len(entries):
        k *= 2
    return hashlib.sha256(b"\x4d" + mth(entries[:k]) + mth(entries[k:])).digest()


def record_of(ids: list[str], epoch: int = 7) -> EpochRecord:
    assets = tuple(
        AssetState(a, 8, 0, bytes(32), 0, 0, Status.SOLVENT, ()) for a in sorted(set(ids))
    )
    return EpochRecord(epoch, 1_000, 60_000, assets)


def test_the_vector_follows_the_definition() -> None:
    entries = [bytes.fromhex(e) for e in VECTOR["entries"]]
    header = RecordHeader.decode(bytes.fromhex(VECTOR["header"]))
    assert mth(entries).hex() == VECTOR["root"] == header.asset_map_root.hex()
    assert header.asset_count == len(entries)
    assert [HASHER.entry_hash(e).hex() for e in entries] == VECTOR["leaf_hashes"]
    asset_map = AssetMap(HASHER, entries)
    for index, path in enumerate(VECTOR["paths"]):
        assert [h.hex() for h in asset_map.path(index)] == path
        hashes = tuple(bytes.fromhex(h) for h in path)
        verify_map_path(HASHER, entries[index], index, hashes, len(entries), header.asset_map_root)
    record = EpochRecord.decode(bytes.fromhex(VECTOR["header"]) + b"".join(entries))
    for case in VECTOR["selections"]:
        chosen = case["chosen"]
        assert [e.index for e in select_entries(record, chosen)] == case["indices"]


@given(st.lists(st.binary(max_size=40), max_size=40))
@settings(max_examples=100)
def test_the_map_root_is_the_definition(entries: list[bytes]) -> None:
    assert map_root(HASHER, entries) == mth(entries) == AssetMap(HASHER, entries).root


asset_ids = st.from_regex(r"[A-Z][A-Z0-9]{0,3}", fullmatch=True)


@given(st.sets(asset_ids, max_size=30), st.sets(asset_ids, max_size=6))
@settings(max_examples=200)
def test_a_selection_proves_exactly_what_the_record_says(ids: set[str], chosen: set[str]) -> None:
    record = record_of(list(ids))
    entries = select_entries(record, chosen)
    part = check_selection(record.header, entries, chosen)
    assert {a.asset for a in part.assets} == chosen & ids
    assert set(part.absent) == chosen - ids
    assert part.epoch == 7 and part.timestamp_ms == 1_000
    # Every entry sent is needed: withholding any one leaves a chosen asset unproven.
    for i in range(len(entries)):
        with pytest.raises(VerificationError, match="asset-map-incomplete"):
            check_selection(record.header, entries[:i] + entries[i + 1 :], chosen)


def test_a_hidden_asset_cannot_be_passed_off_as_absent() -> None:
    """A prover hiding ETH (present) shows DOGE and SOL as ETH's neighbours:
    they are not adjacent in the map, so absence is not proven."""
    record = record_of(["ADA", "BTC", "DOGE", "ETH", "SOL"])
    doge, sol = select_entries(record, ["DOGE", "SOL"])
    with pytest.raises(VerificationError, match="asset-map-incomplete: ETH"):
        check_selection(record.header, [doge, sol], ["ETH"])
    # Nor with no entry at all, unless the record has no assets.
    with pytest.raises(VerificationError, match="asset-map-incomplete"):
        check_selection(record.header, [], ["ETH"])
    empty = record_of([])
    assert check_selection(empty.header, [], ["ETH"]).absent == ("ETH",)


def test_a_forged_or_moved_entry_is_refused() -> None:
    record = record_of(["ADA", "BTC", "DOGE", "ETH", "SOL"])
    (btc,) = select_entries(record, ["BTC"])
    # An entry the record does not have (BTC with liabilities), at BTC's place.
    forged = EpochRecord(
        7, 1_000, 60_000, (AssetState("BTC", 8, 1, bytes(32), 5, 0, Status.INSOLVENT, ()),)
    )
    attacks = {
        "altered entry": dataclasses.replace(btc, entry=forged.entries[0]),
        "other index": dataclasses.replace(btc, index=2),
        "index beyond the map": dataclasses.replace(btc, index=5),
        "path cut short": dataclasses.replace(btc, path=btc.path[:-1]),
        "path extended": dataclasses.replace(btc, path=(*btc.path, btc.path[0])),
        "path altered": dataclasses.replace(btc, path=(bytes(32), *btc.path[1:])),
    }
    for name, entry in attacks.items():
        with pytest.raises(VerificationError, match="asset-map-mismatch"):
            check_selection(record.header, [entry], ["BTC"])
        assert name


def test_an_entry_of_another_records_map_is_refused() -> None:
    """An entry proven in one record's map is not proven in the next one's."""
    now, later = record_of(["BTC", "ETH"], 7), record_of(["BTC", "ETH", "SOL"], 8)
    with pytest.raises(VerificationError, match="asset-map-mismatch"):
        check_selection(later.header, select_entries(now, ["BTC"]), ["BTC"])


def test_a_proven_entry_must_agree_with_its_header() -> None:
    """An entry whose status its header's time and policy contradict is
    malformed even though the map proves it: no valid record holds both."""
    sources = (ReserveSource("cold", 5, 900),)
    btc = AssetState("BTC", 8, 0, bytes(32), 0, 5, Status.SOLVENT, sources)
    record = EpochRecord(7, 1_000, 60_000, (btc,))
    entries = select_entries(record, ["BTC"])
    assert check_selection(record.header, entries, ["BTC"]).assets == (btc,)
    stale = dataclasses.replace(record.header, timestamp_ms=1_000_000, max_reserve_age_ms=10)
    with pytest.raises(FormatError, match="contradicts UNPROVEN"):
        check_selection(stale, entries, ["BTC"])
