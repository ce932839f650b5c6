"""Salt periods rotated early, while a tree fills up: the engine on real tree
workers and a fake clock. The next trees are built with room and catch up
in the background; no tree grows, and no backlog is applied, in a close."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from prover.engine import Engine
from prover.ledger import AssetRoot, Ledger
from prover.periods import SaltPeriod
from prover.pool import TreePool
from prover.rotation import CAUGHT_UP
from prover.worker import EAGER_ROWS
from prover.worker_messages import Applied, Row
from storage import journal
from storage.store import Store
from tests.prover.test_engine import Clock, balances, config, ingest, run
from verifier.proof import ProofFile, verify_proof
from verifier.record import EpochRecord, RecordHeader, decode_entry

BTC_HOLDERS = 100  # a tree of 128 slots at start-up, 28 free
ETH_HOLDERS = 3 * EAGER_ROWS  # their updates during a load: more than one flush
# a rotation takes 2 epochs (the builds take no time on the fake clock), so 2 s
SLOW_EPOCHS = {"epoch_interval": 1.0, "max_interval": 10.0}


class _Spy:
    """Every pool's applies (rows sent with it, answer) and rows staged into it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.applies: dict[TreePool, list[tuple[int, Applied]]] = defaultdict(list)
        self.staged: Counter[TreePool] = Counter()
        apply, stage = TreePool.apply, TreePool.stage

        async def spy_apply(pool: TreePool, assets: list[str], rows: list[Row]) -> Applied:
            applied = await apply(pool, assets, rows)
            self.applies[pool].append((len(rows), applied))
            return applied

        def spy_stage(pool: TreePool, rows: list[Row]) -> None:
            self.staged[pool] += len(rows)
            stage(pool, rows)

        monkeypatch.setattr(TreePool, "apply", spy_apply)
        monkeypatch.setattr(TreePool, "stage", spy_stage)


class _Ledger:
    """What the test acknowledged: each balance, sent in batches with their seqs."""

    def __init__(self) -> None:
        self.seq = itertools.count(1)
        self.balances: dict[tuple[str, str], int] = {}

    async def send(self, engine: Engine, rows: list[Row]) -> None:
        for start in range(0, len(rows), 5_000):
            part = rows[start : start + 5_000]
            await ingest(engine, balances("core", *((next(self.seq), *r) for r in part)))
            self.balances.update(((u, a), m) for u, a, m in part)

    def total(self, asset: str) -> int:
        return sum(m for (_, a), m in self.balances.items() if a == asset)


def _preload(tmp_path: Path, sent: _Ledger) -> None:
    """BTC_HOLDERS and ETH_HOLDERS stored, so that the start-up trees hold them."""

    async def scenario(engine: Engine, clock: Clock) -> None:
        rows = [(f"b{i}", "BTC", 1) for i in range(BTC_HOLDERS)]
        await sent.send(engine, rows + [(f"e{i}", "ETH", 1) for i in range(ETH_HOLDERS)])
        await engine.close_epoch()

    run(tmp_path, scenario)


def _eth_round(amount: int) -> list[Row]:
    return [(f"e{i}", "ETH", amount) for i in range(ETH_HOLDERS)]


