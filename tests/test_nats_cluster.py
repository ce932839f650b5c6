"""The three-node JetStream cluster of ``tests/nats_cluster.py``, and the
JetStream behaviours the sharded prover relies on: an R3 file stream acks
publishes with consecutive sequences; ``Nats-Msg-Id`` makes a republish a
duplicate that returns the first sequence; with one node stopped the stream
still acks and a consumer reads everything in order, and the node catches up
when restarted; and when the stream leader is killed, a client with all three
URLs rides through the election by retrying each publish under its own
``Nats-Msg-Id``, leaving exactly the distinct messages, in order."""

from __future__ import annotations

import asyncio
import socket
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import astuple
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig, StreamInfo
from nats.js.errors import NoStreamResponseError

import tests.nats_cluster as nats_cluster_module
from tests.nats_cluster import (
    ClusterStartError,
    NatsCluster,
    free_ports,
    nats_cluster,
    requires_nats_server,
)

__all__ = ["nats_cluster"]  # the fixture, imported so the tests below can ask for it

STREAM = "BATCHES"
SUBJECT = "batches.ingest"
POLL = 0.05
T = TypeVar("T")

# What a JetStream publish raises while its stream has no leader: a timeout
# (the request went to a node that died), or no responders (nobody holds the
# stream's subject until a new leader is elected). Neither stored the message.
LEADERLESS = (nats.errors.TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError)


@asynccontextmanager
async def connect(servers: list[str], *, in_order: bool = False) -> AsyncIterator[Client]:
    """A client of ``servers``, reconnecting quickly; ``in_order`` connects to
    the first and fails over in list order."""
    nc = await nats.connect(
        servers=servers,
        connect_timeout=2,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=200,
        dont_randomize=in_order,
    )
    try:
        yield nc
    finally:
        await nc.close()


def probe(nc: Client) -> JetStreamContext:
    """A context for polls: a request lost with a dying node (or sent while no
    leader answers) is given up after 1 s rather than nats-py's default 5 s."""
    return nc.jetstream(timeout=1)


