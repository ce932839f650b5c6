"""The NATS JetStream source against the real server on 127.0.0.1:4222 (each
test on a stream and subject of its own, deleted after): messages end up in
epochs, refusals are terminated and counted, a message not stored is
delivered again in order, ``shutting-down`` is left for the restart, a
commit without its ack is redelivered and ignored as a replay, and a daemon
killed with SIGKILL mid-stream loses and doubles nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.js.api import ConsumerInfo

from prover.cli import main as prover_main
from prover.config import AssetConfig, Config, load_config
from prover.engine import Engine
from prover.errors import ConfigError, IngestError
from prover.ingest import IngestResult
from prover.messages import Batch, parse_ingest
from prover.sources.nats import NatsSource, redact
from storage.store import Store
from tests.prover.daemon import start_daemon
from tests.prover.engines import Scenario, run_engine
from verifier.record import EpochRecord

NATS = "nats://127.0.0.1:4222"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def _jetstream_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=1) as s:
            return b'"jetstream":true' in s.recv(4096)
    except OSError:
        return False


@dataclass(frozen=True)
class Names:
    stream: str
    subject: str


@pytest.fixture
def names() -> Iterator[Names]:
    """A stream of this test's own on the local server, deleted after it."""
    if not _jetstream_reachable():
        pytest.skip("no NATS server with JetStream on 127.0.0.1:4222")
    tag = uuid.uuid4().hex[:12]
    found = Names(f"SOLVTEST_{tag}", f"solvtest.{tag}.ingest")

    async def create() -> None:
        async with client() as nc:
            await nc.jetstream().add_stream(
                name=found.stream, subjects=[found.subject], duplicate_window=60.0
            )

    async def delete() -> None:
        async with client() as nc:
            await nc.jetstream().delete_stream(found.stream)

    asyncio.run(create())
    try:
        yield found
    finally:
        asyncio.run(delete())


@asynccontextmanager
async def client() -> AsyncIterator[Client]:
    nc = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


def balances(source: str, first: int, rows: list[tuple[str, int]]) -> bytes:
    """A balances message; its updates have seqs ``first, first + 1, ...``."""
    updates = [
        {"seq": first + i, "user": user, "asset": "BTC", "amount": str(amount)}
        for i, (user, amount) in enumerate(rows)
    ]
    message = {"type": "balances", "id": first, "source": source, "updates": updates}
    return json.dumps(message).encode()


async def publish(names: Names, *payloads: bytes) -> list[int]:
    """Publish each payload with a Nats-Msg-Id of its own; the stream sequences."""
    async with client() as nc:
        js = nc.jetstream()
        acks = [
            await js.publish(names.subject, p, headers={"Nats-Msg-Id": uuid.uuid4().hex})
            for p in payloads
        ]
    return [a.seq for a in acks]


async def consumer(names: Names, durable: str = "prover") -> ConsumerInfo:
    async with client() as nc:
        return await nc.jetstream().consumer_info(names.stream, durable)


def config(tmp_path: Path) -> Config:
    return Config(
        data_dir=tmp_path,
        origin="nats.test/log",
        assets=(AssetConfig("BTC", 8),),
        epoch_interval=0.05,
        max_interval=0.5,
    )


def run(tmp_path: Path, scenario: Scenario) -> None:
    run_engine(config(tmp_path), KEY, scenario)


def source_for(names: Names, ack_wait: float = 30.0) -> NatsSource:
    return NatsSource(NATS, names.stream, names.subject, "prover", ack_wait)


async def consume(
    engine: Engine, source: NatsSource, until: Callable[[], bool], timeout: float = 10.0
) -> None:
    """Run ``source`` until ``until()`` holds, then stop it; fail after ``timeout``."""
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(engine, stop))
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert until(), source.stats


async def liabilities(engine: Engine) -> int:
    record = EpochRecord.decode((await engine.close_epoch()).record)
    return record.asset("BTC").liabilities


