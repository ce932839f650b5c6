"""The relay's history and its answers to /roots?since=N, without sockets."""

from __future__ import annotations

import json

import pytest

from verifier.relay_history import History, Refusal, Relayed, admit, parse_since


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
        assert found == answer


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
