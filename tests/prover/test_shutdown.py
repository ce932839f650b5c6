"""SIGTERM of the prover daemon while producers send at full rate: every
acknowledged update is in the last published epoch, batches arriving during
the shutdown are refused as ``shutting-down`` (not stored: the producer
replays them), the daemon exits 0 and logs no traceback. Real processes, 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from prover.cli import main as prover_main
from prover.config import load_config
from storage.store import Store
from tests.prover.daemon import start_daemon
from verifier.record import EpochRecord

PRODUCERS = 4
WINDOW = 8  # batches each producer keeps in flight
UPDATES = 20  # per batch
USERS = 200  # per producer


def batch(source: str, first: int) -> str:
    """Updates ``first ..`` set user (seq % USERS) of ``source`` to seq."""
    updates = [
        {"seq": s, "user": f"{source}-{s % USERS}", "asset": "BTC", "amount": str(s)}
        for s in range(first, first + UPDATES)
    ]
    return json.dumps({"type": "balances", "id": first, "source": source, "updates": updates})


class Producer:
    """Sends batches back to back, ``WINDOW`` of them unanswered at a time, until closed."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.acked: list[int] = []  # first seq of each acknowledged batch, in order
        self.refused: list[dict[str, Any]] = []
        self.close_code: int | None = None

    async def run(self, url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        room = asyncio.Semaphore(WINDOW)
        async with connect(f"{url}/ingest", additional_headers=headers) as ws:

            async def send() -> None:
                seq = 1
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await room.acquire()
                        await ws.send(batch(self.source, seq))
                        seq += UPDATES

            sending = asyncio.create_task(send())
            try:
                async for frame in ws:
                    reply = json.loads(frame)
                    if reply["type"] == "ack":
                        assert reply["applied"] == UPDATES, reply
                        self.acked.append(reply["id"])
                    else:
                        self.refused.append(reply)
                    room.release()
            finally:
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
            self.close_code = ws.close_code

    def balances(self) -> dict[str, int]:
        """Every user's balance after the acknowledged batches."""
        final: dict[str, int] = {}
        for first in self.acked:
            for s in range(first, first + UPDATES):
                final[f"{self.source}-{s % USERS}"] = s
        return final


def test_sigterm_under_load_publishes_every_acknowledged_update(
    tmp_path: Path, unused_port: int
) -> None:
    data = tmp_path / "data"
    prover_main(["--data-dir", str(data), "init", "--origin", "stop.test/log", "--assets", "BTC:8"])
    config = load_config(data)
    log = tmp_path / "prover.log"
    proc = start_daemon(data, unused_port, log)
    producers = [Producer(f"core{i}") for i in range(PRODUCERS)]

    async def produce_then_stop() -> None:
        url = f"ws://127.0.0.1:{unused_port}"
        running = [asyncio.create_task(p.run(url, config.ingest_token)) for p in producers]
        while sum(len(p.acked) for p in producers) < 200:  # well under way
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*running), 30)

    try:
        asyncio.run(produce_then_stop())
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()

    text = log.read_text()
    assert "Traceback" not in text, text
    for p in producers:
        assert p.close_code == 1001, (p.source, p.close_code)
        # the batch after the last acknowledged one is refused, then the connection closes
        assert [(r["code"], r["id"]) for r in p.refused] == [
            ("shutting-down", p.acked[-1] + UPDATES)
        ], p.refused
    # batches refused or never answered were not stored: the producer replays them
    expected = {u: m for p in producers for u, m in p.balances().items()}
    store = Store.open(config.url)
    try:
        latest = store.latest_epoch()
        stored = {u: m for chunk in store.iter_balances() for u, _, m in chunk}
    finally:
        store.close()
    assert stored == expected
    assert latest is not None
    record = EpochRecord.decode(latest.record)
    assert record.asset("BTC").liabilities == sum(expected.values())
