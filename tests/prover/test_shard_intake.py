"""Consistent cuts of the ledger stream (prover/shards/intake.py): every
shard and the coordinator cut the same batches, each batch whole; a reader
restarted from its state cuts as if it had never stopped; replays are
skipped alike everywhere; parts never committed are never applied."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover.errors import ProverError
from prover.routing import Router
from prover.shards.intake import Intake, NotYet
from prover.shards.wire import Commit, Part, decode, encode

ROUTER = Router(bytes(range(32)), 2)
Message = tuple[int, int, int | None, Part | Commit]  # seq, time, shard (None: commit), message


def publish(
    batches: list[tuple[str, list[tuple[int, str, str, int]]]],
    rnd: random.Random,
    orphan: float = 0.0,
) -> tuple[list[Message], list[int]]:
    """The stream as concurrent front-ends leave it: each batch's parts, then
    its commit, batches interleaved at random, except that one source's
    commits keep its order (a front-end publishes a connection's commits in
    order); with probability ``orphan`` a batch's front-end dies before its
    commit. Returns the messages and the indices of the committed batches
    in commit order."""
    steps: list[list[tuple[str, int, object]]] = []
    for index, (source, rows) in enumerate(batches):
        by_shard: dict[int, list] = {}
        for row in rows:
            by_shard.setdefault(ROUTER.shard(row[1]), []).append(row)
        plan: list[tuple[str, int, object]] = [
            ("part", shard, Part(source, tuple(r))) for shard, r in sorted(by_shard.items())
        ]
        if rnd.random() >= orphan:
            plan.append(("commit", index, (source, rows[0][0], rows[-1][0])))
        steps.append(plan)
    stream: list[Message] = []
    order: list[int] = []
    seqs: dict[int, list[tuple[int, int]]] = {}
    live = [i for i, plan in enumerate(steps) if plan]

    def ready(i: int) -> bool:  # a source's commits go out in its seq order
        if steps[i][0][0] != "commit":
            return True
        return not any(
            steps[j] and steps[j][-1][0] == "commit" and batches[j][0] == batches[i][0]
            for j in range(i)
        )

    while live:
        i = rnd.choice([j for j in live if ready(j)])
        kind, which, body = steps[i].pop(0)
        seq = len(stream) + 1
        if kind == "part":
            assert isinstance(body, Part)
            seqs.setdefault(i, []).append((which, seq))
            stream.append((seq, seq * 10, which, body))
        else:
            source, first, last = body  # type: ignore[misc]
            stream.append((seq, seq * 10, None, Commit(source, first, last, tuple(seqs[i]))))
            order.append(i)
        if not steps[i]:
            live.remove(i)
    return stream, order


def feed(intake: Intake, stream: list[Message], start: int = 1) -> None:
    for seq, time, shard, message in stream:
        if seq >= start and (shard is None or shard == intake.shard):
            intake.add(seq, time, decode(encode(message)))


def batches_strategy() -> st.SearchStrategy:
    users = st.sampled_from([f"user{i}" for i in range(30)])
    row = st.tuples(users, st.sampled_from(["BTC", "ETH"]), st.integers(0, 9))
    return st.lists(st.lists(row, min_size=1, max_size=8), min_size=1, max_size=25)


def numbered(raw: list[list[tuple[str, str, int]]], sources: int) -> list:
    """Batches of ``sources`` producers, each with increasing seqs."""
    next_seq = dict.fromkeys(range(sources), 0)
    out = []
    for i, rows in enumerate(raw):
        source = i % sources
        out.append(
            (f"p{source}", [(next_seq[source] + k, u, a, m) for k, (u, a, m) in enumerate(rows)])
        )
        next_seq[source] += len(rows)
    return out


@given(batches_strategy(), st.integers(1, 3), st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None)
def test_every_reader_cuts_the_same_whole_batches(raw: list, sources: int, rnd) -> None:
    batches = numbered(raw, sources)
    stream, order = publish(batches, rnd, orphan=0.15)
    commits = [seq for seq, _, shard, _ in stream if shard is None]
    cuts = sorted(rnd.sample(commits, k=min(len(commits), 3))) + commits[-1:]
    readers = [Intake(shard) for shard in range(ROUTER.parts)]
    coordinator = Intake(None)
    for reader in [*readers, coordinator]:
        feed(reader, stream)
    done = 0
    for cut in cuts:
        got = [reader.through(cut) for reader in readers]
        counted = coordinator.through(cut).batches
        applied = [i for i, seq in zip(order, commits, strict=True) if seq <= cut][done:]
        assert {g.batches for g in got} == {counted} == {len(applied)}
        for shard, g in enumerate(got):
            expected = [
                (u, a, m)
                for i in applied
                for _, u, a, m in batches[i][1]
                if ROUTER.shard(u) == shard
            ]
            assert g.rows == expected
        done += len(applied)
    assert done == len(order)


@given(batches_strategy(), st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_a_restarted_reader_cuts_as_if_it_never_stopped(raw: list, rnd) -> None:
    batches = numbered(raw, 2)
    stream, _ = publish(batches, rnd, orphan=0.1)
    commits = [seq for seq, _, shard, _ in stream if shard is None]
    if len(commits) < 2:
        return
    first, second = sorted(rnd.sample(commits, 2))
    for shard in range(ROUTER.parts):
        steady = Intake(shard)
        feed(steady, stream)
        steady.through(first)
        state = steady.state()
        restarted = Intake(shard, start=state)
        feed(restarted, stream, start=state.resume)
        assert restarted.through(second) == steady.through(second)
        assert restarted.state() == steady.state()


def test_a_batch_sent_again_is_skipped_by_every_reader() -> None:
    """After the duplicate window a retry is stored again, as new parts and
    a new commit: its updates are at or below the source's mark, skipped;
    a batch that overlaps the mark keeps its fresh updates only."""
    rows = [(0, "alice", "BTC", 5), (1, "bob", "BTC", 6), (2, "carol", "ETH", 7)]
    again = [(0, "alice", "BTC", 5), (1, "bob", "BTC", 6), (2, "carol", "ETH", 7)]
    overlap = [(2, "carol", "ETH", 7), (3, "dave", "BTC", 8)]
    stream, _ = publish([("core", rows), ("core", again), ("core", overlap)], random.Random(1))
    got = {}
    for shard in range(ROUTER.parts):
        reader = Intake(shard)
        feed(reader, stream)
        cut = reader.through(stream[-1][0])
        assert cut.batches == 3
        got.update({u: m for u, _, m in cut.rows})
        assert len(cut.rows) == len({u for u, _, _ in cut.rows})  # nothing twice
        assert reader.state().marks == {"core": 3}
    assert got == {"alice": 5, "bob": 6, "carol": 7, "dave": 8}


def test_refusals() -> None:
    reader = Intake(0)
    reader.add(5, 50, Part("core", ((0, "alice", "BTC", 1),)))
    with pytest.raises(ProverError, match="out of order"):
        reader.add(5, 50, Part("core", ()))
    with pytest.raises(NotYet, match="not yet 9"):
        reader.through(9)
    with pytest.raises(ProverError, match="names part 7 of shard 0: not read"):
        reader.add(8, 80, Commit("core", 0, 0, ((0, 7),)))
    with pytest.raises(ProverError, match="not a ledger stream message"):
        decode(b"\x93\x01")
    reader.through(8)
    with pytest.raises(ProverError, match="before the last one"):
        reader.through(6)


def test_a_part_never_committed_expires() -> None:
    reader = Intake(0, expire_ms=1_000)
    reader.add(1, 0, Part("core", ((0, "alice", "BTC", 1),)))
    reader.add(2, 500, Commit("other", 9, 9))  # another source's batch
    reader.through(2)
    assert reader.state().resume == 1  # the orphan may yet be committed
    reader.add(3, 1_500, Part("core", ((1, "bob", "BTC", 1),)))
    reader.add(4, 1_600, Commit("core", 1, 1, ((0, 3),)))
    assert reader.through(4).rows == [("bob", "BTC", 1)]
    assert reader.state().resume == 5
