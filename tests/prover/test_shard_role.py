"""The shard role (prover/shards/shard.py) and its control messages
(prover/shards/control.py): shards fed the same stream and closed through
their control requests, their parts combined by the top levels, give the
roots and proofs of one ledger holding every part, fed the same batches in
commit order; a stage past what was read is not yet, malformed or
out-of-turn requests are refused and change nothing; and the same on the
real NATS server at 127.0.0.1:4222 (skipped if absent), two ``Shard``s
reading a stream of the test's own."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover.errors import NotRetained, ProverError
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.routing import Router
from prover.shards import wire
from prover.shards.control import (
    Close,
    ClosedPart,
    NoProof,
    PartProof,
    PartRoot,
    Prove,
    Refused,
    Reply,
    Request,
    Stage,
    Staged,
    WireState,
    control_subject,
    decode_reply,
    decode_request,
    encode,
    expect,
)
from prover.shards.intake import NotYet, ReaderState
from prover.shards.shard import Shard, ShardCore
from prover.sizing import grown_height, height_for_parts
from prover.top import TopTree
from tests.prover.test_nats_source import _jetstream_reachable

PERIOD = SaltPeriod(7, 0, bytes(range(32, 64)))
KEY = bytes(range(100, 132))
ASSETS = ["BTC", "ETH"]
USERS = [f"u{i}" for i in range(50)]
NATS = "nats://127.0.0.1:4222"

Update = tuple[int, str, str, int]  # seq, user, asset, amount
Batch = tuple[str, list[Update]]  # source, updates
Message = tuple[int, int, int | None, wire.Part | wire.Commit]  # seq, time, shard (None: commit)
Roots = dict[str, tuple[int, bytes, int]]  # asset: height, root, total


# The stream, as front-ends leave it


def numbered(raw: list[list[tuple[str, str, int]]], sources: int) -> list[Batch]:
    """Batches of ``sources`` producers, each producer's seqs increasing."""
    next_seq = dict.fromkeys(range(sources), 0)
    out = []
    for i, rows in enumerate(raw):
        source = i % sources
        first = next_seq[source]
        out.append((f"p{source}", [(first + k, u, a, m) for k, (u, a, m) in enumerate(rows)]))
        next_seq[source] += len(rows)
    return out


def publish(
    batches: list[Batch], router: Router, rnd: random.Random, orphan: float = 0.1
) -> tuple[list[Message], list[tuple[int, int]]]:
    """The stream of one front-end per source, interleaved at random: each
    batch's parts, then its commit; with probability ``orphan`` a batch's
    parts are first published without a commit (a front-end died), and
    with the same probability a batch is sent again later (a replay).
    Returns the messages and ``(commit seq, batch index)`` in stream order."""
    lanes: dict[str, list[tuple[str, int, wire.Part | None]]] = {}  # kind, shard or batch, part
    for index, (source, rows) in enumerate(batches):
        by_shard: dict[int, list[Update]] = {}
        for row in rows:
            by_shard.setdefault(router.shard(row[1]), []).append(row)
        parts = [("part", s, wire.Part(source, tuple(r))) for s, r in sorted(by_shard.items())]
        lane = lanes.setdefault(source, [])
        if rnd.random() < orphan:
            lane.extend(("orphan", s, part) for _, s, part in parts)  # never committed
        for _ in range(1 + (rnd.random() < orphan)):
            lane.extend([*parts, ("commit", index, None)])
    stream: list[Message] = []
    commits: list[tuple[int, int]] = []
    seqs: dict[str, list[tuple[int, int]]] = {}  # per source, the parts of its batch under way
    while lanes:
        source = rnd.choice(sorted(lanes))
        kind, which, part = lanes[source].pop(0)
        if not lanes[source]:
            del lanes[source]
        seq = len(stream) + 1
        if part is not None:
            stream.append((seq, seq * 10, which, part))
            if kind == "part":
                seqs.setdefault(source, []).append((which, seq))
        else:
            _, rows = batches[which]
            named = tuple(seqs.pop(source, []))
            stream.append(
                (seq, seq * 10, None, wire.Commit(source, rows[0][0], rows[-1][0], named))
            )
            commits.append((seq, which))
    return stream, commits


