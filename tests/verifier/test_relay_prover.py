"""A real prover daemon -> ``solvency-verify relay --binary`` (its own
process, following in MessagePack) -> a relay -> ``solvency-verify watch``,
in JSON and with ``--binary``: every epoch the prover publishes reaches the
auditor, verified, in order; a subscriber of every asset, of chosen assets
or of checkpoints, in either encoding, gets from a relay the very frames the
prover sends it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prover.cli import main as prover_main
from prover.config import load_config
from prover.keys import load_key
from tests.prover.daemon import start_daemon
from tests.verifier.test_relay_support import (
    Background,
    Subscriber,
    http_get,
    start_relay,
    until,
)
from verifier.checkpoint import verifier_key_for
from verifier.cli import main


@pytest.mark.timeout(90)
def test_prover_relay_relay_watch(
    bg: Background, tmp_path: Path, unused_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    init = ["init", "--origin", "relay.test/log", "--assets", "BTC:8,ETH:9"]
    assert prover_main(["--data-dir", str(data), *init]) == 0
    capsys.readouterr()
    config = load_config(data)
    key = str(verifier_key_for(config.origin, load_key(config.key_path).public_key()))
    prover = start_daemon(data, unused_port, env={"SOLVENCY_MAX_INTERVAL": "1"})
    out = tmp_path / "relay.jsonl"
    try:
        with out.open("wb") as f:
            upstream = f"ws://127.0.0.1:{unused_port}"
            argv = [
                "relay",
                "--upstream",
                upstream,
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--binary",
            ]
            argv += ["--key", key, "--state", str(tmp_path / "r1")]
            first = subprocess.Popen([sys.executable, "-m", "verifier.cli", *argv], stdout=f)
        try:
            until(lambda: out.read_text().strip(), what="the relay to listen")
            listening = json.loads(out.read_text().splitlines()[0])
            assert listening["event"] == "listening" and listening["next"] == 0
            upstream = listening["url"].removesuffix("/roots")
            second = start_relay(bg, upstream, tmp_path / "r2", key=key)
            auditor = ["--state", str(tmp_path / "auditor"), "--json", "--max-epochs", "3"]
            assert main(["watch", second.downstream, "--key", key, *auditor]) == 0
            epochs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert [e["epoch"] for e in epochs if e["event"] == "epoch"] == [0, 1, 2]
            assert second.checks() == [] and http_get(second.port, "/healthz") == (200, b"ok\n")
            chosen = ["--state", str(tmp_path / "chosen"), "--json", "--max-epochs", "3"]
            assert main(["watch", second.downstream, "--key", key, *chosen, "--assets", "ETH"]) == 0
            epochs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert [(e["followed"], e["other_assets"]) for e in epochs] == [(["ETH"], 1)] * 3
            binary = ["--state", str(tmp_path / "binary"), "--json", "--max-epochs", "3"]
            assert main(["watch", second.downstream, "--key", key, *binary, "--binary"]) == 0
            epochs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert [e["epoch"] for e in epochs if e["event"] == "epoch"] == [0, 1, 2]
            assert [e["event"] for e in epochs] == ["epoch"] * 3  # selected: no warning
            for choice in ("", "assets=ETH,XRP", "only=checkpoints"):
                for msgpack in (False, True):
                    prover_url = f"ws://127.0.0.1:{unused_port}"
                    direct = Subscriber(bg, prover_url, 0, choice, msgpack).wait_for(3)
                    relayed = Subscriber(bg, second.downstream, 0, choice, msgpack).wait_for(3)
                    assert relayed[:3] == direct[:3]  # built by the relay as by the prover
                    assert {type(f) for f in relayed} == {bytes if msgpack else str}
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(20) == 0
    finally:
        prover.send_signal(signal.SIGTERM)
        prover.wait(30)
    events = [json.loads(line)["event"] for line in out.read_text().splitlines()]
    assert events == ["listening"]  # nothing alarmed, nothing dropped
