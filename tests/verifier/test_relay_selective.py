"""A relay serving subscribers of chosen assets (``?assets=A,B``) and of
checkpoints only (``?only=checkpoints``), on real sockets on 127.0.0.1: the
frames it builds are the prover's, built once per epoch and choice; a chain
of relays in front of ``watch --assets``; relays that lie in those frames,
caught by the auditor behind them; a chosen asset leaving the record."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.verifier.fakelog import VKEY, FakeLog, many
from tests.verifier.test_relay import refusal
from tests.verifier.test_relay_support import (
    Background,
    Evil,
    Subscriber,
    Upstream,
    events,
    start_relay,
    until,
    watch,
)
from verifier.cli import main
from verifier.stream import AssetsMessage, CheckpointMessage, parse_message

pytestmark = pytest.mark.timeout(60)

NAMES = ("ADA", "BTC", "DOGE", "ETH", "SOL")


@pytest.fixture
def log() -> FakeLog:
    fake = FakeLog()
    for epoch in range(6):
        fake.append(many(epoch, NAMES))
    return fake


def chosen_frames(log: FakeLog, chosen: set[str], epochs: range) -> list[str | bytes]:
    return [log.assets_frame(e, chosen).to_json() for e in epochs]


def test_a_relay_builds_the_provers_frames_once_per_epoch_and_choice(
    bg: Background, log: FakeLog, tmp_path: Path
) -> None:
    """From history and live, several subscribers of each choice: every frame
    is what the prover sends that choice, built once for all its subscribers;
    upstream the relay follows every asset."""
    upstream = Upstream(bg, log.messages[:3]).start()
    relay = start_relay(bg, upstream.url, tmp_path / "relay")
    until(lambda: relay.history.next == 3)
    pairs = [Subscriber(bg, relay.downstream, 0, "assets=ETH,BTC") for _ in range(3)]
    cats = [Subscriber(bg, relay.downstream, 1, "assets=CAT") for _ in range(2)]
    checkpoints = [Subscriber(bg, relay.downstream, 0, "only=checkpoints") for _ in range(2)]
    full = Subscriber(bg, relay.downstream, 0)
    for s in pairs:
        s.wait_for(3)
    for s in cats:
        s.wait_for(2)
    upstream.publish(*log.messages[3:])
    for s in pairs:
        assert s.wait_for(6) == chosen_frames(log, {"BTC", "ETH"}, range(6))
    for s in cats:
        assert s.wait_for(5) == chosen_frames(log, {"CAT"}, range(1, 6))
    for s in checkpoints:
        assert s.wait_for(6) == [log.checkpoint_frame(e).to_json() for e in range(6)]
    assert full.wait_for(6) == upstream.frames  # byte for byte as received
    assert relay.frames.built == 6 + 5 + 6
    assert upstream.queries == ["since=0"]  # every asset
    for query in ("assets=btc", "assets=BTC&only=checkpoints", "only=records", "assets=A,A"):
        status, body = refusal(bg, f"{relay.downstream}/roots?since=0&{query}")
        assert (status, body["code"]) == (400, "bad-request")


def test_watch_assets_behind_a_chain_of_relays(
    bg: Background, log: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """prover -> relay -> relay -> watch --assets, and --checkpoints-only: it
    reports what it verified and what it did not."""
    upstream = Upstream(bg, log.messages).start()
    first = start_relay(bg, upstream.url, tmp_path / "r1")
    second = start_relay(bg, first.downstream, tmp_path / "r2")
    until(lambda: second.history.next == 6)
    state = tmp_path / "auditor"
    assert watch(second.downstream, state, "--assets", "ETH,BTC", "--max-epochs", "4") == 0
    found = [e for e in events(capsys) if e["event"] == "epoch"]
    assert [e["epoch"] for e in found] == [0, 1, 2, 3]
    assert found[0]["followed"] == ["BTC", "ETH"] and found[0]["other_assets"] == 3
    assert set(found[0]["assets"]) == {"BTC", "ETH"} and found[0]["absent"] == []
    argv = ["watch", second.downstream, "--key", str(VKEY), "--state", str(state)]
    assert main([*argv, "--assets", "BTC,ETH", "--max-epochs", "1"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("epoch 4 ") and "verified: BTC solvent liabilities 0.000001" in line
    assert line.rstrip().endswith("| 3 other assets not followed (not verified)")
    checkpoints = tmp_path / "monitor"
    assert watch(second.downstream, checkpoints, "--checkpoints-only", "--max-epochs", "6") == 0
    found = events(capsys)
    assert [(e["event"], e["size"]) for e in found] == [("checkpoint", n) for n in range(1, 7)]
    assert first.checks() == second.checks() == []
    # each epoch once per choice (the second watch's from those kept): none built twice
    assert first.frames.built == 0 and 5 + 6 <= second.frames.built == len(second.frames)


def _drop_eth(frame: str) -> list[str]:
    message = parse_message(frame)
    assert isinstance(message, AssetsMessage)
    return [dataclasses.replace(message, entries=message.entries[:1]).to_json()]


def _alter_eth(frame: str) -> list[str]:
    message = parse_message(frame)
    assert isinstance(message, AssetsMessage)
    btc, eth = message.entries
    raw = bytearray(eth.entry)
    raw[-40] ^= 1  # in its reserve source
    lying = dataclasses.replace(eth, entry=bytes(raw))
    return [dataclasses.replace(message, entries=(btc, lying)).to_json()]


def _full(log: FakeLog) -> Callable[[str], list[str]]:
    return lambda frame: [log.messages[3].to_json()]


def _checkpoint(frame: str) -> list[str]:
    message = parse_message(frame)
    assert isinstance(message, AssetsMessage)
    return [CheckpointMessage(message.checkpoint, ()).to_json()]


LIES: dict[str, tuple[Callable[[FakeLog], Callable[[str], list[str]]], str]] = {
    "dropped-entry": (lambda log: _drop_eth, "asset-map-incomplete"),
    "altered-entry": (lambda log: _alter_eth, "asset-map-mismatch"),
    "whole-record": (_full, "format"),
    "checkpoint-only": (lambda log: _checkpoint, "format"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_relay_lying_in_a_frame_of_chosen_assets_is_caught(
    lie: str, bg: Background, log: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A relay (here in front of an honest one) changes the frame of epoch 3
    it passes to a subscriber of BTC and ETH: the watch behind it alarms with
    the evidence, and had verified epochs 0-2."""
    make, check = LIES[lie]
    change = make(log)
    upstream = Upstream(bg, log.messages).start()
    honest = start_relay(bg, upstream.url, tmp_path / "relay")
    evil = Evil(bg, honest.downstream, lambda e, f: change(f) if e == 3 else [f]).start()
    assert watch(evil.url, tmp_path / "auditor", "--assets", "BTC,ETH") == 1
    found = events(capsys)
    assert [e["epoch"] for e in found if e["event"] == "epoch"] == [0, 1, 2]
    [alarm] = [e for e in found if e["event"] == "violation"]
    assert alarm["check"] == check
    evidence = json.loads(Path(alarm["evidence"]).read_text())
    assert evidence["last_verified_checkpoint"] == log.messages[2].checkpoint.decode()
    assert honest.checks() == []


