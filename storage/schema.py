"""Tables, in SQLAlchemy 2 typed declarative style. The migrations in
storage/migrations/versions create exactly these; a test checks they agree.

    assets            id (= symbol), decimals
    balances          (user_id, asset) -> amount               absolute, as of the last fold
    balance_journal   id -> source, first_seq, last_seq, count, body
                      acknowledged batches not yet folded into balances
    source_marks      (kind, source) -> last_seq                ingest high-water marks
    reserves          (asset, source) -> amount, as_of_ms, seq  latest report,
                      key_id, report_hash                       its signed report, or NULL
    reserve_reports   report_hash -> source, asset, note        every signed report accepted
    salt_periods      number -> started_ms, secret[32]
    epochs            number -> record, leaf_hash, checkpoint, created_ms
                      (row ``number`` is also leaf ``number`` of the RFC 9162 log;
                      leaf_hash: of the leaf the appender named, not stored)
    epoch_marks       (epoch, kind, source) -> last_seq         what an epoch covers
    epoch_reserves    (epoch, asset, source) -> amount, as_of_ms  reserves it used
    witness_cosignatures  (epoch, witness, key_id) -> line      its checkpoint's cosignatures
    signing_keys      key_id -> name, public_key, active_from_ms, active_to_ms
    writer_leases     name -> holder, token, expires_ms         the log writer's lease
    shard_states      (stream, part) -> epoch, period, cut,     a shard's last close
                      resume, marks, trees, replies
    shard_holdings    (stream, part, asset, user_id) -> amount, slot   its holders as of
                      the last fold
    shard_deltas      (stream, part, epoch) -> count, body      each close's changed
                      holdings, packed, not yet folded into shard_holdings

Times are integer milliseconds since the Unix epoch (UTC), as in the epoch
record, so nothing depends on a database's time zone handling.

Amounts are unsigned and may exceed 2**63 (balances up to 2**64 - 1, reserves
up to 2**96 - 1), which SQLite's INTEGER cannot hold exactly (it would turn
them into floats). ``Amount`` stores them as NUMERIC(39, 0) on PostgreSQL and
as a 16-byte big-endian BLOB elsewhere, and always reads back a Python int.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from storage.errors import InvalidAmountError

__all__ = [
    "Amount",
    "Asset",
    "Balance",
    "BalanceJournal",
    "Base",
    "Epoch",
    "EpochMark",
    "EpochReserve",
    "Reserve",
    "ReserveReportRow",
    "SaltPeriodRow",
    "ShardDelta",
    "ShardHolding",
    "ShardStateRow",
    "SigningKey",
    "SourceMark",
    "WitnessCosignature",
    "WriterLease",
    "decode_amount",
    "encode_amount",
]

AMOUNT_BYTES = 16
AMOUNT_LIMIT = 1 << (8 * AMOUNT_BYTES)  # exclusive; NUMERIC(39, 0) holds it too


def encode_amount(value: int, dialect_name: str) -> Any:
    """The column value of an amount for a dialect (used by the bulk paths too).

    Big-endian and fixed-width, so the BLOBs sort as the numbers do.

    Raises:
        InvalidAmountError: ``value`` is not an int in 0..2**128-1 (callers check
            the tighter per-column limits first; this is the last line of defence).
    """
    if type(value) is not int or not 0 <= value < AMOUNT_LIMIT:
        raise InvalidAmountError(f"amount {value!r} is not an integer in 0..2**128-1")
    if dialect_name == "postgresql":
        return Decimal(value)
    return value.to_bytes(AMOUNT_BYTES, "big")


def decode_amount(value: Any) -> int:
    """An amount read back from either dialect (BLOB or Decimal) as an exact int."""
    if isinstance(value, bytes | memoryview):
        return int.from_bytes(value, "big")
    return int(value)


class Amount(TypeDecorator[int]):
    """An exact unsigned integer below 2**128 on every dialect."""

    impl = LargeBinary(AMOUNT_BYTES)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(39, 0))
        return dialect.type_descriptor(LargeBinary(AMOUNT_BYTES))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        return None if value is None else encode_amount(value, dialect.name)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else decode_amount(value)


class Base(DeclarativeBase):
    pass


class Asset(Base):
    """A registered asset. Its id is its symbol (``BTC``, ``USDT.E``: the protocol's
    asset id, docs/PROTOCOL.md), so there is no separate symbol column."""

    __tablename__ = "assets"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    decimals: Mapped[int] = mapped_column(Integer)


class Balance(Base):
    """A user's current balance of an asset (absolute; 0 means none)."""

    __tablename__ = "balances"
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    asset: Mapped[str] = mapped_column(ForeignKey("assets.id"), primary_key=True)
    amount: Mapped[int] = mapped_column(Amount)


class BalanceJournal(Base):
    """One acknowledged batch of balance updates not yet folded into ``balances``
    (migration 0003). The balance of a (user, asset) is its last line in the
    journal row of highest ``id`` that has one, else its ``balances`` row.

    ``id`` increases in commit order (SQLite: the rowid, assigned under the
    write lock; PostgreSQL: a BIGSERIAL drawn under ``apply_balances``'s
    journal lock). ``first_seq``/``last_seq`` are the producer's sequence
    numbers of the batch's first and last fresh update, ``count`` the number
    of lines of ``body``.

    ``body`` is UTF-8 text, one line per fresh update of the batch in batch
    order, ``f"{user}\\t{asset}\\t{amount}\\n"``, the amount in decimal
    (rows written before held one line per (user, asset) of the batch, the
    last update of each: read alike). User and asset ids never contain
    control characters (the protocol refuses them, see ``storage.checks``),
    so tab and newline cannot occur inside a field.
    """

    __tablename__ = "balance_journal"
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    source: Mapped[str] = mapped_column(String(64))
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)


