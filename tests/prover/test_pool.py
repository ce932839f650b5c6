"""The tree pool: N workers answer as one, byte for byte."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from prover.errors import NotRetained, ProverError
from prover.ledger import AssetRoot, Ledger
from prover.mapped import ProofBasis
from prover.periods import SaltPeriod
from prover.pool import TreePool
from prover.worker import EAGER_ROWS
from prover.worker_messages import Applied, Row
from verifier.hashing import MAX_BALANCE
from verifier.selection import MapEntry

ASSETS = ["ADA", "BTC", "ETH", "SOL", "XRP"]
BASIS = ProofBasis(  # the record's part of the proof files: stand-ins
    b"header",
    {a: MapEntry(a.encode(), i, (bytes(32),)) for i, a in enumerate([*ASSETS, "DOGE"])},
    (bytes(32),),
    b"checkpoint",
)
FREE_SLOTS = 16  # height_for leaves at least this many: fewer inserts rebuild no tree


class _Scenario:
    """Seeded balance rows that stay within every tree's free slots (a tree
    that grows a level is ``test_a_tree_that_grows_a_level...``'s business)."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.held: set[tuple[str, str]] = set()
        self.inserts: dict[str, int] = {}

    def row(self, users: int, assets: list[str]) -> Row:
        user, asset = f"u{self.random.randrange(users)}", self.random.choice(assets)
        amount = 0 if self.random.random() < 0.2 else self.random.randint(1, MAX_BALANCE)
        if amount and (user, asset) not in self.held:
            if self.inserts.get(asset, 0) == FREE_SLOTS:
                amount = 0  # no slot left: nothing held, nothing changes
            else:
                self.inserts[asset] = self.inserts.get(asset, 0) + 1
        (self.held.add if amount else self.held.discard)((user, asset))
        return user, asset, amount

    def build_rows(self, users: int) -> list[Row]:
        rows = [
            (f"u{u}", a, self.random.randint(1, MAX_BALANCE))
            for u in range(users)
            for a in ASSETS
            if self.random.random() < 0.5
        ]
        self.random.shuffle(rows)  # user indices then differ between the workers' ledgers
        self.held = {(u, a) for u, a, _ in rows}
        return rows


def _run(main: Callable[[list[TreePool]], Awaitable[None]], *sizes: int) -> None:
    async def run() -> None:
        pools = [TreePool(n) for n in sizes]
        try:
            await main(pools)
        finally:
            await asyncio.gather(*(p.close() for p in pools))

    asyncio.run(run())


async def _roots(pool: TreePool, assets: list[str], rows: list[Row]) -> tuple[AssetRoot, ...]:
    """The roots of an apply (its seconds differ from pool to pool)."""
    return (await pool.apply(assets, rows)).roots


