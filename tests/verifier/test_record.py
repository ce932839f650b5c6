"""Epoch record encoding (docs/PROTOCOL.md §4): vectors, round trips, rejections."""

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.errors import FormatError
from verifier.hashing import subtree_cap
from verifier.record import (
    HEADER_SIZE,
    MAX_RESERVE,
    AssetState,
    EpochRecord,
    RecordHeader,
    ReserveSource,
    Status,
    decode_entry,
    expected_status,
)

VECTOR = json.loads((Path(__file__).parent.parent / "vectors" / "record.json").read_text())

asset_ids = st.from_regex(r"[A-Z0-9][A-Z0-9._-]{0,15}", fullmatch=True)
source_names = st.from_regex(r"[!-~]{1,64}", fullmatch=True)
# (key_id, report_hash): a signed report's, or unattested (0, zero hash)
attestations = st.just((0, bytes(32))) | st.tuples(
    st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32).filter(any)
)


@st.composite
def records(draw: st.DrawFn) -> EpochRecord:
    timestamp = draw(st.integers(0, 2**64 - 1))
    max_age = draw(st.integers(0, 2**64 - 1))
    assets = []
    for asset in sorted(draw(st.sets(asset_ids, max_size=4))):
        height = draw(st.integers(0, 32))
        liabilities = draw(st.integers(0, subtree_cap(height)))
        sources = tuple(
            ReserveSource(
                name,
                draw(st.integers(0, MAX_RESERVE)),
                draw(st.integers(0, timestamp)),
                *draw(attestations),
            )
            for name in sorted(draw(st.sets(source_names, max_size=3)))
        )
        assets.append(
            AssetState(
                asset=asset,
                decimals=draw(st.integers(0, 36)),
                height=height,
                root=draw(st.binary(min_size=32, max_size=32)),
                liabilities=liabilities,
                reserves=sum(s.amount for s in sources),
                status=expected_status(liabilities, sources, timestamp, max_age),
                sources=sources,
            )
        )
    return EpochRecord(draw(st.integers(0, 2**64 - 1)), timestamp, max_age, tuple(assets))


def test_vector_decodes_to_its_fields() -> None:
    record = EpochRecord.decode(bytes.fromhex(VECTOR["hex"]))
    fields = VECTOR["fields"]
    assert record.epoch == fields["epoch"]
    assert record.timestamp_ms == fields["timestamp_ms"]
    assert [a.asset for a in record.assets] == [a["asset"] for a in fields["assets"]]
    for got, want in zip(record.assets, fields["assets"], strict=True):
        assert got.root.hex() == want["root"]
        assert got.liabilities == int(want["liabilities"])
        assert got.reserves == int(want["reserves"])
        assert got.status.name == want["status"]
        assert [
            (s.name, s.amount, s.as_of_ms, f"{s.key_id:08x}", s.report_hash.hex())
            for s in got.sources
        ] == [
            (s["name"], int(s["amount"]), s["as_of_ms"], s["key_id"], s["report_hash"])
            for s in want["sources"]
        ]
    assert record.encode().hex() == VECTOR["hex"]
    assert record.header.encode().hex() == VECTOR["header"] == VECTOR["hex"][: 2 * HEADER_SIZE]
    assert [e.hex() for e in record.entries] == VECTOR["entries"]
    assert record.header.asset_map_root.hex() == VECTOR["asset_map_root"]
    assert record.header.asset_count == len(fields["assets"])


@given(records())
@settings(max_examples=200)
def test_round_trip(record: EpochRecord) -> None:
    assert EpochRecord.decode(record.encode()) == record


@given(records(), st.data())
@settings(max_examples=200)
def test_any_truncation_or_extension_is_rejected(record: EpochRecord, data: st.DataObject) -> None:
    raw = record.encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(FormatError):
        EpochRecord.decode(raw[:cut])
    with pytest.raises(FormatError):
        EpochRecord.decode(raw + data.draw(st.binary(min_size=1, max_size=8)))


@given(st.binary(max_size=300))
def test_garbage_raises_only_format_error(raw: bytes) -> None:
    with contextlib.suppress(FormatError):
        EpochRecord.decode(b"SOLV\x01" + raw)


def _btc(**changes: object) -> AssetState:
    fields: dict[str, object] = dict(
        asset="BTC",
        decimals=8,
        height=4,
        root=bytes(32),
        liabilities=10,
        reserves=20,
        status=Status.SOLVENT,
        sources=(ReserveSource("cold", 20, 0),),
    )
    fields.update(changes)
    return AssetState(**fields)  # type: ignore[arg-type]


def test_status_rules() -> None:
    fresh, stale = ReserveSource("a", 5, 1000), ReserveSource("b", 500, 0)
    assert expected_status(5, [fresh], 1000, 10) is Status.SOLVENT
    assert expected_status(6, [fresh], 1000, 10) is Status.INSOLVENT
    assert expected_status(1, [fresh, stale], 1000, 10) is Status.UNPROVEN
    assert expected_status(0, [], 1000, 10) is Status.SOLVENT
    assert expected_status(1, [], 1000, 10) is Status.INSOLVENT
    assert not stale.is_stale(10, 10) and stale.is_stale(11, 10)


