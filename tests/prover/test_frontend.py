"""The front-end role (prover/shards/frontend.py) against the real NATS server
on 127.0.0.1:4222, each test on a stream and prefix of its own, deleted
after: producers on real WebSockets to two front-ends at once; every
acknowledged batch in the stream, and read back by every shard's and the
coordinator's intake (prover/shards/intake.py) exactly once, each batch
whole in one cut; a retry stored once; refusals as the daemon's, publishing
nothing; a front-end killed between parts and commit, the batch sent again
to the other one; a batch not published in time failing those after it."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from prover.config import AssetConfig, AttesterConfig, Config
from prover.errors import ProverError
from prover.messages import parse_ingest
from prover.routing import Router
from prover.shards.frontend import Frontend, StreamSpec
from prover.shards.intake import Intake
from prover.shards.split import split_balances
from prover.shards.stream import Publisher, PublishFailed, Stored
from prover.shards.wire import Commit, Part, decode, encode
from tests.prover.test_nats_source import _jetstream_reachable
from verifier.checkpoint import verifier_key_for
from verifier.report import ReserveReport, sign_report

NATS = "nats://127.0.0.1:4222"
TOKEN = "front-end-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTER = Router(bytes(range(32)), 2)  # 4 shards
COLD = Ed25519PrivateKey.from_private_bytes(bytes(range(129, 161)))
THIEF = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))
Update = tuple[int, str, str, int]  # seq, user, asset, amount
Read = tuple[int, int, str, Part | Commit]  # stream seq, time (ms), subject, message


@dataclass(frozen=True)
class Names:
    stream: str
    prefix: str

    @property
    def spec(self) -> StreamSpec:
        return StreamSpec(replicas=1, name=self.stream, prefix=self.prefix, duplicate_window=60)


@pytest.fixture
def names() -> Iterator[Names]:
    """A stream name and subject prefix of this test's own; the stream is
    deleted after it."""
    if not _jetstream_reachable():
        pytest.skip("no NATS server with JetStream on 127.0.0.1:4222")
    tag = uuid.uuid4().hex[:12]
    found = Names(f"SOLVTEST_{tag}", f"solvtest.{tag}.ledger")
    yield found

    async def delete() -> None:
        async with client() as nc:
            with suppress(NotFoundError):
                await nc.jetstream().delete_stream(found.stream)

    asyncio.run(delete())


@asynccontextmanager
async def client() -> AsyncIterator[Client]:
    nc = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


def config(tmp_path: Path) -> Config:
    return Config(
        data_dir=tmp_path,
        assets=(AssetConfig("BTC", 8), AssetConfig("ETH", 18)),
        ingest_token=TOKEN,
        attesters=(AttesterConfig("cold", str(verifier_key_for("cold", COLD.public_key()))),),
    )


@asynccontextmanager
async def frontends(tmp_path: Path, names: Names, count: int = 2) -> AsyncIterator[list[Frontend]]:
    started: list[Frontend] = []
    try:
        for _ in range(count):
            frontend = Frontend(config(tmp_path), ROUTER, NATS, names.spec)
            await frontend.start("127.0.0.1", 0)
            started.append(frontend)
        yield started
    finally:
        for frontend in started:
            if not frontend._stopping:
                await frontend.stop(grace=5)


def ingest_url(frontend: Frontend) -> str:
    return f"ws://127.0.0.1:{frontend.port}/ingest"


def user_on(shard: int, name: str) -> str:
    """A user id starting with ``name`` that the router puts on ``shard``."""
    k = 0
    while ROUTER.shard(f"{name}.{k}") != shard:
        k += 1
    return f"{name}.{k}"


def batch(source: str, first: int, count: int, id: object = None) -> tuple[str, list[Update]]:
    """A balances message of ``count`` updates with seqs ``first, first + 1,
    ...``, each to a user of its own (``source-seq``), spread over every
    shard, amounts the seqs; and its updates."""
    updates = [
        (seq, user_on(seq % ROUTER.parts, f"{source}-{seq}"), "BTC", seq)
        for seq in range(first, first + count)
    ]
    body = [{"seq": s, "user": u, "asset": a, "amount": str(m)} for s, u, a, m in updates]
    message = {"type": "balances", "id": id, "source": source, "updates": body}
    return json.dumps(message), updates


async def request(conn: ClientConnection, message: str | bytes) -> dict[str, object]:
    await conn.send(message)
    reply = json.loads(await conn.recv())
    assert isinstance(reply, dict)
    return reply


async def read_stream(names: Names) -> list[Read]:
    """Every message of the stream, in order."""
    async with client() as nc:
        js = nc.jetstream()
        last = (await js.stream_info(names.stream)).state.last_seq
        found: list[Read] = []
        for seq in range(1, last + 1):
            msg = await js.get_msg(names.stream, seq)
            assert msg.data is not None and msg.subject is not None and msg.time is not None
            found.append((seq, int(msg.time.timestamp() * 1000), msg.subject, decode(msg.data)))
        return found


@dataclass
class ReadBack:
    """What every reader cut out of the stream at ``cuts``: for each row
    ``(user, asset, amount)``, the cuts it was in; per reader, the number of
    batches per cut; the coordinator's messages."""

    rows: Counter[tuple[str, str, int]]
    cut_of: dict[str, int]  # user: index of the cut that held it
    batches: list[list[int]]
    messages: list[bytes]