async def _same(pools: list[TreePool], call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """What every pool answers to ``call(pool, *args)``, checked to be the
    same; an error counts as an answer."""
    answers = await asyncio.gather(*(call(p, *args) for p in pools), return_exceptions=True)
    first = answers[0]
    for other in answers[1:]:
        if isinstance(first, BaseException):
            assert type(other) is type(first) and str(other) == str(first)
        else:
            assert other == first
    return first


def test_pools_of_one_two_and_three_workers_give_the_same_roots_proofs_and_files(
    tmp_path: Path,
) -> None:
    async def main(pools: list[TreePool]) -> None:
        kinds: set[str] = set()  # of the answers to proof()
        for seed in range(3):
            scenario = _Scenario(seed)
            period = SaltPeriod(seed, 0, random.Random(seed).randbytes(32))
            rows = scenario.build_rows(60)
            chunks = [rows[i : i + 37] for i in range(0, len(rows), 37)]
            built = await _same(pools, TreePool.build, period, ASSETS, chunks, 2, 1 << 20)
            local = Ledger.build(period, ASSETS, rows)
            assert list(built) == local.roots()
            assets = list(ASSETS)
            for epoch in range(4):
                new = ["DOGE"] if epoch == 2 else []
                assets += new
                for _ in range(scenario.random.randint(0, 3)):
                    staged = [scenario.row(80, assets[:5]) for _ in range(20)]
                    for pool in pools:
                        pool.stage(staged)
                applied = [scenario.row(80, assets) for _ in range(15)]
                roots = await _same(pools, _roots, new, applied)
                assert max(r.total for r in roots) > MAX_BALANCE
                for pool in pools:
                    pool.release()
                for user in scenario.random.sample([f"u{u}" for u in range(81)], 12):
                    for age in range(4):  # 3 is more than retained
                        answer = await _same(pools, TreePool.proof, user, age)
                        kinds.add(type(answer).__name__)
            assert sorted(pools[1].owner(a) or 0 for a in assets) == [0, 0, 0, 1, 1, 1]
            written = []
            for n, pool in enumerate(pools):
                out = tmp_path / f"{seed}-{n}"
                out.mkdir()
                users = await pool.snapshot()
                written.append(
                    sum([await pool.export(out, s, 7, BASIS) for s in range(0, users, 7)])
                )
            files = [
                {f.name: f.read_bytes() for f in (tmp_path / f"{seed}-{n}").iterdir()}
                for n in range(len(pools))
            ]
            assert written[0] == len(files[0]) > 0
            assert all(w == written[0] for w in written) and all(f == files[0] for f in files)
        assert kinds == {"UserProof", "NoneType", "NotRetained"}

    _run(main, 1, 2, 3)


def test_staged_rows_hashed_ahead_change_nothing_in_the_answers() -> None:
    """More than EAGER_ROWS staged: the single worker hashes them ahead, the
    pair's workers, with half each, do not; the roots are the same."""

    async def main(pools: list[TreePool]) -> None:
        period = SaltPeriod(7, 0, bytes(32))
        rows = [(f"u{u}", a, u + 1) for u in range(3_000) for a in ("BTC", "ETH")]
        await _same(pools, TreePool.build, period, ["BTC", "ETH"], [rows])
        updates = [(f"u{u % 3_000}", ("BTC", "ETH")[u % 2], u + 5) for u in range(EAGER_ROWS + 1)]
        for pool in pools:
            pool.stage(updates)
        for _ in range(3):
            await _same(pools, TreePool.proof, "u1")
        await _same(pools, _roots, [], [])
        await _same(pools, TreePool.proof, "u1")

    _run(main, 1, 2)


def test_assets_go_to_the_workers_in_registration_order() -> None:
    async def main(pools: list[TreePool]) -> None:
        (pool,) = pools
        await pool.build(SaltPeriod(1, 0, bytes(32)), ["ETH", "BTC", "ADA"], [])
        await pool.apply(["SOL", "ETH", "XRP"], [("a", "SOL", 1)])
        assert [pool.owner(a) for a in ["ETH", "BTC", "ADA", "SOL", "XRP", "DOGE"]] == [
            0,
            1,
            0,
            1,
            0,
            None,
        ]
        found = await pool.proof("a")
        assert found is not None and [e[0] for e in found.entries] == ["SOL"]

    _run(main, 2)


def test_an_apply_failing_in_one_worker_keeps_the_epochs_of_all_in_line() -> None:
    """A lot of rows naming an unknown asset is refused whole by the first
    worker, whose next apply fails; the second closes an epoch the pool did
    not: earlier epochs' proofs still match a single worker's."""

    async def main(pools: list[TreePool]) -> None:
        one, two = pools
        period = SaltPeriod(3, 0, bytes(range(32)))
        build = [("a", "ADA", 5), ("a", "BTC", 7), ("b", "BTC", 1)]
        await _same(pools, TreePool.build, period, ["ADA", "BTC"], [build], 3, 1 << 20)
        assert two.owner("ADA") == 0 and two.owner("BTC") == 1
        await _same(pools, _roots, [], [("a", "BTC", 8)])
        for pool in pools:
            pool.stage([("a", "BTC", 9)])  # the second worker's
            pool.stage([("a", "DOGE", 1), ("a", "ADA", 6)])  # refused whole
        with pytest.raises(RuntimeError, match="staging rows failed: ProverError: unknown asset"):
            await two.apply([], [])
        with pytest.raises(RuntimeError, match="staging rows failed: ProverError: unknown asset"):
            await one.apply([], [])
        for age in range(3):  # meanwhile the second worker is one epoch ahead
            await _same(pools, TreePool.proof, "a", age)
        await _same(pools, _roots, [], [("b", "ADA", 2)])
        await _same(pools, _roots, [], [])
        for user in ["a", "b"]:
            for age in range(5):
                await _same(pools, TreePool.proof, user, age)
        found = await two.proof("a", 2)
        assert found is not None and [e[2] for e in found.entries] == [5, 8]  # ADA 5, BTC 8

    _run(main, 1, 2)


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ProverError, match="at least one worker"):
        TreePool(0)


