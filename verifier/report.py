"""Reserve reports: a reserve source's signed statement of what it holds
(docs/PROTOCOL.md §13). Pure.

A report is a C2SP signed note signed by the source's own Ed25519 key, whose
key name is the source id. Its body is exactly these lines, each ending in
``\\n``, with canonical decimals (no sign, no leading zero)::

    solvency-reserve/v1
    source <source>
    asset <asset>
    amount <0 .. 2**96 - 1>
    as-of <milliseconds since the Unix epoch, u64>
    chain <name>          \\ on-chain sources only:
    block <height, u64>   / both lines or neither

The note carries exactly one signature line, by a key named as the source.
``report_hash`` is SHA-256 of the complete signed note bytes; the epoch record
binds it with the key id (docs/PROTOCOL.md §4). Parsing is strict:
``ReserveReport.parse(b).to_note_body() == b`` and
``SignedReport.parse(n).note == n``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.checkpoint import VerifierKey, check_key_name, sign_note, split_note
from verifier.errors import FormatError
from verifier.hashing import check_asset_id
from verifier.record import MAX_RESERVE, check_source_name

__all__ = [
    "HEADER",
    "MAX_REPORT_BYTES",
    "ReserveReport",
    "SignedReport",
    "check_attested_source",
    "report_hash",
    "sign_report",
]

HEADER = "solvency-reserve/v1"
MAX_REPORT_BYTES = 4096
_U64 = 2**64
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,39}")
_CHAIN = re.compile(r"[!-~]{1,64}")  # printable ASCII, no space
_FIELDS = ("source", "asset", "amount", "as-of")


def check_attested_source(name: str) -> None:
    """A source that attests: a reserve source name (1-64 printable ASCII, no
    space) that is also a signed-note key name (no ``+``)."""
    check_source_name(name)
    check_key_name(name)


def report_hash(note: bytes) -> bytes:
    """SHA-256 of a signed report's complete note bytes (the record binds it)."""
    return hashlib.sha256(note).digest()


def _decimal(value: str, what: str, limit: int) -> int:
    if _DECIMAL.fullmatch(value) is None:
        raise FormatError(f"report {what} {value!r} is not a canonical decimal")
    number = int(value)
    if number > limit:
        raise FormatError(f"report {what} {number} exceeds {limit}")
    return number


@dataclass(frozen=True, slots=True)
class ReserveReport:
    """``source`` holds ``amount`` of ``asset`` as of ``as_of_ms``; on-chain
    sources also name the ``chain`` and the ``block`` height it was read at."""

    source: str
    asset: str
    amount: int
    as_of_ms: int
    chain: str | None = None
    block: int | None = None

    def __post_init__(self) -> None:
        check_attested_source(self.source)
        check_asset_id(self.asset)
        if type(self.amount) is not int or not 0 <= self.amount <= MAX_RESERVE:
            raise FormatError(f"report amount {self.amount!r} outside 0..2**96-1")
        if type(self.as_of_ms) is not int or not 0 <= self.as_of_ms < _U64:
            raise FormatError(f"report as-of {self.as_of_ms!r} outside u64")
        if (self.chain is None) != (self.block is None):
            raise FormatError("report names a chain without a block, or a block without a chain")
        if self.chain is not None and _CHAIN.fullmatch(self.chain) is None:
            raise FormatError(f"report chain {self.chain!r}: want 1-64 printable ASCII")
        if self.block is not None and (type(self.block) is not int or not 0 <= self.block < _U64):
            raise FormatError(f"report block {self.block!r} outside u64")

    def to_note_body(self) -> bytes:
        lines = [
            HEADER,
            f"source {self.source}",
            f"asset {self.asset}",
            f"amount {self.amount}",
            f"as-of {self.as_of_ms}",
        ]
        if self.chain is not None:
            lines += [f"chain {self.chain}", f"block {self.block}"]
        return ("\n".join(lines) + "\n").encode("ascii")

    @classmethod
    def parse(cls, body: bytes) -> ReserveReport:
        """Parse a report body strictly (module docstring).

        Raises:
            FormatError: naming the first deviation.
        """
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError("report is not ASCII") from None
        if not text.endswith("\n"):
            raise FormatError("report body must end with a newline")
        lines = text[:-1].split("\n")
        if lines[0] != HEADER:
            raise FormatError(f"report must start with {HEADER!r}")
        if len(lines) not in (5, 7):
            raise FormatError(f"report has {len(lines)} lines, want 5 (or 7 with chain and block)")
        names = (*_FIELDS, "chain", "block")[: len(lines) - 1]
        values = []
        for name, line in zip(names, lines[1:], strict=True):
            key, sep, value = line.partition(" ")
            if key != name or not sep:
                raise FormatError(f"report line {line!r}: want '{name} <value>'")
            values.append(value)
        chain, block = (
            (values[4], _decimal(values[5], "block", _U64 - 1)) if names[4:] else (None, None)
        )
        report = cls(
            source=values[0],
            asset=values[1],
            amount=_decimal(values[2], "amount", MAX_RESERVE),
            as_of_ms=_decimal(values[3], "as-of", _U64 - 1),
            chain=chain,
            block=block,
        )
        if report.to_note_body() != body:  # e.g. a space inside a value
            raise FormatError("report is not in canonical form")
        return report


@dataclass(frozen=True, slots=True)
class SignedReport:
    """A report as its source signed it: the note's bytes, the report in its
    body, and its one signature line's key id and Ed25519 signature."""

    note: bytes
    report: ReserveReport
    key_id: int
    signature: bytes

    @property
    def hash(self) -> bytes:
        return report_hash(self.note)

    @classmethod
    def parse(cls, note: bytes) -> SignedReport:
        """Parse a signed report, checking its form only (not the signature).

        Raises:
            FormatError: a malformed note or body, other than exactly one
                signature line, or one by a key not named as the source.
        """
        if len(note) > MAX_REPORT_BYTES:
            raise FormatError(f"report is larger than {MAX_REPORT_BYTES} bytes")
        body, signatures = split_note(note)
        report = ReserveReport.parse(body)
        if len(signatures) != 1:
            raise FormatError(f"report carries {len(signatures)} signature lines, want 1")
        name, raw = signatures[0]
        if name != report.source:
            raise FormatError(f"report of source {report.source!r} is signed as {name!r}")
        if len(raw) != 68:
            raise FormatError("report signature must be a key id and an Ed25519 signature")
        return cls(note, report, int.from_bytes(raw[:4], "big"), raw[4:])

    def signer(self, keys: Sequence[VerifierKey]) -> VerifierKey | None:
        """The key of ``keys`` (named as the source, with the note's key id)
        whose signature this is, or None: none such, or the signature is invalid."""
        for key in keys:
            named = (key.name, key.key_id) == (self.report.source, self.key_id)
            if named and key.verify(self.report.to_note_body(), self.signature):
                return key
        return None


def sign_report(report: ReserveReport, key: Ed25519PrivateKey) -> bytes:
    """The signed note of ``report`` under the source's ``key``."""
    return sign_note(report.to_note_body(), report.source, key)
