"""Ingest messages (docs/PROTOCOL.md §11.1): parsing and replies, pure.

A producer sends JSON text frames to ``/ingest``::

    {"type": "balances", "id": "b-17", "source": "core-ledger",
     "updates": [{"seq": 17, "user": "alice", "asset": "BTC", "amount": "150000000"}]}
    {"type": "reserves", "id": 4, "source": "cold-1",
     "updates": [{"seq": 4, "asset": "BTC", "amount": "60000000000", "as_of_ms": 1790000000000}]}
    {"type": "reserve-reports", "id": 5, "source": "cold-1",
     "reports": [{"seq": 5, "report": "solvency-reserve/v1\nsource cold-1\n...— cold-1 ...\n"}]}

A ``reserve-reports`` message carries reports signed by the source's own key
(verifier/report.py, docs/PROTOCOL.md §13); they are parsed here, and their
signatures checked by the engine against the configured attester keys.
Amounts are absolute (the user's new balance; the source's current holding),
as decimal strings or JSON integers. Sequence numbers are per source and
strictly increasing within a batch. The prover answers each message with an
``ack`` once it is durably stored, or an ``error`` naming the problem; an
error applies nothing of that message.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from prover.errors import IngestError
from verifier.errors import FormatError
from verifier.hashing import MAX_BALANCE, check_asset_id, check_user_id, find_invalid_user_id
from verifier.record import MAX_RESERVE, check_source_name
from verifier.report import MAX_REPORT_BYTES, SignedReport

__all__ = [
    "MAX_BATCH",
    "MAX_MESSAGE_BYTES",
    "MAX_REPORTS",
    "BalanceBatch",
    "BalanceUpdate",
    "ReserveBatch",
    "ReserveReportBatch",
    "ReserveReportUpdate",
    "ReserveUpdate",
    "ack",
    "error_reply",
    "parse_ingest",
]

MAX_MESSAGE_BYTES = 16 << 20
MAX_BATCH = 100_000
MAX_REPORTS = 1_000  # signed reports per message: ~60 ms of signature checks
MAX_SEQ = 2**63 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,38}")
_INDEX = re.compile(r"^\$\.(updates|reports)\[(\d+)\]")

RequestId = str | int | None


# The wire shapes, checked by msgspec in C (the per-update hot path). Amounts
# arrive as integers or decimal strings and are converted and range-checked
# afterwards, identifiers by verifier.hashing's rules in _check_ids: a
# ``pattern`` here would run Python's re once per field, 2 us per update.
Seq = Annotated[int, Meta(ge=0, le=MAX_SEQ)]
Amount = Annotated[int, Meta(ge=0)] | str
Asset = Annotated[str, Meta(min_length=1, max_length=16)]
User = Annotated[str, Meta(min_length=1, max_length=255)]
Id = Annotated[str, Meta(max_length=128)] | int | None


class BalanceUpdate(Struct, frozen=True, forbid_unknown_fields=True):
    """One update, also as msgspec decodes it when its amount is a JSON integer
    (then checked against MAX_BALANCE after decoding: msgspec bounds stop at
    int64)."""

    seq: Seq
    user: User
    asset: Asset
    amount: Annotated[int, Meta(ge=0)]


class ReserveUpdate(Struct, frozen=True):
    seq: int
    asset: str
    amount: int
    as_of_ms: int


class BalanceBatch(Struct, frozen=True):
    id: RequestId
    source: str
    updates: tuple[BalanceUpdate, ...]


class ReserveBatch(Struct, frozen=True):
    id: RequestId
    source: str
    updates: tuple[ReserveUpdate, ...]


class _Balance(Struct, forbid_unknown_fields=True):
    seq: Seq
    user: User
    asset: Asset
    amount: Amount


class _Reserve(Struct, forbid_unknown_fields=True):
    seq: Seq
    asset: Asset
    amount: Amount
    as_of_ms: Seq


class _Balances(Struct, forbid_unknown_fields=True, tag_field="type", tag="balances"):
    source: str
    updates: Annotated[list[_Balance], Meta(min_length=1, max_length=MAX_BATCH)]
    id: Id = None


class _PlainBalances(Struct, forbid_unknown_fields=True, tag_field="type", tag="balances"):
    """A balance batch whose amounts are all JSON integers, the common case:
    decoded straight into BalanceUpdate, without a second object per update."""

    source: str
    updates: Annotated[list[BalanceUpdate], Meta(min_length=1, max_length=MAX_BATCH)]
    id: Id = None


class _Reserves(Struct, forbid_unknown_fields=True, tag_field="type", tag="reserves"):
    source: str
    updates: Annotated[list[_Reserve], Meta(min_length=1, max_length=MAX_BATCH)]
    id: Id = None


class _Report(Struct, forbid_unknown_fields=True):
    seq: Seq
    report: Annotated[str, Meta(min_length=1, max_length=MAX_REPORT_BYTES)]


class _ReserveReports(Struct, forbid_unknown_fields=True, tag_field="type", tag="reserve-reports"):
    source: str
    reports: Annotated[list[_Report], Meta(min_length=1, max_length=MAX_REPORTS)]
    id: Id = None


@dataclass(frozen=True, slots=True)
class ReserveReportUpdate:
    """One signed report, as the store keeps it (storage.rows.AttestedReserveUpdate)."""

    seq: int
    signed: SignedReport
    report_hash: bytes

    @property
    def asset(self) -> str:
        return self.signed.report.asset

    @property
    def amount(self) -> int:
        return self.signed.report.amount

    @property
    def as_of_ms(self) -> int:
        return self.signed.report.as_of_ms

    @property
    def key_id(self) -> int:
        return self.signed.key_id

    @property
    def note(self) -> bytes:
        return self.signed.note


@dataclass(frozen=True, slots=True)
class ReserveReportBatch:
    """A ``reserve-reports`` message: each report is well formed and names the
    message's source; its signature is not checked yet (the engine does)."""

    id: RequestId
    source: str
    updates: tuple[ReserveReportUpdate, ...]


