"""The engine without sockets: ingest -> epoch -> proof -> verification, replays,
refusals, the root stream and restarts, on a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.config import AssetConfig, Config
from prover.engine import Engine
from prover.errors import IngestError, NotRetained
from prover.messages import ack, parse_ingest
from prover.runtime import CLOSE_SWITCH_INTERVAL, quick_gil_handoffs
from storage.store import ReserveRow, Store
from verifier.audit import audit_epoch
from verifier.proof import ProofFile, verify_proof
from verifier.record import EpochRecord, RecordHeader, Status
from verifier.stream import EpochMessage, parse_message

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ORIGIN = "test.example/solvency"


def config(tmp_path: Path, **changes: object) -> Config:
    base: dict[str, object] = dict(
        data_dir=tmp_path,
        origin=ORIGIN,
        assets=(AssetConfig("BTC", 8), AssetConfig("ETH", 9)),
        proof_secret="00" * 32,
        ingest_token="secret-token",
        epoch_interval=0.05,
        max_interval=0.5,
        max_reserve_age=60.0,
    )
    base.update(changes)
    return Config(**base)  # type: ignore[arg-type]


def balances(source: str, *rows: tuple[int, str, str, int], id: object = None) -> str:
    return json.dumps(
        {
            "type": "balances",
            "id": id,
            "source": source,
            "updates": [{"seq": s, "user": u, "asset": a, "amount": str(m)} for s, u, a, m in rows],
        }
    )


def reserves(source: str, *rows: tuple[int, str, int, int]) -> str:
    return json.dumps(
        {
            "type": "reserves",
            "source": source,
            "updates": [{"seq": s, "asset": a, "amount": m, "as_of_ms": t} for s, a, m, t in rows],
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


Scenario = Callable[[Engine, Clock], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, **changes: object) -> None:
    async def main() -> None:
        clock = Clock()
        cfg = config(tmp_path, **changes)
        store = Store.open(cfg.url)
        engine = Engine(cfg, store, KEY, clock=clock)
        await engine.start()
        try:
            await scenario(engine, clock)
        finally:
            await engine.close()
            store.close()

    asyncio.run(main())


async def ingest(engine: Engine, message: str) -> dict:
    r = await engine.ingest(parse_ingest(message))
    return json.loads(ack(r.id, r.source, r.applied, r.duplicates, r.last_seq))


def test_round_trip_to_a_verified_proof(tmp_path: Path, db_url: str) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        ack = await ingest(
            engine,
            balances(
                "core", (1, "alice", "BTC", 150), (2, "bob", "BTC", 50), (3, "alice", "ETH", 7)
            ),
        )
        assert ack == {
            "type": "ack",
            "id": None,
            "source": "core",
            "applied": 3,
            "duplicates": 0,
            "last_seq": 3,
        }
        await ingest(
            engine, reserves("cold", (1, "BTC", 500, int(clock.now * 1000)), (2, "ETH", 1, 0))
        )
        message = await engine.close_epoch()
        record = EpochRecord.decode(message.record)
        assert record.epoch == 0
        assert [(a.asset, a.liabilities, a.reserves, a.status) for a in record.assets] == [
            ("BTC", 200, 500, Status.SOLVENT),
            ("ETH", 7, 1, Status.UNPROVEN),  # as_of 0 is long stale
        ]
        proof = await engine.proof("alice")
        assert proof is not None
        report = verify_proof(ProofFile.parse(proof.to_json()), engine.verifier_key, user="alice")
        assert {a.asset: a.balance for a in report.assets} == {"BTC": 150, "ETH": 7}
        assert await engine.proof("nobody") is None
        # the epoch's row keeps the reserve reports its record used, for audit later
        assert engine.store.epoch_reserves(0) == [
            ReserveRow("BTC", "cold", 500, int(clock.now * 1000)),
            ReserveRow("ETH", "cold", 1, 0),
        ]

    run(tmp_path, scenario, database_url=db_url)


def test_replays_are_acknowledged_and_ignored(tmp_path: Path) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        await ingest(engine, balances("core", (1, "a", "BTC", 5), (2, "b", "BTC", 6)))
        again = await ingest(engine, balances("core", (1, "a", "BTC", 500), (2, "b", "BTC", 600)))
        assert (again["applied"], again["duplicates"], again["last_seq"]) == (0, 2, 2)
        record = EpochRecord.decode((await engine.close_epoch()).record)
        assert record.asset("BTC").liabilities == 11

    run(tmp_path, scenario)


def test_refused_batches_change_nothing(tmp_path: Path, db_url: str) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        await ingest(engine, balances("core", (1, "a", "BTC", 5)))
        bad = [
            (balances("core", (2, "a", "BTC", 6), (3, "b", "DOGE", 1)), "unknown-asset"),
            (balances("core", (1, "a", "BTC", 6), (2, "b", "BTC", 1)), None),  # replay + new: fine
            (reserves("cold", (1, "BTC", 5, int(clock.now * 1000) + 60_000)), "bad-update"),
        ]
        for message, code in bad:
            if code is None:
                await ingest(engine, message)
                continue
            with pytest.raises(IngestError) as info:
                await ingest(engine, message)
            assert info.value.code == code
        record = EpochRecord.decode((await engine.close_epoch()).record)
        assert record.asset("BTC").liabilities == 6  # a=5 kept, b=1 added
        assert record.asset("BTC").sources == ()

    run(tmp_path, scenario, database_url=db_url)


async def take(stream: AsyncIterator[str], count: int) -> list[EpochMessage]:
    out = []
    async for frame in stream:
        message = parse_message(frame)
        assert isinstance(message, EpochMessage)
        out.append(message)
        if len(out) == count:
            break
    return out


def test_root_stream_replays_then_follows_without_gap(tmp_path: Path) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        for n in range(3):
            await ingest(engine, balances("core", (n + 1, f"u{n}", "BTC", n + 1)))
            clock.now += 1
            await engine.close_epoch()
        reader = asyncio.create_task(take(engine.subscribe(1), 4))  # epochs 1, 2 stored; 3, 4 live
        await asyncio.sleep(0.05)
        for _ in range(2):
            clock.now += 1
            await engine.close_epoch()
        messages = await asyncio.wait_for(reader, 5)
        assert [EpochRecord.decode(m.record).epoch for m in messages] == [1, 2, 3, 4]
        state = None
        for m in messages:
            if state is None:  # an auditor starting at epoch 1 trusts its first checkpoint
                state, _, _ = audit_epoch(None, m, engine.verifier_key, ORIGIN)
            else:
                state, _, _ = audit_epoch(state, m, engine.verifier_key, ORIGIN)

    run(tmp_path, scenario)


def test_a_slow_subscriber_is_shed(tmp_path: Path) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        from prover.errors import SubscriberShed

        stream = engine.subscribe(None)
        first = asyncio.create_task(stream.__anext__())  # registers, then never reads again
        await asyncio.sleep(0.01)
        for _ in range(5):
            clock.now += 1
            await engine.close_epoch()
        await first
        with pytest.raises(SubscriberShed):
            while True:
                await stream.__anext__()
        assert engine.metrics.shed_subscribers == 1 and engine.metrics.subscribers == 0

    run(tmp_path, scenario, subscriber_queue=2)


def test_restart_continues_the_same_log(tmp_path: Path, db_url: str) -> None:
    async def first(engine: Engine, clock: Clock) -> None:
        await ingest(engine, balances("core", (1, "a", "BTC", 5)))
        await engine.close_epoch()
        await ingest(engine, balances("core", (2, "a", "BTC", 9)))  # acked, not yet in an epoch

    async def second(engine: Engine, clock: Clock) -> None:
        assert engine.metrics.epoch == 0
        again = await ingest(engine, balances("core", (2, "a", "BTC", 9)))
        assert again["duplicates"] == 1  # the producer's replay after the crash
        message = await engine.close_epoch()
        record = EpochRecord.decode(message.record)
        assert record.epoch == 1 and record.asset("BTC").liabilities == 9
        stored = [parse_message(f) async for f in _first(engine.subscribe(0), 2)]
        state = None
        for m in stored:
            assert isinstance(m, EpochMessage)
            state, _, _ = audit_epoch(state, m, engine.verifier_key, ORIGIN)

    run(tmp_path, first, database_url=db_url)
    run(tmp_path, second, database_url=db_url)


async def _first(stream: AsyncIterator[str], count: int) -> AsyncIterator[str]:
    n = 0
    async for frame in stream:
        yield frame
        n += 1
        if n == count:
            return


def test_salt_period_rotates_without_losing_updates(tmp_path: Path, db_url: str) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        await ingest(engine, balances("core", (1, "alice", "BTC", 10), (2, "bob", "BTC", 20)))
        first = await engine.close_epoch()
        before = await engine.proof("alice")
        clock.now += 2  # the period is over: the next epoch starts building the new one
        await ingest(engine, balances("core", (3, "alice", "BTC", 11)))
        await engine.close_epoch()
        messages = [first]
        while engine._rotation.loading:  # epochs go on while the new trees load
            await ingest(
                engine, balances("core", (4 + len(messages), "carol", "BTC", len(messages)))
            )
            clock.now += 0.1
            messages.append(await engine.close_epoch())
            await asyncio.sleep(0.05)
        after = await engine.proof("alice")
        assert before is not None and after is not None and before.salt != after.salt
        record = EpochRecord.decode(messages[-1].record)
        carol = len(messages) - 1
        assert record.asset("BTC").liabilities == 11 + 20 + carol
        report = verify_proof(ProofFile.parse(after.to_json()), engine.verifier_key, user="alice")
        assert report.assets[0].balance == 11
        state = None
        for m in [
            first,
            *[parse_message(f) async for f in _first(engine.subscribe(1), engine.metrics.epoch)],
        ]:
            assert isinstance(m, EpochMessage)
            state, _, _ = audit_epoch(state, m, engine.verifier_key, ORIGIN)

    run(tmp_path, scenario, database_url=db_url, salt_period=1.0)


def test_proofs_of_retained_earlier_epochs(tmp_path: Path) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        await ingest(engine, balances("core", (1, "alice", "BTC", 150), (2, "bob", "BTC", 5)))
        first = await engine.close_epoch()
        await ingest(engine, balances("core", (3, "alice", "BTC", 0), (4, "carol", "ETH", 9)))
        clock.now += 1
        await engine.close_epoch()
        await ingest(engine, balances("core", (5, "bob", "BTC", 6)))
        clock.now += 1
        await engine.close_epoch()  # epoch 2; epoch 1 is retained, epoch 0 is not
        assert await engine.proof("alice", 1) is None  # she held nothing then
        carol = await engine.proof("carol", 1)
        assert carol is not None
        report = verify_proof(ProofFile.parse(carol.to_json()), engine.verifier_key, user="carol")
        assert report.epoch == 1 and {a.asset: a.balance for a in report.assets} == {"ETH": 9}
        bob = await engine.proof("bob", 1)
        assert bob is not None and RecordHeader.decode(bob.header).epoch == 1
        report = verify_proof(ProofFile.parse(bob.to_json()), engine.verifier_key, user="bob")
        assert {a.asset: a.balance for a in report.assets} == {"BTC": 5}
        for epoch in (0, 3):
            with pytest.raises(NotRetained):
                await engine.proof("bob", epoch)
        assert EpochRecord.decode(first.record).epoch == 0

    run(tmp_path, scenario, proof_epochs=1)


def test_the_journal_is_folded_off_the_ingest_path(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("prover.folding.FOLD_AFTER", 3)

    async def scenario(engine: Engine, clock: Clock) -> None:
        await ingest(engine, balances("core", (1, "alice", "BTC", 1), (2, "bob", "BTC", 2)))
        await engine.close_epoch()
        assert engine.store.journal_backlog() == 2  # below FOLD_AFTER: left journaled
        await ingest(engine, balances("core", (3, "alice", "BTC", 5), (4, "carol", "ETH", 7)))
        clock.now += 1
        await engine.close_epoch()  # 4 waiting: a fold starts
        for _ in range(100):  # the gauge follows once the fold reads the backlog again
            if engine.store.journal_backlog() == 0 and engine.metrics.unfolded_updates == 0:
                break
            await asyncio.sleep(0.05)
        assert engine.store.journal_backlog() == 0 and engine.metrics.unfolded_updates == 0
        got = {(u, a): m for chunk in engine.store.iter_balances() for u, a, m in chunk}
        assert got == {("alice", "BTC"): 5, ("bob", "BTC"): 2, ("carol", "ETH"): 7}

    run(tmp_path, scenario, database_url=db_url)


def test_a_fold_holds_back_while_an_epoch_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold in one-row transactions runs across several epochs; while each of
    them closes, at most the fold transaction already under way completes."""
    monkeypatch.setattr("prover.folding.FOLD_AFTER", 1)
    monkeypatch.setattr("prover.folding.FOLD_CHUNK", 1)
    during_close: list[int] = []

    async def scenario(engine: Engine, clock: Clock) -> None:
        upsert = engine.store._upsert_chunk

        def watched(rows: list[tuple[str, str, int]]) -> None:
            if engine._epoch_lock.locked():
                during_close.append(engine.metrics.epoch)
            time.sleep(0.002)
            upsert(rows)

        monkeypatch.setattr(engine.store, "_upsert_chunk", watched)
        rows = [(i + 1, f"user{i}", "BTC", i + 1) for i in range(300)]
        await ingest(engine, balances("core", *rows))
        await engine.close_epoch()  # the fold of 300 one-row transactions starts
        closed = 0
        while engine.store.journal_backlog():
            clock.now += 1
            await engine.close_epoch()
            closed += 1
        assert closed >= 3  # the fold did span several closes
        assert all(during_close.count(e) <= 1 for e in set(during_close))
        got = {u: m for chunk in engine.store.iter_balances() for u, _, m in chunk}
        assert got == {u: m for _, u, _, m in rows}

    run(tmp_path, scenario)


