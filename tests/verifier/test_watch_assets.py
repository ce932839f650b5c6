"""solvency-verify watch --assets and --checkpoints-only against a fake prover
on 127.0.0.1: what it asks for, what it reports verified and what not, the
frames and choices it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.verifier.fakelog import VKEY, FakeLog, many
from tests.verifier.test_cli_watch import FakeProver, events, watch
from verifier.cli import main

NAMES = ("ADA", "BTC", "DOGE", "ETH", "SOL")


@pytest.fixture
def five() -> FakeLog:
    log = FakeLog()
    for epoch in range(4):
        log.append(many(epoch, NAMES))
    return log


def test_watch_assets_subscribes_and_says_what_it_did_not_verify(
    five: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProver(five.messages, log=five) as prover:
        assert (
            watch(
                prover.url, tmp_path, "--assets", "ETH,BTC,XRP", "--keep-going", "--max-epochs", "2"
            )
            == 1
        )
        argv = ["watch", prover.url, "--key", str(VKEY), "--state", str(tmp_path)]
        found = events(capsys)
        assert main([*argv, "--assets", "BTC", "--max-epochs", "1"]) == 0
        line = capsys.readouterr().out
    assert prover.queries == ["since=0&assets=BTC,ETH,XRP", "since=2&assets=BTC"]
    first = found[0]
    assert (first["event"], first["epoch"], first["followed"]) == (
        "epoch",
        0,
        ["BTC", "ETH", "XRP"],
    )
    assert set(first["assets"]) == {"BTC", "ETH"} and first["absent"] == ["XRP"]
    assert first["other_assets"] == 3 and first["solvent"] is False
    # XRP is absent from the first epoch on: one alarm, not one per epoch
    assert [e["event"] for e in found] == ["epoch", "violation", "epoch"]
    assert found[1]["check"] == "absent" and found[1]["reason"].startswith("XRP: ")
    assert line == (
        "epoch 2 2026-09-21T14:13:22Z verified: BTC solvent liabilities 0.000001 reserves"
        " 0.0000015 | 4 other assets not followed (not verified)\n"
    )


def test_watch_checkpoints_only(
    five: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProver(five.messages, log=five) as prover:
        assert watch(prover.url, tmp_path, "--checkpoints-only", "--max-epochs", "3") == 0
        found = events(capsys)
        argv = ["watch", prover.url, "--key", str(VKEY), "--state", str(tmp_path)]
        assert main([*argv, "--checkpoints-only", "--max-epochs", "1"]) == 0
        line = capsys.readouterr().out
    assert prover.queries == ["since=0&only=checkpoints", "since=3&only=checkpoints"]
    root = json.loads((tmp_path / "state.json").read_text())["root"]
    assert [(e["event"], e["epoch"], e["size"]) for e in found] == [
        ("checkpoint", n, n + 1) for n in range(3)
    ]
    assert found[0]["followed"] == "checkpoints" and "assets" not in found[0]
    assert line == (
        f"epoch 3 checkpoint verified: log of 4 records, root {root}"
        " | records not followed (not verified)\n"
    )


def test_watch_refuses_frames_of_another_kind(
    five: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that ignores --assets and sends whole records: format, with evidence."""
    with FakeProver(five.messages) as prover:
        assert watch(prover.url, tmp_path, "--assets", "BTC") == 1
    [alarm] = [e for e in events(capsys) if e["event"] == "violation"]
    assert alarm["check"] == "format" and "chosen assets" in alarm["reason"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--assets", "btc"], "invalid asset id"),
        (["--assets", "BTC,BTC"], "twice"),
        (["--assets", "BTC", "--checkpoints-only"], "not allowed with"),
        (["--checkpoints-only", "--attester", str(VKEY)], "--attester checks records"),
    ],
)
def test_watch_choices_that_are_usage_errors(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert watch("ws://127.0.0.1:1", tmp_path, *options) == 2
    assert message in capsys.readouterr().err


def test_a_subscription_refused_as_a_bad_request_is_a_usage_error(
    five: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = b'{"type": "error", "code": "bad-request", "message": "assets: no"}'
    with FakeProver(five.messages, refusals=[(400, body)]) as prover:
        assert watch(prover.url, tmp_path, "--assets", "BTC") == 2
    err = capsys.readouterr().err
    assert "refused the subscription" in err and "assets: no" in err
