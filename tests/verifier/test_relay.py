"""solvency-verify relay end to end, on real sockets on 127.0.0.1: a chain of
relays in front of an auditor, relays that lie, an upstream that forks or
restarts, and what subscribers may and may not do."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.verifier.fakelog import VKEY, FakeLog, record
from tests.verifier.test_relay_support import (
    Background,
    Evil,
    RawSubscriber,
    Subscriber,
    Upstream,
    events,
    http_get,
    start_relay,
    stop_relay,
    until,
    watch,
)
from tests.verifier.witnesses import K1, K2, NOW, witnessed
from verifier import quorum
from verifier.cli import main
from verifier.relay import Limits
from verifier.stream import EpochMessage, parse_message

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def log() -> FakeLog:
    fake = FakeLog()
    for _ in range(6):
        fake.append()
    return fake


def log_frames(log: FakeLog, count: int) -> list[str | bytes]:
    return [m.to_json() for m in log.messages[:count]]


def refusal(bg: Background, url: str) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body a WebSocket handshake to ``url`` is refused with."""

    async def refused() -> tuple[int, dict[str, Any]]:
        try:
            async with connect(url):
                pass
        except InvalidStatus as exc:
            return exc.response.status_code, json.loads(exc.response.body or b"")
        raise AssertionError(f"{url} was not refused")

    result: tuple[int, dict[str, Any]] = bg.run(refused())
    return result