def test_not_retained_is_raised_if_any_worker_forgets() -> None:
    async def main(pools: list[TreePool]) -> None:
        (pool,) = pools
        await pool.build(
            SaltPeriod(1, 0, bytes(32)), ["ADA", "BTC"], [[("a", "ADA", 1)]], 2, 1 << 20
        )
        await pool.apply([], [("a", "BTC", 1)])
        await pool.apply([], [])
        assert await pool.proof("a", 1) is not None
        with pytest.raises(NotRetained, match="the trees of 2 epochs ago are not retained"):
            await pool.proof("a", 2)

    _run(main, 2)


def test_a_tree_that_grows_a_level_is_the_same_in_any_pool() -> None:
    async def main(pools: list[TreePool]) -> None:
        period = SaltPeriod(1, 0, bytes(range(32)))
        rows = [("v", "ADA", 1), ("u", "BTC", 2), ("v", "BTC", 3)]
        await _same(pools, TreePool.build, period, ["ADA", "BTC"], [rows])
        many = [(f"n{i}", "BTC", i + 1) for i in range(2 * FREE_SLOTS)]  # one level higher
        applied = [await pool.apply([], many) for pool in pools]
        assert applied[0].roots == applied[1].roots
        assert [a.grown for a in applied] == [("BTC",), ("BTC",)]  # in the close
        assert [(await p.apply([], [])).grown for p in pools] == [(), ()]

    _run(main, 1, 2)


async def _closed(pool: TreePool) -> tuple[tuple[AssetRoot, ...], Mapping[str, int], int]:
    """The roots, room and unhashed updates of an apply."""
    applied = await pool.apply([], [])
    return applied.roots, applied.room, applied.unhashed


def test_trees_built_ahead_with_room_are_the_same_in_any_pool() -> None:
    """Room asked of a build reaches each asset's worker; each apply tells
    every asset's room; ``unhashed`` is the most any worker has waiting."""

    async def main(pools: list[TreePool]) -> None:
        one, two = pools
        period = SaltPeriod(5, 0, bytes(range(32)))
        rows = [(f"u{u}", a, u + 1) for u in range(40) for a in ("BTC", "ETH", "SOL")]
        room = {"BTC": 1_000, "SOL": 100}
        built = await _same(
            pools, TreePool.build, period, ["BTC", "ETH", "SOL"], [rows], 0, 0, room, 0.75, True
        )
        assert [r.height for r in built] == [11, 7, 8]  # 40 holders and 1,000, 30, 100 free
        assert two.owner("ETH") == 1
        staged = [(f"n{i}", "BTC", 1) for i in range(5)] + [("u1", "ETH", 7), ("n0", "ETH", 1)]
        for pool in pools:
            pool.stage(staged)
        assert await one.unhashed() == await two.unhashed() == 7  # 5 + 2 in the pair
        with pytest.raises(NotRetained):  # no epoch of theirs to prove yet
            await two.proof("u1")
        _, room, unhashed = await _same(pools, _closed)  # the same roots too
        assert room == {"BTC": 2**11 - 45, "ETH": 2**7 - 41, "SOL": 2**8 - 40}
        assert unhashed == 7  # fewer than EAGER_ROWS: left to the close
        assert await two.unhashed() == 0
        await _same(pools, TreePool.proof, "n0")

    _run(main, 1, 2)


def test_rows_staged_once_an_apply_is_called_are_the_next_ones() -> None:
    """The apply's request leaves before any other task runs: a row staged
    by a task that runs while the apply waits is the next apply's."""

    async def main(pools: list[TreePool]) -> None:
        for pool in pools:
            await pool.build(SaltPeriod(1, 0, bytes(32)), ["BTC", "ETH"], [[("a", "BTC", 1)]])

            async def close(pool: TreePool = pool) -> Applied:
                return await pool.apply([], [])

            async def late(pool: TreePool = pool) -> None:
                pool.stage([("late", "BTC", 5), ("late", "ETH", 5)])

            closing = asyncio.ensure_future(close())
            staging = asyncio.ensure_future(late())
            assert [r.total for r in (await closing).roots] == [1, 0]
            await staging
            assert [r.total for r in (await pool.apply([], [])).roots] == [6, 5]

    _run(main, 1, 2)
