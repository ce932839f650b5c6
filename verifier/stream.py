"""Messages of the root stream ``/roots`` (docs/PROTOCOL.md §11.2).

Each epoch the prover sends one text frame holding a JSON object, of one of
three types, by what the subscriber asked for::

    {"type": "epoch",                      # all assets (the default)
     "record": "<base64 full epoch record>",
     "checkpoint": "<signed note text of the log after this epoch>",
     "inclusion": ["<64 hex>", ...],     # the record's header at index epoch, RFC 9162
     "reports": ["<signed reserve report>", ...]}  # PROTOCOL §13

    {"type": "epoch-assets",               # ?assets=A,B: the header, chosen entries
     "header": "<base64 record header>",
     "entries": [{"entry": "<base64>", "index": 0, "map_path": ["<64 hex>", ...]}, ...],
     "checkpoint": ..., "inclusion": ..., "reports": ...}

    {"type": "checkpoint", "checkpoint": ..., "consistency": ...}   # ?only=checkpoints

``inclusion`` is also the proof that the log extends the log of ``epoch``
records (``rfc9162.prefix_root``); a checkpoint frame carries the RFC 9162
consistency proof instead. ``reports`` holds signed reports the sent entries'
attested sources rest on (none twice): all of them in a connection's first
frame, then those new since the previous epoch; an auditor finds each by the
hash the record binds (``verifier.attestation``). ``entries`` are sorted by
index, each once.

The record's epoch number is its log index, and the checkpoint's size must be
``epoch + 1``: the stream carries each checkpoint right after its epoch. A frame
is read as strictly as a proof file (``verifier.fields``: no duplicate or
unknown key, canonical base64).

The same messages in MessagePack, for subscribers that negotiate it, are
``verifier.stream_binary``'s.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from verifier.errors import FormatError
from verifier.fields import b64, exact_keys, hex32_list, load_object, natural, text
from verifier.selection import MapEntry

__all__ = [
    "AssetsMessage",
    "CheckpointMessage",
    "EpochMessage",
    "StreamMessage",
    "parse_message",
    "reports_of",
    "sorted_entries",
]

MAX_MESSAGE_BYTES = 1 << 20


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class EpochMessage:
    """One epoch as published on the root stream, with its full record."""

    record: bytes
    checkpoint: bytes
    inclusion: tuple[bytes, ...]
    reports: tuple[bytes, ...] = ()

    def to_json(self) -> str:
        return _dumps(
            {
                "type": "epoch",
                "record": _b64(self.record),
                "checkpoint": self.checkpoint.decode("utf-8"),
                "inclusion": [h.hex() for h in self.inclusion],
                "reports": [r.decode("utf-8") for r in self.reports],
            }
        )


@dataclass(frozen=True, slots=True)
class AssetsMessage:
    """One epoch for a subscriber of chosen assets: the record's header and the
    entries that prove what it says of them (``verifier.selection``)."""

    header: bytes
    entries: tuple[MapEntry, ...]
    checkpoint: bytes
    inclusion: tuple[bytes, ...]
    reports: tuple[bytes, ...] = ()

    def to_json(self) -> str:
        return _dumps(
            {
                "type": "epoch-assets",
                "header": _b64(self.header),
                "entries": [
                    {
                        "entry": _b64(e.entry),
                        "index": e.index,
                        "map_path": [h.hex() for h in e.path],
                    }
                    for e in self.entries
                ],
                "checkpoint": self.checkpoint.decode("utf-8"),
                "inclusion": [h.hex() for h in self.inclusion],
                "reports": [r.decode("utf-8") for r in self.reports],
            }
        )


@dataclass(frozen=True, slots=True)
class CheckpointMessage:
    """One epoch's checkpoint alone, for witnesses and monitors."""

    checkpoint: bytes
    consistency: tuple[bytes, ...]

    def to_json(self) -> str:
        return _dumps(
            {
                "type": "checkpoint",
                "checkpoint": self.checkpoint.decode("utf-8"),
                "consistency": [h.hex() for h in self.consistency],
            }
        )


StreamMessage = EpochMessage | AssetsMessage | CheckpointMessage


def parse_message(data: str | bytes) -> StreamMessage:
    """Parse one frame of the root stream.

    Raises:
        FormatError: naming what is malformed.
    """
    doc = load_object(data, MAX_MESSAGE_BYTES, "stream message")
    kind = doc.get("type")
    if kind == "checkpoint":
        exact_keys(doc, {"type", "checkpoint", "consistency"}, "checkpoint message")
        return CheckpointMessage(
            checkpoint=text(doc["checkpoint"], "checkpoint").encode("utf-8"),
            consistency=hex32_list(doc["consistency"], "consistency"),
        )
    common = {"type", "checkpoint", "inclusion", "reports"}
    if kind == "epoch":
        exact_keys(doc, common | {"record"}, "epoch message")
        return EpochMessage(
            record=b64(doc["record"], "record"),
            checkpoint=text(doc["checkpoint"], "checkpoint").encode("utf-8"),
            inclusion=hex32_list(doc["inclusion"], "inclusion"),
            reports=reports_of(doc["reports"]),
        )
    if kind == "epoch-assets":
        exact_keys(doc, common | {"header", "entries"}, "epoch-assets message")
        return AssetsMessage(
            header=b64(doc["header"], "header"),
            entries=_entries(doc["entries"]),
            checkpoint=text(doc["checkpoint"], "checkpoint").encode("utf-8"),
            inclusion=hex32_list(doc["inclusion"], "inclusion"),
            reports=reports_of(doc["reports"]),
        )
    raise FormatError(f"unknown stream message type {kind!r}")


def reports_of(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise FormatError("reports must be a list of signed reports")
    reports = tuple(text(r, f"reports[{i}]").encode("utf-8") for i, r in enumerate(value))
    if len(set(reports)) != len(reports):
        raise FormatError("reports lists a signed report twice")
    return reports


def _entries(value: Any) -> tuple[MapEntry, ...]:
    if not isinstance(value, list):
        raise FormatError("entries must be a list")
    out = []
    for i, item in enumerate(value):
        where = f"entries[{i}]"
        item = exact_keys(item, {"entry", "index", "map_path"}, where)
        out.append(
            MapEntry(
                entry=b64(item["entry"], f"{where}.entry"),
                index=natural(item["index"], f"{where}.index"),
                path=hex32_list(item["map_path"], f"{where}.map_path"),
            )
        )
    return sorted_entries(tuple(out))


def sorted_entries(entries: tuple[MapEntry, ...]) -> tuple[MapEntry, ...]:
    if any(a.index >= b.index for a, b in pairwise(entries)):
        raise FormatError("entries must be sorted by index, each index once")
    return entries
