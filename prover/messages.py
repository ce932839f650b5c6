"""Ingest messages (docs/PROTOCOL.md §11.1): parsing and replies, pure.

A producer sends JSON text frames to ``/ingest``::

    {"type": "balances", "id": "b-17", "source": "core-ledger",
     "updates": [{"seq": 17, "user": "alice", "asset": "BTC", "amount": "150000000"}]}
    {"type": "reserves", "id": 4, "source": "cold-1",
     "updates": [{"seq": 4, "asset": "BTC", "amount": "60000000000", "as_of_ms": 1790000000000}]}

Amounts are absolute (the user's new balance; the source's current holding),
as decimal strings or JSON integers. Sequence numbers are per source and
strictly increasing within a batch. The prover answers each message with an
``ack`` once it is durably stored, or an ``error`` naming the problem; an
error applies nothing of that message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prover.errors import IngestError
from verifier.errors import FormatError
from verifier.hashing import MAX_BALANCE, check_asset_id, check_user_id
from verifier.record import MAX_RESERVE, check_source_name

__all__ = [
    "MAX_BATCH",
    "MAX_MESSAGE_BYTES",
    "BalanceBatch",
    "BalanceUpdate",
    "ReserveBatch",
    "ReserveUpdate",
    "ack",
    "error_reply",
    "parse_ingest",
]

MAX_MESSAGE_BYTES = 16 << 20
MAX_BATCH = 100_000
MAX_SEQ = 2**63 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,38}")
_MESSAGE_KEYS = frozenset({"type", "source", "updates"})
_BALANCE_KEYS = frozenset({"seq", "user", "asset", "amount"})
_RESERVE_KEYS = frozenset({"seq", "asset", "amount", "as_of_ms"})
_NONE: frozenset[str] = frozenset()

RequestId = str | int | None


@dataclass(frozen=True, slots=True)
class BalanceUpdate:
    seq: int
    user: str
    asset: str
    amount: int


@dataclass(frozen=True, slots=True)
class ReserveUpdate:
    seq: int
    asset: str
    amount: int
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class BalanceBatch:
    id: RequestId
    source: str
    updates: tuple[BalanceUpdate, ...]


@dataclass(frozen=True, slots=True)
class ReserveBatch:
    id: RequestId
    source: str
    updates: tuple[ReserveUpdate, ...]


def parse_ingest(data: str | bytes) -> BalanceBatch | ReserveBatch:
    """Parse and validate one ingest message (everything that needs no state).

    Raises:
        IngestError: with code ``too-large``, ``bad-json`` or ``bad-message``.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise IngestError("too-large", f"message larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IngestError("bad-json", f"message is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise IngestError("bad-message", "message must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, str | int)
        or len(str(request_id)) > 128
    ):
        raise IngestError("bad-message", "id must be a string or integer of at most 128 characters")
    kind = doc.get("type")
    if kind not in ("balances", "reserves"):
        raise IngestError("bad-message", f"type must be 'balances' or 'reserves', got {kind!r}")
    _exact_keys(doc, _MESSAGE_KEYS, frozenset({"id"}), "message")
    source = doc["source"]
    try:
        check_source_name(source)
    except FormatError as exc:
        raise IngestError("bad-message", str(exc)) from None
    rows = doc["updates"]
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_BATCH:
        raise IngestError("bad-message", f"updates must be a list of 1 to {MAX_BATCH} updates")
    if kind == "balances":
        return BalanceBatch(request_id, source, _parse_rows(rows, _balance))
    return ReserveBatch(request_id, source, _parse_rows(rows, _reserve))


Update = TypeVar("Update", BalanceUpdate, ReserveUpdate)


def _parse_rows(rows: list[Any], parse: Callable[[Any], Update]) -> tuple[Update, ...]:
    updates = []
    last_seq = -1
    for i, row in enumerate(rows):
        try:
            update = parse(row)
        except (IngestError, FormatError) as exc:
            raise IngestError("bad-update", f"updates[{i}]: {exc}", i) from None
        if update.seq <= last_seq:
            raise IngestError("bad-seq", f"updates[{i}]: seq {update.seq} is not increasing", i)
        last_seq = update.seq
        updates.append(update)
    return tuple(updates)


def ack(request_id: RequestId, source: str, applied: int, duplicates: int, last_seq: int) -> str:
    """The reply to a durably stored message."""
    return json.dumps(
        {
            "type": "ack",
            "id": request_id,
            "source": source,
            "applied": applied,
            "duplicates": duplicates,
            "last_seq": last_seq,
        }
    )


def error_reply(request_id: RequestId, error: IngestError) -> str:
    """The reply to a refused message: nothing of it was applied."""
    return json.dumps(
        {
            "type": "error",
            "id": request_id,
            "code": error.code,
            "message": error.message,
            "index": error.index,
        }
    )


def _exact_keys(
    doc: dict[str, Any], required: frozenset[str], optional: frozenset[str], where: str
) -> None:
    if doc.keys() == required:  # the common case, checked without building sets
        return
    keys = set(doc)
    if not required <= keys or not keys <= required | optional:
        missing, extra = sorted(required - keys), sorted(keys - required - optional)
        raise IngestError("bad-message", f"{where}: missing keys {missing}, unknown keys {extra}")


def _seq(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise IngestError("bad-update", f"seq must be an integer in 0..{MAX_SEQ}")
    return value


def _amount(value: Any, limit: int) -> int:
    if type(value) is int:
        amount = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        amount = int(value)
    else:
        raise IngestError(
            "bad-update", "amount must be a non-negative integer or decimal string (no floats)"
        )
    if not 0 <= amount <= limit:
        raise IngestError("bad-update", f"amount {amount} is outside 0..{limit}")
    return amount


def _balance(row: Any) -> BalanceUpdate:
    if not isinstance(row, dict):
        raise IngestError("bad-update", "an update must be a JSON object")
    _exact_keys(row, _BALANCE_KEYS, _NONE, "update")
    check_user_id(row["user"])
    check_asset_id(row["asset"])
    return BalanceUpdate(
        _seq(row["seq"]), row["user"], row["asset"], _amount(row["amount"], MAX_BALANCE)
    )


def _reserve(row: Any) -> ReserveUpdate:
    if not isinstance(row, dict):
        raise IngestError("bad-update", "an update must be a JSON object")
    _exact_keys(row, _RESERVE_KEYS, _NONE, "update")
    check_asset_id(row["asset"])
    as_of = row["as_of_ms"]
    if type(as_of) is not int or not 0 <= as_of < 2**63:
        raise IngestError("bad-update", "as_of_ms must be a Unix time in milliseconds")
    return ReserveUpdate(_seq(row["seq"]), row["asset"], _amount(row["amount"], MAX_RESERVE), as_of)