def committed_rows(
    batches: list[Batch], commits: list[tuple[int, int]], after: int, cut: int, marks: dict
) -> list[tuple[str, str, int]]:
    """What one ledger holding every part applies for the cut: the batches
    committed in ``(after, cut]``, in commit order, replayed updates skipped."""
    rows = []
    for seq, index in commits:
        if after < seq <= cut:
            source, updates = batches[index]
            mark = marks.get(source, -1)
            rows += [(u, a, m) for q, u, a, m in updates if q > mark]
            marks[source] = max(mark, updates[-1][0])
    return rows


# The coordinator's part, in one process


@dataclass
class Coordinator:
    """The coordinator's side of closing an epoch over ``router``'s shards:
    ``stage`` (one ``Stage`` for every shard), ``close`` (from their
    ``Staged``: the heights from the largest growth), ``combine`` (their
    ``ClosedPart``s by ``TopTree``); and proofs completed by the top path."""

    router: Router
    heights: dict[str, int] = field(default_factory=dict)
    epoch: int = 0
    tops: dict[str, TopTree] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)  # per epoch, as every shard counted

    def __post_init__(self) -> None:
        self.heights = {a: height_for_parts(0, self.router.bits) for a in ASSETS}

    def stage(self, cut: int) -> Stage:
        self.epoch += 1
        return Stage(self.epoch, cut, dict(self.heights))

    def close(self, replies: list[Reply]) -> Close:
        staged = [expect(r, Staged) for r in replies]
        assert len({(s.epoch, s.cut, s.batches) for s in staged}) == 1
        self.batches.append(staged[0].batches)
        wanted: dict[str, int] = {}
        for s in staged:
            for asset, holders in s.growth.items():
                wanted[asset] = max(wanted.get(asset, 0), holders)
        bits = self.router.bits
        return Close(
            self.epoch, {a: grown_height(self.heights[a], n, bits) for a, n in wanted.items()}
        )

    def combine(self, replies: list[Reply]) -> Roots:
        closed = [expect(r, ClosedPart) for r in replies]
        assert len({(c.epoch, c.state.cut) for c in closed}) == 1
        roots: Roots = {}
        for asset in ASSETS:
            parts = [next(r for r in c.roots if r.asset == asset) for c in closed]
            assert len({p.height for p in parts}) == 1
            top = self.tops[asset] = TopTree.combine([p.record for p in parts])
            self.heights[asset] = parts[0].height
            roots[asset] = (parts[0].height, top.root, top.total)
        return roots

    def proof(self, user: str, reply: Reply) -> list | None:
        if isinstance(reply, NoProof):
            return None
        part = self.router.shard(user)
        return [
            (asset, slot, amount, [(p.hash, p.sum) for p in path] + self.tops[asset].path(part))
            for asset, slot, amount, path in expect(reply, PartProof).value(user).entries
        ]


def ask(core: ShardCore, request: Request) -> Reply:
    """One control request, through the bytes, as the coordinator sends it."""
    return decode_reply(core.handle(encode(request)))


def close_cores(coordinator: Coordinator, cores: list[ShardCore], cut: int) -> Roots:
    stage = coordinator.stage(cut)
    close = coordinator.close([ask(core, stage) for core in cores])
    return coordinator.combine([ask(core, close) for core in cores])


def prove_cores(coordinator: Coordinator, cores: list[ShardCore], user: str) -> list | None:
    return coordinator.proof(user, ask(cores[coordinator.router.shard(user)], Prove(user)))


def single_roots(ledger: Ledger) -> Roots:
    return {r.asset: (r.height, r.root, r.total) for r in ledger.roots()}


def single_proof(ledger: Ledger, user: str) -> list | None:
    found = ledger.proof(user)
    if found is None:
        return None
    return [(a, s, m, [(p.hash, p.sum) for p in path]) for a, s, m, path in found.entries]


def single_ledger(router: Router) -> Ledger:
    ledger = Ledger(PERIOD, router=router)
    for asset in ASSETS:
        ledger.add_asset(asset)
    return ledger


def feed(core: ShardCore, stream: list[Message], upto: int) -> None:
    """Add the stream's messages after what ``core`` read, up to ``upto``, as
    its consumers deliver them: its parts and every commit."""
    for seq, time_ms, shard, message in stream:
        if core.read < seq <= upto and shard in (None, core.part):
            core.add(seq, time_ms, wire.decode(wire.encode(message)))
    core.passed(upto)