@pytest.mark.parametrize(
    "changes",
    [
        {"liabilities": subtree_cap(4) + 1},
        {"reserves": 21},
        {"height": 33},
        {"decimals": 37},
        {"root": bytes(31)},
        {"sources": (ReserveSource("b", 10, 0), ReserveSource("a", 10, 0))},
        {"sources": (ReserveSource("a", 10, 0), ReserveSource("a", 10, 0))},
    ],
)
def test_invalid_asset_lines(changes: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        _btc(**changes)


@pytest.mark.parametrize(
    "source",
    [
        lambda: ReserveSource("", 1, 0),
        lambda: ReserveSource("has space", 1, 0),
        lambda: ReserveSource("a", -1, 0),
        lambda: ReserveSource("a", MAX_RESERVE + 1, 0),
        lambda: ReserveSource("a", 1, 2**64),
    ],
)
def test_invalid_sources(source) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FormatError):
        source()


def test_record_rejects_false_status_and_future_reserves() -> None:
    with pytest.raises(FormatError, match="contradicts"):
        EpochRecord(1, 100, 1000, (_btc(liabilities=30),))  # 20 < 30 yet SOLVENT
    with pytest.raises(FormatError, match="dated after"):
        EpochRecord(1, 100, 1000, (_btc(sources=(ReserveSource("cold", 20, 101),)),))
    with pytest.raises(FormatError, match="sorted"):
        EpochRecord(1, 100, 1000, (_btc(), _btc()))


def test_decode_rejects_bad_header_and_status() -> None:
    good = EpochRecord(7, 100, 1000, (_btc(),)).encode()
    with pytest.raises(FormatError, match="magic"):
        EpochRecord.decode(b"XOLV" + good[4:])
    with pytest.raises(FormatError, match="unsupported epoch record version 3"):
        EpochRecord.decode(good[:4] + b"\x03" + good[5:])
    with pytest.raises(FormatError, match=r"version 1 .* no longer read"):
        EpochRecord.decode(good[:4] + b"\x01" + good[5:])
    status_at = len(good) - 1 - (1 + 4 + 16 + 8 + 4 + 32) - 1  # before source_count, source
    bad = bytearray(good)
    bad[status_at] = 9
    with pytest.raises(FormatError, match="status"):
        EpochRecord.decode(bytes(bad))
    assert EpochRecord.decode(good).solvent


def test_vector_binds_the_vector_reports() -> None:
    """record.json's BTC sources rest on report.json's signed reports."""
    reports = json.loads((Path(__file__).parent.parent / "vectors" / "report.json").read_text())
    record = EpochRecord.decode(bytes.fromhex(VECTOR["hex"]))
    bound = {s.report_hash.hex() for a in record.assets for s in a.sources if s.attested}
    assert bound == {r["hash"] for r in reports["reports"]}
    assert not any(s.attested for s in record.asset("ETH").sources)


def test_header_round_trips_and_is_exactly_63_bytes() -> None:
    record = EpochRecord(7, 100, 1000, (_btc(),))
    header = record.header.encode()
    assert len(header) == HEADER_SIZE == 63
    assert RecordHeader.decode(header) == record.header
    for bad in (header[:-1], header + b"\x00"):
        with pytest.raises(FormatError):
            RecordHeader.decode(bad)


def test_a_full_record_must_match_its_asset_map() -> None:
    """A header whose map root or asset count is not its entries' is refused:
    entries proven against that root must be the ones the record shows."""
    record = EpochRecord(7, 100, 1000, (_btc(), _btc(asset="ETH")))
    header, entries = record.header.encode(), b"".join(record.entries)
    other_root = header[:-32] + bytes(32)
    with pytest.raises(FormatError, match="asset map root"):
        EpochRecord.decode(other_root + entries)
    fewer = header[:29] + (1).to_bytes(2, "big") + header[31:]  # asset_count 1, two entries
    with pytest.raises(FormatError, match="trailing"):
        EpochRecord.decode(fewer + entries)


def test_an_entry_is_read_with_its_header() -> None:
    """An entry alone is checked against the header's time and policy."""
    record = EpochRecord(7, 100, 1000, (_btc(),))
    assert decode_entry(record.entries[0], record.header) == record.assets[0]
    later = EpochRecord(7, 100_000, 10, (_btc(status=Status.UNPROVEN),))  # stale at 100,000
    with pytest.raises(FormatError, match="contradicts"):
        decode_entry(record.entries[0], later.header)
    earlier = RecordHeader(7, 0, 1000, 1, record.header.asset_map_root)
    with pytest.raises(FormatError, match="dated after"):
        decode_entry(
            EpochRecord(7, 100, 1000, (_btc(sources=(ReserveSource("cold", 20, 50),)),)).entries[0],
            earlier,
        )
    with pytest.raises(FormatError, match="trailing"):
        decode_entry(record.entries[0] + b"\x00", record.header)