def test_messages_end_up_in_an_epoch_and_refusals_are_terminated(
    tmp_path: Path, names: Names
) -> None:
    good = [
        balances("core", 1, [("alice", 150), ("bob", 50)]),
        balances("core", 3, [("alice", 100)]),
        balances("hot", 1, [("carol", 7)]),
    ]
    refused = [
        b"{not json",
        balances("core", 2, [("dave", 1)]).replace(b"BTC", b"DOGE"),  # unknown-asset
    ]
    replay = balances("core", 1, [("alice", 999), ("bob", 999)])  # ignored by seq
    last = asyncio.run(publish(names, good[0], refused[0], good[1], refused[1], replay, good[2]))

    async def scenario(engine: Engine) -> None:
        source = source_for(names)
        await consume(engine, source, lambda: source.stats.position == last[-1])
        assert (source.stats.stored, source.stats.refused, source.stats.retried) == (4, 2, 0)
        assert engine.metrics.ingest_errors == 2
        assert await liabilities(engine) == 100 + 50 + 7
        assert engine.store.source_marks() == {("balances", "core"): 3, ("balances", "hot"): 1}
        info = await consumer(names)
        assert (info.ack_floor.stream_seq, info.num_ack_pending, info.num_pending) == (6, 0, 0)
        assert info.config.max_ack_pending == 1  # the order invariant

    run(tmp_path, scenario)


def test_a_message_not_stored_is_delivered_again_before_the_next(
    tmp_path: Path, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(
        publish(names, balances("core", 1, [("alice", 5)]), balances("core", 2, [("alice", 6)]))
    )

    async def scenario(engine: Engine) -> None:
        store = engine.ingest
        seen: list[int] = []

        async def flaky(batch: Batch) -> IngestResult:  # the database fails once
            seen.append(batch.updates[0].seq)
            if len(seen) == 1:
                raise IngestError("internal", "the batch could not be stored; retry")
            return await store(batch)

        monkeypatch.setattr(engine, "ingest", flaky)
        source = source_for(names)
        await consume(engine, source, lambda: source.stats.stored == 2)
        assert seen == [1, 1, 2]  # again, and before the next one
        assert source.stats.retried == 1
        assert await liabilities(engine) == 6

    run(tmp_path, scenario)


def test_shutting_down_leaves_the_message_for_the_restart(tmp_path: Path, names: Names) -> None:
    asyncio.run(publish(names, balances("core", 1, [("alice", 5)])))

    async def stopping(engine: Engine) -> None:
        stopped = asyncio.Event()
        stopped.set()
        await engine.run(stopped)  # refuses ingest from now on
        source = source_for(names)
        await asyncio.wait_for(source.run(engine, asyncio.Event()), 10)  # returns by itself
        assert (source.stats.stored, source.stats.refused) == (0, 0)
        assert engine.store.source_marks() == {}

    async def restarted(engine: Engine) -> None:
        source = source_for(names)
        await consume(engine, source, lambda: source.stats.stored == 1)
        assert await liabilities(engine) == 5

    run(tmp_path, stopping)
    run(tmp_path, restarted)


def test_a_commit_whose_ack_was_lost_is_redelivered_and_ignored(
    tmp_path: Path, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(
        publish(names, balances("core", 1, [("alice", 5)]), balances("core", 2, [("alice", 6)]))
    )

    async def scenario(engine: Engine) -> None:
        source = source_for(names, ack_wait=1.0)
        async with client() as nc:  # a prover that commits, then dies before it acks
            js = nc.jetstream()
            await js.add_consumer(names.stream, source.consumer_config())
            sub = await js.pull_subscribe_bind(durable="prover", stream=names.stream)
            (message,) = await sub.fetch(1)
            first = await engine.ingest(parse_ingest(message.data))
            assert first.applied == 1
        results: list[IngestResult] = []
        store = engine.ingest

        async def recorded(batch: Batch) -> IngestResult:
            results.append(await store(batch))
            return results[-1]

        monkeypatch.setattr(engine, "ingest", recorded)
        await consume(engine, source, lambda: source.stats.stored == 2)
        # delivered again after ack_wait, before the next: a replay, acked
        assert [(r.last_seq, r.applied, r.duplicates) for r in results] == [(1, 0, 1), (2, 1, 0)]
        assert await liabilities(engine) == 6
        assert (await consumer(names)).ack_floor.stream_seq == 2

    run(tmp_path, scenario)


def test_an_unreachable_server_is_retried_until_stop(tmp_path: Path, unused_port: int) -> None:
    async def scenario(engine: Engine) -> None:
        source = NatsSource(f"nats://127.0.0.1:{unused_port}", "NOPE")
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(engine, stop))
        await asyncio.sleep(0.5)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 3)
        assert source.stats.sessions == 0

    run(tmp_path, scenario)


