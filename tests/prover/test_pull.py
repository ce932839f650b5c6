"""A shard's reading of the ledger stream (prover/shards/pull.py) on the real
NATS server at 127.0.0.1:4222, each test on a stream of its own, deleted
after (skipped without the server).

JetStream 2.9 may answer a ``no_wait`` pull "no messages" (404) while it
holds a message of the consumer's subject already (the consumer's pending
count is raised after the store, off the stream's signal loop; a consumer
on a follower reads a store that lags). The tests build that answer
deliberately, a stub standing in for the consumer's first pulls, and show
the reader takes every message once, in stream order: a reader alone, and
a ``Shard`` reading a batch (a part, then its commit), which broke on it
before. A randomized test interleaves publishes on the shard's parts, other
shards' parts and the commits with rounds of reading, on the real server
alone, and checks the merged order against the stream's.
Pulls never answered: tests/prover/test_pull_silent.py."""

from __future__ import annotations

import asyncio
import random

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from prover.errors import ProverError
from prover.periods import SaltPeriod
from prover.routing import Router
from prover.shards import shard as shard_module
from prover.shards import wire
from prover.shards.pull import Puller, merged, open_puller
from prover.shards.shard import Shard
from prover.shards.stream import ensure_stream
from tests.prover.test_frontend import NATS, Names, client, names  # noqa: F401 (fixture)

BATCH = 1024
MAX_BYTES = 8 << 20
TIMEOUT = 5.0
NO_MESSAGES = {"Status": "404", "Description": "No Messages"}


async def stream_of(js: JetStreamContext, names: Names) -> None:  # noqa: F811
    await ensure_stream(js, names.stream, names.prefix, 1, 60.0)


async def pullers(nc: Client, js: JetStreamContext, names: Names) -> tuple[Puller, Puller]:  # noqa: F811
    """Shard 0's two consumers, its parts and the commits, from the start."""
    subjects = (wire.part_subject(names.prefix, 0), wire.commit_subject(names.prefix))
    found = [await open_puller(nc, js, names.stream, s, 1, "test_pull", 60.0) for s in subjects]
    return found[0], found[1]


async def read_round(
    js: JetStreamContext,
    stream: str,
    parts: Puller,
    commits: Puller,
    batch: int = BATCH,
) -> tuple[list[int], int]:
    """One round as ``Shard._read`` reads: the stream sequences taken, in
    the order taken, and how far the stream was read."""
    last = (await js.stream_info(stream)).state.last_seq
    taken: list[int] = []
    upto = min(parts.known, commits.known)
    while upto < last:
        behind = parts if parts.known <= commits.known else commits
        await behind.pull(batch, MAX_BYTES, last, TIMEOUT)
        upto = min(parts.known, commits.known)
        taken += [seq for seq, _, _ in merged(parts.held, commits.held, upto)]
    return taken, upto


class Lagging:
    """Stands in for the consumers it is ``put`` on: their first ``first``
    pulls, and later ones with probability ``rate``, answered "no messages"
    (404), as NATS answers while a consumer's view lags the stream; the
    others passed on to the consumer."""

    def __init__(
        self, nc: Client, first: int, rate: float = 0.0, rng: random.Random | None = None
    ) -> None:
        self.nc, self.first, self.rate = nc, first, rate
        self.rng = rng or random.Random(0)
        self.pulls = self.sent = 0  # pulls seen, answered 404
        self.subject = nc.new_inbox()
        self._real: dict[str, str] = {}  # the consumer's pull subject, by the stub's

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.subject}.*", cb=self._serve)

    def put(self, puller: Puller) -> None:
        stub = f"{self.subject}.{len(self._real)}"
        self._real[stub], puller.api = puller.api, stub

    async def _serve(self, msg: Msg) -> None:
        assert msg.reply
        self.pulls += 1
        if self.pulls <= self.first or self.rng.random() < self.rate:
            self.sent += 1
            await self.nc.publish(msg.reply, b"", headers=NO_MESSAGES)
        else:
            await self.nc.publish(self._real[msg.subject], msg.data, reply=msg.reply)


@pytest.mark.parametrize("late", ["parts", "commits"])
def test_a_no_messages_answer_before_a_stored_message_is_not_taken_as_none(
    names: Names,  # noqa: F811
    late: str,
) -> None:
    """A part (1) and its commit (2), another shard's part (3): the lagging
    consumer's first pull answered 404 while the stream holds its message;
    the reader waits for it, and takes 1, 2 once each, in order. Taking the
    404 as "none up to the last sequence" skipped the part (or the commit)."""

    async def run() -> None:
        async with client() as nc:
            js = nc.jetstream()
            await stream_of(js, names)
            part = (await js.publish(wire.part_subject(names.prefix, 0), b"p")).seq
            commit = (await js.publish(wire.commit_subject(names.prefix), b"c")).seq
            await js.publish(wire.part_subject(names.prefix, 1), b"other")
            parts, commits = await pullers(nc, js, names)
            puller = parts if late == "parts" else commits
            lagging = Lagging(nc, 1)
            await lagging.start()
            lagging.put(puller)
            taken, upto = await read_round(js, names.stream, parts, commits)
            taken += (await read_round(js, names.stream, parts, commits))[0]
            assert lagging.sent == 1
            assert taken == [part, commit]
            assert upto == 3
            assert puller.lags == 1 and puller.lookups >= 1

    asyncio.run(run())


