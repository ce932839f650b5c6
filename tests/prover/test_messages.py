"""Ingest message parsing (docs/PROTOCOL.md §11.1): good batches, every refusal."""

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prover.errors import IngestError
from prover.messages import (
    MAX_BATCH,
    BalanceBatch,
    BalanceUpdate,
    ReserveBatch,
    ack,
    error_reply,
    parse_ingest,
)
from verifier.errors import FormatError
from verifier.hashing import MAX_BALANCE, check_asset_id, check_user_id
from verifier.record import MAX_RESERVE


def balances(*updates: dict, **extra: object) -> str:
    return json.dumps({"type": "balances", "source": "core", "updates": list(updates), **extra})


def row(seq: int = 1, user: str = "alice", asset: str = "BTC", amount: object = "5") -> dict:
    return {"seq": seq, "user": user, "asset": asset, "amount": amount}


def test_balance_batch() -> None:
    batch = parse_ingest(balances(row(1), row(3, "bob", amount=7), id="b-1"))
    assert batch == BalanceBatch(
        "b-1", "core", (BalanceUpdate(1, "alice", "BTC", 5), BalanceUpdate(3, "bob", "BTC", 7))
    )


def test_reserve_batch() -> None:
    msg = {
        "type": "reserves",
        "source": "cold-1",
        "id": 9,
        "updates": [{"seq": 1, "asset": "BTC", "amount": str(MAX_RESERVE), "as_of_ms": 5}],
    }
    batch = parse_ingest(json.dumps(msg))
    assert isinstance(batch, ReserveBatch)
    assert batch.updates[0].amount == MAX_RESERVE and batch.id == 9


def test_amount_bounds_are_exact() -> None:
    assert parse_ingest(balances(row(amount=str(MAX_BALANCE)))).updates[0].amount == MAX_BALANCE
    assert parse_ingest(balances(row(amount=MAX_BALANCE))).updates[0].amount == MAX_BALANCE


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "bad-json"),
        ("[]", "bad-message"),
        (json.dumps({"type": "withdraw", "source": "x", "updates": [row()]}), "bad-message"),
        (balances(row(), extra=1), "bad-message"),
        (balances(row(), id=True), "bad-message"),
        (balances(row(), id="x" * 129), "bad-message"),
        (
            json.dumps({"type": "balances", "source": "bad source", "updates": [row()]}),
            "bad-message",
        ),
        (balances(), "bad-message"),
        (balances(row(amount="-1")), "bad-update"),
        (balances(row(amount=-1)), "bad-update"),
        (balances(row(amount=1.5)), "bad-update"),
        (balances(row(amount="1e3")), "bad-update"),
        (balances(row(amount="007")), "bad-update"),
        (balances(row(amount=str(MAX_BALANCE + 1))), "bad-update"),
        (balances(row(asset="btc")), "bad-update"),
        (balances(row(user="")), "bad-update"),
        (balances(row(seq=-1)), "bad-update"),
        (balances(row(seq="1")), "bad-update"),
        (balances({**row(), "note": 1}), "bad-update"),
        (balances(row(2), row(2)), "bad-seq"),
        (balances(row(3), row(2)), "bad-seq"),
    ],
)
def test_refusals(message: str, code: str) -> None:
    with pytest.raises(IngestError) as info:
        parse_ingest(message)
    assert info.value.code == code


@pytest.mark.parametrize("amount", [5, "5"])
def test_a_message_without_type_is_refused(amount: object) -> None:
    """Untagged balances were decoded as balances (integer amounts): the
    ``type`` of every message is required."""
    doc = json.loads(balances(row(amount=amount), id="u-1"))
    del doc["type"]
    with pytest.raises(IngestError) as info:
        parse_ingest(json.dumps(doc))
    assert (info.value.code, info.value.id) == ("bad-message", "u-1")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (balances(row(amount="x"), id="b-9"), "b-9"),  # refused by the typed decoder
        (balances(row(amount=-1), id=12), 12),
        (balances(row(asset="btc"), id="b-10"), "b-10"),  # refused after decoding
        (balances(row(2), row(1), id="b-11"), "b-11"),
        (balances(row(), id=True), None),  # the id itself is bad: none echoed
        (balances(row(), id=10**200), None),
        ("{not json", None),
    ],
)
def test_a_refusal_echoes_the_id(message: str, expected: object) -> None:
    with pytest.raises(IngestError) as info:
        parse_ingest(message)
    assert info.value.id == expected
    assert json.loads(error_reply(info.value.id, info.value))["id"] == expected