def test_a_chosen_asset_that_leaves_the_record_alarms_through_a_relay(
    bg: Background, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = FakeLog()
    for epoch, names in enumerate((NAMES, ("ADA", "BTC", "SOL"), NAMES)):
        log.append(many(epoch, names))
    upstream = Upstream(bg, log.messages).start()
    relay = start_relay(bg, upstream.url, tmp_path / "relay")
    state = tmp_path / "auditor"
    assert (
        watch(relay.downstream, state, "--assets", "BTC,ETH", "--keep-going", "--max-epochs", "3")
        == 1
    )
    found = events(capsys)
    assert [e["event"] for e in found] == ["epoch", "epoch", "violation", "epoch", "recovered"]
    assert found[1]["absent"] == ["ETH"] and found[1]["assets"]["BTC"]["status"] == "solvent"
    assert found[1]["solvent"] is False and found[1]["other_assets"] == 2
    assert (
        found[2]["check"] == "absent"
        and found[2]["reason"] == "ETH: the record has no entry for it"
    )
    evidence = json.loads(Path(found[2]["evidence"]).read_text())
    assert [e["index"] for e in evidence["message"]["entries"]] == [1, 2]  # BTC, SOL
    assert found[4] == {"event": "recovered", "asset": "ETH", "epoch": 2}
    assert relay.checks() == []  # the relay follows every asset: nothing is missing there
