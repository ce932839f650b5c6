"""The epoch record: what each epoch states, in canonical bytes (docs/PROTOCOL.md §4).

Layout (all integers unsigned big-endian)::

    record = header | asset* (asset_count entries, sorted by id, unique)
    header = magic "SOLV" | version u8 (VERSION) | epoch u64 | timestamp_ms u64
             | max_reserve_age_ms u64 | asset_count u16 | asset_map_root[32]
    asset  = id_len u8 | id | decimals u8 | height u8 | root[32]
             | liabilities u128 | reserves u128 | status u8
             | source_count u8 | source* (sorted by name, unique)
    source = name_len u8 | name | amount u128 | as_of_ms u64
             | key_id u32 | report_hash[32]   (0 and 32 zero bytes: unattested)

The log commits to the header (``RecordHeader``), and the header to the
entries by the asset map root (``verifier.assetmap``), so that one entry can be
proven without the others (``decode_entry`` reads one with its header).

Invariants enforced on both encode and decode, so that a record is valid iff it
round-trips: liabilities <= subtree_cap(height); reserves = sum of the sources'
amounts; each source amount <= MAX_RESERVE; as_of <= timestamp; an unattested
source (zero report hash) has key id 0; status is the one ``expected_status``
derives; the header's asset count and map root are those of the entries.
Decoding rejects trailing bytes, version 1 (unreleased, dropped) and every
version ``verifier.hashing.hasher_for`` does not know; a record keeps its
version, which names the hashing rules of its trees and of its asset map.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from verifier.assetmap import map_root
from verifier.errors import FormatError
from verifier.hashing import (
    DIGEST_SIZE,
    MAX_HEIGHT,
    SUM_SIZE,
    VERSION,
    check_asset_id,
    hasher_for,
    subtree_cap,
)

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RESERVE",
    "UNATTESTED",
    "VERSION",
    "AssetLines",
    "AssetState",
    "EpochRecord",
    "RecordHeader",
    "ReserveSource",
    "Status",
    "check_source_name",
    "decode_entry",
    "encode_entry",
    "expected_status",
]

MAGIC = b"SOLV"
UNATTESTED = bytes(DIGEST_SIZE)  # the report hash of a source no signed report backs
MAX_RESERVE = 2**96 - 1
MAX_DECIMALS = 36

_HEADER = struct.Struct(f">4sBQQQH{DIGEST_SIZE}s")
HEADER_SIZE = _HEADER.size  # 63
_ASSET_FIXED = struct.Struct(f">BB{DIGEST_SIZE}s{SUM_SIZE}s{SUM_SIZE}sBB")
_SOURCE_FIXED = struct.Struct(f">{SUM_SIZE}sQI{DIGEST_SIZE}s")
_SOURCE_NAME = re.compile(r"[!-~]{1,64}")  # printable ASCII, no space
_U64 = 2**64


class Status(IntEnum):
    """Solvency status of one asset in one epoch."""

    SOLVENT = 0  # reserves >= liabilities, every reserve source fresh
    INSOLVENT = 1  # reserves < liabilities, every reserve source fresh
    UNPROVEN = 2  # some reserve source is stale: nothing is proven


def check_source_name(name: str) -> bytes:
    """Validate a reserve source name (1-64 printable ASCII, no space); return its bytes."""
    if not isinstance(name, str) or _SOURCE_NAME.fullmatch(name) is None:
        raise FormatError(f"invalid reserve source name {name!r}: want 1-64 printable ASCII")
    return name.encode("ascii")


@dataclass(frozen=True, slots=True)
class ReserveSource:
    """One reserve source's last report: ``amount`` held as of ``as_of_ms``,
    signed by the source's key ``key_id`` in the signed report of hash
    ``report_hash`` (docs/PROTOCOL.md §13), or ``UNATTESTED`` with key id 0."""

    name: str
    amount: int
    as_of_ms: int
    key_id: int = 0
    report_hash: bytes = UNATTESTED

    def __post_init__(self) -> None:
        check_source_name(self.name)
        if not 0 <= self.amount <= MAX_RESERVE:
            raise FormatError(f"reserve {self.name}: amount {self.amount} outside 0..2**96-1")
        if not 0 <= self.as_of_ms < _U64:
            raise FormatError(f"reserve {self.name}: as_of {self.as_of_ms} outside u64")
        if not 0 <= self.key_id < 2**32:
            raise FormatError(f"reserve {self.name}: key id {self.key_id} outside u32")
        if not isinstance(self.report_hash, bytes) or len(self.report_hash) != DIGEST_SIZE:
            raise FormatError(f"reserve {self.name}: report hash must be {DIGEST_SIZE} bytes")
        if self.report_hash == UNATTESTED and self.key_id != 0:
            raise FormatError(f"reserve {self.name}: unattested, but names key id {self.key_id}")

    @property
    def attested(self) -> bool:
        """True if a signed report backs this entry (docs/PROTOCOL.md §13)."""
        return self.report_hash != UNATTESTED

    def is_stale(self, timestamp_ms: int, max_age_ms: int) -> bool:
        """True if the report is older than ``max_age_ms`` at ``timestamp_ms``."""
        return timestamp_ms - self.as_of_ms > max_age_ms


@dataclass(frozen=True, slots=True)
class AssetState:
    """One asset's line of an epoch record: its sum tree root and its balance sheet."""

    asset: str
    decimals: int
    height: int
    root: bytes
    liabilities: int
    reserves: int
    status: Status
    sources: tuple[ReserveSource, ...]

    def __post_init__(self) -> None:
        check_asset_id(self.asset)
        if not 0 <= self.decimals <= MAX_DECIMALS:
            raise FormatError(f"{self.asset}: decimals {self.decimals} outside 0..{MAX_DECIMALS}")
        if not 0 <= self.height <= MAX_HEIGHT:
            raise FormatError(f"{self.asset}: height {self.height} outside 0..{MAX_HEIGHT}")
        if len(self.root) != DIGEST_SIZE:
            raise FormatError(f"{self.asset}: root must be {DIGEST_SIZE} bytes")
        if not 0 <= self.liabilities <= subtree_cap(self.height):
            raise FormatError(
                f"{self.asset}: liabilities {self.liabilities} exceed what a tree "
                f"of height {self.height} can hold"
            )
        names = [s.name for s in self.sources]
        if names != sorted(set(names)):
            raise FormatError(f"{self.asset}: reserve sources must be sorted and unique")
        if len(self.sources) > 255:
            raise FormatError(f"{self.asset}: more than 255 reserve sources")
        if self.reserves != sum(s.amount for s in self.sources):
            raise FormatError(f"{self.asset}: reserves total is not the sum of its sources")


