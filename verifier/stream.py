"""Messages of the root stream ``/roots`` (docs/PROTOCOL.md §11.2).

Each epoch the prover sends one text frame holding a JSON object::

    {"type": "epoch",
     "record": "<base64 epoch record>",
     "checkpoint": "<signed note text of the log after this epoch>",
     "inclusion": ["<64 hex>", ...],     # the record at index epoch, RFC 9162
     "consistency": ["<64 hex>", ...],   # from size epoch to size epoch + 1
     "reports": ["<signed reserve report>", ...]}  # PROTOCOL §13

``reports`` holds the signed reports the record's attested sources rest on
(each epoch, all of them, in the record's order; none twice); an auditor finds
each by the hash the record binds (``verifier.attestation``).

The record's epoch number is its log index, and the checkpoint's size must be
``epoch + 1``: the stream carries each checkpoint right after its epoch. A frame
is read as strictly as a proof file (``verifier.fields``: no duplicate or
unknown key, canonical base64).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from verifier.errors import FormatError
from verifier.fields import b64, exact_keys, hex32_list, load_object, text

__all__ = ["EpochMessage", "parse_message"]

MAX_MESSAGE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class EpochMessage:
    """One epoch as published on the root stream."""

    record: bytes
    checkpoint: bytes
    inclusion: tuple[bytes, ...]
    consistency: tuple[bytes, ...]
    reports: tuple[bytes, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "type": "epoch",
                "record": base64.b64encode(self.record).decode("ascii"),
                "checkpoint": self.checkpoint.decode("utf-8"),
                "inclusion": [h.hex() for h in self.inclusion],
                "consistency": [h.hex() for h in self.consistency],
                "reports": [r.decode("utf-8") for r in self.reports],
            },
            separators=(",", ":"),
        )


def parse_message(data: str | bytes) -> EpochMessage:
    """Parse one frame of the root stream.

    Raises:
        FormatError: naming what is malformed.
    """
    doc = load_object(data, MAX_MESSAGE_BYTES, "stream message")
    if doc.get("type") != "epoch":
        raise FormatError(f"unknown stream message type {doc.get('type')!r}")
    exact_keys(
        doc,
        {"type", "record", "checkpoint", "inclusion", "consistency", "reports"},
        "epoch message",
    )
    if not isinstance(doc["reports"], list):
        raise FormatError("reports must be a list of signed reports")
    reports = tuple(text(r, f"reports[{i}]").encode("utf-8") for i, r in enumerate(doc["reports"]))
    if len(set(reports)) != len(reports):
        raise FormatError("reports lists a signed report twice")
    return EpochMessage(
        record=b64(doc["record"], "record"),
        checkpoint=text(doc["checkpoint"], "checkpoint").encode("utf-8"),
        inclusion=hex32_list(doc["inclusion"], "inclusion"),
        consistency=hex32_list(doc["consistency"], "consistency"),
        reports=reports,
    )