def read_back(stream: list[Read], names: Names, cuts: list[int]) -> ReadBack:
    readers = [Intake(shard) for shard in range(ROUTER.parts)] + [Intake(None)]
    result = ReadBack(Counter(), {}, [], [])
    commit_subject = f"{names.prefix}.commit"
    for reader in readers:
        wanted = {commit_subject} | (
            set() if reader.shard is None else {f"{names.prefix}.part.{reader.shard}"}
        )
        mine = [(seq, ms, message) for seq, ms, subject, message in stream if subject in wanted]
        counts = []
        for index, cut in enumerate(cuts):
            for seq, ms, message in mine:
                if reader.read < seq <= cut:
                    reader.add(seq, ms, message)
            if reader.read < cut:  # this reader's subjects end before the cut
                reader.read = cut
            taken = reader.through(cut)
            counts.append(taken.batches)
            for row in taken.rows:
                result.rows[row] += 1
                result.cut_of.setdefault(row[0], index)
                assert result.cut_of[row[0]] == index
            if reader.shard is None:
                assert taken.rows == []
                result.messages += taken.messages
        result.batches.append(counts)
    return result


# producers on two front-ends at once


def test_concurrent_producers_on_two_front_ends(tmp_path: Path, names: Names) -> None:
    """Four producers, each pipelining batches to one front-end, then to the
    other; a reserves message and a signed reserve report among them."""
    sources = [f"p{i}" for i in range(4)]
    acked: dict[str, list[tuple[dict[str, object], list[Update]]]] = {s: [] for s in sources}
    now_ms = int(time.time() * 1000)
    reserves = json.dumps(
        {
            "type": "reserves",
            "id": "r",
            "source": "hot",
            "updates": [{"seq": 3, "asset": "ETH", "amount": "5", "as_of_ms": now_ms}],
        }
    )
    report = sign_report(ReserveReport("cold", "BTC", 77, now_ms), COLD).decode()
    reports = json.dumps(
        {
            "type": "reserve-reports",
            "id": 9,
            "source": "cold",
            "reports": [{"seq": 1, "report": report}],
        }
    )

    async def produce(source: str, fronts: list[Frontend]) -> None:
        first = 1
        for frontend in fronts:  # one connection at a time: its seqs in order
            async with connect(ingest_url(frontend), additional_headers=AUTH) as conn:
                sent = []
                for _ in range(6):
                    message, updates = batch(source, first, 20, id=f"{source}-{first}")
                    await conn.send(message)
                    sent.append((f"{source}-{first}", updates))
                    first += 20
                for want, updates in sent:
                    reply = json.loads(await conn.recv())
                    assert (reply["type"], reply["id"], reply["accepted"]) == ("ack", want, 20)
                    assert (reply["last_seq"], reply["duplicate"]) == (updates[-1][0], False)
                    acked[source].append((reply, updates))

    async def scenario() -> None:
        async with frontends(tmp_path, names) as (a, b):
            work = [produce(s, [a, b] if i % 2 else [b, a]) for i, s in enumerate(sources)]

            async def reserve_sources() -> None:
                async with connect(ingest_url(a), additional_headers=AUTH) as conn:
                    assert (await request(conn, reserves))["duplicate"] is False
                    assert (await request(conn, reports))["type"] == "ack"
                    assert (await request(conn, reserves))["duplicate"] is True  # sent again

            await asyncio.gather(*work, reserve_sources())

    asyncio.run(scenario())
    stream = asyncio.run(read_stream(names))
    by_seq = {seq: (subject, message) for seq, _, subject, message in stream}
    for source in sources:
        seqs = [int(reply["stream_seq"]) for reply, _ in acked[source]]  # type: ignore[call-overload]
        assert seqs == sorted(seqs), "a producer's commits out of its order"
        for stream_seq, (_, updates) in zip(seqs, acked[source], strict=True):
            subject, commit = by_seq[stream_seq]
            assert subject == f"{names.prefix}.commit" and isinstance(commit, Commit)
            assert [shard for shard, _ in commit.parts] == list(range(ROUTER.parts))
            rows: list[Update] = []
            for shard, part_seq in commit.parts:
                part_subject, part = by_seq[part_seq]
                assert part_subject == f"{names.prefix}.part.{shard}" and part_seq < stream_seq
                assert isinstance(part, Part)
                rows += part.rows
            assert sorted(rows) == sorted(updates)

    last = stream[-1][0]
    cuts = sorted({*range(7, last, 13), last})
    back = read_back(stream, names, cuts)
    expected = [(u, a, m) for s in sources for _, updates in acked[s] for _, u, a, m in updates]
    assert back.rows == Counter(expected)  # every acknowledged update, once
    for source in sources:  # each batch whole in one cut
        for _, updates in acked[source]:
            assert len({back.cut_of[u] for _, u, _, _ in updates}) == 1
    assert all(counts == back.batches[-1] for counts in back.batches)  # every reader alike
    assert sum(back.batches[-1]) == 4 * 12 + 2  # the reserves sent twice: one commit
    assert sorted(back.messages) == sorted([reserves.encode(), reports.encode()])