@given(st.lists(st.tuples(st.integers(0, MAX_BALANCE + 1), st.booleans()), min_size=1))
def test_amounts_as_integers_or_strings_parse_alike(amounts: list[tuple[int, bool]]) -> None:
    """Integers only take msgspec's fast path; any string amount, the full one."""
    message = balances(*(row(i + 1, amount=str(a) if s else a) for i, (a, s) in enumerate(amounts)))
    too_large = [i for i, (a, _) in enumerate(amounts) if a > MAX_BALANCE]
    try:
        batch = parse_ingest(message)
    except IngestError as exc:
        assert exc.code == "bad-update" and exc.index == too_large[0]
    else:
        assert not too_large
        assert batch.updates == tuple(
            BalanceUpdate(i + 1, "alice", "BTC", a) for i, (a, _) in enumerate(amounts)
        )


def test_refusal_names_the_update() -> None:
    with pytest.raises(IngestError) as info:
        parse_ingest(balances(row(1), row(2, amount="x")))
    assert info.value.index == 1 and "updates[1]" in info.value.message


@pytest.mark.parametrize(
    ("user", "asset"),
    [
        ("bad\x01", "BTC"),  # C0
        ("bad\x7f", "BTC"),  # DEL
        ("bad\x85", "BTC"),  # C1
        ("\u00e9" * 128, "BTC"),  # 128 characters, 256 bytes of UTF-8
        ("alice\u200b", "BTC"),  # prints as "alice" (PROTOCOL §2.2)
        ("\u202ealice", "BTC"),  # reorders what a terminal shows
        ("e\u0301", "BTC"),  # not NFC
        ("alice ", "BTC"),  # trailing white space
        ("carol", "btc"),
        ("carol", "B" * 17),
    ],
)
def test_a_bad_id_is_refused_by_its_index(user: str, asset: str) -> None:
    with pytest.raises(IngestError) as info:
        parse_ingest(balances(row(1), row(2, "bob"), row(3, user, asset)))
    assert info.value.code == "bad-update" and info.value.index == 2


def test_ids_of_any_script_up_to_255_bytes_are_taken() -> None:
    users = ["zo\u00eb", "\u00e9" * 127 + "a", "\u7528\u6237 1", "x" * 255]
    batch = parse_ingest(balances(*(row(i + 1, user) for i, user in enumerate(users))))
    assert [u.user for u in batch.updates] == users


@given(st.text(max_size=260), st.text(max_size=20))
def test_ids_are_taken_exactly_as_the_verifier_takes_them(user: str, asset: str) -> None:
    try:
        check_user_id(user)
        check_asset_id(asset)
        valid = True
    except FormatError:
        valid = False
    try:
        parse_ingest(balances(row(user=user, asset=asset)))
        taken = True
    except IngestError as exc:
        assert exc.code == "bad-update" and exc.index == 0
        taken = False
    assert taken == valid


def test_batch_size_limit() -> None:
    rows = [row(i) for i in range(MAX_BATCH + 1)]
    with pytest.raises(IngestError) as info:
        parse_ingest(balances(*rows))
    assert info.value.code == "bad-message"


def test_replies_are_json() -> None:
    assert json.loads(ack("a", "core", 2, 1, 9)) == {
        "type": "ack",
        "id": "a",
        "source": "core",
        "applied": 2,
        "duplicates": 1,
        "last_seq": 9,
    }
    reply = json.loads(error_reply(3, IngestError("bad-seq", "no", 4)))
    assert reply == {"type": "error", "id": 3, "code": "bad-seq", "message": "no", "index": 4}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_garbage_raises_only_ingest_error(data: bytes | str) -> None:
    with contextlib.suppress(IngestError):
        parse_ingest(data)


@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["balances", "reserves"]), "source": st.text(max_size=5)},
        optional={"updates": st.lists(json_values, max_size=4), "id": json_values},
    )
)
def test_structured_garbage_raises_only_ingest_error(doc: dict) -> None:
    with contextlib.suppress(IngestError):
        parse_ingest(json.dumps(doc))
