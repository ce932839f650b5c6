"""bench_stream's traffic model: what producers send, the holdings it leaves,
and the tree work it counts (leaves per epoch, hashes, heights)."""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.sizing import height_for
from prover.tree import SumTree

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

from traffic import (
    STRIDE,
    Batch,
    EpochWork,
    Producers,
    Traffic,
    TrafficError,
    Trees,
    add_arguments,
    asset_ids,
    epoch_work,
    from_args,
    message,
    offered,
    parse_skew,
    tree_hashes,
)

PERIOD = SaltPeriod(1, 0, bytes(range(32)))


def brute_force_hashes(leaves: int, height: int) -> float:
    """The mean, over every placement of ``leaves`` on distinct slots, of the
    leaves plus their distinct ancestors on every level."""
    counts = []
    for slots in itertools.combinations(range(1 << height), leaves):
        counts.append(leaves + sum(len({s >> lv for s in slots}) for lv in range(1, height + 1)))
    return statistics.mean(counts)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 4).flatmap(lambda h: st.tuples(st.just(h), st.integers(0, 1 << h))))
def test_tree_hashes_is_the_mean_over_every_placement(case: tuple[int, int]) -> None:
    height, leaves = case
    assert tree_hashes(leaves, height) == pytest.approx(brute_force_hashes(leaves, height))


def test_tree_hashes_bounds() -> None:
    assert tree_hashes(0, 20) == 0
    assert tree_hashes(1, 20) == pytest.approx(21, abs=1e-6)  # the leaf and its 20 ancestors
    assert tree_hashes(1 << 10, 10) == pytest.approx((1 << 11) - 1)  # every node once
    # 100,000 leaves into height 20: bench_tree's batch hashed 470,631.
    assert tree_hashes(100_000, 20) == pytest.approx(470_631, rel=1e-4)
    with pytest.raises(TrafficError):
        tree_hashes(17, 4)


def test_tree_hashes_matches_what_a_sum_tree_hashes() -> None:
    rng = np.random.default_rng(1)
    height, leaves = 10, 60
    empty = np.zeros(0, np.int64)
    tree = SumTree.build("BTC", height, bytes(32), empty, np.zeros((0, 32), np.uint8), empty)
    counts = []
    for _ in range(200):
        slots = rng.choice(1 << height, leaves, replace=False)
        commitments = rng.integers(0, 256, (leaves, 32), dtype=np.uint8)
        counts.append(tree.apply(slots, commitments, np.ones(leaves, np.uint64)))
    assert statistics.mean(counts) == pytest.approx(tree_hashes(leaves, height), rel=0.01)


def test_trees_follow_the_height_rule() -> None:
    trees = Trees([16, 0])
    assert trees.heights == [height_for(16), height_for(0)] == [5, 4]
    trees.advance(20, [10, 0], [10, 0])  # 26 of 32 slots used, though 16 hold
    assert (trees.heights, trees.holders, trees.growths) == ([5, 4], [16, 0], 0)
    trees.advance(7, [7, 0], [0, 0])  # 33 slots needed: one level higher
    assert (trees.heights, trees.holders, trees.growths) == ([6, 4], [23, 0], 1)
    trees.advance(0, [0, 100], [0, 0])  # far past one level: height_for decides
    assert trees.heights == [6, height_for(100)] == [6, 7]
    trees.advance(41, [41, 0], [0, 0])  # the rebuild handed out 23 slots: 64 now
    assert (trees.heights, trees.growths) == ([6, 7], 2)
    trees.advance(1, [1, 0], [0, 0])
    assert (trees.heights, trees.growths) == ([7, 7], 3)
    assert (trees.updates, trees.created, trees.removed) == (69, 159, 10)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 99), st.booleans()), max_size=40), max_size=8))
def test_trees_match_the_prover_ledger(epochs: list[list[tuple[int, bool]]]) -> None:
    """Epochs of users joining (True) or leaving (False) one asset: the model's
    height is the height of the prover's tree after every close."""
    start = {f"u{i}": 1 for i in range(20)}
    ledger = Ledger.build(PERIOD, ["BTC"], [(u, "BTC", a) for u, a in start.items()])
    trees, held = Trees([len(start)]), set(start)
    for changes in epochs:
        created = removed = 0
        for i, join in dict(changes).items():
            user = f"u{i}"
            ledger.stage(user, "BTC", 5 if join else 0)
            created += join and user not in held
            removed += not join and user in held
            (held.add if join else held.discard)(user)
        trees.advance(len(changes), [created], [removed])
        (root,) = ledger.close_epoch()
        assert (root.height, trees.holders[0]) == (trees.heights[0], len(held))


