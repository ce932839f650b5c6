"""kill -9 of the prover daemon in the middle of ingest: after a restart and a replay
from the producer's last ack, nothing acknowledged is lost or applied twice, and an
auditor verifies one consistent log across the crash. Real processes, 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from prover.cli import main as prover_main
from prover.config import load_config
from prover.keys import load_key
from storage.store import Store
from tests.prover.daemon import start_daemon
from verifier.checkpoint import verifier_key_for

USERS = 50


def message(seq: int) -> str:
    """Batch ``seq`` sets user (seq % USERS) to seq: the final state is easy to predict."""
    user = f"user{seq % USERS}"
    update = {"seq": seq, "user": user, "asset": "BTC", "amount": str(seq)}
    return json.dumps({"type": "balances", "id": seq, "source": "core", "updates": [update]})


async def produce(url: str, token: str, first: int, last: int) -> int:
    """Send batches first..last; return the last acknowledged seq (stops on a crash)."""
    acked = first - 1
    try:
        async with connect(
            f"{url}/ingest", additional_headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            for seq in range(first, last + 1):
                await ws.send(message(seq))
                reply = json.loads(await ws.recv())
                assert reply["type"] == "ack", reply
                acked = seq
    except (ConnectionClosed, OSError):
        pass
    return acked


def watch(url: str, key: str, state: Path, out: Path) -> subprocess.Popen[bytes]:
    """The auditor's CLI, as an auditor runs it: it reconnects after the crash."""
    args = ["watch", url, "--key", key, "--state", str(state), "--json", "--keep-going"]
    with out.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "verifier.cli", *args, "--max-silence", "120"], stdout=f
        )


def events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def test_kill_9_mid_ingest(tmp_path: Path, unused_port: int, db_url: str) -> None:
    data = tmp_path / "data"
    init = ["init", "--origin", "crash.test/log", "--assets", "BTC:8"]
    prover_main(["--data-dir", str(data), "--database-url", db_url, *init])
    config = load_config(data)  # the daemon finds the database through it
    assert config.url == db_url
    url = f"ws://127.0.0.1:{unused_port}"
    key = str(verifier_key_for(config.origin, load_key(config.key_path).public_key()))

    proc = start_daemon(data, unused_port)
    out = tmp_path / "auditor.jsonl"
    auditor = watch(url, key, tmp_path / "auditor", out)

    async def crash_while_producing() -> int:
        producing = asyncio.create_task(produce(url, config.ingest_token, 1, 100_000))
        await asyncio.sleep(2.5)
        os.kill(proc.pid, signal.SIGKILL)
        return await producing

    try:
        acked = asyncio.run(crash_while_producing())
        proc.wait()
        assert acked > 50  # it really was in the middle of ingest

        proc = start_daemon(data, unused_port)
        try:
            # The producer replays from well before its last ack: replays are ignored.
            final = max(acked + 200, 400)
            replayed = asyncio.run(produce(url, config.ingest_token, max(1, acked - 30), final))
            assert replayed == final
            expected = {
                f"user{u}": max(s for s in range(1, final + 1) if s % USERS == u)
                for u in range(USERS)
            }
            total = str(sum(expected.values()))
            deadline = time.monotonic() + 60
            while not any(
                e["event"] == "epoch" and e["assets"]["BTC"]["liabilities"] == total
                for e in events(out)
            ):
                assert time.monotonic() < deadline, "the auditor never saw the final balances"
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    finally:
        auditor.send_signal(signal.SIGTERM)
        auditor.wait(timeout=20)

    # The auditor watched through the crash: every epoch verified once, in order,
    # one log throughout; its only alarms are about reserves (none were reported).
    seen = events(out)
    epochs = [e["epoch"] for e in seen if e["event"] == "epoch"]
    assert epochs == list(range(len(epochs)))
    kinds = [e["event"] for e in seen]
    assert "disconnected" in kinds[kinds.index("epoch") : len(kinds) - kinds[::-1].index("epoch")]
    assert {e["check"] for e in seen if e["event"] == "violation"} <= {"insolvent", "unproven"}

    store = Store.open(config.url)
    balances = {u: m for chunk in store.iter_balances() for u, _, m in chunk}
    store.close()
    assert balances == expected
