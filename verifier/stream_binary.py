"""The root stream's messages in MessagePack (docs/PROTOCOL.md §11.2), for
subscribers that negotiate the WebSocket subprotocol ``SUBPROTOCOL``.

Each message of ``verifier.stream`` is one binary frame: a MessagePack map
with the JSON message's keys in the same order, bytes as ``bin`` (no base64
or hex), notes and reports as ``str``, ``index`` as an integer. It is read
only in its canonical form, the bytes that re-encoding the decoded message
gives, so no key appears twice or in another order and no integer takes
more bytes than it needs: one message has one encoding.

This module needs msgspec (the verifier's optional ``binary`` extra); the
rest of the verifier does not import it.
"""

from __future__ import annotations

import msgspec

from verifier.errors import FormatError
from verifier.fields import text
from verifier.selection import MapEntry
from verifier.stream import (
    MAX_MESSAGE_BYTES,
    AssetsMessage,
    CheckpointMessage,
    EpochMessage,
    StreamMessage,
    reports_of,
    sorted_entries,
)

__all__ = ["SUBPROTOCOL", "parse_msgpack", "to_msgpack"]

SUBPROTOCOL = "solvency-msgpack"


# One msgspec Struct per message type, its fields in wire order.


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    entry: bytes
    index: int
    map_path: list[bytes]


class _Epoch(msgspec.Struct, tag_field="type", tag="epoch", forbid_unknown_fields=True):
    record: bytes
    checkpoint: str
    inclusion: list[bytes]
    reports: list[str]


class _Assets(msgspec.Struct, tag_field="type", tag="epoch-assets", forbid_unknown_fields=True):
    header: bytes
    entries: list[_Entry]
    checkpoint: str
    inclusion: list[bytes]
    reports: list[str]


class _Checkpoint(msgspec.Struct, tag_field="type", tag="checkpoint", forbid_unknown_fields=True):
    checkpoint: str
    consistency: list[bytes]


_DECODER = msgspec.msgpack.Decoder(_Epoch | _Assets | _Checkpoint)


def to_msgpack(message: StreamMessage) -> bytes:
    """The canonical MessagePack encoding of ``message`` (module docstring)."""
    wire: _Epoch | _Assets | _Checkpoint
    if isinstance(message, CheckpointMessage):
        wire = _Checkpoint(message.checkpoint.decode("utf-8"), list(message.consistency))
    elif isinstance(message, EpochMessage):
        wire = _Epoch(
            message.record,
            message.checkpoint.decode("utf-8"),
            list(message.inclusion),
            [r.decode("utf-8") for r in message.reports],
        )
    else:
        wire = _Assets(
            message.header,
            [_Entry(e.entry, e.index, list(e.path)) for e in message.entries],
            message.checkpoint.decode("utf-8"),
            list(message.inclusion),
            [r.decode("utf-8") for r in message.reports],
        )
    return msgspec.msgpack.encode(wire)


def parse_msgpack(data: bytes) -> StreamMessage:
    """Parse one binary frame of the root stream, in its canonical form only.

    Raises:
        FormatError: naming what is malformed.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise FormatError(f"stream message is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        wire = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise FormatError(f"stream message: {exc}") from None
    if isinstance(wire, _Checkpoint):
        message: StreamMessage = CheckpointMessage(
            _note(wire.checkpoint), _hashes(wire.consistency, "consistency")
        )
    elif isinstance(wire, _Epoch):
        message = EpochMessage(
            wire.record,
            _note(wire.checkpoint),
            _hashes(wire.inclusion, "inclusion"),
            reports_of(wire.reports),
        )
    else:
        entries = tuple(
            MapEntry(e.entry, _u64(e.index), _hashes(e.map_path, "map_path")) for e in wire.entries
        )
        message = AssetsMessage(
            wire.header,
            sorted_entries(entries),
            _note(wire.checkpoint),
            _hashes(wire.inclusion, "inclusion"),
            reports_of(wire.reports),
        )
    if to_msgpack(message) != data:
        raise FormatError("stream message is not in canonical MessagePack form")
    return message


def _note(value: str) -> bytes:
    return text(value, "checkpoint").encode("utf-8")


def _hashes(values: list[bytes], where: str) -> tuple[bytes, ...]:
    for i, h in enumerate(values):
        if len(h) != 32:
            raise FormatError(f"{where}[{i}] must be 32 bytes")
    return tuple(values)


def _u64(value: int) -> int:
    if not 0 <= value < 2**64:
        raise FormatError(f"index {value} outside u64")
    return value