def draw(traffic: Traffic, batches: int, size: int) -> tuple[Producers, list[Batch]]:
    producers = Producers(traffic)
    drawn = []
    for k in range(batches):
        drawn.append(producers.batch(k % traffic.producers, k * size + 1, size))
    return producers, drawn


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from(["disjoint", "shared"]),
    st.sampled_from([None, 0.7, 1.5]),
    st.integers(0, 2**32),
)
def test_batches_keep_the_holdings(
    assets: int,
    producers: int,
    partition: Literal["disjoint", "shared"],
    zipf: float | None,
    seed: int,
) -> None:
    """Each batch's counts are the change it makes to the holdings, the last
    update of a leaf winning; disjoint producers stay in their ranges."""
    traffic = Traffic(accounts=50, assets=assets, producers=producers, partition=partition,
                      new_holders=0.3, removals=0.2, zipf=zipf, seed=seed)  # fmt: skip
    p = Producers(traffic)
    for k in range(6):
        before = p.holdings.copy()
        b = p.batch(k % producers, 1, 40)
        last = {}
        for u, a, m in zip(b.accounts.tolist(), b.assets.tolist(), b.amounts.tolist(), strict=True):
            last[u, a] = m
        expected = before.copy()
        for (u, a), m in last.items():
            expected[u, a] = m > 0
        assert (p.holdings == expected).all()
        assert b.leaves.tolist() == sorted(u * assets + a for u, a in last)
        assert (b.created == (expected & ~before).sum(0)).all()
        assert (b.removed == (before & ~expected).sum(0)).all()
        lo, hi = p.range_of(k % producers)
        assert lo <= b.accounts.min() and b.accounts.max() < hi
        if partition == "shared":
            assert (lo, hi) == (0, 50)
    assert (p.holders() == p.holdings.sum(0)).all()


def test_shares_of_new_holders_and_removals() -> None:
    traffic = Traffic(accounts=100_000, producers=2)
    producers, batches = draw(traffic, 20, 5000)
    assert producers.range_of(0) == (0, 50_000) and producers.range_of(1) == (50_000, 100_000)
    updates = sum(map(len, batches))
    assert sum(int(b.created.sum()) for b in batches) / updates == pytest.approx(0.10, abs=0.01)
    assert sum(int(b.removed.sum()) for b in batches) / updates == pytest.approx(0.02, abs=0.005)
    removals = np.concatenate([b.amounts for b in batches]) == 0
    assert removals.mean() == pytest.approx(0.02, abs=0.005)
    touched = np.concatenate([b.assets for b in batches])
    assert np.bincount(touched) / updates == pytest.approx([0.25] * 4, abs=0.02)


def test_draws_that_cannot_be_had_change_kind() -> None:
    """Nobody can lose an asset nobody holds, nor gain one everybody holds:
    such draws turn into new holders and changes, of every asset still."""
    none = Traffic(accounts=100_000, producers=1, holding=0, new_holders=0, removals=1)
    _, (batch,) = draw(none, 1, 2000)
    assert batch.created.sum() == len(batch.leaves) and batch.amounts.all()
    assert (batch.created > 300).all()
    full = Traffic(accounts=100, assets=4, holding=1, new_holders=1, removals=0)
    _, (batch,) = draw(full, 1, 2000)
    assert not batch.created.any() and batch.amounts.all()
    assert (np.bincount(batch.assets, minlength=4) > 300).all()


def test_initial_holdings() -> None:
    held = Producers(Traffic(accounts=20_000, holding=0.3)).holdings
    assert held.mean() == pytest.approx(0.3, abs=0.01)
    stride = Producers(Traffic(pattern="stride", accounts=100, assets=3))
    assert stride.holdings[:, 0].all() and not stride.holdings[:, 1:].any()
    accounts, assets = stride.pairs()
    assert accounts.tolist() == list(range(100)) and set(assets.tolist()) == {0}