def test_an_epoch_closes_with_quick_gil_handoffs(tmp_path: Path) -> None:
    """While an epoch closes (its commit and publication included), Python's
    switch interval is CLOSE_SWITCH_INTERVAL; after, it is back as it was, also
    when closes of two engines of one process overlap."""
    seen: list[float] = []
    before = sys.getswitchinterval()

    async def scenario(engine: Engine, clock: Clock) -> None:
        commit = engine._commit_epoch

        def watched(*args: Any) -> EpochMessage:
            seen.append(sys.getswitchinterval())
            return commit(*args)

        engine._commit_epoch = watched  # type: ignore[method-assign]
        await ingest(engine, balances("core", (1, "alice", "BTC", 5)))
        await engine.close_epoch()
        assert sys.getswitchinterval() == before
        with quick_gil_handoffs():  # another engine's close, under way
            await engine.close_epoch()
            assert sys.getswitchinterval() == pytest.approx(CLOSE_SWITCH_INTERVAL)
        assert sys.getswitchinterval() == before

    run(tmp_path, scenario)
    assert seen == pytest.approx([CLOSE_SWITCH_INTERVAL] * 2)


def test_the_database_thread_idles_while_an_epoch_is_handed_out(tmp_path: Path) -> None:
    """A storage call that waits while the epoch commits (an ingest batch) runs
    only once every subscriber has the epoch: it would take the GIL from the
    fan-out at each send (prover/dbthread.py)."""
    ran: list[str] = []
    seen: list[list[str]] = []

    async def scenario(engine: Engine, clock: Clock) -> None:
        commit = engine._commit_epoch

        def commit_with_a_batch_waiting(*args: Any) -> EpochMessage:
            engine._db.submit(ran.append, "batch")
            return commit(*args)

        def offer(frame: str) -> bool:
            time.sleep(0.05)  # time enough for the thread to run the batch, if free
            seen.append(list(ran))
            return True

        engine._commit_epoch = commit_with_a_batch_waiting  # type: ignore[method-assign]
        stream = engine.subscribe(None, offer)
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)
        await ingest(engine, balances("core", (1, "alice", "BTC", 5)))
        await engine.close_epoch()
        await engine._db_call(ran.append, "after")
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending

    run(tmp_path, scenario)
    assert seen == [[]]
    assert ran == ["batch", "after"]