def test_nats_configuration() -> None:
    base = Path("/nonexistent")
    assert not Config(base).nats_url  # off by default
    Config(base, nats_url=NATS, nats_stream="INGEST", nats_subject="ingest.>")
    for bad in (
        {"nats_stream": ""},
        {"nats_stream": "a.b"},
        {"nats_stream": "S", "nats_durable": "x y"},
        {"nats_stream": "S", "nats_subject": "a b"},
        {"nats_stream": "S", "nats_ack_wait": 0.5},
    ):
        with pytest.raises(ConfigError):
            Config(base, nats_url=NATS, **bad)  # type: ignore[arg-type]
    assert redact("nats://u:secret@h:4222,nats://token@g") == "nats://h:4222,nats://g"


# A daemon killed mid-stream

MESSAGES = 150
UPDATES = 20  # per message
USERS = 40  # shared by all messages: a message applied out of order rolls one back


def message(k: int) -> tuple[bytes, dict[str, int]]:
    """Message ``k`` (0-based) of source ``core`` and the balances it sets: its
    seqs' users among ``USERS`` (amount: the seq), and one user of its own."""
    first = 1 + k * UPDATES
    rows = [(f"u{(first + i) % USERS}", first + i) for i in range(UPDATES - 1)]
    rows.append((f"m{k}", k + 1))
    return balances("core", first, rows), dict(rows)


def test_a_daemon_killed_mid_stream_loses_and_doubles_nothing(
    tmp_path: Path, names: Names, unused_port: int
) -> None:
    data = tmp_path / "data"
    prover_main(["--data-dir", str(data), "init", "--origin", "kill.test/log", "--assets", "BTC:8"])
    env = {
        "SOLVENCY_NATS_URL": NATS,
        "SOLVENCY_NATS_STREAM": names.stream,
        "SOLVENCY_NATS_SUBJECT": names.subject,
        "SOLVENCY_NATS_DURABLE": "prover",
        "SOLVENCY_NATS_ACK_WAIT": "1",
    }
    log = tmp_path / "prover.log"
    procs = [start_daemon(data, unused_port, log, env)]
    expected: dict[str, int] = {}

    async def produce() -> None:
        async with client() as nc:
            js = nc.jetstream()
            for k in range(MESSAGES):
                payload, sets = message(k)
                headers = {"Nats-Msg-Id": f"core:{1 + k * UPDATES}"}
                ack = await js.publish(names.subject, payload, headers=headers)
                assert not ack.duplicate and ack.seq == k + 1
                if k % 10 == 0:  # a producer's retry: JetStream keeps one copy
                    assert (await js.publish(names.subject, payload, headers=headers)).duplicate
                expected.update(sets)
                await asyncio.sleep(0.005)

    async def kill_mid_stream() -> int:
        while (floor := (await consumer(names)).ack_floor.stream_seq) < MESSAGES // 4:
            await asyncio.sleep(0.02)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        return floor

    async def kill_then_restart() -> None:
        producing = asyncio.create_task(produce())
        floor = await kill_mid_stream()
        assert floor < MESSAGES, "the producer was too slow to be cut mid-stream"
        await asyncio.to_thread(lambda: procs.append(start_daemon(data, unused_port, log, env)))
        await producing
        deadline = time.monotonic() + 20
        while (await consumer(names)).ack_floor.stream_seq < MESSAGES:
            assert time.monotonic() < deadline, "the restarted daemon did not catch up"
            await asyncio.sleep(0.05)

    try:
        asyncio.run(kill_then_restart())
        procs[-1].send_signal(signal.SIGTERM)
        assert procs[-1].wait(timeout=20) == 0, log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    cfg = load_config(data)
    with Store.open(cfg.url) as store:
        stored = {user: amount for chunk in store.iter_balances() for user, _, amount in chunk}
        marks = store.source_marks()
        latest = store.latest_epoch()
    assert stored == expected  # every message once, none after a later one
    assert marks == {("balances", "core"): MESSAGES * UPDATES}
    assert latest is not None
    assert EpochRecord.decode(latest.record).asset("BTC").liabilities == sum(expected.values())
    assert "Traceback" not in log.read_text()