def test_a_filling_tree_rotates_early_and_the_switch_applies_no_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """BTC's tree fills: a new period starts with room left, its trees take
    the backlog staged ahead, and every balance reaches them once: its
    proofs and liabilities are those of the period built from scratch."""
    sent = _Ledger()
    _preload(tmp_path, sent)
    caplog.clear()
    spy = _Spy(monkeypatch)
    proofs: dict[str, ProofFile] = {}
    new = (f"n{i}" for i in itertools.count())

    async def scenario(engine: Engine, clock: Clock) -> None:
        rotation = engine._rotation
        first = rotation.trees
        assert isinstance(first, TreePool)
        # 3 new BTC holders a second: the tree's 28 free slots last ~9 s
        epochs = 0
        while not rotation.loading:
            holders = [(next(new), "BTC", 5) for _ in range(3)]
            await sent.send(engine, [*holders, ("b1", "BTC", epochs + 2)])
            clock.now += 1
            await engine.close_epoch()
            epochs += 1
            assert epochs < 9, "no early rotation before the room ran out"
        (_, trigger), *_ = reversed(spy.applies[first])
        assert 3 <= trigger.room["BTC"] < 28  # started with room left for a few epochs
        assert rotation.early_rotations == 1
        assert "early: BTC's tree fills in ~" in caplog.text
        # while the next trees load and catch up: every ETH holder updated
        # three times (a backlog of more than one flush), new BTC holders
        for epoch in itertools.count():
            assert epoch < 400, "the next trees never caught up"
            if epoch < 3:
                await sent.send(engine, _eth_round(epoch + 2))
            if epoch < 5:
                await sent.send(engine, [(next(new), "BTC", 7)])
            await sent.send(engine, [("b2", "BTC", epoch + 1)])
            clock.now += 1
            await engine.close_epoch()
            if not rotation.loading:
                break
            await asyncio.sleep(0.02)
        switched = rotation.trees
        assert isinstance(switched, TreePool) and switched is not first
        assert spy.staged[switched] >= 3 * ETH_HOLDERS  # the backlog, staged ahead
        (rows, switch), *_ = spy.applies[switched]
        assert rows == 0 and switch.unhashed <= CAUGHT_UP < ETH_HOLDERS  # hashed ahead
        heights = [{r.asset: r.height for r in a.roots} for a in (trigger, switch)]
        assert heights[1]["BTC"] > heights[0]["BTC"] and switch.room["BTC"] > 100  # room ahead
        for _ in range(3):  # and on with the new trees
            await sent.send(engine, [(next(new), "BTC", 9), ("e7", "ETH", 1)])
            clock.now += 1
            await engine.close_epoch()
        message = await engine.close_epoch()
        assert rotation.grown_in_close == 0
        assert not any(a.grown for applies in spy.applies.values() for _, a in applies)
        record = EpochRecord.decode(message.record)
        for asset in ("BTC", "ETH"):
            assert record.asset(asset).liabilities == sent.total(asset)
        users = {u for u, a in sent.balances if a == "BTC"} | {f"e{i}" for i in range(0, 15, 7)}
        for user in sorted(users):
            proof = await engine.proof(user)
            assert proof is not None
            report = verify_proof(ProofFile.parse(proof.to_json()), engine.verifier_key, user=user)
            held = {(user, a.asset): a.balance for a in report.assets}
            assert held == {k: m for k, m in sent.balances.items() if k[0] == user and m}
            proofs[user] = proof

    with caplog.at_level(logging.INFO, logger="solvency.prover"):
        run(tmp_path, scenario, **SLOW_EPOCHS)

    # the same period and balances, built from scratch: the same salts and leaves
    store = Store.open(config(tmp_path).url)
    try:
        latest = store.latest_salt_period()
        assert latest is not None
        period = SaltPeriod(latest.number, latest.started_ms, latest.secret)
        stored = [row for chunk in store.iter_balances() for row in chunk]
    finally:
        store.close()
    assert {(u, a): m for u, a, m in stored} == {k: m for k, m in sent.balances.items() if m}
    scratch = Ledger.build(period, ["BTC", "ETH"], stored)
    assert {r.asset: r.total for r in scratch.roots()} == {
        "BTC": sent.total("BTC"),
        "ETH": sent.total("ETH"),
    }
    for user, proof in proofs.items():
        again = scratch.proof(user)
        assert again is not None and again.salt == proof.salt
        header = RecordHeader.decode(proof.header)
        held = [(decode_entry(a.entry, header).asset, a.balance) for a in proof.assets]
        assert [(e[0], e[2]) for e in again.entries] == held


def test_a_failed_build_or_switch_keeps_the_current_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The next trees' build fails, then their switching apply: logged, and
    the epochs go on with the current trees until a rotation succeeds."""
    sent = _Ledger()
    _preload(tmp_path, sent)
    caplog.clear()
    build, apply = TreePool.build, TreePool.apply
    failures = ["build", "apply"]
    ahead: set[TreePool] = set()

    async def flaky_build(pool: TreePool, *args: Any) -> tuple[AssetRoot, ...]:
        if args[-1]:  # ahead: the next period's trees
            ahead.add(pool)
            if failures[:1] == ["build"]:
                failures.pop(0)
                raise RuntimeError("no memory for the next trees")
        return await build(pool, *args)

    async def flaky_apply(pool: TreePool, assets: list[str], rows: list[Row]) -> Applied:
        if pool in ahead and failures == ["apply"]:
            failures.pop(0)
            raise RuntimeError("the next trees fell over")
        return await apply(pool, assets, rows)

    monkeypatch.setattr(TreePool, "build", flaky_build)
    monkeypatch.setattr(TreePool, "apply", flaky_apply)

    async def scenario(engine: Engine, clock: Clock) -> None:
        first = engine._rotation.trees
        clock.now += 2  # the period is over: a rotation is due at every apply until one is done
        for epoch in itertools.count():
            assert epoch < 400, "no rotation completed"
            await sent.send(engine, [(f"b{epoch % 7}", "BTC", epoch + 2), (f"x{epoch}", "ETH", 3)])
            clock.now += 0.1
            message = await engine.close_epoch()
            record = EpochRecord.decode(message.record)
            assert record.asset("BTC").liabilities == sent.total("BTC")
            assert record.asset("ETH").liabilities == sent.total("ETH")
            if engine._rotation.trees is not first:
                break
            await asyncio.sleep(0.02)
        assert failures == [] and len(ahead) == 3 and engine._rotation.early_rotations == 0
        proof = await engine.proof("x0")
        assert proof is not None
        verify_proof(ProofFile.parse(proof.to_json()), engine.verifier_key, user="x0")

    with caplog.at_level(logging.INFO, logger="solvency.prover"):
        run(tmp_path, scenario, salt_period=1.0)
    assert "building the next salt period failed; keeping the current one" in caplog.text
    assert "the next salt period's trees failed an apply; keeping the current one" in caplog.text


def test_a_tree_whose_room_runs_out_anyway_grows_in_the_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Holders arriving faster than any rotation: the close grows the tree,
    as it always did, counted and logged."""
    sent = _Ledger()
    _preload(tmp_path, sent)
    caplog.clear()

    async def scenario(engine: Engine, clock: Clock) -> None:
        await sent.send(engine, [(f"n{i}", "BTC", 1) for i in range(40)])  # 28 free slots
        clock.now += 1
        message = await engine.close_epoch()
        assert engine._rotation.grown_in_close == 1
        assert EpochRecord.decode(message.record).asset("BTC").liabilities == sent.total("BTC")
        proof = await engine.proof("n39")
        assert proof is not None
        verify_proof(ProofFile.parse(proof.to_json()), engine.verifier_key, user="n39")

    with caplog.at_level(logging.INFO, logger="solvency.prover"):
        run(tmp_path, scenario, **SLOW_EPOCHS)
    assert "the tree of BTC grew a level in an epoch's close" in caplog.text