def run_cuts(
    bits: int, batches: list[Batch], rnd: random.Random, cuts: int = 3, orphan: float = 0.1
) -> int:
    """Shards and one ledger of every part fed ``batches``, closed at random
    cuts of the stream and at its end; roots and proofs compared at each.
    Returns how many trees grew."""
    router = Router(KEY, bits)
    stream, commits = publish(batches, router, rnd, orphan)
    cores = [ShardCore.empty(PERIOD, router, i) for i in range(router.parts)]
    coordinator = Coordinator(router)
    single = single_ledger(router)
    ends = sorted(rnd.sample(range(1, len(stream) + 1), min(cuts, len(stream))))
    marks: dict[str, int] = {}
    after, grown = 0, 0
    for cut in [*ends, len(stream)]:
        late = rnd.choice(cores)
        feed(late, stream, rnd.randint(late.read, cut))
        for core in cores:
            if core is not late:
                feed(core, stream, cut)
        if late.read < cut:  # not read as far as the cut: refused, nothing changes
            reply = ask(late, Stage(coordinator.epoch + 1, cut, coordinator.heights))
            assert isinstance(reply, Refused) and reply.code == "not-yet"
            feed(late, stream, cut)
        rows = committed_rows(batches, commits, after, cut, marks)
        for chunk in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
            single.stage_rows(chunk)
            if rnd.random() < 0.3:
                single.flush()
        single.close_epoch()
        before = dict(coordinator.heights)
        assert close_cores(coordinator, cores, cut) == single_roots(single)
        grown += sum(coordinator.heights[a] > before[a] for a in ASSETS)
        assert coordinator.batches[-1] == sum(after < seq <= cut for seq, _ in commits)
        for user in {u for u, _, _ in rows} | set(rnd.sample(USERS, 3)):
            assert prove_cores(coordinator, cores, user) == single_proof(single, user)
        after = cut
    return grown


def batches_strategy(users: list[str]) -> st.SearchStrategy[list[list[tuple[str, str, int]]]]:
    row = st.tuples(st.sampled_from(users), st.sampled_from(ASSETS), st.sampled_from([0, 1, 2, 7]))
    return st.lists(st.lists(row, min_size=1, max_size=8), min_size=1, max_size=25)


@given(
    st.integers(1, 2),
    batches_strategy(USERS),
    st.integers(1, 2),
    st.integers(0, 4),
    st.randoms(use_true_random=False),
)
@settings(max_examples=60, deadline=None)
def test_shards_through_control_equal_one_ledger(
    bits: int, raw: list, sources: int, cuts: int, rnd: random.Random
) -> None:
    run_cuts(bits, numbered(raw, sources), rnd, cuts)


def test_trees_grow_through_control() -> None:
    """New holders past a part's slots: every shard rebuilds at the heights
    the coordinator derives from the largest growth."""
    grown = 0
    for seed in range(3):
        rnd = random.Random(seed)
        users = [f"n{seed}.{i}" for i in range(120)]
        raw = [
            [(rnd.choice(users), rnd.choice(ASSETS), rnd.choice([0, 1, 5])) for _ in range(12)]
            for _ in range(30)
        ]
        grown += run_cuts(2, numbered(raw, 2), rnd, cuts=4)
    assert grown >= 3


# Refusals


def one_core(rows: list[tuple[str, str, int]]) -> tuple[ShardCore, list[Message]]:
    """Shard 0 of one bit, and a stream of one batch of ``rows`` (all its
    users'), committed at the stream's end."""
    router = Router(KEY, 1)
    batch = [(i, u, a, m) for i, (u, a, m) in enumerate(rows)]
    stream, _ = publish([("p0", batch)], router, random.Random(0), orphan=0)
    return ShardCore.empty(PERIOD, router, 0), stream


MINE = [u for u in USERS if Router(KEY, 1).shard(u) == 0]
THEIRS = [u for u in USERS if Router(KEY, 1).shard(u) == 1]
HEIGHTS = {"BTC": 5, "ETH": 5}