def test_a_lookup_refused_is_an_error_not_none(names: Names) -> None:  # noqa: F811
    """A pull answered 404, then the stream gone: the lookup's "stream not
    found" is raised, never read as "no message of the subject"."""

    async def run() -> None:
        async with client() as nc:
            js = nc.jetstream()
            await stream_of(js, names)
            await js.publish(wire.part_subject(names.prefix, 1), b"other")
            parts, _ = await pullers(nc, js, names)
            await js.delete_stream(names.stream)
            lagging = Lagging(nc, 1)
            await lagging.start()
            lagging.put(parts)
            with pytest.raises(ProverError, match="stream not found"):
                await parts.pull(BATCH, MAX_BYTES, 1, TIMEOUT)
            assert parts.known == 0

    asyncio.run(run())


def test_a_shard_reads_a_batch_whose_part_a_pull_answered_404(
    names: Names,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``Shard`` whose parts consumer answers its first pull 404 while the
    batch's part is stored: the shard reads the part and its commit and does
    not break (it broke with "commit 2 names part 1 of shard 0: not read")."""
    router = Router(bytes(range(50, 82)), 1)
    period = SaltPeriod(1, 0, bytes(range(32)))
    opened: list[Puller] = []

    async def run() -> None:
        async with client() as nc:
            lagging = Lagging(nc, 1)
            await lagging.start()

            async def open_lagging(nc: Client, js: JetStreamContext, *args: object) -> Puller:
                puller = await open_puller(nc, js, *args)  # type: ignore[arg-type]
                if not opened:  # the parts consumer, opened first
                    lagging.put(puller)
                opened.append(puller)
                return puller

            js = nc.jetstream()
            await stream_of(js, names)
            rows = ((1, "alice", "BTC", 5),)
            data = wire.encode(wire.Part("src", rows))
            part = (await js.publish(wire.part_subject(names.prefix, 0), data)).seq
            named = wire.Commit("src", 1, 1, ((0, part),))
            commit = (await js.publish(wire.commit_subject(names.prefix), wire.encode(named))).seq
            monkeypatch.setattr(shard_module, "open_puller", open_lagging)
            shard = Shard(NATS, names.stream, period, router, 0, names.prefix, idle=0.01)
            stop = asyncio.Event()
            running = asyncio.create_task(shard.run(stop))
            async with asyncio.timeout(10):
                while shard.core.read < commit and shard.core.broken is None:
                    await asyncio.sleep(0.01)
            stop.set()
            await running
            assert lagging.sent == 1
            assert shard.core.broken is None
            assert shard.stats.messages == 2 and shard.stats.sessions == 1
            assert opened[0].lags == 1

    asyncio.run(run())


@pytest.mark.parametrize("rate", [0.0, 0.25])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_interleaved_publishes_and_reads_take_the_stream_in_order_once(
    names: Names,  # noqa: F811
    seed: int,
    rate: float,
) -> None:
    """Publishes on shard 0's parts, shard 1's parts and the commits, at
    random, while rounds of reading (batches of 1 to 8) go on, the real
    consumers alone, or with a ``rate`` of their pulls answered 404 at
    random: the messages taken are the stream's of shard 0's parts and the
    commits, each once, in stream order, and the reading reaches the last
    sequence."""
    rng = random.Random(seed)
    count = 300

    async def publish(js: JetStreamContext, wanted: list[int]) -> None:
        subjects = [
            wire.part_subject(names.prefix, 0),
            wire.part_subject(names.prefix, 1),
            wire.commit_subject(names.prefix),
        ]
        for i in range(count):
            index = rng.choices(range(3), weights=(2, 2, 1))[0]
            seq = (await js.publish(subjects[index], b"m%d" % i)).seq
            if index != 1:
                wanted.append(seq)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() / 1000)

    async def run() -> None:
        async with client() as nc, client() as writer:
            js = nc.jetstream()
            await stream_of(js, names)
            parts, commits = await pullers(nc, js, names)
            lagging = Lagging(nc, 0, rate, random.Random(seed))
            await lagging.start()
            lagging.put(parts)
            lagging.put(commits)
            wanted: list[int] = []
            publishing = asyncio.create_task(publish(writer.jetstream(), wanted))
            taken: list[int] = []
            upto = 0
            while not publishing.done() or upto < count:
                more, upto = await read_round(
                    js, names.stream, parts, commits, batch=rng.randint(1, 8)
                )
                taken += more
            await publishing
            assert taken == wanted
            assert parts.lookups + commits.lookups > 0
            assert parts.probes + commits.probes == 0  # every pull answered promptly
            assert (lagging.sent > 0) == (rate > 0)

    asyncio.run(run())
