"""A shard's /healthz and /metrics (prover/shards/shard_http.py) on real
sockets, the shard reading a stream of the test's own on the NATS server at
127.0.0.1:4222 (skipped if absent), saving to a SQLite store: 503 with the
reason while its core is restored (a slow store, then a broken core) or
its stream is gone, 200 again once it reads; the metrics move as epochs
close. And ``shard_timeout``, the setting that bounds the NATS requests."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from prover.config import Config, load_config
from prover.errors import ConfigError
from prover.routing import Router
from prover.shards import wire
from prover.shards.control import Refused, Reply, Request, control_subject, decode_reply, encode
from prover.shards.shard import Shard
from prover.shards.shard_http import ShardListener
from storage.shards import ShardState
from storage.store import Store
from tests.prover.test_nats_source import _jetstream_reachable
from tests.prover.test_shard_role import KEY, PERIOD, Coordinator

NATS = "nats://127.0.0.1:4222"
ROUTER = Router(KEY, 0)  # one part: every user on shard 0


@dataclass(frozen=True)
class Names:
    stream: str
    prefix: str

    @property
    def subjects(self) -> list[str]:
        return [f"{self.prefix}.part.*", wire.commit_subject(self.prefix)]


async def make_stream(names: Names) -> None:
    nc = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=0)
    try:
        await nc.jetstream().add_stream(name=names.stream, subjects=names.subjects)
    finally:
        await nc.close()


@pytest.fixture
def names() -> Iterator[Names]:
    """A stream of this test's own, deleted after it (if it still exists)."""
    if not _jetstream_reachable():
        pytest.skip("no NATS server with JetStream on 127.0.0.1:4222")
    tag = uuid.uuid4().hex[:12]
    found = Names(f"SOLVHTTP_{tag}", f"solvhttp.{tag}")
    asyncio.run(make_stream(found))
    yield found

    async def delete() -> None:
        nc = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=0)
        try:
            await nc.jetstream().delete_stream(found.stream)
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await nc.close()

    asyncio.run(delete())


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[str, float]:
    """Each sample of an exposition, by name and labels (``name{k="v"}``)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


class Feed:
    """Batches published as a front-end does (parts, then the commit), and
    epochs closed through the shard's control subject."""

    def __init__(self, nc: Client, names: Names) -> None:
        self.nc, self.names, self.next_seq = nc, names, 0
        self.coordinator = Coordinator(ROUTER)

    async def send(self, rows: list[tuple[str, str, int]]) -> int:
        """One batch; the stream sequence of its commit."""
        js, prefix = self.nc.jetstream(), self.names.prefix
        updates = tuple((self.next_seq + i, u, a, m) for i, (u, a, m) in enumerate(rows))
        self.next_seq += len(rows)
        data = wire.encode(wire.Part("front", updates))
        headers = {"Nats-Msg-Id": wire.message_id(data)}
        part = await js.publish(wire.part_subject(prefix, 0), data, headers=headers)
        commit = wire.encode(wire.Commit("front", updates[0][0], updates[-1][0], ((0, part.seq),)))
        headers = {"Nats-Msg-Id": wire.message_id(commit)}
        return (await js.publish(wire.commit_subject(prefix), commit, headers=headers)).seq

    async def ask(self, request: Request) -> Reply:
        subject = control_subject(self.names.prefix, 0)
        while True:
            answer = await self.nc.request(subject, encode(request), 10)
            reply = decode_reply(answer.data)
            if not (isinstance(reply, Refused) and reply.code == "not-yet"):
                return reply

    async def close(self, cut: int) -> None:
        stage = self.coordinator.stage(cut)
        close = self.coordinator.close([await self.ask(stage)])
        self.coordinator.combine([await self.ask(close)])