def test_a_chain_of_relays_serves_every_epoch_in_order(
    bg: Background, log: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """prover -> relay -> relay -> watch, epochs live and from history; every
    frame arrives byte for byte as the prover sent it."""
    upstream = Upstream(bg, log.messages[:2]).start()
    first = start_relay(bg, upstream.url, tmp_path / "r1")
    second = start_relay(bg, first.downstream, tmp_path / "r2")
    until(lambda: second.history.next == 2)
    live = Subscriber(bg, second.downstream)  # no since: from the next epoch, 2
    upstream.publish(*log.messages[2:])
    assert live.wait_for(4) == upstream.frames[2:]
    assert watch(second.downstream, tmp_path / "auditor", "--max-epochs", "6") == 0
    assert [e["epoch"] for e in events(capsys) if e["event"] == "epoch"] == list(range(6))
    # A late subscriber gets the history from since=N, then what comes live.
    late = Subscriber(bg, second.downstream, since=3)
    assert late.wait_for(3) == upstream.frames[3:]
    upstream.publish(log.append())
    assert late.wait_for(4)[3] == upstream.frames[6] == live.wait_for(5)[4]
    assert upstream.sinces == [0] and first.checks() == second.checks() == []
    assert json.loads((tmp_path / "r2" / "state.json").read_text())["size"] == 7
    # A third relay keeps the last 2 epochs, 5 and 6.
    third = start_relay(bg, second.downstream, tmp_path / "r3", "--history", "2")
    until(lambda: third.history.next == 7)
    assert Subscriber(bg, third.downstream, since=5).wait_for(2) == upstream.frames[5:]
    assert refusal(bg, f"{third.downstream}/roots?since=4") == (
        404,
        {
            "type": "error",
            "code": "not-retained",
            "message": "since=4 is older than this relay's history: the oldest epoch it "
            "serves is 5",
            "oldest": 5,
        },
    )
    for since, answer in (("8", (503, "not-yet")), ("x", (400, "bad-request"))):
        status, body = refusal(bg, f"{third.downstream}/roots?since={since}")
        assert (status, body["code"]) == answer
    status, body = refusal(bg, f"{third.downstream}/roots?since=1&since=2")
    assert (status, body["code"]) == (400, "bad-request")
    just_in_time = Subscriber(bg, third.downstream, since=7)  # since = next: live
    upstream.publish(log.append())
    assert just_in_time.wait_for(1) == upstream.frames[7:]


def _altered_record(frame: str, at: int | None = None) -> str:
    """One byte of the record changed: in an asset's root (its entry no longer
    has the header's asset map root), or at ``at``."""
    message = parse_message(frame)
    assert isinstance(message, EpochMessage)
    data = bytearray(message.record)
    data[data.find(bytes([3]) * 32) if at is None else at] ^= 1
    return dataclasses.replace(message, record=bytes(data)).to_json()


def _altered_signature(frame: str) -> str:
    """The last byte of the custodian's signature changed."""
    message = parse_message(frame)
    assert isinstance(message, EpochMessage)
    body, _, line = message.checkpoint.decode().rstrip("\n").rpartition("\n")
    name, _, sig = line.removeprefix("— ").rpartition(" ")
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    note = f"{body}\n— {name} {base64.b64encode(raw).decode()}\n".encode()
    return dataclasses.replace(message, checkpoint=note).to_json()


def _twin() -> FakeLog:
    """The custodian's other log: epoch 1 rewritten, signed with the same key."""
    twin = FakeLog()
    twin.append()
    twin.append(record(1, liabilities=7))
    for _ in range(2, 6):
        twin.append()
    return twin


Tamper = Callable[[int, str], list[str]]


def _at_3(change: Callable[[str], list[str]]) -> Callable[[], Tamper]:
    """A relay that changes the frame of epoch 3 and passes the others."""
    return lambda: lambda epoch, frame: change(frame) if epoch == 3 else [frame]


def _swapping() -> Tamper:
    """A relay that sends epoch 4 before epoch 3."""
    held: list[str] = []

    def swap(epoch: int, frame: str) -> list[str]:
        if epoch == 3:
            held.append(frame)
            return []
        return [frame, *held] if epoch == 4 else [frame]

    return swap


def _replaying() -> Tamper:
    """A relay that sends epoch 1 again in place of epoch 3."""
    seen: list[str] = []

    def replay(epoch: int, frame: str) -> list[str]:
        seen.append(frame)
        return [seen[1]] if epoch == 3 else [frame]

    return replay


TWIN = _twin()
LIES: dict[str, tuple[Callable[[], Tamper], str]] = {
    "altered-record": (_at_3(lambda f: [_altered_record(f)]), "format"),
    "altered-header": (_at_3(lambda f: [_altered_record(f, 20)]), "inclusion-root-mismatch"),
    "altered-signature": (_at_3(lambda f: [_altered_signature(f)]), "signature-invalid"),
    "dropped": (_at_3(lambda f: []), "epoch-gap"),
    "swapped": (_swapping, "epoch-gap"),
    "replayed": (_replaying, "replayed-checkpoint"),
    "forked": (lambda: lambda e, f: [TWIN.messages[e].to_json() if e >= 3 else f], "fork"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_the_auditor_behind_a_lying_relay_alarms(
    lie: str, bg: Background, log: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper, check = LIES[lie]
    upstream = Upstream(bg, log.messages).start()
    honest = start_relay(bg, upstream.url, tmp_path / "relay")
    evil = Evil(bg, honest.downstream, tamper()).start()
    assert watch(evil.url, tmp_path / "auditor") == 1
    found = events(capsys)
    assert [e["epoch"] for e in found if e["event"] == "epoch"] == [0, 1, 2]
    [alarm] = [e for e in found if e["event"] == "violation"]
    assert alarm["check"] == check
    evidence = json.loads(Path(alarm["evidence"]).read_text())
    assert evidence["last_verified_checkpoint"] == log.messages[2].checkpoint.decode()
    assert honest.checks() == []


def test_a_relay_halts_on_a_forked_upstream_and_forwards_nothing_of_it(
    bg: Background, log: FakeLog, tmp_path: Path
) -> None:
    """It verified epochs 0-3 of one log; the upstream, restarted, serves its
    twin: the relay alarms (fork, with evidence), forwards nothing more, keeps
    serving what it verified, and restarted on its --state it alarms again."""
    upstream = Upstream(bg, log.messages[:4]).start()
    relay = start_relay(bg, upstream.url, tmp_path / "relay")
    subscriber = Subscriber(bg, relay.downstream, since=0)
    assert subscriber.wait_for(4) == upstream.frames
    upstream.stop()
    upstream.frames = log_frames(TWIN, 6)
    upstream.start()
    until(lambda: relay.halted is not None, what="the relay to halt")
    assert upstream.sinces == [0, 4] and relay.checks() == ["fork"]
    until(lambda: upstream.closes == [1001, 1000], what="the relay to leave upstream")
    assert relay.events[-1] == {"event": "halted", "check": "fork", "first": 0, "next": 4}
    [evidence] = (tmp_path / "relay").glob("evidence-*-fork.json")
    doc = json.loads(evidence.read_text())
    assert doc["last_verified_checkpoint"] == log.messages[3].checkpoint.decode()
    assert doc["message"]["checkpoint"] == TWIN.messages[4].checkpoint.decode()
    status, body = http_get(relay.port, "/healthz")
    assert (status, body) == (
        503,
        b"halted: fork: its first 4 records are not the log last verified\n",
    )
    assert Subscriber(bg, relay.downstream, since=0).wait_for(4) == log_frames(log, 4)
    assert len(upstream.sinces) == 2 and subscriber.frames == log_frames(log, 4)
    assert json.loads((tmp_path / "relay" / "state.json").read_text())["size"] == 4
    stop_relay(bg, relay)
    until(lambda: subscriber.close_code == 1001, what="the subscriber to be closed, going away")
    again = start_relay(bg, upstream.url, tmp_path / "relay")
    until(lambda: again.halted is not None, what="the restarted relay to halt")
    assert again.checks() == ["fork"] and upstream.sinces[-1] == 4 and again.history.next == 4


def test_a_relay_resumes_from_its_last_verified_size_and_keeps_its_subscribers(
    bg: Background, log: FakeLog, tmp_path: Path
) -> None:
    """The upstream goes away and comes back: the relay reports silence, and
    resumes from what it verified; its subscriber's connection stays up."""
    upstream = Upstream(bg, log.messages[:3]).start()
    relay = start_relay(bg, upstream.url, tmp_path / "relay", "--max-silence", "0.5")
    subscriber = Subscriber(bg, relay.downstream, since=0)
    subscriber.wait_for(3)
    assert http_get(relay.port, "/healthz") == (200, b"ok\n")
    upstream.stop()
    until(lambda: http_get(relay.port, "/healthz")[0] == 503, what="/healthz to turn 503")
    assert http_get(relay.port, "/healthz")[1].startswith(b"late: no frame verified for ")
    assert "stale-log" in relay.checks() and relay.halted is None
    upstream.frames = log_frames(log, 6)
    upstream.start()
    assert subscriber.wait_for(6) == log_frames(log, 6)
    assert subscriber.close_code is None and upstream.sinces == [0, 3]
    assert http_get(relay.port, "/healthz") == (200, b"ok\n")
    assert [e["event"] for e in relay.events].count("disconnected") >= 1


def test_a_relay_halts_when_upstream_no_longer_reaches_what_it_verified(
    bg: Background, log: FakeLog, tmp_path: Path
) -> None:
    upstream = Upstream(bg, log.messages[:4]).start()
    relay = start_relay(bg, upstream.url, tmp_path / "relay")
    until(lambda: relay.history.next == 4)
    upstream.stop()
    upstream.frames = upstream.frames[:2]  # since=4 is now 400 bad-since
    upstream.start()
    until(lambda: relay.halted is not None, what="the relay to halt")
    assert relay.checks() == ["log-rolled-back"] and relay.history.next == 4
    assert http_get(relay.port, "/healthz")[1].startswith(b"halted: log-rolled-back: ")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quorum, "clock", lambda: NOW)


def test_a_relay_forwards_findings_and_says_so(clock: None, bg: Background, tmp_path: Path) -> None:
    """An insolvent epoch, an epoch without the witnesses' quorum: both verify
    as far as the chain of custody goes; the relay alarms and forwards them,
    for each subscriber to judge with its own options, and does not halt."""
    fake = FakeLog()
    fake.append()
    fake.append(record(1, liabilities=500))
    fake.append()
    messages = [witnessed(m, "w1.example", "w2.example") for m in fake.messages]
    messages[2] = witnessed(fake.messages[2], "w1.example")
    messages.append(witnessed(fake.append(), "w1.example", "w2.example"))
    upstream = Upstream(bg, messages).start()
    options = ("--witness", str(K1), "--witness", str(K2))
    relay = start_relay(bg, upstream.url, tmp_path / "relay", *options)
    assert Subscriber(bg, relay.downstream, since=0).wait_for(4) == upstream.frames
    assert relay.checks() == ["insolvent", "witness-quorum"] and relay.halted is None
    recovered = [e for e in relay.events if e["event"] == "recovered"]
    assert recovered == [
        {"event": "recovered", "asset": "BTC", "epoch": 2},
        {"event": "recovered", "check": "witness-quorum", "epoch": 3},
    ]


def test_what_a_subscriber_may_not_do(bg: Background, log: FakeLog, tmp_path: Path) -> None:
    """Send a message (1008; above 4 KiB: 1009), subscribe past the cap (503
    busy), use another method (405) or route (404)."""
    upstream = Upstream(bg, log.messages).start()
    limits = Limits(max_subscribers=2)
    relay = start_relay(bg, upstream.url, tmp_path / "relay", limits=limits)
    until(lambda: relay.history.next == 6)

    async def closed_after_sending(message: str) -> tuple[int | None, str | None]:
        async with connect(f"{relay.downstream}/roots?since=0") as ws:
            await ws.send(message)
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    pass
            return ws.close_code, ws.close_reason

    assert bg.run(closed_after_sending("hello")) == (1008, "this route takes no messages")
    assert bg.run(closed_after_sending("x" * 5000))[0] == 1009
    until(lambda: relay.subscribers == 0, what="their slots to be free")
    first, second = Subscriber(bg, relay.downstream), Subscriber(bg, relay.downstream)
    status, body = refusal(bg, f"{relay.downstream}/roots")
    assert (status, body) == (
        503,
        {"type": "error", "code": "busy", "message": "too many subscribers"},
    )
    assert first.close_code is None and second.close_code is None and relay.subscribers == 2
    status, raw = http_get(relay.port, "/roots", method="POST")
    assert status == 405 and json.loads(raw)["code"] == "method-not-allowed"
    status, raw = http_get(relay.port, "/metrics")
    assert status == 404 and json.loads(raw)["code"] == "not-found"


def test_a_subscriber_that_falls_out_of_the_history_is_shed(bg: Background, tmp_path: Path) -> None:
    """Past 32 KiB unsent a subscriber is fed at its own pace, from the history:
    one that reads (in a thread of its own) gets every frame, one that stops
    reading for longer than the history is closed with 1013 once it reads on."""
    upstream = Upstream(bg, []).start()
    limits = Limits(buffer_bytes=32 << 10)
    relay = start_relay(bg, upstream.url, tmp_path / "relay", "--history", "100", limits=limits)
    assert http_get(relay.port, "/healthz") == (503, b"no frame verified yet\n")
    stalled = RawSubscriber(relay.port)
    elsewhere = Background()
    try:
        reader = Subscriber(elsewhere, relay.downstream)
        many = FakeLog()
        for _ in range(6):  # bursts of 50 frames: an upstream back after 50 s away
            upstream.publish(*(many.append() for _ in range(50)))
            until(lambda: relay.history.next == len(many.messages))
        assert reader.wait_for(300) == upstream.frames and reader.close_code is None
    finally:
        elsewhere.close()
    assert relay.shed == 0  # a subscriber is shed as it reads on, not before
    close = stalled.read_until_closed()
    assert close is not None and (close.code, close.reason) == (1013, "more than 100 epochs behind")
    assert relay.shed == 1
    stalled.close()


def test_a_subscriber_that_leaves_a_ping_unanswered_is_shed(
    bg: Background, log: FakeLog, tmp_path: Path
) -> None:
    upstream = Upstream(bg, log.messages).start()
    limits = Limits(ping_interval=0.2, ping_timeout=0.3)
    relay = start_relay(bg, upstream.url, tmp_path / "relay", limits=limits)
    silent = RawSubscriber(relay.port)
    answering = Subscriber(bg, relay.downstream)
    close = silent.read_until_closed()
    assert close is not None and (close.code, close.reason) == (1013, "no pong within 0.3 s")
    assert relay.shed == 1 and answering.close_code is None
    silent.close()


def test_the_relay_command(
    bg: Background, log: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through main: a key that does not verify the upstream's first frame is
    configuration (exit 2, no evidence); so is a --listen that does not parse."""
    rogue = FakeLog(key=Ed25519PrivateKey.from_private_bytes(bytes(range(33, 65))))
    rogue.append()
    upstream = Upstream(bg, rogue.messages).start()
    argv = ["relay", "--upstream", upstream.url, "--key", str(VKEY), "--json"]
    assert main([*argv, "--state", str(tmp_path / "a"), "--listen", "127.0.0.1:0"]) == 2
    out = capsys.readouterr()
    assert "do not verify with --key" in out.err and list((tmp_path / "a").iterdir()) == []
    assert json.loads(out.out.splitlines()[-1])["event"] == "error"
    assert main([*argv, "--state", str(tmp_path / "b"), "--listen", "nowhere"]) == 2
    assert "--listen must be HOST:PORT" in capsys.readouterr().err
    assert main([*argv, "--state", str(tmp_path / "b"), "--history", "0"]) == 2


def test_frames_are_forwarded_as_they_came(bg: Background, log: FakeLog, tmp_path: Path) -> None:
    """A binary frame stays binary, a text frame text, the payload untouched;
    and no compression is negotiated, though the subscriber offers it."""
    upstream = Upstream(bg, log.messages[:2]).start()
    upstream.frames[1] = log.messages[1].to_json().encode()
    relay = start_relay(bg, upstream.url, tmp_path / "relay")
    subscriber = Subscriber(bg, relay.downstream, since=0)
    assert subscriber.wait_for(2) == upstream.frames
    assert isinstance(subscriber.frames[0], str) and isinstance(subscriber.frames[1], bytes)
    assert subscriber.extensions is None
