"""Tables, in SQLAlchemy 2 typed declarative style. The migrations in
storage/migrations/versions create exactly these; a test checks they agree.

Amounts are unsigned and may exceed 2**63 (balances up to 2**64 - 1, reserves
up to 2**96 - 1), which SQLite's INTEGER cannot hold exactly (it would turn
them into floats). ``Amount`` stores them as NUMERIC(39, 0) on PostgreSQL and
as a 16-byte big-endian BLOB elsewhere, and always reads back a Python int.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, Numeric, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "Amount",
    "Asset",
    "Balance",
    "Base",
    "Epoch",
    "EpochMark",
    "Reserve",
    "SaltPeriodRow",
    "SigningKey",
    "SourceMark",
    "encode_amount",
]

AMOUNT_BYTES = 16


def encode_amount(value: int, dialect_name: str) -> Any:
    """The column value of an amount for a dialect (used by the bulk paths too)."""
    if dialect_name == "postgresql":
        return Decimal(value)
    return value.to_bytes(AMOUNT_BYTES, "big")


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
        if value is None:
            return None
        if isinstance(value, bytes | memoryview):
            return int.from_bytes(bytes(value), "big")
        return int(value)


class Base(DeclarativeBase):
    pass


class Asset(Base):
    __tablename__ = "assets"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    decimals: Mapped[int] = mapped_column(Integer)


class Balance(Base):
    """A user's current balance of an asset (absolute; 0 means none)."""

    __tablename__ = "balances"
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    asset: Mapped[str] = mapped_column(ForeignKey("assets.id"), primary_key=True)
    amount: Mapped[int] = mapped_column(Amount)


class SourceMark(Base):
    """The last sequence number applied from a producer (kind: balances or reserves)."""

    __tablename__ = "source_marks"
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class Reserve(Base):
    """A reserve source's latest report for one asset."""

    __tablename__ = "reserves"
    asset: Mapped[str] = mapped_column(ForeignKey("assets.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount: Mapped[int] = mapped_column(Amount)
    as_of_ms: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)


class SaltPeriodRow(Base):
    __tablename__ = "salt_periods"
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_ms: Mapped[int] = mapped_column(BigInteger)
    secret: Mapped[bytes] = mapped_column(LargeBinary(32))


class Epoch(Base):
    """One epoch: also leaf ``number`` of the log (``leaf_hash`` = RFC 9162 leaf hash)."""

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


class SigningKey(Base):
    __tablename__ = "signing_keys"
    key_id: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    active_from_ms: Mapped[int] = mapped_column(BigInteger)
    active_to_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