def test_a_stage_past_what_was_read_is_not_yet() -> None:
    core, stream = one_core([(MINE[0], "BTC", 3), (THEIRS[0], "BTC", 4)])
    end = len(stream)
    feed(core, stream, end - 1)  # the commit not read yet
    refused = ask(core, Stage(1, end, HEIGHTS))
    assert refused == Refused("not-yet", f"shard 0 read as far as {end - 1}")
    with pytest.raises(NotYet):
        expect(refused, Staged)
    assert core.ledger.books == {} and core.intake.state().cut == 0  # nothing changed
    feed(core, stream, end)
    staged = ask(core, Stage(1, end, HEIGHTS))
    assert staged == Staged(1, end, 1, {}, room={"BTC": 15, "ETH": 16})
    assert ask(core, Stage(1, end, HEIGHTS)) == staged  # asked again: the same answer
    closed = expect(ask(core, Close(1, {})), ClosedPart)
    assert ask(core, Close(1, {})) == closed  # asked again: the same answer
    assert closed.state.value() == ReaderState(end, {"p0": 1}, end + 1)
    assert [(r.asset, r.height, r.record[1]) for r in closed.roots] == [
        ("BTC", 5, 3),
        ("ETH", 5, 0),
    ]


def test_a_staged_epoch_asked_again_at_a_later_cut_is_staged_on_to_it() -> None:
    """A ``Stage`` a shard held while the coordinator gave the epoch up and
    chose a later cut: the shard staged at the earlier cut stages on to the
    later one, and closes as a shard staged at the later cut at once."""
    router = Router(KEY, 1)
    first = [(0, MINE[0], "BTC", 3), (1, MINE[1], "BTC", 5)]
    second = [(2, MINE[0], "BTC", 0), (3, MINE[2], "BTC", 7), (4, MINE[1], "ETH", 2)]
    stream, commits = publish([("p0", first), ("p0", second)], router, random.Random(0), 0)
    (early, _), (late, _) = commits
    held, direct = (ShardCore.empty(PERIOD, router, 0) for _ in range(2))
    for core in (held, direct):
        feed(core, stream, late)
    assert expect(ask(held, Stage(1, early, HEIGHTS)), Staged).batches == 1
    on = expect(ask(held, Stage(1, late, HEIGHTS)), Staged)
    assert on == expect(ask(direct, Stage(1, late, HEIGHTS)), Staged)
    assert on.cut == late and on.batches == 2
    assert ask(held, Stage(1, late, HEIGHTS)) == on  # asked again: the same answer
    refused = ask(held, Stage(1, early, HEIGHTS))  # an earlier cut cannot be staged back to
    assert isinstance(refused, Refused) and refused.code == "bad-request"
    assert ask(held, Close(1, {})) == ask(direct, Close(1, {}))
    assert ask(held, Prove(MINE[2])) == ask(direct, Prove(MINE[2]))


def test_bad_requests_are_refused_and_change_nothing() -> None:
    core, stream = one_core([(MINE[i], "BTC", 1) for i in range(17)])  # a part of 16 slots
    feed(core, stream, len(stream))
    end = len(stream)

    def refused(request: Request | bytes, says: str) -> None:
        data = request if isinstance(request, bytes) else encode(request)
        reply = decode_reply(core.handle(data))
        assert isinstance(reply, Refused) and reply.code == "bad-request", reply
        assert says in reply.message

    refused(b"\xc1", "not a shard control request")
    refused(encode(NoProof()), "not a shard control request")  # a reply is no request
    refused(Close(1, {}), "epoch 1 is not staged")
    refused(Stage(1, end, {"btc": 5}), "invalid asset id")
    refused(Stage(1, end, {"BTC": 4}), "height 4 outside 5..32")
    refused(Prove(THEIRS[0]), "is in part 1, not 0")
    refused(Prove(" padded "), "user id")
    assert core.ledger.books == {}
    staged = expect(ask(core, Stage(1, end, HEIGHTS)), Staged)
    assert staged.growth == {"BTC": 17}
    refused(Stage(1, end - 1, HEIGHTS), f"epoch 1 is staged at cut {end}, not closed")
    refused(Close(2, {"BTC": 6}), "epoch 1 is staged, not 2")
    refused(Close(1, {}), "BTC: 17 holders need a height past 5")
    refused(Close(1, {"ETH": 6}), "BTC: 17 holders need a height past 5")
    refused(Close(1, {"BTC": 6, "SOL": 6}), "no tree of SOL to grow")
    refused(Close(1, {"BTC": 6, "ETH": 4}), "height 4 outside")
    assert core.broken is None and core.epoch is None
    closed = expect(ask(core, Close(1, {"BTC": 6})), ClosedPart)
    assert {r.asset: r.height for r in closed.roots} == {"BTC": 6, "ETH": 5}
    refused(Stage(3, end, HEIGHTS), "epoch 3 cannot follow epoch 1")
    refused(Stage(2, end - 1, HEIGHTS), f"cut {end - 1} is before the last one, {end}")
    assert isinstance(ask(core, Prove(MINE[0])), PartProof)
    assert isinstance(ask(core, Prove(MINE[20])), NoProof)
    with pytest.raises(NotRetained):
        expect(ask(core, Prove(MINE[0], epoch=0)), PartProof)