def expected_status(
    liabilities: int, sources: Sequence[ReserveSource], timestamp_ms: int, max_age_ms: int
) -> Status:
    """The status an honest prover must state (docs/PROTOCOL.md §4.3)."""
    if any(s.is_stale(timestamp_ms, max_age_ms) for s in sources):
        return Status.UNPROVEN
    if sum(s.amount for s in sources) >= liabilities:
        return Status.SOLVENT
    return Status.INSOLVENT


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """What the log commits to for one epoch (``HEADER_SIZE`` bytes): the
    epoch, its time, the reserve age policy, and the number of asset entries
    and their asset map root. ``version`` is one ``hasher_for`` knows."""

    epoch: int
    timestamp_ms: int
    max_reserve_age_ms: int
    asset_count: int
    asset_map_root: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        hasher_for(self.version)  # FormatError: a version this verifier does not read
        for name in ("epoch", "timestamp_ms", "max_reserve_age_ms"):
            value = getattr(self, name)
            if not 0 <= value < _U64:
                raise FormatError(f"record {name} {value} outside u64")
        if not 0 <= self.asset_count < 2**16:
            raise FormatError(f"record asset count {self.asset_count} outside u16")
        if not isinstance(self.asset_map_root, bytes) or len(self.asset_map_root) != DIGEST_SIZE:
            raise FormatError(f"asset map root must be {DIGEST_SIZE} bytes")

    def encode(self) -> bytes:
        """The header's canonical bytes: the log's leaf for this epoch."""
        return _HEADER.pack(
            MAGIC,
            self.version,
            self.epoch,
            self.timestamp_ms,
            self.max_reserve_age_ms,
            self.asset_count,
            self.asset_map_root,
        )

    @classmethod
    def decode(cls, data: bytes) -> RecordHeader:
        """Parse header bytes (exactly ``HEADER_SIZE``).

        Raises:
            FormatError: on any deviation from the layout.
        """
        reader = _Reader(bytes(data))
        header = _read_header(reader)
        reader.finish()
        return header

    def check_asset(self, asset: AssetState) -> None:
        """Check what an entry must agree on with its header: no source dated
        after the epoch, and the status the epoch's time and policy derive.

        Raises:
            FormatError: naming the asset and what is wrong.
        """
        for s in asset.sources:
            if s.as_of_ms > self.timestamp_ms:
                raise FormatError(f"{asset.asset}: reserve {s.name} is dated after the epoch")
        want = expected_status(
            asset.liabilities, asset.sources, self.timestamp_ms, self.max_reserve_age_ms
        )
        if asset.status != want:
            raise FormatError(f"{asset.asset}: status {asset.status.name} contradicts {want.name}")


class AssetLines:
    """The asset lookups a record and a part of one share: ``assets`` sorted
    by id (all of a record's, or those a part of it proves)."""

    __slots__ = ()
    assets: tuple[AssetState, ...]

    def asset(self, asset: str) -> AssetState:
        """The line for ``asset``; KeyError if there is none."""
        for a in self.assets:
            if a.asset == asset:
                return a
        raise KeyError(asset)

    @property
    def solvent(self) -> bool:
        """True if every asset among ``assets`` is SOLVENT."""
        return all(a.status is Status.SOLVENT for a in self.assets)


