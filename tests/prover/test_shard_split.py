"""Batches split for the ledger stream (prover/shards/split.py): the parts of
a batch hold exactly its updates, in order, each on its user's shard, in
ascending shard order, cut to fit a size limit when asked; the commit names
them in that order; a batch split again gives the same bytes; read back
through the readers (prover/shards/intake.py), every shard gets its users'
updates in batch order."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover.messages import BalanceBatch, BalanceUpdate, ReserveBatch, parse_ingest
from prover.routing import Router
from prover.shards.intake import Intake
from prover.shards.split import PartTooLarge, Split, split_balances, split_reserves
from prover.shards.wire import Commit, decode, encode

KEY = bytes(range(32))
USERS = st.sampled_from([f"user-{i}" for i in range(40)] + ["ü" * 100, "x" * 255])


@st.composite
def batches(draw: st.DrawFn) -> BalanceBatch:
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(1, 5), USERS, st.sampled_from(["BTC", "ETH"]), st.integers(0, 2**64 - 1)
            ),
            min_size=1,
            max_size=60,
        )
    )
    seq = draw(st.integers(0, 2**62))
    updates = []
    for step, user, asset, amount in rows:
        seq += step
        updates.append(BalanceUpdate(seq, user, asset, amount))
    return BalanceBatch("b", draw(st.sampled_from(["core", "hot-2"])), tuple(updates))


def check_split(batch: BalanceBatch, router: Router, split: Split) -> None:
    """The invariants of prover/shards/split.py for ``split`` of ``batch``."""
    shards = [shard for shard, _ in split.parts]
    assert shards == sorted(shards)
    assert all(0 <= s < router.parts for s in shards)
    assert [decode(d) for d in split.data] == [part for _, part in split.parts]
    assert all(part.source == batch.source and part.rows for _, part in split.parts)
    rows = [(u.seq, u.user, u.asset, u.amount) for u in batch.updates]
    for shard in range(router.parts):
        mine = [row for s, part in split.parts if s == shard for row in part.rows]
        assert mine == [row for row in rows if router.shard(row[1]) == shard]
    assert sorted(row for _, part in split.parts for row in part.rows) == sorted(rows)
    assert (split.source, split.first_seq, split.last_seq) == (
        batch.source,
        rows[0][0],
        rows[-1][0],
    )
    seqs = [100 + 3 * i for i in range(len(split.parts))]
    commit = split.commit(seqs)
    assert commit == Commit(
        batch.source, rows[0][0], rows[-1][0], tuple(zip(shards, seqs, strict=True))
    )


@settings(max_examples=200, deadline=None)
@given(batches(), st.integers(0, 3))
def test_parts_hold_the_batch_in_order_each_update_on_its_shard(
    batch: BalanceBatch, bits: int
) -> None:
    router = Router(KEY, bits)
    split = split_balances(batch, router)
    check_split(batch, router, split)
    assert len(split.parts) == len({router.shard(u.user) for u in batch.updates})  # one each
    assert split_balances(batch, router) == split  # a retry: the same bytes


@settings(max_examples=100, deadline=None)
@given(batches(), st.integers(0, 3), st.integers(400, 3000))
def test_parts_past_the_size_limit_are_cut_in_order(
    batch: BalanceBatch, bits: int, limit: int
) -> None:
    router = Router(KEY, bits)
    split = split_balances(batch, router, limit)
    check_split(batch, router, split)
    assert all(len(d) <= limit for d in split.data)
    assert split_balances(batch, router, limit) == split


def test_an_update_too_large_for_any_part_is_refused() -> None:
    batch = BalanceBatch("b", "core", (BalanceUpdate(1, "x" * 255, "BTC", 5),))
    with pytest.raises(PartTooLarge):
        split_balances(batch, Router(KEY, 2), 200)


def test_a_commit_needs_one_stream_sequence_per_part() -> None:
    batch = BalanceBatch("b", "core", (BalanceUpdate(1, "alice", "BTC", 5),))
    split = split_balances(batch, Router(KEY, 2))
    with pytest.raises(ValueError, match="1 parts"):
        split.commit([1, 2])


def test_reserves_go_whole_in_their_commit() -> None:
    text = json.dumps(
        {
            "type": "reserves",
            "id": 4,
            "source": "cold-1",
            "updates": [
                {"seq": 4, "asset": "BTC", "amount": "6", "as_of_ms": 17},
                {"seq": 9, "asset": "ETH", "amount": 7, "as_of_ms": 18},
            ],
        }
    )
    batch = parse_ingest(text)
    assert isinstance(batch, ReserveBatch)
    split = split_reserves(batch, text)
    assert (split.parts, split.data) == ((), ())
    commit = split.commit([])
    assert commit == Commit("cold-1", 4, 9, (), text.encode())
    assert decode(encode(commit)) == commit
    assert split_reserves(batch, text.encode()) == split


@settings(max_examples=50, deadline=None)
@given(st.lists(batches(), min_size=1, max_size=6), st.integers(0, 3), st.booleans())
def test_readers_get_each_shards_updates_in_batch_order(
    batches: list[BalanceBatch], bits: int, cut: bool
) -> None:
    """Parts and commits published in order, read by every shard's intake:
    each shard's cut is its users' updates, batch after batch (of one
    source's, those above its mark)."""
    router = Router(KEY, bits)
    readers = [Intake(shard) for shard in range(router.parts)]
    stream_seq = 0
    expected: list[list[tuple[str, str, int]]] = [[] for _ in readers]
    marks: dict[str, int] = {}
    for batch in batches:
        split = split_balances(batch, router, 600 if cut else None)
        seqs = []
        for (shard, part), data in zip(split.parts, split.data, strict=True):
            stream_seq += 1
            seqs.append(stream_seq)
            readers[shard].add(stream_seq, stream_seq, decode(data))
            assert part == decode(data)
        stream_seq += 1
        commit = decode(encode(split.commit(seqs)))
        for reader in readers:
            reader.add(stream_seq, stream_seq, commit)
        mark = marks.get(batch.source, -1)
        for u in batch.updates:
            if u.seq > mark:
                expected[router.shard(u.user)].append((u.user, u.asset, u.amount))
        marks[batch.source] = max(mark, batch.updates[-1].seq)
    for reader, rows in zip(readers, expected, strict=True):
        taken = reader.through(stream_seq)
        assert taken.rows == rows
        assert taken.batches == len(batches)
