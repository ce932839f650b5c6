"""The strict JSON dialect and canonical base64 of PROTOCOL §6, shared by proof
files and root stream messages (verifier/fields.py, verifier/stream.py)."""

import base64
import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.verifier.fakelog import FakeLog
from verifier.errors import FormatError
from verifier.fields import b64, load_object
from verifier.record import EpochRecord
from verifier.selection import MapEntry
from verifier.stream import (
    AssetsMessage,
    CheckpointMessage,
    parse_message,
)
from verifier.stream_binary import parse_msgpack, to_msgpack

VECTORS = Path(__file__).resolve().parents[1] / "vectors"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(0, 10**20 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_load_object_reads_what_json_writes(doc: dict[str, object]) -> None:
    for ensure_ascii in (True, False):
        text = json.dumps(doc, ensure_ascii=ensure_ascii)
        assert load_object(text, 1 << 20, "doc") == doc
        assert load_object(text.encode(), 1 << 20, "doc") == doc


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 1}',  # same value twice is refused too
        '{"a": {"b": 1, "b": 2}}',
        '{"a": [{"b": 1, "b": 2}]}',
        '{"a": 1, "\\u0061": 2}',  # the same key, escaped
    ],
)
def test_duplicate_keys_are_refused(text: str) -> None:
    with pytest.raises(FormatError, match="appears twice"):
        load_object(text, 1 << 20, "doc")


@pytest.mark.parametrize("literal", ["-1", "-0", "1.0", "1e3", "1E3", "NaN", "-Infinity", "1" * 21])
def test_numbers_other_than_short_unsigned_integers_are_refused(literal: str) -> None:
    with pytest.raises(FormatError, match="number"):
        load_object(f'{{"n": {literal}}}', 1 << 20, "doc")


def test_size_is_counted_in_utf8_bytes() -> None:
    text = '{"a": "' + "\u00e9" * 10 + '"}'  # 19 characters, 29 bytes
    assert load_object(text, 29, "doc") == {"a": "\u00e9" * 10}
    with pytest.raises(FormatError, match="larger"):
        load_object(text, 28, "doc")


@given(st.binary(max_size=100))
def test_b64_reads_what_base64_writes(raw: bytes) -> None:
    assert b64(base64.b64encode(raw).decode(), "x") == raw


@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=12
    )
)
def test_b64_accepts_only_the_canonical_text(text: str) -> None:
    """Whatever b64 accepts is exactly the base64 of what it returns."""
    try:
        raw = b64(text, "x")
    except FormatError:
        return
    assert base64.b64encode(raw).decode() == text


@pytest.mark.parametrize(
    "text", ["QB==", "QUF=", "QQ", "QQ=", "QQ===", "Q Q==", "QQ==\n", "\u00c4Q=="]
)
def test_b64_refusals(text: str) -> None:
    with pytest.raises(FormatError):
        b64(text, "x")


def test_stream_messages_are_read_as_strictly_as_proofs() -> None:
    message = FakeLog().append()
    assert len(message.record) % 3  # its base64 is padded
    text = message.to_json()
    assert parse_message(text) == message
    record = base64.b64encode(message.record).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    data = record.rstrip("=")
    changed = data[:-1] + alphabet[alphabet.index(data[-1]) | 1] + record[len(data) :]
    assert base64.b64decode(changed) == message.record and changed != record
    for bad in (
        text.replace(record, changed),
        text.replace('"type":"epoch",', '"type":"epoch","type":"epoch",'),
        "\ufeff" + text,
    ):
        assert bad != text
        with pytest.raises(FormatError):
            parse_message(bad)


def test_chosen_asset_and_checkpoint_frames_are_read_strictly() -> None:
    full = EpochRecord.decode(FakeLog().append().record)
    entry = MapEntry(full.entries[0], 0, ())
    message = AssetsMessage(full.header.encode(), (entry,), b"note\n", (), ())
    text = message.to_json()
    assert parse_message(text) == message
    two = AssetsMessage(full.header.encode(), (entry, entry), b"note\n", (), ())
    for bad in (
        two.to_json(),  # an index twice
        text.replace('"index":0', '"index":"0"'),
        text.replace('"map_path":[]', '"map_path":[],"path":[]'),
        text.replace('"type":"epoch-assets"', '"type":"epoch-some"'),
        text.replace('"header":', '"record":'),
    ):
        with pytest.raises(FormatError):
            parse_message(bad)
    checkpoint = CheckpointMessage(b"note\n", (bytes(32),))
    assert parse_message(checkpoint.to_json()) == checkpoint
    with pytest.raises(FormatError, match="unknown keys"):
        parse_message(checkpoint.to_json().replace('"consistency"', '"inclusion":[],"consistency"'))


def test_the_binary_encoding_is_read_in_its_canonical_form_only() -> None:
    full = FakeLog().append()
    record = EpochRecord.decode(full.record)
    chosen = AssetsMessage(
        record.header.encode(),
        (MapEntry(record.entries[0], 0, ()),),
        full.checkpoint,
        full.inclusion,
        (b"report\n",),
    )
    checkpoint = CheckpointMessage(full.checkpoint, (bytes(32),))
    for message in (full, chosen, checkpoint):
        data = to_msgpack(message)
        assert parse_msgpack(data) == message
        assert len(data) < len(message.to_json())
    data = to_msgpack(checkpoint)
    # The same map with a key twice, in another order, or an integer in more bytes.
    pack = msgspec.msgpack.encode
    twice = b"\x84" + b"".join(
        pack(x)
        for x in ("type", "checkpoint", "checkpoint", "a", "consistency", [], "checkpoint", "b")
    )
    reordered = msgspec.msgpack.encode(
        {
            "consistency": [bytes(32)],
            "type": "checkpoint",
            "checkpoint": checkpoint.checkpoint.decode(),
        }
    )
    wide = to_msgpack(chosen).replace(b"\xa5index\x00", b"\xa5index\xcd\x00\x00")
    assert wide != to_msgpack(chosen)
    for bad in (twice, reordered, wide, data[:-1], data + b"\x00", b"\x80"):
        with pytest.raises(FormatError):
            parse_msgpack(bad)
    for short in (
        {"type": "checkpoint", "checkpoint": "a", "consistency": [bytes(31)]},
        {"type": "checkpoint", "checkpoint": "a", "consistency": [], "extra": 1},
    ):
        with pytest.raises(FormatError):
            parse_msgpack(msgspec.msgpack.encode(short))