# a retry, and refusals


def test_a_retry_is_stored_once_and_refusals_publish_nothing(tmp_path: Path, names: Names) -> None:
    message, _ = batch("core", 1, 12, id="b-1")
    now_ms = int(time.time() * 1000)

    def reserves(source: str, as_of_ms: int = now_ms) -> str:
        update = {"seq": 1, "asset": "BTC", "amount": "5", "as_of_ms": as_of_ms}
        return json.dumps({"type": "reserves", "id": 3, "source": source, "updates": [update]})

    forged = sign_report(ReserveReport("cold", "BTC", 77, now_ms), THIEF).decode()
    refused: list[tuple[str | bytes, str, object, int | None]] = [
        ("{not json", "bad-json", None, None),
        (b"\x00binary", "bad-message", None, None),
        (message.replace('"BTC"', '"DOGE"'), "unknown-asset", "b-1", None),
        (message.replace('"amount": "3"', '"amount": 3.5'), "bad-update", "b-1", 2),
        (message.replace('"seq": 4', '"seq": 1'), "bad-seq", "b-1", 3),
        (reserves("cold"), "unattested", 3, None),  # an attested source, unsigned
        (reserves("hot", now_ms + 60_000), "bad-update", 3, 0),  # as_of_ms ahead
        (
            json.dumps(
                {
                    "type": "reserve-reports",
                    "id": 4,
                    "source": "cold",
                    "reports": [{"seq": 2, "report": forged}],
                }
            ),
            "unattested",
            4,
            0,
        ),
    ]

    async def scenario() -> None:
        async with frontends(tmp_path, names) as (a, b):
            async with (
                connect(ingest_url(a), additional_headers=AUTH) as first,
                connect(ingest_url(b), additional_headers=AUTH) as second,
            ):
                ack = await request(first, message)
                again = await request(second, message)  # the producer's retry, elsewhere
                assert (ack["duplicate"], again["duplicate"]) == (False, True)
                assert again["stream_seq"] == ack["stream_seq"]
                before = await stream_last(names)
                for data, code, id, index in refused:
                    reply = await request(first, data)
                    assert (reply["type"], reply["code"]) == ("error", code), reply
                    assert (reply["id"], reply["index"]) == (id, index), reply
                assert await stream_last(names) == before  # nothing published
                later, _ = batch("core", 13, 3, id="b-13")
                assert (await request(first, later))["type"] == "ack"  # still usable
            with pytest.raises(InvalidStatus) as info:
                async with connect(ingest_url(a)):
                    pass
            assert info.value.response.status_code == 401

    asyncio.run(scenario())
    stream = asyncio.run(read_stream(names))
    commits = [m for _, _, _, m in stream if isinstance(m, Commit)]
    assert [(c.first_seq, c.last_seq) for c in commits] == [(1, 12), (13, 15)]
    parts = [m for _, _, _, m in stream if isinstance(m, Part)]
    assert sum(len(p.rows) for p in parts) == 15  # the retry's parts stored once