def test_a_failure_while_the_ledger_changes_leaves_the_shard_broken() -> None:
    core, stream = one_core([(MINE[0], "SOL", 1)])  # an asset the coordinator did not name
    feed(core, stream, len(stream))
    reply = ask(core, Stage(1, len(stream), HEIGHTS))
    assert isinstance(reply, Refused) and reply.code == "internal"
    assert "unknown asset SOL" in reply.message
    assert ask(core, Prove(MINE[0])) == reply  # every request after it, too
    with pytest.raises(ProverError, match="out of order"):
        core.add(1, 0, wire.Commit("p0", 0, 0))


def test_out_of_order_stream_breaks_the_shard() -> None:
    core, stream = one_core([(MINE[0], "BTC", 1)])
    feed(core, stream, len(stream))
    with pytest.raises(ProverError, match="out of order"):
        core.add(1, 0, wire.Commit("p0", 5, 5))
    assert core.broken is not None and "stream message 1" in core.broken


# The messages


def test_control_messages_round_trip() -> None:
    big = 2**100 + 3
    messages: list[Request | Reply] = [
        Stage(1, 2**63, {"BTC": 32}),
        Close(9, {}),
        Prove("alice", 2),
        Staged(1, 5, 3, {"BTC": 17}),
        ClosedPart(
            4,
            (PartRoot("BTC", 9, bytes(32), big.to_bytes(16, "big")),),
            WireState.of(ReaderState(5, {"p0": 2**64 - 1}, 6)),
        ),
        PartProof(b"s" * 32, (("BTC", 3, 2**64 - 1, ((b"h" * 32, big.to_bytes(16, "big")),)),)),
        NoProof(),
        Refused("not-yet", "later"),
    ]
    for message in messages:
        data = encode(message)
        decode = decode_request if isinstance(message, Stage | Close | Prove) else decode_reply
        assert decode(data) == message
    closed = messages[4]
    assert isinstance(closed, ClosedPart) and closed.roots[0].record == (bytes(32), big)
    proof = messages[5]
    assert isinstance(proof, PartProof) and proof.value("alice").entries[0][3][0].sum == big
    assert control_subject("ledger", 3) == "ledger.shard.3.control"


def test_malformed_replies_are_refused_when_decoded() -> None:
    short = ClosedPart(1, (PartRoot("BTC", 5, b"x" * 31, bytes(16)),), WireState(0, {}, 1))
    with pytest.raises(ProverError, match="not a shard control reply"):
        decode_reply(encode(short))
    with pytest.raises(ProverError, match="not a shard control reply"):
        decode_reply(encode(Refused("not-yet", "x")).replace(b"not-yet", b"not-now"))
    with pytest.raises(ProverError, match="not a shard control reply"):
        decode_reply(encode(Stage(1, 1, {})))
    with pytest.raises(ProverError, match="shard refused \\(internal\\): down"):
        expect(Refused("internal", "down"), Staged)
    with pytest.raises(ProverError, match="answered NoProof, not Staged"):
        expect(NoProof(), Staged)


# On the real NATS server


@dataclass(frozen=True)
class Names:
    stream: str
    prefix: str


@pytest.fixture
def names() -> Iterator[Names]:
    """A stream of this test's own on the local server, deleted after it:
    parts and commits only (control requests must not be stored)."""
    if not _jetstream_reachable():
        pytest.skip("no NATS server with JetStream on 127.0.0.1:4222")
    tag = uuid.uuid4().hex[:12]
    found = Names(f"SOLVSHARD_{tag}", f"solvshard.{tag}")
    subjects = [f"{found.prefix}.part.*", wire.commit_subject(found.prefix)]

    async def create() -> None:
        nc = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=0)
        await nc.jetstream().add_stream(name=found.stream, subjects=subjects)
        await nc.close()

    async def delete() -> None:
        nc = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=0)
        await nc.jetstream().delete_stream(found.stream)
        await nc.close()

    asyncio.run(create())
    try:
        yield found
    finally:
        asyncio.run(delete())


