"""When a shard folds its saved deltas (prover/shards/shard.py): the first
fold after a start of part i of n comes i/n of ``fold_every`` early, so
the parts' folds take turns under even traffic; each later one comes
``fold_every`` after the last."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from prover.periods import SaltPeriod
from prover.routing import Router
from prover.shards.shard import Shard, first_fold
from storage.shards import HoldingChanges, ShardState
from storage.store import Store

PERIOD = SaltPeriod(4, 0, bytes(range(64, 96)))
ROUTER = Router(bytes(range(96, 128)), 1)  # two parts


def test_first_folds_are_spread_over_fold_every() -> None:
    assert [first_fold(i, 2, 500_000) for i in range(2)] == [500_000, 250_000]
    assert [first_fold(i, 4, 100) for i in range(4)] == [100, 75, 50, 25]
    assert [first_fold(i, 8, 3) for i in range(8)] == [3, 3, 3, 2, 2, 2, 1, 1]  # never 0
    assert first_fold(0, 1, 7) == 7
    with pytest.raises(ValueError, match="part 2 is not one of 2 parts"):
        first_fold(2, 2, 100)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'shards.db'}") as opened:
        yield opened


def folds_after(shard: Shard, closes: int, each: int) -> list[int]:
    """Save ``closes`` closes of ``each`` changed holdings through the shard's
    save; return its count of folds after each (every fold waited for)."""
    counts, slots = [], itertools.count()
    for epoch in range(closes):
        held = [(f"u{next(slots)}", "BTC", 1, epoch) for _ in range(each)]
        state = ShardState(epoch, PERIOD.number, epoch, epoch + 1, {}, {}, b"")
        shard._save(shard.part, epoch - 1 if epoch else None, state, HoldingChanges(held))
        shard._folds.submit(lambda: None).result()  # the fold thread is done
        counts.append(shard.stats.folds)
    return counts


@pytest.mark.parametrize(("part", "first"), [(0, 10), (1, 5)])
def test_a_shards_first_fold_is_offset_by_its_part(store: Store, part: int, first: int) -> None:
    """Closes of 10 changed holdings each, ``fold_every`` 100: part 0 folds
    at the 10th close and every 10th after; part 1 at the 5th, then every
    10th, half a period apart from part 0."""
    shard = Shard("nats://unused", "s", PERIOD, ROUTER, part, store=store, fold_every=100)
    try:
        counts = folds_after(shard, 25, 10)
    finally:
        shard._folds.shutdown()
    folded_at = [i + 1 for i, (a, b) in enumerate(itertools.pairwise([0, *counts])) if b > a]
    assert folded_at == [first, first + 10, first + 20][: len(folded_at)]
    assert len(folded_at) == (3 if part else 2)
    assert store.shard_pending("s", part) == shard.unfolded == 10 * (25 - folded_at[-1])
