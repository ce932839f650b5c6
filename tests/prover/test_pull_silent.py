"""A pull never answered (prover/shards/pull.py): its consumer on a NATS node
that is down, so nothing answers it. The consumer is checked after
``PULL_SILENCE`` and replaced when it does not answer for itself, within a
fraction of a second rather than the pull's timeout, and the reading goes
on with nothing lost or taken twice: on the real server at 127.0.0.1:4222,
a stub swallowing the pulls of a consumer deleted under it; on a three-node
cluster of the test's own, a consumer on a node stopped. A consumer that
answers its info is kept."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from prover.shards import wire
from prover.shards.jsapi import CREATE_WAITS, DELETE_WAIT
from prover.shards.pull import PROBE_TIMEOUT, PULL_SILENCE, Puller, open_puller
from prover.shards.stream import ensure_stream
from tests.nats_cluster import NatsCluster, nats_cluster  # noqa: F401 (fixture)
from tests.prover.test_frontend import Names, client, names  # noqa: F401 (fixture)
from tests.prover.test_pull import BATCH, MAX_BYTES, TIMEOUT, pullers, read_round, stream_of


class Silent:
    """Swallows the pulls of the consumers it is ``put`` on, as a consumer
    whose node is down does: nothing answers them."""

    def __init__(self, nc: Client) -> None:
        self.nc, self.pulls = nc, 0
        self.subject = nc.new_inbox()

    async def start(self) -> None:
        await self.nc.subscribe(self.subject, cb=self._swallow)

    def put(self, puller: Puller) -> None:
        puller.api = self.subject

    async def _swallow(self, msg: Msg) -> None:
        self.pulls += 1


async def publish_mixed(js: JetStreamContext, prefix: str, count: int) -> list[int]:
    """``count`` messages on shard 0's parts, shard 1's and the commits, in
    turn: the sequences shard 0 reads (its parts and the commits)."""
    subjects = (
        wire.part_subject(prefix, 0),
        wire.part_subject(prefix, 1),
        wire.commit_subject(prefix),
    )
    wanted = []
    for i in range(count):
        seq = (await js.publish(subjects[i % 3], b"m%d" % i)).seq
        if i % 3 != 1:
            wanted.append(seq)
    return wanted


def test_a_pull_never_answered_by_a_consumer_gone_is_sent_to_a_new_one(
    names: Names,  # noqa: F811
) -> None:
    """Shard 0's parts consumer read partly (2 of its messages held), then
    deleted under a stub that swallows its pulls: the next pull hears
    nothing, the consumer's info is refused, and a new consumer from past
    the messages held takes over within a fraction of a second; every
    message is taken once, in stream order. Without the check, the pull
    waited its whole timeout, then failed."""

    async def run() -> None:
        async with client() as nc:
            js = nc.jetstream()
            await stream_of(js, names)
            wanted = await publish_mixed(js, names.prefix, 12)
            parts, commits = await pullers(nc, js, names)
            await parts.pull(2, MAX_BYTES, wanted[-1], TIMEOUT)
            assert [seq for seq, _, _ in parts.held] == wanted[:3:2]  # parts are 1st, 3rd..
            silent = Silent(nc)
            await silent.start()
            silent.put(parts)
            old = parts.name
            await js.delete_consumer(names.stream, old)
            wanted += await publish_mixed(js, names.prefix, 6)
            began = time.monotonic()
            taken, upto = await read_round(js, names.stream, parts, commits)
            took = time.monotonic() - began
            assert taken == wanted
            assert upto == (await js.stream_info(names.stream)).state.last_seq
            assert silent.pulls == 1 and parts.probes == 1 and parts.replaced == 1
            assert parts.name != old and commits.replaced == 0
            assert took < PULL_SILENCE + 1.0, took  # the info is refused at once

    asyncio.run(run())


def test_a_silent_pull_whose_consumer_answers_its_info_is_waited_for(
    names: Names,  # noqa: F811
) -> None:
    """A pull swallowed while its consumer is up: the consumer answers its
    info, so it is kept, and the pull fails after its timeout, as before."""

    async def run() -> None:
        async with client() as nc:
            js = nc.jetstream()
            await stream_of(js, names)
            wanted = await publish_mixed(js, names.prefix, 3)
            parts, _ = await pullers(nc, js, names)
            silent = Silent(nc)
            await silent.start()
            silent.put(parts)
            began = time.monotonic()
            with pytest.raises(TimeoutError, match=r"no answer in 1\.0 s"):
                await parts.pull(BATCH, MAX_BYTES, wanted[-1], 1.0)
            assert time.monotonic() - began >= 1.0
            assert parts.probes == 1 and parts.replaced == 0 and not parts.held

    asyncio.run(run())


def test_a_consumer_on_a_stopped_node_is_replaced_and_nothing_is_lost(
    nats_cluster: NatsCluster,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An R3 stream on a cluster of three; a shard's two consumers, read
    partly, one of them on a node other than the stream leader's and the
    reader's; that node stopped, more published: the next round's pull on
    that consumer is never answered, the consumer's info is "offline", and
    a new consumer takes over in about a second (each creation placed on
    the stopped node costs its wait and a deletion), well within the pull's
    5 s timeout; every message is taken once, in stream order."""
    cluster = nats_cluster
    caplog.set_level("WARNING", logger="solvency.prover")
    prefix = "solvtest.failover.ledger"

    async def run() -> None:
        setup = await nats.connect(servers=cluster.urls, connect_timeout=2)
        js0 = setup.jetstream()
        await ensure_stream(js0, "failover", prefix, 3, 60.0)
        wanted = await publish_mixed(js0, prefix, 30)
        leader = (await js0.stream_info("failover")).cluster.leader  # type: ignore[union-attr]
        assert leader is not None
        nc = await nats.connect(servers=[cluster.urls[cluster.index(leader)]])
        js = nc.jetstream()
        subjects = (wire.part_subject(prefix, 0), wire.commit_subject(prefix))
        for _ in range(20):  # until one of a pair is placed on a follower
            pair = [
                await open_puller(nc, js, "failover", s, 1, "test_pull", 60.0) for s in subjects
            ]
            placed = [(await js.consumer_info("failover", p.name)).cluster for p in pair]
            nodes = {c.leader for c in placed if c is not None} - {leader}
            if nodes:
                break
        assert nodes, "20 pairs of consumers, all on the stream leader's node"
        stopped = nodes.pop()
        parts, commits = pair
        for puller in pair:  # some held, none taken yet
            await puller.pull(5, MAX_BYTES, wanted[-1], TIMEOUT)
        taken: list[int] = []
        await asyncio.to_thread(cluster.stop, cluster.index(stopped))
        wanted += await publish_mixed(js, prefix, 30)
        began = time.monotonic()
        while min(parts.known, commits.known) < wanted[-1]:
            taken += (await read_round(js, "failover", parts, commits))[0]
        took = time.monotonic() - began
        assert taken == wanted
        gone = [p for p, c in zip(pair, placed, strict=True) if c and c.leader == stopped]
        assert gone and all(p.replaced == 1 for p in gone)
        for puller in pair:
            info = await js.consumer_info("failover", puller.name)
            assert info.cluster is not None and info.cluster.leader != stopped
        lost = caplog.text.count("creation not answered")  # new ones placed on the stopped node
        bound = len(gone) * (PULL_SILENCE + PROBE_TIMEOUT + DELETE_WAIT)
        bound += lost * (CREATE_WAITS[0] + DELETE_WAIT) + 0.5
        assert took < min(bound, TIMEOUT), (took, lost)
        await nc.close()
        await setup.close()

    asyncio.run(run())