class _IdOnly(Struct):
    """A refused message's ``id``, read again on its own to echo it."""

    id: Id = None


# Both decoders take a union of tagged types: msgspec requires the tag of a
# union's member, not of a lone struct, and an untagged message must be refused.
_decoder = msgspec.json.Decoder(_Balances | _Reserves | _ReserveReports)
_plain_decoder = msgspec.json.Decoder(_PlainBalances | _Reserves | _ReserveReports)
_id_decoder = msgspec.json.Decoder(_IdOnly)


Batch = BalanceBatch | ReserveBatch | ReserveReportBatch


def parse_ingest(data: str | bytes) -> Batch:
    """Parse and validate one ingest message (everything that needs no state).

    Every message names its ``type``; a refusal carries the message's ``id``
    (``IngestError.id``) whenever the message has a valid one.

    Raises:
        IngestError: with code ``too-large``, ``bad-json``, ``bad-message``,
            ``bad-update`` (``index`` names the update) or ``bad-seq``.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise IngestError("too-large", f"message larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        return _parse(data)
    except IngestError as exc:
        if exc.id is None and exc.code != "bad-json":
            with contextlib.suppress(msgspec.DecodeError, UnicodeError):
                exc.id = _valid_id(_id_decoder.decode(data).id)
        raise


def _valid_id(value: RequestId) -> RequestId:
    return None if isinstance(value, int) and len(str(value)) > 128 else value


def _parse(data: str | bytes) -> Batch:
    doc: _PlainBalances | _Balances | _Reserves | _ReserveReports
    try:
        doc = _plain_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeError):  # or not plain: decoded again, in full
        try:
            doc = _decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise _refusal(str(exc)) from None
        except (msgspec.DecodeError, UnicodeError) as exc:
            raise IngestError("bad-json", f"message is not JSON: {exc}") from None
    if _valid_id(doc.id) != doc.id:
        raise IngestError("bad-message", "id must be a string or integer of at most 128 characters")
    try:
        check_source_name(doc.source)
    except FormatError as exc:
        raise IngestError("bad-message", str(exc)) from None
    if isinstance(doc, _ReserveReports):
        return _reserve_reports(doc)
    users = [u.user for u in doc.updates] if not isinstance(doc, _Reserves) else []
    _check_ids([u.asset for u in doc.updates], users)
    if isinstance(doc, _PlainBalances):
        if max(u.amount for u in doc.updates) > MAX_BALANCE:
            for i, u in enumerate(doc.updates):
                _amount(u.amount, MAX_BALANCE, i)
        _check_seqs([u.seq for u in doc.updates])
        return BalanceBatch(doc.id, doc.source, tuple(doc.updates))
    if isinstance(doc, _Balances):
        balances = tuple(
            BalanceUpdate(u.seq, u.user, u.asset, _amount(u.amount, MAX_BALANCE, i))
            for i, u in enumerate(doc.updates)
        )
        _check_seqs([u.seq for u in balances])
        return BalanceBatch(doc.id, doc.source, balances)
    reserves = tuple(
        ReserveUpdate(u.seq, u.asset, _amount(u.amount, MAX_RESERVE, i), u.as_of_ms)
        for i, u in enumerate(doc.updates)
    )
    _check_seqs([u.seq for u in reserves])
    return ReserveBatch(doc.id, doc.source, reserves)


def _refusal(problem: str) -> IngestError:
    """Map msgspec's message (``... - at `$.updates[3].seq```) to a reply code."""
    found = _INDEX.search(problem.rsplit(" - at `", 1)[-1])
    if found is None:
        return IngestError("bad-message", problem)
    index = int(found.group(2))
    return IngestError("bad-update", f"{found.group(1)}[{index}]: {problem}", index)