def test_zipf_concentrates_activity() -> None:
    s, n = 1.1, 10_000
    traffic = Traffic(accounts=n, producers=1, zipf=s, new_holders=0, removals=0, holding=1)
    _, batches = draw(traffic, 10, 5000)
    counts = np.bincount(np.concatenate([b.accounts for b in batches]), minlength=n)
    top = np.sort(counts)[::-1]
    first = 1 / sum(k**-s for k in range(1, n + 1))  # the top account's probability
    assert top[0] / counts.sum() == pytest.approx(first, rel=0.1)
    assert top[1] / top[0] == pytest.approx(2**-s, rel=0.15)
    assert np.argmax(counts) != 0  # ranks are shuffled over the accounts


def test_stride_is_the_old_pattern() -> None:
    traffic = Traffic(pattern="stride", accounts=1000, assets=2, producers=2)
    p = Producers(traffic)
    a, b = p.batch(0, 11, 50), p.batch(1, 11, 50)
    expected = [(s * STRIDE) % 1000 for s in range(11, 61)]
    assert a.accounts.tolist() == b.accounts.tolist() == expected
    assert a.amounts.tolist() == list(range(11, 61)) and not a.assets.any()
    assert not a.created.any() and not a.removed.any()


def test_message_is_the_ingest_format() -> None:
    _, (batch,) = draw(Traffic(accounts=100, assets=4), 1, 30)
    text = json.loads(message("bench-1", 7, 3, batch, asset_ids(4)))
    assert (text["type"], text["id"], text["source"]) == ("balances", 3, "bench-1")
    assert [u["seq"] for u in text["updates"]] == list(range(7, 37))
    assert [(u["user"], u["asset"], u["amount"]) for u in text["updates"]] == [
        (f"acct{u}", asset_ids(4)[a], m)
        for u, a, m in zip(batch.accounts, batch.assets, batch.amounts, strict=True)
    ]


def fixed_batch(leaves: list[int], created: list[int], removed: list[int], size: int) -> Batch:
    none = np.zeros(size, np.int64)
    return Batch(none, none, none, np.array(leaves, np.int64), np.array(created), np.array(removed))


def test_epoch_work_buckets_by_ack() -> None:
    """Two assets: leaf 2u + a. Batches acked up to each close count in it,
    a leaf changed by two batches of an epoch once; the tail only grows trees."""
    trees = Trees([10, 10])  # height 5 both
    acked = [
        (0.5, fixed_batch([0, 2, 3], [0, 0], [0, 0], 3)),
        (1.0, fixed_batch([2, 5], [0, 0], [0, 0], 2)),  # at the close: still in epoch 0
        (1.7, fixed_batch([1], [0, 0], [0, 0], 1)),
        (9.0, fixed_batch([8], [0, 40], [0, 0], 1)),  # after the last close
    ]
    work = epoch_work(acked, [1.0, 2.0, 3.0], trees)
    assert work == [
        EpochWork(5, 4, tree_hashes(2, 5) + tree_hashes(2, 5)),  # BTC {0, 2}, ETH {3, 5}
        EpochWork(1, 1, tree_hashes(1, 5)),
        EpochWork(0, 0, 0.0),
    ]
    assert (trees.holders, trees.heights, trees.updates) == ([10, 50], [5, height_for(50)], 7)
    summary = offered(acked[:3], [1.0, 2.0, 3.0], Trees([10, 10]))
    assert (summary.epochs, summary.leaves_median, summary.leaves_max) == (2, 2.5, 4)
    assert summary.hashes_per_update == pytest.approx((work[0].hashes + work[1].hashes) / 6)


def test_options_and_validation() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])) == Traffic()
    args = parser.parse_args(["--skew", "zipf:1.1", "--partition", "shared", "--assets", "2"])
    assert from_args(args) == Traffic(zipf=1.1, partition="shared", assets=2)
    assert parse_skew("uniform") is None
    for bad in ["zipf", "zipf:0", "zipf:-1", "zipf:x", "pareto:2", "zipf:inf"]:
        with pytest.raises(TrafficError):
            parse_skew(bad)
    for kwargs in [{"new_holders": 0.9, "removals": 0.2}, {"holding": 1.5}, {"accounts": 1},
                   {"assets": 0}, {"pattern": "random"}, {"zipf": 0.0}]:  # fmt: skip
        with pytest.raises(TrafficError):
            Traffic(**kwargs)  # type: ignore[arg-type]
    assert asset_ids(6) == ("BTC", "ETH", "USDT", "SOL", "A5", "A6")
    assert "stride" in Traffic(pattern="stride").describe()
    assert "Zipf(s=1.1)" in Traffic(zipf=1.1).describe()