async def stream_last(names: Names) -> int:
    async with client() as nc:
        return int((await nc.jetstream().stream_info(names.stream)).state.last_seq)


# a front-end killed between parts and commit


def test_a_front_end_killed_between_parts_and_commit(tmp_path: Path, names: Names) -> None:
    """Front-end A dies with two batches' parts published and their commits
    not: one producer sends its batch again as it was, to B (B's commit names
    A's parts, stored once); the other sends it again with more updates (new
    parts: A's are never applied). Every acknowledged update is read once."""
    p_message, p_updates = batch("p", 1, 8)
    q_message, _ = batch("q", 1, 8)
    q_again, q_updates = batch("q", 1, 12)  # resent from the last ack, batched anew

    async def scenario() -> None:
        async with frontends(tmp_path, names) as (a, b):
            held = hold_commits(a, 2)
            async with (
                connect(ingest_url(a), additional_headers=AUTH) as p,
                connect(ingest_url(a), additional_headers=AUTH) as q,
            ):
                await p.send(p_message)
                await q.send(q_message)
                await asyncio.wait_for(held.wait(), 10)  # both batches' parts are in
                await a.stop(grace=0)  # killed: no reply
                for conn in (p, q):
                    with pytest.raises(ConnectionClosed):
                        await conn.recv()
            async with connect(ingest_url(b), additional_headers=AUTH) as conn:
                for message in (p_message, q_again):
                    reply = await request(conn, message)
                    assert (reply["type"], reply["duplicate"]) == ("ack", False)

    asyncio.run(scenario())
    stream = asyncio.run(read_stream(names))
    commits = [m for _, _, _, m in stream if isinstance(m, Commit)]
    assert [(c.source, c.last_seq) for c in commits] == [("p", 8), ("q", 12)]
    parts = [(seq, m) for seq, _, _, m in stream if isinstance(m, Part)]
    assert len(parts) == 3 * ROUTER.parts  # p's once, q's twice
    named = {seq for c in commits for _, seq in c.parts}
    orphans = [m for seq, m in parts if seq not in named]
    assert len(orphans) == ROUTER.parts and all(m.source == "q" for m in orphans)
    back = read_back(stream, names, [stream[-1][0]])
    expected = [(u, a, m) for _, u, a, m in p_updates + q_updates]
    assert back.rows == Counter(expected)