def _reserve_reports(doc: _ReserveReports) -> ReserveReportBatch:
    """Each report well formed, from the message's source; seqs increasing."""
    updates = []
    for i, item in enumerate(doc.reports):
        try:
            signed = SignedReport.parse(item.report.encode("utf-8"))
        except FormatError as exc:
            raise IngestError("bad-update", f"reports[{i}]: {exc}", i) from None
        if signed.report.source != doc.source:
            raise IngestError(
                "bad-update",
                f"reports[{i}]: a report of source {signed.report.source!r} in a message "
                f"from {doc.source!r}",
                i,
            )
        updates.append(ReserveReportUpdate(item.seq, signed, signed.hash))
    _check_seqs([u.seq for u in updates])
    return ReserveReportBatch(doc.id, doc.source, tuple(updates))


def _check_ids(assets: list[str], users: list[str]) -> None:
    """Every asset id and user id (none for reserves) as verifier.hashing wants
    it: each distinct asset once, the users all at once; then, if one is
    refused, one by one to name the first."""
    with contextlib.suppress(FormatError):
        for asset in set(assets):
            check_asset_id(asset)
        if find_invalid_user_id(users) is None:
            return
    for i, asset in enumerate(assets):
        try:
            check_asset_id(asset)
            if users:
                check_user_id(users[i])
        except FormatError as exc:
            raise IngestError("bad-update", f"updates[{i}]: {exc}", i) from None


def _amount(value: int | str, limit: int, index: int) -> int:
    amount = value if type(value) is int else _decimal(value, index)
    if amount > limit:
        raise IngestError(
            "bad-update", f"updates[{index}]: amount {amount} is outside 0..{limit}", index
        )
    return amount


def _decimal(value: int | str, index: int) -> int:
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    raise IngestError(
        "bad-update",
        f"updates[{index}]: amount must be a non-negative integer or decimal string (no floats)",
        index,
    )


def _check_seqs(seqs: list[int]) -> None:
    last = -1
    for i, seq in enumerate(seqs):
        if seq <= last:
            raise IngestError("bad-seq", f"updates[{i}]: seq {seq} is not increasing", i)
        last = seq


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