async def add_r3_stream(js: JetStreamContext) -> StreamInfo:
    return await js.add_stream(
        StreamConfig(
            name=STREAM,
            subjects=[SUBJECT],
            num_replicas=3,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
    )


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 20.0
) -> T:
    """Poll ``check`` until it returns something; a NATS error counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            found = await check()
        except nats.errors.Error as error:
            found, last = None, error
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s (last error: {last!r})")
        await asyncio.sleep(POLL)


async def publish_retrying(
    js: JetStreamContext, payload: bytes, msg_id: str, timeout: float = 20.0
) -> tuple[PubAck, int]:
    """Publish until acked, every attempt with the same ``Nats-Msg-Id``; the ack
    and the number of failed attempts."""
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        try:
            ack = await js.publish(SUBJECT, payload, headers={"Nats-Msg-Id": msg_id}, timeout=1)
            return ack, failures
        except LEADERLESS:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(POLL)


async def fully_replicated(js: JetStreamContext, messages: int) -> StreamInfo | None:
    """The stream's info once it has a leader, both other replicas current and
    online, and ``messages`` messages; else ``None``."""
    info = await js.stream_info(STREAM)
    replicas = info.cluster.replicas if info.cluster else None
    if info.cluster is None or info.cluster.leader is None or not replicas or len(replicas) != 2:
        return None
    if not all(r.current and not r.offline for r in replicas):
        return None
    return info if info.state.messages == messages else None


async def caught_up(
    js: JetStreamContext, cluster: NatsCluster, i: int, messages: int
) -> StreamInfo | None:
    """As ``fully_replicated``, and node ``i``'s own replica holds every message:
    a replica reported current may still lack the last one applied."""
    info = await fully_replicated(js, messages)
    stored = await asyncio.to_thread(cluster.stored, i, STREAM)
    return info if stored == messages else None


def test_an_r3_stream_acks_publishes_with_consecutive_seqs(nats_cluster: NatsCluster) -> None:
    cluster = nats_cluster
    assert len(cluster.urls) == 3 and cluster.url == ",".join(cluster.urls)
    assert len({p for ports in cluster.ports for p in astuple(ports)}) == 9

    async def body() -> None:
        async with connect(cluster.urls) as nc:
            js = nc.jetstream()
            created = await add_r3_stream(js)
            assert created.config.num_replicas == 3
            assert created.config.storage == StorageType.FILE
            acks = [await js.publish(SUBJECT, f"batch {k}".encode()) for k in range(20)]
            assert [a.seq for a in acks] == list(range(1, 21))
            assert {a.stream for a in acks} == {STREAM} and not any(a.duplicate for a in acks)
            info = await eventually(
                lambda: fully_replicated(probe(nc), 20), "fully replicated stream"
            )
            assert info.cluster is not None and info.cluster.replicas is not None
            peers = {info.cluster.leader} | {r.name for r in info.cluster.replicas}
            assert peers == set(cluster.names)

    asyncio.run(body())


def test_a_msg_id_makes_a_republish_a_duplicate(nats_cluster: NatsCluster) -> None:
    async def body() -> None:
        async with connect(nats_cluster.urls) as nc:
            js = nc.jetstream()
            await add_r3_stream(js)
            first = await js.publish(SUBJECT, b"first", headers={"Nats-Msg-Id": "batch-1"})
            again = await js.publish(SUBJECT, b"again", headers={"Nats-Msg-Id": "batch-1"})
            other = await js.publish(SUBJECT, b"other", headers={"Nats-Msg-Id": "batch-2"})
            assert (first.seq, bool(first.duplicate)) == (1, False)
            assert (again.seq, again.duplicate) == (1, True)
            assert (other.seq, bool(other.duplicate)) == (2, False)
            info = await js.stream_info(STREAM)
            assert (info.state.messages, info.state.last_seq) == (2, 2)
            assert (await js.get_msg(STREAM, 1)).data == b"first"

    asyncio.run(body())


def test_one_node_stopped_the_stream_acks_and_a_restart_catches_up(
    nats_cluster: NatsCluster,
) -> None:
    cluster = nats_cluster
    payloads = [f"batch {k}".encode() for k in range(10)]

    async def body() -> None:
        # Connected to node 1 first, so its stop also moves the client.
        async with connect([cluster.urls[i] for i in (1, 0, 2)], in_order=True) as nc:
            assert nc.connected_url is not None
            assert nc.connected_url.port == cluster.ports[1].client
            js = nc.jetstream()
            await add_r3_stream(js)
            # Created with every node up: with one down, creating an R3
            # consumer waits for its first election, at times beyond 5 s.
            sub = await js.pull_subscribe(SUBJECT, durable="reader", stream=STREAM)
            for k in range(5):
                assert (await js.publish(SUBJECT, payloads[k])).seq == k + 1

            await asyncio.to_thread(cluster.stop, 1)
            # Retried (same Nats-Msg-Id) while the leader moves off node 1 and
            # its interest in the subject reaches the client's new server.
            for k in range(5, 10):
                ack, _ = await publish_retrying(js, payloads[k], f"b{k}")
                assert ack.seq == k + 1

            read: list[tuple[int, bytes]] = []
            deadline = time.monotonic() + 15
            while len(read) < len(payloads) and time.monotonic() < deadline:
                try:  # the consumer's leader may move off the stopped node first
                    batch = await sub.fetch(len(payloads) - len(read), timeout=1)
                except LEADERLESS:
                    continue
                for msg in batch:
                    read.append((msg.metadata.sequence.stream, msg.data))
                    await msg.ack()
            assert read == list(enumerate(payloads, start=1))
            assert (await js.stream_info(STREAM)).state.messages == len(payloads)

            await asyncio.to_thread(cluster.start, 1)
            await eventually(lambda: caught_up(probe(nc), cluster, 1, 10), "node 1 caught up")

    asyncio.run(body())


def test_killing_the_stream_leader_loses_and_doubles_nothing(nats_cluster: NatsCluster) -> None:
    cluster = nats_cluster
    count = 30

    async def body() -> None:
        async with connect(cluster.urls) as nc:
            info = await add_r3_stream(nc.jetstream())
        assert info.cluster is not None and info.cluster.leader is not None
        leader = cluster.index(info.cluster.leader)

        # All three URLs, the leader's first: the kill also moves the client.
        servers = [cluster.urls[leader]] + [u for i, u in enumerate(cluster.urls) if i != leader]
        async with connect(servers, in_order=True) as nc:
            assert nc.connected_url is not None
            assert nc.connected_url.port == cluster.ports[leader].client
            js = nc.jetstream()
            for k in range(10):
                assert (
                    await js.publish(SUBJECT, b"%d" % k, headers={"Nats-Msg-Id": f"m{k}"})
                ).seq == k + 1

            cluster.kill(leader)
            failures = 0
            for k in range(10, count):
                ack, failed = await publish_retrying(js, b"%d" % k, f"m{k}")
                assert ack.seq == k + 1  # a duplicate if a lost attempt was stored
                failures += failed
            assert failures >= 1  # the election was ridden through, not missed
            assert nc.connected_url is not None
            assert nc.connected_url.port != cluster.ports[leader].client

            after = await js.stream_info(STREAM)
            assert after.cluster is not None and after.cluster.leader is not None
            assert after.cluster.leader != cluster.names[leader]
            # The new leader knows the old leader's message ids.
            replay = await js.publish(SUBJECT, b"3", headers={"Nats-Msg-Id": "m3"})
            assert (replay.seq, replay.duplicate) == (4, True)

            assert (after.state.messages, after.state.first_seq, after.state.last_seq) == (
                count,
                1,
                count,
            )
            stored = [await js.get_msg(STREAM, seq) for seq in range(1, count + 1)]
            assert [m.data for m in stored] == [b"%d" % k for k in range(count)]
            assert [(m.headers or {}).get("Nats-Msg-Id") for m in stored] == [
                f"m{k}" for k in range(count)
            ]

            await asyncio.to_thread(cluster.start, leader)
            await eventually(
                lambda: caught_up(probe(nc), cluster, leader, count), "old leader caught up"
            )

    asyncio.run(body())


def test_a_node_that_does_not_start_raises_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'nats-server: cannot start: bad flag' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    cluster = NatsCluster(tmp_path / "nats", binary=fake, timeout=5)
    with pytest.raises(ClusterStartError, match="cannot start: bad flag"), cluster:
        pass
    assert cluster.running() == []


@requires_nats_server
def test_a_port_taken_meanwhile_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks: list[list[int]] = []

    def first_one_taken(host: str, count: int) -> list[int]:
        ports = free_ports(host, count)
        if not picks:
            ports[0] = taken.getsockname()[1]
        picks.append(ports)
        return ports

    monkeypatch.setattr(nats_cluster_module, "free_ports", first_one_taken)
    with socket.create_server(("127.0.0.1", 0)) as taken, NatsCluster(tmp_path / "nats") as cluster:
        assert len(picks) == 2
        assert cluster.ports[0].client == picks[1][0] != taken.getsockname()[1]
        assert "address already in use" in cluster.log_path(0).read_text()


@requires_nats_server
def test_the_nodes_listen_on_the_given_host_only(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "nats", host="127.0.0.2") as cluster:
        assert all(u.startswith("nats://127.0.0.2:") for u in cluster.urls)
        for ports in cluster.ports:
            for port in astuple(ports):
                socket.create_connection(("127.0.0.2", port), timeout=1).close()
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=1)

        async def body() -> None:
            async with connect(cluster.urls) as nc:
                created = await add_r3_stream(nc.jetstream())
                assert created.cluster is not None and created.cluster.leader in cluster.names

        asyncio.run(body())
