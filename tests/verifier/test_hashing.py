"""Known answers for every hashed message layout (docs/PROTOCOL.md §2)."""

import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from verifier.errors import FormatError
from verifier.hashing import (
    HASHER,
    MAX_BALANCE,
    check_asset_id,
    check_user_id,
    commitment,
    encode_sum,
    find_invalid_user_id,
    leaf_hash,
    node_hash,
    padding_hash,
    printable_id,
    subtree_cap,
)

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "hashing.json").read_text())


def compute(name: str, i: dict[str, str]) -> bytes:
    if name == "commitment":
        return commitment(i["user"], bytes.fromhex(i["salt"]))
    if name == "leaf":
        return leaf_hash(i["asset"], bytes.fromhex(i["commitment"]), int(i["amount"]))
    if name == "padding":
        return padding_hash(i["asset"], bytes.fromhex(i["padding_key"]), int(i["slot"]))
    if name == "asset-map-entry":
        return HASHER.entry_hash(bytes.fromhex(i["entry"]))
    if name == "asset-map-node":
        return HASHER.map_node_hash(bytes.fromhex(i["left"]), bytes.fromhex(i["right"]))
    if name == "asset-map-empty":
        return HASHER.empty_map()
    assert name == "node"
    return node_hash(
        bytes.fromhex(i["left"]), int(i["left_sum"]), bytes.fromhex(i["right"]), int(i["right_sum"])
    )


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_known_answers(case: dict) -> None:
    message = bytes.fromhex(case["message"])
    assert hashlib.sha256(message).hexdigest() == case["digest"]
    assert compute(case["name"], case["inputs"]).hex() == case["digest"]


def test_every_vector_kind_is_present() -> None:
    assert {c["name"] for c in VECTORS} == {
        "commitment",
        "leaf",
        "padding",
        "node",
        "asset-map-entry",
        "asset-map-node",
        "asset-map-empty",
    }


def test_tags_separate_domains() -> None:
    """Same payload under two tags never gives the same digest."""
    first_bytes = {bytes.fromhex(c["message"])[0] for c in VECTORS}
    assert len(first_bytes) == 6 and not first_bytes & {0x00, 0x01}


def test_node_message_is_97_bytes() -> None:
    node = next(c for c in VECTORS if c["name"] == "node")
    assert len(bytes.fromhex(node["message"])) == 97


def test_sums_never_wrap_at_max_height() -> None:
    assert subtree_cap(32) < 2**128
    assert encode_sum(subtree_cap(32)) == subtree_cap(32).to_bytes(16, "big")


@pytest.mark.parametrize("amount", [-1, MAX_BALANCE + 1, 2**128])
def test_leaf_amount_range(amount: int) -> None:
    with pytest.raises(FormatError):
        leaf_hash("BTC", bytes(32), amount)


@pytest.mark.parametrize("value", [-1, 2**128])
def test_sum_encoding_range(value: int) -> None:
    with pytest.raises(FormatError):
        encode_sum(value)


@pytest.mark.parametrize("asset", ["", "btc", "B TC", "-BTC", "A" * 17, "BTC\n", "É"])
def test_bad_asset_ids(asset: str) -> None:
    with pytest.raises(FormatError):
        check_asset_id(asset)


@pytest.mark.parametrize("user", ["", "a\x00b", "tab\tuser", "x" * 256, "\ud800", "é" * 128])
def test_bad_user_ids(user: str) -> None:
    with pytest.raises(FormatError):
        check_user_id(user)


@pytest.mark.parametrize(
    ("user", "why"),
    [
        ("alice\u200b", "U+200B, a Cf"),  # zero-width space: prints as "alice"
        ("\u202eecila", "U+202E, a Cf"),  # right-to-left override: prints reversed
        ("al\u2066ice", "U+2066, a Cf"),  # bidi isolate
        ("\ufeffalice", "U+FEFF, a Cf"),  # byte order mark
        ("alice\u2028", "U+2028, a Zl"),  # line separator
        ("alice\u0085", "U+0085, a Cc"),  # C1 control (next line)
        ("alice ", "white space"),
        ("\u3000alice", "white space"),  # ideographic space
        ("jose\u0301", "NFC"),  # decomposed: prints as the NFC "josé"
    ],
)
def test_user_ids_that_print_like_another_are_refused(user: str, why: str) -> None:
    with pytest.raises(FormatError, match=re.escape(why)):
        check_user_id(user)
    assert find_invalid_user_id(["bob", user]) == 1


def test_printable_id_escapes_what_a_terminal_would_hide_or_reorder() -> None:
    assert printable_id("josé@example.com") == "josé@example.com"
    assert printable_id("alice\u200b") == "alice\\u200b"
    assert printable_id("\u202eevil\n") == "\\u202eevil\\x0a"
    assert printable_id("a\\u200b") == "a\\\\u200b"  # a backslash is escaped: no confusion
    assert printable_id("\U000e0001") == "\\U000e0001"


@given(st.text(max_size=6), st.text(max_size=6))
def test_printable_id_is_injective_and_printable(a: str, b: str) -> None:
    assert printable_id(a).isprintable()
    assert (printable_id(a) == printable_id(b)) == (a == b)


def test_user_ids_accept_unicode() -> None:
    assert check_user_id("josé@example.com") == "josé@example.com".encode()
    assert len(check_user_id("é" * 127)) == 254


def first_refused(user_ids: list[object]) -> int | None:
    for i, user_id in enumerate(user_ids):
        try:
            check_user_id(user_id)  # type: ignore[arg-type]
        except FormatError:
            return i
    return None


ids = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=8),  # ASCII, controls too
    st.text(max_size=3),
    st.sampled_from(["x" * 255, "x" * 256, "\u00e9" * 128, "\ud800", 7, None]),
)


@given(st.lists(ids, max_size=6))
def test_a_batch_of_user_ids_is_checked_as_one_by_one(user_ids: list[object]) -> None:
    assert find_invalid_user_id(user_ids) == first_refused(user_ids)  # type: ignore[arg-type]


def test_commitment_binds_user_and_salt() -> None:
    salt = bytes(32)
    assert commitment("alice", salt) != commitment("bob", salt)
    assert commitment("alice", salt) != commitment("alice", b"\x01" + bytes(31))
    # length prefix: ("ab", salt) vs ("a", "b" || salt[:31]) cannot collide
    assert commitment("ab", salt) != commitment("a", b"b" + salt[:31])
    with pytest.raises(FormatError):
        commitment("alice", bytes(31))
