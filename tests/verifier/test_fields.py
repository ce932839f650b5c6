"""The strict JSON dialect and canonical base64 of PROTOCOL §6, shared by proof
files and root stream messages (verifier/fields.py, verifier/stream.py)."""

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.verifier.fakelog import FakeLog
from verifier.errors import FormatError
from verifier.fields import b64, load_object
from verifier.stream import parse_message

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
    vector = json.loads((VECTORS / "proof-valid.json").read_text())
    message = FakeLog().append(base64.b64decode(vector["record"]))  # 262 bytes: padded
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