@dataclass(frozen=True, slots=True)
class EpochRecord(AssetLines):
    """What the prover states at one epoch; ``epoch`` is also its index in the log.
    ``version`` is a record version ``hasher_for`` knows (``VERSION`` unless
    decoded). ``entries`` (each asset's canonical bytes) and ``header`` are
    derived on construction."""

    epoch: int
    timestamp_ms: int
    max_reserve_age_ms: int
    assets: tuple[AssetState, ...]
    version: int = VERSION
    entries: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    header: RecordHeader = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [a.asset for a in self.assets]
        if ids != sorted(set(ids)):
            raise FormatError("record assets must be sorted by id and unique")
        if len(ids) >= 2**16:
            raise FormatError("record has too many assets")
        entries = tuple(encode_entry(a) for a in self.assets)
        header = RecordHeader(
            self.epoch,
            self.timestamp_ms,
            self.max_reserve_age_ms,
            len(entries),
            map_root(hasher_for(self.version), entries),
            self.version,
        )
        for a in self.assets:
            header.check_asset(a)
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "header", header)

    def encode(self) -> bytes:
        """The canonical bytes of the full record: its header, then every entry."""
        return self.header.encode() + b"".join(self.entries)

    @classmethod
    def decode(cls, data: bytes) -> EpochRecord:
        """Parse the canonical bytes of a full record.

        Raises:
            FormatError: on any deviation from the layout or its invariants,
                an asset map root that is not the entries' included.
        """
        reader = _Reader(bytes(data))
        header = _read_header(reader)
        assets = tuple(_read_asset(reader) for _ in range(header.asset_count))
        reader.finish()
        record = cls(
            header.epoch, header.timestamp_ms, header.max_reserve_age_ms, assets, header.version
        )
        if record.header.asset_map_root != header.asset_map_root:
            raise FormatError("the record's asset map root is not that of its entries")
        return record


def encode_entry(a: AssetState) -> bytes:
    """The canonical bytes of one asset entry (a leaf of the asset map)."""
    raw = a.asset.encode("ascii")
    out = [
        bytes((len(raw),)) + raw,
        _ASSET_FIXED.pack(
            a.decimals,
            a.height,
            a.root,
            a.liabilities.to_bytes(SUM_SIZE, "big"),
            a.reserves.to_bytes(SUM_SIZE, "big"),
            a.status,
            len(a.sources),
        ),
    ]
    for s in a.sources:
        name = s.name.encode("ascii")
        out.append(bytes((len(name),)) + name)
        out.append(
            _SOURCE_FIXED.pack(
                s.amount.to_bytes(SUM_SIZE, "big"), s.as_of_ms, s.key_id, s.report_hash
            )
        )
    return b"".join(out)


def decode_entry(data: bytes, header: RecordHeader) -> AssetState:
    """Parse one asset entry of the record ``header`` heads.

    Raises:
        FormatError: on any deviation from the layout, or a disagreement
            with the header (``RecordHeader.check_asset``).
    """
    reader = _Reader(bytes(data), "asset entry")
    asset = _read_asset(reader)
    reader.finish()
    header.check_asset(asset)
    return asset


def _read_header(reader: _Reader) -> RecordHeader:
    magic, version, epoch, timestamp, max_age, count, root = reader.unpack(_HEADER)
    if magic != MAGIC:
        raise FormatError("not an epoch record (bad magic)")
    if version == 1:
        raise FormatError(
            "epoch record version 1 (unreleased, without reserve attestations) is no "
            f"longer read: this verifier reads version {VERSION}"
        )
    return RecordHeader(epoch, timestamp, max_age, count, root, version)


def _read_asset(reader: _Reader) -> AssetState:
    asset = reader.name("asset id")
    decimals, height, root, liab, res, status, n_sources = reader.unpack(_ASSET_FIXED)
    sources = []
    for _ in range(n_sources):
        name = reader.name("reserve source name")
        amount, as_of, key_id, digest = reader.unpack(_SOURCE_FIXED)
        sources.append(ReserveSource(name, int.from_bytes(amount, "big"), as_of, key_id, digest))
    if status not in Status._value2member_map_:
        raise FormatError(f"{asset}: unknown status {status}")
    return AssetState(
        asset=asset,
        decimals=decimals,
        height=height,
        root=root,
        liabilities=int.from_bytes(liab, "big"),
        reserves=int.from_bytes(res, "big"),
        status=Status(status),
        sources=tuple(sources),
    )


class _Reader:
    """Cursor over record bytes that turns every short read into FormatError."""

    def __init__(self, data: bytes, what: str = "epoch record") -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError(f"{self.what} is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size))

    def name(self, what: str) -> str:
        raw = self.take(self.take(1)[0])
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{what} is not ASCII") from exc

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise FormatError(f"{len(self.data) - self.pos} trailing bytes after {self.what}")
