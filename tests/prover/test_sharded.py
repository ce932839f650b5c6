"""The sharded prover end to end, on the real NATS server at 127.0.0.1:4222
(a stream of the test's own): producers send batches over WebSockets to a
front-end, two shards keep their parts of every tree, the coordinator
closes epochs at cuts of the stream, appends them to the log and serves
/roots and /proof. Every record equals what the single process's ledger
gives for the same batches cut at the same places, an auditor following
/roots verifies every epoch, and users' proofs verify."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect

from prover.config import AssetConfig, Config
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.routing import Router
from prover.server import start_server
from prover.shards.coordinator import Coordinator
from prover.shards.frontend import Frontend
from prover.shards.shard import Shard
from storage.store import Store
from tests.prover.epoch_rows import rows_by_epoch
from tests.prover.test_frontend import NATS, TOKEN, Names, names  # noqa: F401 (fixture)
from verifier.checkpoint import verifier_key_for
from verifier.cli import main as verify_main
from verifier.proof import verify_proof
from verifier.record import EpochRecord

ROUTER = Router(bytes(range(50, 82)), 1)  # 2 shards
PERIOD = SaltPeriod(1, 0, bytes(range(32)))
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ASSETS = ("BTC", "ETH")


def config(tmp_path: Path) -> Config:
    return Config(
        data_dir=tmp_path,
        assets=tuple(AssetConfig(a, 8) for a in ASSETS),
        ingest_token=TOKEN,
        epoch_interval=0.2,
        max_interval=1.0,
        proof_secret="ab" * 16,
    )


@asynccontextmanager
async def sharded(
    tmp_path: Path,
    names: Names,  # noqa: F811
    settings: Config | None = None,
    retains: tuple[int, int] = (0, 0),
) -> AsyncIterator[tuple[Frontend, Coordinator, int]]:
    """A front-end, two shards (keeping ``retains`` earlier epochs) and a
    coordinator (on SQLite) with its server, all of ``settings`` (default:
    ``config``); yields the front-end, the coordinator and the server's port."""
    stop = asyncio.Event()
    settings = settings or config(tmp_path)
    frontend = Frontend(settings, ROUTER, NATS, names.spec)
    await frontend.start("127.0.0.1", 0)  # makes the stream
    shards = [
        Shard(NATS, names.stream, PERIOD, ROUTER, part, names.prefix, retain=retain)
        for part, retain in enumerate(retains)
    ]
    tasks = [asyncio.create_task(s.run(stop)) for s in shards]
    for shard in shards:
        await asyncio.wait_for(shard.serving.wait(), 10)
    store = Store.open(settings.url)
    coordinator = Coordinator(settings, store, KEY, ROUTER, [NATS], names.stream, names.prefix)
    await coordinator.start()
    server = await start_server(coordinator, "127.0.0.1", 0)
    tasks.append(asyncio.create_task(coordinator.run(stop)))
    try:
        yield frontend, coordinator, server.sockets[0].getsockname()[1]
    finally:
        stop.set()
        server.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await coordinator.close()
        await frontend.stop(grace=5)
        store.close()


def batches(count: int, size: int) -> list[dict]:
    """Balance messages of producers p0 and p1: users come, change and leave
    (balance 0), over both assets."""
    out, seq = [], {"p0": 0, "p1": 0}
    for b in range(count):
        source = f"p{b % 2}"
        updates = []
        for k in range(size):
            n = (b * 37 + k * 11) % 400
            amount = 0 if (b + k) % 9 == 0 else n + b + 1
            updates.append(
                {
                    "seq": seq[source],
                    "user": f"user{n}",
                    "asset": ASSETS[(n + b) % 2],
                    "amount": amount,
                }
            )
            seq[source] += 1
        out.append({"type": "balances", "id": b, "source": source, "updates": updates})
    return out


def test_sharded_records_equal_the_single_process(tmp_path: Path, names: Names) -> None:  # noqa: F811
    state = tmp_path / "auditor.json"
    results: dict[str, int] = {}

    def auditor(port: int) -> None:
        key = str(verifier_key_for(config(tmp_path).origin, KEY.public_key()))
        results["watch"] = verify_main(
            [
                "watch",
                f"ws://127.0.0.1:{port}",
                "--key",
                key,
                "--state",
                str(state),
                "--max-epochs",
                "4",
            ]
        )

    async def scenario() -> None:
        async with sharded(tmp_path, names) as (frontend, coordinator, port):
            watcher = threading.Thread(target=auditor, args=(port,))
            watcher.start()
            acks = []
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with connect(
                f"ws://127.0.0.1:{frontend.port}/ingest", additional_headers=headers
            ) as ws:
                reserves = [
                    {"seq": i, "asset": a, "amount": 10**12, "as_of_ms": int(time.time() * 1000)}
                    for i, a in enumerate(ASSETS)
                ]
                await ws.send(
                    json.dumps({"type": "reserves", "source": "cold", "updates": reserves})
                )
                assert json.loads(await ws.recv())["type"] == "ack"
                for message in batches(30, 40):
                    await ws.send(json.dumps(message))
                    reply = json.loads(await ws.recv())
                    assert reply["type"] == "ack", reply
                    acks.append((reply["stream_seq"], message))
                    await asyncio.sleep(0.02)
            last = max(seq for seq, _ in acks)
            for _ in range(200):  # until an epoch covers the last batch
                number = coordinator.metrics.epoch
                if (
                    number >= 0
                    and coordinator.store.epoch_marks(number).get(("stream", names.stream), 0)
                    >= last
                ):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("no epoch covered every batch")
            await asyncio.to_thread(watcher.join, 30)
            compare(coordinator.store, names.stream, acks)
            for user in ("user0", "user11", "user123"):
                proof = await coordinator.proof(user)
                if proof is not None:
                    verify_proof(proof, coordinator.verifier_key, user=user)

    asyncio.run(scenario())
    assert results["watch"] == 0


def compare(store: Store, stream: str, acks: list[tuple[int, dict]]) -> None:
    """Each epoch's assets equal a single ``Ledger`` split the same way, fed
    the same batches in commit order, closed at the same cuts."""
    single = Ledger.build(PERIOD, ASSETS, [], router=ROUTER)
    for number, rows in rows_by_epoch(store, stream, acks):
        single.stage_rows(rows)
        single.close_epoch()
        record = EpochRecord.decode(store.epoch(number).record)
        assert [(a.asset, a.height, a.root, a.liabilities) for a in record.assets] == [
            (r.asset, r.height, r.root, r.total) for r in single.roots()
        ], f"epoch {number}"