def test_two_shards_on_nats_equal_one_ledger(names: Names) -> None:
    asyncio.run(_two_shards(names))


async def _two_shards(names: Names) -> None:
    """Two shards read the stream from NATS; a coordinator closes two
    epochs through their control subjects (the trees growing in the
    second), each at the stream's last sequence: a part never committed."""
    router = Router(KEY, 1)
    nc = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=0)
    js = nc.jetstream()
    next_seq = 0
    theirs = [0] * router.parts  # per shard, the messages it must read: its parts, every commit

    async def send(rows: list[tuple[str, str, int]], commit: bool = True) -> None:
        """One batch as a front-end publishes it: its parts, then its commit."""
        nonlocal next_seq
        updates = [(next_seq + i, u, a, m) for i, (u, a, m) in enumerate(rows)]
        next_seq += len(rows)
        parts = []
        for shard in range(router.parts):
            mine = tuple(r for r in updates if router.shard(r[1]) == shard)
            if mine:
                data = wire.encode(wire.Part("front", mine))
                headers = {"Nats-Msg-Id": wire.message_id(data)}
                ack = await js.publish(
                    wire.part_subject(names.prefix, shard), data, headers=headers
                )
                parts.append((shard, ack.seq))
                theirs[shard] += 1
        if commit:
            data = wire.encode(wire.Commit("front", updates[0][0], updates[-1][0], tuple(parts)))
            headers = {"Nats-Msg-Id": wire.message_id(data)}
            await js.publish(wire.commit_subject(names.prefix), data, headers=headers)
            theirs[:] = [n + 1 for n in theirs]

    async def ask_nats(part: int, request: Request) -> Reply:
        """A request, asked again while the shard has not read as far (``not-yet``)."""
        while True:
            answer = await nc.request(control_subject(names.prefix, part), encode(request), 10)
            reply = decode_reply(answer.data)
            if not (isinstance(reply, Refused) and reply.code == "not-yet"):
                return reply

    async def close(coordinator: Coordinator) -> Roots:
        cut = (await js.stream_info(names.stream)).state.last_seq
        stage = coordinator.stage(cut)
        staged = [await ask_nats(i, stage) for i in range(router.parts)]
        close = coordinator.close(staged)
        return coordinator.combine([await ask_nats(i, close) for i in range(router.parts)])

    stop = asyncio.Event()
    shards = [
        Shard(NATS, names.stream, PERIOD, router, i, names.prefix, idle=0.02, batch=8)
        for i in range(router.parts)
    ]
    tasks = [asyncio.create_task(s.run(stop)) for s in shards]
    try:
        async with asyncio.timeout(20):
            for shard in shards:
                await shard.serving.wait()
            coordinator = Coordinator(router)
            single = single_ledger(router)
            rnd = random.Random(5)
            users = [f"n{i}" for i in range(80)]
            for _ in range(10):  # epoch 1: a few holders
                rows = [
                    (rnd.choice(users[:20]), rnd.choice(ASSETS), rnd.randint(0, 9))
                    for _ in "123456"
                ]
                await send(rows)
                single.stage_rows(rows)
            await send([(users[0], "BTC", 99), (users[1], "BTC", 99)], commit=False)
            single.close_epoch()
            assert await close(coordinator) == single_roots(single)
            for asset in ASSETS:  # epoch 2: new holders, past a part's 16 slots
                rows = [(u, asset, 1 + i) for i, u in enumerate(users[20:])]
                await send(rows)
                single.stage_rows(rows)
            await send([(users[2], "ETH", 99), (users[3], "ETH", 99)], commit=False)
            before = dict(coordinator.heights)
            single.close_epoch()
            assert await close(coordinator) == single_roots(single)
            assert all(coordinator.heights[a] > before[a] for a in ASSETS)
            for user in users:
                part = router.shard(user)
                reply = await ask_nats(part, Prove(user))
                assert coordinator.proof(user, reply) == single_proof(single, user)
            assert coordinator.batches == [10, 2]
            assert [s.stats.messages for s in shards] == theirs
            assert all(s.core.broken is None for s in shards)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await nc.close()