class SourceMark(Base):
    """The last sequence number applied from a producer (kind: balances or reserves)."""

    __tablename__ = "source_marks"
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class Reserve(Base):
    """A reserve source's latest report for one asset; ``key_id`` and
    ``report_hash`` name its signed report (migration 0005), both NULL for an
    unattested source."""

    __tablename__ = "reserves"
    asset: Mapped[str] = mapped_column(ForeignKey("assets.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount: Mapped[int] = mapped_column(Amount)
    as_of_ms: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    report_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)


class ReserveReportRow(Base):
    """A signed reserve report the prover accepted, by the SHA-256 of its note
    (migration 0005): kept so that every epoch's root stream frame can be
    served again with the reports its record binds."""

    __tablename__ = "reserve_reports"
    report_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    asset: Mapped[str] = mapped_column(ForeignKey("assets.id"))
    note: Mapped[bytes] = mapped_column(LargeBinary)


class SaltPeriodRow(Base):
    """A salt period: its number, start (ms since the Unix epoch) and 32-byte secret."""

    __tablename__ = "salt_periods"
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    started_ms: Mapped[int] = mapped_column(BigInteger)
    secret: Mapped[bytes] = mapped_column(LargeBinary(32))


class Epoch(Base):
    """One epoch: also leaf ``number`` of the log. ``record`` is what the
    appender stored; ``leaf_hash`` the RFC 9162 hash of the leaf it named
    (the record's header), which is not kept."""

    __tablename__ = "epochs"
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    record: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    checkpoint: Mapped[str] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class EpochMark(Base):
    """The producers' sequence numbers an epoch covers."""

    __tablename__ = "epoch_marks"
    epoch: Mapped[int] = mapped_column(ForeignKey("epochs.number"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class EpochReserve(Base):
    """The reserve reports an epoch's record used (migration 0002)."""

    __tablename__ = "epoch_reserves"
    epoch: Mapped[int] = mapped_column(ForeignKey("epochs.number"), primary_key=True)
    asset: Mapped[str] = mapped_column(ForeignKey("assets.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount: Mapped[int] = mapped_column(Amount)
    as_of_ms: Mapped[int] = mapped_column(BigInteger)


class WitnessCosignature(Base):
    """A witness's cosignature of an epoch's checkpoint (migration 0004): the
    signature line (``— <witness> <base64>\n``) by the cosignature/v1 key
    ``witness`` with ``key_id`` (a u32), verified by the prover before it is
    stored; one per epoch and witness key."""

    __tablename__ = "witness_cosignatures"
    __table_args__ = (Index("ix_witness_cosignatures_witness", "witness", "key_id", "epoch"),)
    epoch: Mapped[int] = mapped_column(ForeignKey("epochs.number"), primary_key=True)
    witness: Mapped[str] = mapped_column(String(255), primary_key=True)
    key_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    line: Mapped[str] = mapped_column(Text)


class SigningKey(Base):
    """A checkpoint signing key (the private half stays in its file)."""

    __tablename__ = "signing_keys"
    key_id: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    active_from_ms: Mapped[int] = mapped_column(BigInteger)
    active_to_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class WriterLease(Base):
    """A log writer's lease (migration 0007, storage/lease.py): who holds
    it, until when (ms since the Unix epoch), and its fencing token."""

    __tablename__ = "writer_leases"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    token: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int] = mapped_column(BigInteger)


class ShardStateRow(Base):
    """A shard's state as of the last epoch it closed (migration 0008,
    storage/shards.py), one row per ledger stream and part: the epoch, its
    salt period, where the shard's reader stood after the cut (``cut``,
    ``resume``; ``marks``: JSON, source to last seq), ``trees`` (JSON: asset
    to [whole height, slots of the part's order handed out]) and
    ``replies``, the shard's encoded answers to that epoch's Stage and Close."""

    __tablename__ = "shard_states"
    stream: Mapped[str] = mapped_column(String(128), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[int] = mapped_column(Integer)
    cut: Mapped[int] = mapped_column(BigInteger)
    resume: Mapped[int] = mapped_column(BigInteger)
    marks: Mapped[str] = mapped_column(Text)
    trees: Mapped[str] = mapped_column(Text)
    replies: Mapped[bytes] = mapped_column(LargeBinary)


class ShardHolding(Base):
    """A holder of a shard's part as of the shard's last closed epoch
    (migration 0008): its balance (not 0) and its slot in the whole tree."""

    __tablename__ = "shard_holdings"
    stream: Mapped[str] = mapped_column(String(128), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    asset: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    amount: Mapped[int] = mapped_column(Amount)
    slot: Mapped[int] = mapped_column(BigInteger)


class ShardDelta(Base):
    """The holdings one close of a shard changed (migration 0009,
    storage/shards.py), not yet folded into ``shard_holdings``: ``body``
    packs them (msgpack, see ``storage.shards``), ``count`` how many
    holdings it names."""

    __tablename__ = "shard_deltas"
    stream: Mapped[str] = mapped_column(String(128), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