async def until_answer(
    url: str, wanted: Callable[[int, str], bool], timeout: float = 10.0
) -> tuple[int, str]:
    """Ask ``url`` until the answer is ``wanted``; that answer."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await asyncio.to_thread(http_get, url)
        if wanted(status, body):
            return status, body
        assert time.monotonic() < deadline, (status, body)
        await asyncio.sleep(0.02)


def test_health_and_metrics_follow_restores_the_stream_and_epochs(
    tmp_path: Path, names: Names
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'shards.db'}")
    release = threading.Event()
    saved_state = store.shard_state

    def slow_state(stream: str, part: int) -> ShardState | None:
        release.wait(10)  # a restore from a slow database
        return saved_state(stream, part)

    store.shard_state = slow_state  # type: ignore[method-assign]
    config = Config(data_dir=tmp_path)

    async def scenario() -> None:
        shard = Shard(NATS, names.stream, PERIOD, ROUTER, 0, names.prefix, store=store, idle=0.02)
        listener = ShardListener(shard, config)
        await listener.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{listener.port}"
        stop = asyncio.Event()
        task = asyncio.create_task(shard.run(stop))
        nc = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=0)
        try:
            # the first load, from a store that takes its time
            await until_answer(f"{base}/healthz", lambda s, b: b == "restoring from the store\n")
            assert (await asyncio.to_thread(http_get, f"{base}/healthz"))[0] == 503
            metrics = samples((await asyncio.to_thread(http_get, f"{base}/metrics"))[1])
            assert metrics["solvency_shard_restoring"] == 1
            assert metrics["solvency_shard_healthy"] == 0
            release.set()
            await until_answer(f"{base}/healthz", lambda s, b: (s, b) == (200, "ok\n"))

            # epochs close: the metrics move
            feed = Feed(nc, names)
            await feed.send([("a", "BTC", 5), ("b", "BTC", 7), ("c", "ETH", 1)])
            cut = await feed.send([("d", "BTC", 2)])
            await feed.close(cut)
            status, text = await asyncio.to_thread(http_get, f"{base}/metrics")
            first = samples(text)
            assert status == 200
            assert (first["solvency_shard_epoch"], first["solvency_shard_cut"]) == (1, cut)
            assert first["solvency_shard_read_seq"] == cut
            assert first["solvency_shard_lag_messages"] == 0
            assert first["solvency_shard_lag_seconds"] == 0
            assert first['solvency_shard_holders{asset="BTC"}'] == 3
            assert first['solvency_shard_holders{asset="ETH"}'] == 1
            assert first["solvency_shard_saves_total"] == 1
            assert first["solvency_shard_requests_total"] == 2
            assert first["solvency_shard_restores_total"] == 0  # the store held nothing
            assert first["solvency_shard_serving"] == first["solvency_shard_healthy"] == 1
            assert first["process_resident_memory_bytes"] > 10 << 20
            assert first["solvency_connections"] >= 1
            await feed.send([("b", "BTC", 0), ("e", "ETH", 3)])  # b leaves, e comes
            cut = await feed.send([("f", "ETH", 4)])
            await feed.close(cut)
            second = samples((await asyncio.to_thread(http_get, f"{base}/metrics"))[1])
            assert (second["solvency_shard_epoch"], second["solvency_shard_cut"]) == (2, cut)
            assert second['solvency_shard_holders{asset="BTC"}'] == 2
            assert second['solvency_shard_holders{asset="ETH"}'] == 3
            assert second["solvency_shard_saves_total"] == 2
            assert second["solvency_shard_save_seconds"] > 0

            # a broken core: restored from the store, then healthy again
            shard.core.fail("a test's fault")
            await until_answer(f"{base}/healthz", lambda s, b: b == "restoring: a test's fault\n")
            await until_answer(f"{base}/healthz", lambda s, b: (s, b) == (200, "ok\n"))
            third = samples((await asyncio.to_thread(http_get, f"{base}/metrics"))[1])
            assert third["solvency_shard_restores_total"] == 1
            assert (third["solvency_shard_epoch"], third["solvency_shard_cut"]) == (2, cut)
            assert third["solvency_shard_sessions_total"] == 2

            # the stream gone, then made again
            await nc.jetstream().delete_stream(names.stream)
            gone = f"stream {names.stream} does not exist\n"
            status, _ = await until_answer(f"{base}/healthz", lambda s, b: b == gone)
            assert status == 503
            await make_stream(names)
            await until_answer(f"{base}/healthz", lambda s, b: (s, b) == (200, "ok\n"))

            # only GET, only these routes
            assert (await asyncio.to_thread(http_get, f"{base}/ingest"))[0] == 404
            delete = urllib.request.Request(f"{base}/healthz", method="DELETE")
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(urllib.request.urlopen, delete, None, 10)
            assert refused.value.code == 405
        finally:
            release.set()
            stop.set()
            await asyncio.wait_for(task, 10)
            await listener.stop()
            await nc.close()

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_a_shard_not_reading_is_unhealthy(tmp_path: Path, names: Names) -> None:
    """Before its session starts (or between two), a shard is 503; the
    listener's own NATS connection says so when NATS cannot be reached."""

    async def scenario() -> None:
        shard = Shard(NATS, names.stream, PERIOD, ROUTER, 0, names.prefix)
        listener = ShardListener(shard, Config(data_dir=tmp_path))
        await listener.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{listener.port}"
        try:
            not_reading = "not reading the stream: its session is starting again\n"
            await until_answer(f"{base}/healthz", lambda s, b: (s, b) == (503, not_reading))
            assert listener._nc is not None
            await listener._nc.close()  # the connection to NATS lost
            await asyncio.sleep(1.1)  # past the answer kept from before
            status, body = await asyncio.to_thread(http_get, f"{base}/healthz")
            assert (status, body) == (503, f"not connected to NATS at {NATS}\n")
        finally:
            await listener.stop()

    asyncio.run(scenario())


def test_shard_timeout_is_a_bounded_setting(tmp_path: Path) -> None:
    assert Config(data_dir=tmp_path).shard_timeout == 5.0
    assert Config(data_dir=tmp_path, shard_timeout=1).shard_timeout == 1
    assert Config(data_dir=tmp_path, shard_timeout=60).shard_timeout == 60
    for wrong in (0.5, 0, -1, 61):
        with pytest.raises(ConfigError, match="shard_timeout"):
            Config(data_dir=tmp_path, shard_timeout=wrong)
    config = load_config(tmp_path, {}, environ={"SOLVENCY_SHARD_TIMEOUT": "2.5"})
    assert config.shard_timeout == 2.5
    with pytest.raises(ConfigError, match=r"SOLVENCY_SHARD_TIMEOUT.*shard_timeout"):
        load_config(tmp_path, {}, environ={"SOLVENCY_SHARD_TIMEOUT": "600"})
    assert msgspec.structs.replace(config, shard_port=9100).shard_port == 9100
    with pytest.raises(ConfigError, match="shard_port"):
        Config(data_dir=tmp_path, shard_port=70000)
