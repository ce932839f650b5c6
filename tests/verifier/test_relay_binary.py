"""The MessagePack root stream through relays, and each connection's first
frame, on real sockets on 127.0.0.1: a MessagePack upstream -> relay ->
relay -> ``watch --binary``, the relays serving JSON and MessagePack
subscribers alike; reports sent once (all of them on a connection's first
frame, then the new ones) reaching a subscriber that joins late."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from tests.verifier.fakelog import VKEY, FakeLog, asset
from tests.verifier.test_cli_watch import FakeProver
from tests.verifier.test_relay_support import (
    Background,
    Subscriber,
    Upstream,
    events,
    start_relay,
    until,
)
from tests.verifier.test_watch_attested import COLD, COLD_VKEY, T0
from verifier import relay
from verifier.cli import main
from verifier.record import AssetState, EpochRecord, ReserveSource
from verifier.report import ReserveReport, SignedReport, sign_report
from verifier.stream import EpochMessage, parse_message
from verifier.stream_binary import SUBPROTOCOL, to_msgpack

pytestmark = pytest.mark.timeout(60)

NAMES = ("ADA", "BTC", "ETH")


def note(name: str, epoch: int) -> bytes:
    return sign_report(ReserveReport("cold", name, 150, T0 + epoch * 1000 - 500), COLD)


def attested(name: str, epoch: int, report: bytes) -> AssetState:
    signed = SignedReport.parse(report)
    r = signed.report
    source = ReserveSource("cold", r.amount, r.as_of_ms, signed.key_id, signed.hash)
    return dataclasses.replace(asset(name, epoch), reserves=r.amount, sources=(source,))


def bound(epoch: int) -> dict[str, bytes]:
    """The reports epoch ``epoch`` binds: ETH's new at epochs 2 and 4."""
    return {"ADA": note("ADA", 0), "BTC": note("BTC", 0), "ETH": note("ETH", epoch // 2 * 2)}


@pytest.fixture
def log() -> FakeLog:
    """Five epochs of ADA, BTC, ETH, every source attested, each frame carrying
    what the prover sends on a connection from epoch 0: every report, then
    those new since the epoch before."""
    fake = FakeLog()
    for epoch in range(5):
        notes = bound(epoch)
        assets = tuple(attested(n, epoch, notes[n]) for n in NAMES)
        new = tuple(notes.values()) if epoch == 0 else (() if epoch % 2 else (notes["ETH"],))
        fake.append(EpochRecord(epoch, T0 + epoch * 1000, 60_000, assets).encode(), new)
    return fake


def watch(url: str, state: Path, *extra: str) -> int:
    argv = ["watch", url, "--key", str(VKEY), "--state", str(state), "--json"]
    return main([*argv, "--attester", str(COLD_VKEY), *extra])


def first_frame(message: EpochMessage) -> EpochMessage:
    """``message`` as a connection's first frame: with every report it binds."""
    notes = bound(EpochRecord.decode(message.record).epoch)
    return dataclasses.replace(message, reports=tuple(notes.values()))


def test_a_binary_stream_through_a_chain_of_relays(
    bg: Background, log: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MessagePack upstream -> relay --binary -> relay --binary -> watch
    --binary: every subscriber gets the frames the prover would send it, in
    the encoding it negotiated; those of every asset the upstream's bytes,
    except a connection's first frame, which carries every report."""
    upstream = Upstream(bg, log.messages[:3]).start()
    first = start_relay(bg, upstream.url, tmp_path / "r1", "--binary")
    second = start_relay(bg, first.downstream, tmp_path / "r2", "--binary")
    until(lambda: second.history.next == 3)
    assert upstream.subprotocols == [SUBPROTOCOL]
    assert all(second.history.get(e).msgpack for e in range(3))  # type: ignore[union-attr]
    binary = Subscriber(bg, second.downstream, 0, msgpack=True)
    text = Subscriber(bg, second.downstream, 0)
    late_binary = Subscriber(bg, second.downstream, 3, msgpack=True)
    late_text = Subscriber(bg, second.downstream, 3)
    chosen = Subscriber(bg, second.downstream, 1, "assets=ETH", msgpack=True)
    checkpoints = Subscriber(bg, second.downstream, 0, "only=checkpoints", msgpack=True)
    assert binary.subprotocol == SUBPROTOCOL and text.subprotocol is None
    upstream.publish(*log.messages[3:])
    assert binary.wait_for(5) == [to_msgpack(m) for m in log.messages]
    assert text.wait_for(5) == [m.to_json() for m in log.messages]
    # joined at epoch 3, whose upstream frame carries no report: the relay's has all
    wanted = [first_frame(log.messages[3]), log.messages[4]]
    assert late_binary.wait_for(2) == [to_msgpack(m) for m in wanted]
    assert late_text.wait_for(2) == [m.to_json() for m in wanted]
    eth = [log.assets_frame(e, {"ETH"}) for e in range(1, 5)]
    eth[0] = dataclasses.replace(eth[0], reports=(bound(1)["ETH"],))  # its first: ETH's report
    assert chosen.wait_for(4) == [to_msgpack(m) for m in eth]
    assert checkpoints.wait_for(5) == [to_msgpack(log.checkpoint_frame(e)) for e in range(5)]
    # JSON frames of every asset re-encoded once per epoch, for every JSON subscriber
    built = second.frames.built
    assert Subscriber(bg, second.downstream, 0).wait_for(5) == text.frames
    assert second.frames.built == built
    # watch --binary from the start, then resuming later: its first frame on
    # the new connection, of epoch 3, carries every report, so each verifies
    state = tmp_path / "auditor"
    assert watch(second.downstream, state, "--binary", "--max-epochs", "3") == 0
    assert watch(second.downstream, state, "--binary", "--max-epochs", "2") == 0
    found = events(capsys)
    assert [e["epoch"] for e in found if e["event"] == "epoch"] == [0, 1, 2, 3, 4]
    assert [e["event"] for e in found] == ["epoch"] * 5  # no violation, no warning
    # the first relay serves JSON subscribers from its MessagePack upstream too
    assert watch(first.downstream, tmp_path / "json", "--max-epochs", "5") == 0
    assert [e["event"] for e in events(capsys)] == ["epoch"] * 5
    assert first.checks() == second.checks() == []


def test_a_late_subscriber_gets_every_report_from_a_json_relay(
    bg: Background, log: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A relay following in JSON, and a subscriber of every asset that joins
    at epoch 3, when the upstream frame carries no report: the relay's first
    frame to it carries every report its record binds, then the upstream's
    frames follow byte for byte; watch --attester finds each source attested."""
    upstream = Upstream(bg, log.messages).start()
    relayed = start_relay(bg, upstream.url, tmp_path / "relay", "--attester", str(COLD_VKEY))
    until(lambda: relayed.history.next == 5)
    assert parse_message(upstream.frames[3]) == log.messages[3] and not log.messages[3].reports
    late = Subscriber(bg, relayed.downstream, 3)
    assert late.wait_for(2) == [first_frame(log.messages[3]).to_json(), upstream.frames[4]]
    live = Subscriber(bg, relayed.downstream)  # its first frame comes live
    notes = bound(5)  # those of epoch 4: nothing new
    assets = tuple(attested(n, 5, notes[n]) for n in NAMES)
    upstream.publish(log.append(EpochRecord(5, T0 + 5000, 60_000, assets).encode()))
    assert live.wait_for(1) == [first_frame(log.messages[5]).to_json()]
    assert late.wait_for(3)[2] == upstream.frames[5]  # a later frame: the upstream's
    state = tmp_path / "auditor"
    assert watch(relayed.downstream, state, "--max-epochs", "2") == 0
    assert watch(relayed.downstream, state, "--max-epochs", "4") == 0
    assert [e["event"] for e in events(capsys)] == ["epoch"] * 6
    assert relayed.checks() == []


def test_without_its_first_frame_a_late_subscriber_would_be_unattested(
    bg: Background, log: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the first frame is for: the upstream's frame of epoch 3 served
    alone to a watch resuming there leaves every source unattested."""
    with FakeProver(log.messages) as prover:
        state = tmp_path / "auditor"
        assert watch(prover.url, state, "--max-epochs", "3") == 0
        assert watch(prover.url, state, "--max-epochs", "1") == 1
    found = events(capsys)
    assert [e["check"] for e in found if e["event"] == "violation"] == ["unattested"] * 3


def test_watch_binary_follows_in_json_a_server_that_does_not_select_it(
    log: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProver(log.messages) as prover:
        assert watch(prover.url, tmp_path, "--binary", "--max-epochs", "2") == 0
    found = events(capsys)
    assert [e["event"] for e in found] == ["warning", "epoch", "epoch"]
    assert (
        found[0]["reason"] == f"{prover.url} did not select solvency-msgpack: following it in JSON"
    )


def test_watch_binary_needs_msgspec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "verifier.stream_binary", None)
    for command in (["watch", "ws://127.0.0.1:9"], ["relay", "--upstream", "ws://127.0.0.1:9"]):
        argv = [*command, "--key", str(VKEY), "--state", str(tmp_path), "--binary"]
        assert main(argv) == 2
        assert "--binary needs msgspec: install solvency-stream-verifier[binary]" in (
            capsys.readouterr().err
        )


def test_a_relay_without_msgspec_serves_json_to_whoever_offers_binary(
    bg: Background, log: FakeLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "_binary_subprotocol", lambda: None)
    upstream = Upstream(bg, log.messages).start()
    relayed = start_relay(bg, upstream.url, tmp_path / "relay")
    until(lambda: relayed.history.next == 5)
    subscriber = Subscriber(bg, relayed.downstream, 1, msgpack=True)
    assert subscriber.subprotocol is None
    assert subscriber.wait_for(4) == [first_frame(log.messages[1]).to_json(), *upstream.frames[2:]]