@pytest.mark.parametrize("built", [False, True])
def test_closing_the_engine_mid_rotation_stops_the_next_trees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: bool
) -> None:
    """Closed while the next trees load, or once they are built: their
    workers end with the engine's."""
    pools: list[TreePool] = []
    build = TreePool.build

    async def kept_build(pool: TreePool, *args: Any) -> tuple[AssetRoot, ...]:
        pools.append(pool)
        return await build(pool, *args)

    monkeypatch.setattr(TreePool, "build", kept_build)

    async def scenario(engine: Engine, clock: Clock) -> None:
        await ingest(engine, balances("core", (1, "a", "BTC", 5)))
        clock.now += 2  # the period is over: this apply starts the next one
        await engine.close_epoch()
        upcoming = engine._rotation._next
        assert upcoming is not None
        while len(pools) < 2:  # the next trees' build is under way
            await asyncio.sleep(0.005)
        if built:
            await asyncio.wait_for(asyncio.shield(upcoming.load), 30)
            await asyncio.sleep(0.05)  # their backlog staged
        assert engine._rotation.loading

    run(tmp_path, scenario, salt_period=1.0)
    assert len(pools) == 2
    for pool in pools:
        assert not any(w._process.is_alive() for w in pool._workers)


def test_a_rotation_reads_the_balances_without_waiting_for_a_fold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fold under way holds the fold lock throughout: the next trees are
    built from the table and the unfolded journal all the same, its lines
    (a removal, an override, a new holder) over the table's rows."""
    sent = _Ledger()
    _preload(tmp_path, sent)  # folded into the table by the start-up build below
    caplog.clear()

    async def scenario(engine: Engine, clock: Clock) -> None:
        rotation = engine._rotation
        first = rotation.trees
        await sent.send(engine, [("b1", "BTC", 0), ("b2", "BTC", 9), ("z", "ETH", 4)])
        assert engine.store.journal_backlog() == 3
        assert journal._FOLDING.acquire(timeout=30)  # a fold under way, for the whole rotation
        try:
            clock.now += 2  # the period is over: this apply starts the next one
            for epoch in itertools.count():
                assert epoch < 400, "no rotation completed"
                await sent.send(engine, [(f"x{epoch}", "ETH", 3)])
                clock.now += 0.1
                message = await engine.close_epoch()
                if rotation.trees is not first:
                    break
                await asyncio.sleep(0.02)
            assert engine.store.journal_backlog() > 3  # nothing was folded
        finally:
            journal._FOLDING.release()
        record = EpochRecord.decode(message.record)  # the switching epoch's
        for asset in ("BTC", "ETH"):
            assert record.asset(asset).liabilities == sent.total(asset)
        assert await engine.proof("b1") is None
        for user in ("b2", "z", "b3"):
            proof = await engine.proof(user)
            assert proof is not None
            report = verify_proof(ProofFile.parse(proof.to_json()), engine.verifier_key, user=user)
            held = {(user, a.asset): a.balance for a in report.assets}
            assert held == {k: m for k, m in sent.balances.items() if k[0] == user and m}

    with caplog.at_level(logging.INFO, logger="solvency.prover"):
        run(tmp_path, scenario, salt_period=1.0)
    read = re.search(r"staging (\d+) unfolded updates read", caplog.text)
    assert read is not None and int(read[1]) >= 3  # at least those sent before the rotation