def hold_commits(
    frontend: Frontend, count: int, release: asyncio.Event | None = None
) -> asyncio.Event:
    """Make ``frontend`` stop before each of its next ``count`` commits, their
    parts published, until ``release`` is set (None: until cancelled); the
    event returned is set once ``count`` commits are held."""
    held = asyncio.Event()
    waiting: list[str] = []

    async def before(subject: str) -> None:
        if len(waiting) < count:
            waiting.append(subject)
            if len(waiting) == count:
                held.set()
            await (release or asyncio.Event()).wait()

    intercept(frontend, before=before)
    return held


def intercept(
    frontend: Frontend,
    before: Callable[[str], Awaitable[None]] | None = None,
    after: Callable[[str, Stored], None] | None = None,
) -> None:
    """Call ``before(subject)`` before each commit, and ``after(subject,
    stored)`` after each publish of ``frontend``."""
    publisher = frontend._publisher
    assert publisher is not None
    publish: Callable[[str, bytes], Awaitable[Stored]] = publisher._publish

    async def intercepted(subject: str, data: bytes) -> Stored:
        if before is not None and subject.endswith(".commit"):
            await before(subject)
        stored = await publish(subject, data)
        if after is not None:
            after(subject, stored)
        return stored

    publisher._publish = intercepted  # type: ignore[method-assign]


# order, failures, stopping


def test_commits_keep_the_order_of_a_connections_messages(tmp_path: Path, names: Names) -> None:
    """The first message's commit held until the second's parts are all in,
    and then until its commit is tried, or for 0.3 s (it must not be: a
    bounded wait is how to see that it is not): the second's commit still
    comes after the first's."""
    first, _ = batch("core", 1, 4, id=1)
    second, _ = batch("core", 5, 4, id=2)

    async def scenario() -> None:
        async with frontends(tmp_path, names, 1) as (a,):
            parts: list[int] = []
            all_parts, second_commit = asyncio.Event(), asyncio.Event()
            commits: list[str] = []

            async def before(subject: str) -> None:
                commits.append(subject)
                if len(commits) == 1:  # the first commit
                    await all_parts.wait()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(second_commit.wait(), 0.3)
                else:
                    second_commit.set()

            def after(subject: str, stored: Stored) -> None:
                if ".part." in subject:
                    parts.append(stored.seq)
                if len(parts) == 2 * ROUTER.parts:
                    all_parts.set()

            intercept(a, before, after)
            async with connect(ingest_url(a), additional_headers=AUTH) as conn:
                await conn.send(first)
                await conn.send(second)
                replies = [json.loads(await conn.recv()) for _ in range(2)]
            assert [r["id"] for r in replies] == [1, 2]
            assert replies[0]["stream_seq"] < replies[1]["stream_seq"]
            assert max(parts) < replies[0]["stream_seq"]  # the parts overlapped

    asyncio.run(scenario())
    commits = [m for _, _, _, m in asyncio.run(read_stream(names)) if isinstance(m, Commit)]
    assert [c.first_seq for c in commits] == [1, 5]


def test_a_batch_not_committed_in_time_fails_those_after_it(tmp_path: Path, names: Names) -> None:
    """The first of three pipelined batches is not committed by the deadline:
    it gets ``internal``, the connection is closed (1011), the later two get
    no reply and none is committed; sent again, each is read once."""
    messages = [batch("core", first, 3, id=first) for first in (1, 4, 7)]

    async def scenario() -> None:
        async with frontends(tmp_path, names, 1) as (a,):
            assert a._nc is not None
            a._publisher = Publisher(a._nc, names.stream, names.prefix, deadline=0.5)
            hold_commits(a, 1)
            async with connect(ingest_url(a), additional_headers=AUTH) as conn:
                for message, _ in messages:
                    await conn.send(message)
                started = time.monotonic()
                reply = json.loads(await conn.recv())
                assert (reply["type"], reply["id"], reply["code"]) == ("error", 1, "internal")
                assert 0.5 <= time.monotonic() - started < 5
                with pytest.raises(ConnectionClosed) as info:
                    await conn.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 1011
            stream = await read_stream(names)
            assert not [m for _, _, _, m in stream if isinstance(m, Commit)]
            async with connect(ingest_url(a), additional_headers=AUTH) as conn:
                for message, _ in messages:
                    assert (await request(conn, message))["type"] == "ack"

    asyncio.run(scenario())
    stream = asyncio.run(read_stream(names))
    back = read_back(stream, names, [stream[-1][0]])
    assert back.rows == Counter((u, a, m) for _, ups in messages for _, u, a, m in ups)