def test_a_fold_stops_at_its_next_pause_when_the_engine_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping the prover does not wait for a fold (one can run for tens of
    seconds): it stops between two of its transactions, every balance as
    acknowledged, and the next fold finishes it."""
    monkeypatch.setattr("prover.folding.FOLD_AFTER", 1)
    monkeypatch.setattr("prover.folding.FOLD_CHUNK", 1)
    rows = [(i + 1, f"user{i:02}", "BTC", i + 1) for i in range(40)]
    sleep = time.sleep
    took: list[float] = []

    async def scenario(engine: Engine, clock: Clock) -> None:
        await ingest(engine, balances("core", *rows))
        monkeypatch.setattr("prover.folding.time.sleep", lambda _: sleep(0.05))  # 2 s in all
        await engine.close_epoch()  # the fold starts
        await asyncio.sleep(0.3)
        began = time.perf_counter()
        await engine.close()
        took.append(time.perf_counter() - began)
        assert engine._folder.task is not None and engine._folder.task.done()

    run(tmp_path, scenario)
    assert took[0] < 1.0
    url = config(tmp_path).url
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        (written,) = db.execute("SELECT count(*) FROM balances").fetchone()
    assert 0 < written < len(rows)  # stopped midway
    store = Store.open(url)
    try:
        assert store.journal_backlog() == len(rows)  # whole until the fold's last step
        want = {user: amount for _, user, _, amount in rows}
        assert {u: m for chunk in store.iter_balances() for u, _, m in chunk} == want
        store.fold()
        assert store.journal_backlog() == 0
        assert {u: m for chunk in store.iter_balances() for u, _, m in chunk} == want
    finally:
        store.close()


def test_a_fold_rests_as_long_as_it_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between pieces of its work, a fold sleeps FOLD_REST times as long as the
    piece took, so that it takes a share of the CPU and GIL, not all of it."""
    monkeypatch.setattr("prover.folding.FOLD_AFTER", 1)
    monkeypatch.setattr("prover.folding.FOLD_CHUNK", 1)
    monkeypatch.setattr("prover.folding.FOLD_REST", 0.5)
    rests: list[tuple[float, float]] = []  # (asked, work before it)
    sleep, last = time.sleep, [time.perf_counter()]

    def resting(seconds: float) -> None:
        rests.append((seconds, time.perf_counter() - last[0]))
        sleep(seconds)
        last[0] = time.perf_counter()

    async def scenario(engine: Engine, clock: Clock) -> None:
        rows = [(i + 1, f"user{i}", "BTC", i + 1) for i in range(20)]
        await ingest(engine, balances("core", *rows))
        monkeypatch.setattr("prover.folding.time.sleep", resting)
        await engine.close_epoch()  # the fold starts
        assert engine._folder.task is not None
        await engine._folder.task
        monkeypatch.setattr("prover.folding.time.sleep", sleep)
        assert engine.store.journal_backlog() == 0

    run(tmp_path, scenario)
    assert len(rests) >= 21  # before each of 20 one-row writes and the journal's deletion
    assert all(asked <= 0.5 * worked for asked, worked in rests[1:])
    assert sum(asked for asked, _ in rests) > 0
