"""Attested reserves end to end: a real daemon on 127.0.0.1 with an attester
key configured, a signed report accepted and bound in the record, the root
stream carrying it, and the auditor (solvency-verify watch --attester)
verifying it; a producer with the ingest token but not the source's key is
refused."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from prover.attest import generate_attester_key
from prover.cli import main as prover_main
from prover.config import load_config
from prover.keys import load_key
from tests.prover.daemon import start_daemon
from verifier.checkpoint import verifier_key_for
from verifier.cli import main as verify_main
from verifier.record import EpochRecord
from verifier.report import ReserveReport, SignedReport, sign_report
from verifier.stream import parse_message


async def send(url: str, token: str, *messages: dict) -> list[dict]:
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(f"{url}/ingest", additional_headers=headers) as ws:
        replies = []
        for message in messages:
            await ws.send(json.dumps(message))
            replies.append(json.loads(await ws.recv()))
        return replies


async def first_frame_with_reports(url: str) -> tuple[int, dict]:
    async with connect(f"{url}/roots?since=0", max_size=1 << 20) as ws:
        async with asyncio.timeout(30):
            async for frame in ws:
                message = parse_message(frame)
                if message.reports:
                    return EpochRecord.decode(message.record).epoch, json.loads(frame)
    raise AssertionError("the stream ended")


def test_signed_reserves_from_ingest_to_the_auditor(
    tmp_path: Path, unused_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    init = ["init", "--origin", "e2e.test/log", "--assets", "BTC:8"]
    assert prover_main(["--data-dir", str(data), *init]) == 0
    capsys.readouterr()
    cold = generate_attester_key("cold-wallet", tmp_path / "cold.key")
    with open(data / "config.toml", "a") as f:
        f.write(f'\n[[attesters]]\nsource = "cold-wallet"\nkey = "{cold.verifier_key}"\n')
    config = load_config(data)
    key = str(verifier_key_for(config.origin, load_key(config.key_path).public_key()))
    url = f"ws://127.0.0.1:{unused_port}"
    proc = start_daemon(data, unused_port, env={"SOLVENCY_MAX_INTERVAL": "1"})
    try:
        now = int(time.time() * 1000)
        note = sign_report(ReserveReport("cold-wallet", "BTC", 500, now), cold.key).decode()
        plain = {"seq": 2, "asset": "BTC", "amount": "999999", "as_of_ms": now}
        replies = asyncio.run(
            send(
                url,
                config.ingest_token,
                {
                    "type": "balances",
                    "source": "core",
                    "updates": [{"seq": 1, "user": "alice", "asset": "BTC", "amount": "300"}],
                },
                {
                    "type": "reserve-reports",
                    "source": "cold-wallet",
                    "reports": [{"seq": 1, "report": note}],
                },
                # attack: the ingest token alone, for the attested source
                {"type": "reserves", "id": "x", "source": "cold-wallet", "updates": [plain]},
            )
        )
        assert [r["type"] for r in replies] == ["ack", "ack", "error"]
        assert (replies[2]["code"], replies[2]["id"]) == ("unattested", "x")

        epoch, frame = asyncio.run(first_frame_with_reports(url))
        assert frame["reports"] == [note]
        record = EpochRecord.decode(parse_message(json.dumps(frame)).record)
        [source] = record.asset("BTC").sources
        assert (source.amount, source.report_hash) == (500, SignedReport.parse(note.encode()).hash)

        state = tmp_path / "auditor"
        args = ["watch", url, "--key", key, "--state", str(state), "--json"]
        trusted = ["--attester", str(cold.verifier_key), "--max-epochs", str(epoch + 1)]
        assert verify_main([*args, *trusted]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert events[-1]["event"] == "epoch" and events[-1]["epoch"] == epoch
        assert events[-1]["assets"]["BTC"]["status"] == "solvent"

        # an auditor who trusts another key for the source sees it unattested
        other = generate_attester_key("cold-wallet", tmp_path / "other.key")
        args[args.index(str(state))] = str(tmp_path / "auditor-2")
        assert verify_main([*args, "--attester", str(other.verifier_key)]) == 1
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        alarm = next(e for e in events if e["event"] == "violation")
        assert alarm["check"] == "unattested" and "not trusted" in alarm["reason"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