def test_stopping_answers_what_is_under_way(tmp_path: Path, names: Names) -> None:
    """``stop`` with a batch under way: /healthz answers 503 at once, a new
    message gets ``shutting-down``, the batch under way its ack, then the
    connection is closed (1001)."""
    under_way, _ = batch("core", 1, 4, id=1)
    late, _ = batch("core", 5, 4, id=2)

    async def scenario() -> None:
        async with frontends(tmp_path, names, 1) as (a,):
            url = f"http://127.0.0.1:{a.port}/healthz"
            assert await asyncio.to_thread(http_get, url) == (200, b"ok\n")
            release = asyncio.Event()
            held = hold_commits(a, 1, release)
            async with connect(ingest_url(a), additional_headers=AUTH) as conn:
                await conn.send(under_way)
                await asyncio.wait_for(held.wait(), 10)
                stopping = asyncio.create_task(a.stop())
                assert await asyncio.to_thread(http_get, url) == (503, b"stopping\n")
                await conn.send(late)
                await until(lambda: a._unanswered == 2)  # read while the first is held
                release.set()
                replies = [json.loads(await conn.recv()) for _ in range(2)]
                assert (replies[0]["type"], replies[0]["id"]) == ("ack", 1)
                assert (replies[1]["type"], replies[1]["code"]) == ("error", "shutting-down")
                with pytest.raises(ConnectionClosed) as info:
                    await conn.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
                await asyncio.wait_for(stopping, 5)

    asyncio.run(scenario())


def test_parts_past_the_servers_message_limit_are_cut(tmp_path: Path, names: Names) -> None:
    """With a small NATS message limit, a shard's updates go in several
    parts, read back whole and in order; a reserves message that cannot fit
    a commit is refused ``too-large``, publishing nothing."""
    message, updates = batch("core", 1, 600, id=1)
    big = json.dumps(
        {
            "type": "reserves",
            "id": 2,
            "source": "hot",
            "updates": [
                {"seq": s, "asset": "BTC", "amount": "5", "as_of_ms": 1} for s in range(1, 200)
            ],
        }
    )

    async def scenario() -> None:
        async with frontends(tmp_path, names, 1) as (a,):
            assert a._nc is not None
            a._nc._max_payload = 2048  # what the server would announce
            async with connect(ingest_url(a), additional_headers=AUTH) as conn:
                assert (await request(conn, message))["type"] == "ack"
                before = await stream_last(names)
                reply = await request(conn, big)
                assert (reply["type"], reply["code"], reply["id"]) == ("error", "too-large", 2)
                assert await stream_last(names) == before

    asyncio.run(scenario())
    stream = asyncio.run(read_stream(names))
    (commit,) = [m for _, _, _, m in stream if isinstance(m, Commit)]
    shards = [shard for shard, _ in commit.parts]
    assert shards == sorted(shards) and len(shards) > ROUTER.parts  # several parts a shard
    assert all(len(encode(m)) <= 2048 for _, _, _, m in stream)
    back = read_back(stream, names, [stream[-1][0]])
    assert back.rows == Counter((u, a, m) for _, u, a, m in updates)


