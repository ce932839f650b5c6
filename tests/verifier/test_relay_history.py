"""The relay's history and its answers to /roots?since=N[&assets=A,B|&only=checkpoints],
without sockets."""

from __future__ import annotations

import json

import pytest

from verifier.relay_history import Admission, History, Refusal, Relayed, admit, parse_since
from verifier.subscription import ALL_ASSETS, Subscription, parse_subscription


def filled(capacity: int, first: int, count: int) -> History:
    history = History(capacity, first)
    for epoch in range(first, first + count):
        history.append(Relayed(epoch, b"frame %d" % epoch))
    return history


def test_the_history_keeps_the_last_frames_in_order() -> None:
    history = filled(3, 10, 5)
    assert (history.first, history.next, len(history)) == (12, 15, 3)
    assert [history.get(e) for e in (11, 15)] == [None, None]
    assert [f.payload for f in map(history.get, (12, 13, 14)) if f] == [
        b"frame 12",
        b"frame 13",
        b"frame 14",
    ]
    with pytest.raises(ValueError, match="epoch 16 relayed after 14"):
        history.append(Relayed(16, b""))
    with pytest.raises(ValueError):
        History(0, 0)
    empty = History(3, 7)  # restored from a state of size 7: nothing retained yet
    assert (empty.first, empty.next, empty.get(6), empty.get(7)) == (7, 7, None, None)


@pytest.mark.parametrize(
    ("query", "answer"),
    [
        ("", 15),  # live: from the next epoch
        ("since=15", 15),
        ("since=12", 12),
        ("other=1&since=14", 14),
        ("since=16", (503, "not-yet")),
        ("since=11", (404, "not-retained")),
        ("since=0", (404, "not-retained")),
        ("since=-1", (400, "bad-request")),
        ("since=1e3", (400, "bad-request")),
        ("since=" + "9" * 20, (400, "bad-request")),
        ("since=1&since=2", (400, "bad-request")),
    ],
)
def test_admit_answers_as_the_prover_does(query: str, answer: int | tuple[int, str]) -> None:
    found = admit(filled(3, 10, 5), query, subscribers=0, max_subscribers=1)
    if isinstance(found, Refusal):
        assert (found.status, found.code) == answer
    else:
        assert found == Admission(answer, ALL_ASSETS)


SIXTY_FOUR = ",".join(f"A{i}" for i in range(64))


@pytest.mark.parametrize(
    ("query", "answer"),
    [
        ("since=12", ALL_ASSETS),
        ("since=12&assets=BTC", Subscription(assets=frozenset({"BTC"}))),
        ("assets=ETH,BTC&since=12", Subscription(assets=frozenset({"BTC", "ETH"}))),
        ("assets=USDT.E%2CBTC", Subscription(assets=frozenset({"BTC", "USDT.E"}))),
        ("assets=" + SIXTY_FOUR, Subscription(assets=frozenset(SIXTY_FOUR.split(",")))),
        ("since=12&only=checkpoints", Subscription(checkpoints=True)),
        ("assets=", "invalid asset id"),
        ("assets=BTC,", "invalid asset id"),
        ("assets=btc", "invalid asset id"),
        ("assets=BTC,BTC", "twice"),
        ("assets=" + SIXTY_FOUR + ",B", "1 to 64 asset ids, not 65"),
        ("assets=BTC&assets=ETH", "once"),
        ("only=records", "only=checkpoints"),
        ("only=", "only=checkpoints"),
        ("only=checkpoints&only=checkpoints", "only=checkpoints"),
        ("assets=BTC&only=checkpoints", "exclude each other"),
    ],
)
def test_what_a_subscriber_may_choose(query: str, answer: Subscription | str) -> None:
    """The prover's rules for assets= and only= (PROTOCOL §11.2): 400 bad-request."""
    found = admit(filled(3, 10, 5), query, subscribers=0, max_subscribers=1)
    if isinstance(answer, Subscription):
        assert found == Admission(12 if "since" in query else 15, answer)
        assert parse_subscription(query) == answer
        assert parse_subscription(answer.query().lstrip("&")) == answer  # its own inverse
    else:
        assert isinstance(found, Refusal) and (found.status, found.code) == (400, "bad-request")
        assert answer in found.message


def test_refusals_say_why() -> None:
    history = filled(3, 10, 5)
    not_retained = admit(history, "since=3", 0, 1)
    assert isinstance(not_retained, Refusal)
    assert json.loads(not_retained.body()) == {
        "type": "error",
        "code": "not-retained",
        "message": "since=3 is older than this relay's history: the oldest epoch it serves is 12",
        "oldest": 12,
    }
    busy = admit(history, "since=12", 1, 1)
    assert busy == Refusal(503, "busy", "too many subscribers")
    assert json.loads(busy.body()) == {"type": "error", "code": "busy", "message": busy.message}
    assert admit(history, "since=99", 1, 1) == Refusal(
        503, "not-yet", "since=99 is beyond the log this relay verified (15)"
    )
    assert parse_since("a=1") is None and parse_since("since=0") == 0