def test_healthz_says_when_the_stream_is_gone(tmp_path: Path, names: Names) -> None:
    async def scenario() -> None:
        async with frontends(tmp_path, names, 1) as (a,):
            url = f"http://127.0.0.1:{a.port}/healthz"
            assert await asyncio.to_thread(http_get, url) == (200, b"ok\n")
            async with client() as nc:
                await nc.jetstream().delete_stream(names.stream)
            gone = (503, f"stream {names.stream} does not exist\n".encode())
            deadline = time.monotonic() + 5  # the answer is kept for HEALTH_CACHE
            while (found := await asyncio.to_thread(http_get, url)) != gone:
                assert found == (200, b"ok\n") and time.monotonic() < deadline, found
                await asyncio.sleep(0.05)
            assert (await asyncio.to_thread(http_get, url.replace("healthz", "nope")))[0] == 404

    asyncio.run(scenario())


def test_publisher_deadline(names: Names) -> None:
    """A publish that gets no acknowledgement is sent again until the
    deadline, then fails."""
    message, _ = batch("core", 1, 4)
    split = split_balances(parse_ingest(message), ROUTER)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with client() as nc:
            publisher = Publisher(nc, names.stream, names.prefix, deadline=0.3, attempt=0.1)
            started = time.monotonic()
            with pytest.raises(PublishFailed, match=r"not committed within 0\.3 s"):
                await publisher.publish(split)
            assert 0.3 <= time.monotonic() - started < 2

    asyncio.run(scenario())


def test_a_stream_with_other_subjects_is_refused(tmp_path: Path, names: Names) -> None:
    async def scenario() -> None:
        async with client() as nc:
            await nc.jetstream().add_stream(name=names.stream, subjects=[f"{names.prefix}.x"])
        frontend = Frontend(config(tmp_path), ROUTER, NATS, names.spec)
        with pytest.raises(ProverError, match="exists with subjects"):
            await frontend.start("127.0.0.1", 0)

    asyncio.run(scenario())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_metrics_count_accepted_and_refused_batches(tmp_path: Path, names: Names) -> None:
    def scrape(frontend: Frontend) -> dict[str, float]:
        status, text = http_get(f"http://127.0.0.1:{frontend.port}/metrics")
        assert status == 200
        found = {}
        for family in text_string_to_metric_families(text.decode()):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return found

    async def scenario() -> None:
        async with frontends(tmp_path, names, 1) as (a,):
            before = await asyncio.to_thread(scrape, a)
            assert before["solvency_frontend_batches_total"] == 0
            assert before["solvency_frontend_nats_connected"] == 1
            assert "solvency_epoch" not in before  # the daemon's, not a front-end's
            async with connect(ingest_url(a), additional_headers=AUTH) as conn:
                for first, count in ((1, 5), (6, 7)):
                    assert (await request(conn, batch("core", first, count)[0]))["type"] == "ack"
                refused = [("{not json", "bad-json"), (b"\x00", "bad-message")]
                refused.append(
                    (batch("core", 13, 2)[0].replace('"BTC"', '"DOGE"'), "unknown-asset")
                )
                refused.append(("{also not json", "bad-json"))
                for data, code in refused:
                    assert (await request(conn, data))["code"] == code
                after = await asyncio.to_thread(scrape, a)
            assert after["solvency_frontend_batches_total"] == 2
            assert after["solvency_updates_total"] == 12
            assert after["solvency_ingest_errors_total"] == 4
            assert after['solvency_frontend_refused_total{reason="bad-json"}'] == 2
            assert after['solvency_frontend_refused_total{reason="bad-message"}'] == 1
            assert after['solvency_frontend_refused_total{reason="unknown-asset"}'] == 1
            assert after["solvency_frontend_publish_seconds_count"] == 2
            assert after["solvency_ingest_batch_seconds_count"] == 2
            assert after["solvency_frontend_inflight_parts"] == 0
            assert after["solvency_connections"] >= 2  # the producer's and this scrape's
            assert a._nc is not None
            await a._nc.close()
            assert (await asyncio.to_thread(scrape, a))["solvency_frontend_nats_connected"] == 0

    asyncio.run(scenario())
