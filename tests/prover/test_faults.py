"""The prover when storing an epoch fails (a full disk): retries spaced by a
capped exponential backoff, the failure reported on /healthz and /metrics and
logged once per attempt, then every acknowledged update published once, with
proofs matching their records throughout. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from prover import engine as engine_module
from prover.backoff import Backoff
from prover.engine import Engine
from prover.server import start_server
from storage.errors import StorageError
from storage.store import Store
from tests.prover.test_engine import KEY, Clock, balances, config, ingest, run
from tests.prover.test_server import AUTH, http_get
from verifier.proof import ProofFile, verify_proof
from verifier.record import EpochRecord

RETRY = Backoff(first=0.05, cap=0.2)
FAILS = 4  # attempts at least, before the disk is freed


class FailingAppends:
    """``store.append_epoch``, failing as a full disk would while ``failures`` > 0;
    every attempt's time is noted, with whether it failed."""

    def __init__(self, store: Store, failures: int = 0) -> None:
        self.append = store.append_epoch
        self.failures = failures
        self.attempts: list[tuple[float, bool]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> bytes:
        failing = self.failures > 0
        self.attempts.append((time.monotonic(), failing))
        if failing:
            self.failures -= 1
            raise StorageError("(sqlite3.OperationalError) database or disk is full")
        return self.append(*args, **kwargs)


async def until(condition: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def balance_in_proof(engine: Engine, user: str, epoch: int | None = None) -> int | None:
    proof = await engine.proof(user, epoch)
    if proof is None:
        return None
    report = verify_proof(ProofFile.parse(proof.to_json()), engine.verifier_key, user=user)
    assert report.record.epoch == (engine.metrics.epoch if epoch is None else epoch)
    return sum(a.balance for a in report.assets)


def test_a_failing_epoch_is_retried_with_backoff_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine_module, "EPOCH_RETRY", RETRY)

    async def scenario(engine: Engine, host: str) -> None:
        appends = FailingAppends(engine.store)
        monkeypatch.setattr(engine.store, "append_epoch", appends)
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:

            async def send(seq: int, user: str, amount: int) -> None:
                await producer.send(balances("core", (seq, user, "BTC", amount)))
                assert json.loads(await producer.recv())["type"] == "ack"

            async def health() -> tuple[int, str]:
                status, body = await asyncio.to_thread(http_get, f"http://{host}/healthz")
                return status, body.decode()

            await send(1, "alice", 150)

            async def alice_published() -> bool:
                return await balance_in_proof(engine, "alice") == 150

            await until(alice_published, "alice's first balance in an epoch")
            published = engine.metrics.epoch
            assert await health() == (200, "ok\n")

            appends.failures = 1_000_000  # the disk is full
            await send(2, "alice", 200)
            await send(3, "bob", 70)

            async def failing() -> bool:
                return (await health())[0] == 503

            await until(failing, "/healthz to report the failure")
            _, body = await health()
            assert body.startswith(f"epoch {published + 1} failing: StorageError (")
            _, text = await asyncio.to_thread(http_get, f"http://{host}/metrics")
            assert b"solvency_epoch_failures_total " in text
            assert b"\nsolvency_epoch_failing " in text
            assert b"\nsolvency_epoch_failing 0.0\n" not in text
            # meanwhile proofs still match the latest published record, and ingest goes on
            assert await balance_in_proof(engine, "alice") == 150
            await send(4, "carol", 5)

            async def failed_enough() -> bool:
                return engine.metrics.epoch_failures >= FAILS

            await until(failed_enough, f"{FAILS} attempts")
            appends.failures = 0  # the disk is freed

            async def recovered() -> bool:
                return engine.metrics.epoch >= published + 2 and await health() == (200, "ok\n")

            await until(recovered, "the epochs to resume")

        failed = [t for t, failing in appends.attempts if failing]
        assert len(failed) == engine.metrics.epoch_failures >= FAILS
        assert engine.metrics.epoch_failing == 0
        failures.append(len(failed))
        following = [t for t, _ in appends.attempts if t >= failed[0]][: len(failed) + 1]
        for n, (before, after) in enumerate(itertools.pairwise(following), 1):
            assert after - before >= RETRY.step(n) / 2 - 0.005, (n, after - before)
        # each epoch once, and the trees of every retained epoch match its record
        liabilities = {
            e: EpochRecord.decode(engine.store.epoch(e).record).asset("BTC").liabilities
            for e in range(published, engine.metrics.epoch + 1)
        }
        assert liabilities[published] == 150
        assert liabilities[published + 1] == 270  # cut at the first failed attempt
        assert set(list(liabilities.values())[2:]) == {275}
        for e in liabilities:
            assert await balance_in_proof(engine, "alice", e) == (150 if e == published else 200)
            assert await balance_in_proof(engine, "bob", e) == (None if e == published else 70)

    failures: list[int] = []
    with caplog.at_level(logging.INFO, "solvency.prover"):
        serve(tmp_path, scenario)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == failures[0], [r.getMessage() for r in errors]  # one line per attempt
    assert not any(r.exc_info for r in errors)  # a foreseeable failure: no traceback
    assert "database or disk is full; retrying in" in errors[0].getMessage()


def serve(tmp_path: Path, scenario: Any) -> None:
    async def main() -> None:
        cfg = config(tmp_path)
        store = Store.open(cfg.url)
        engine = Engine(cfg, store, KEY)
        await engine.start()
        server = await start_server(engine, "127.0.0.1", 0)
        stop = asyncio.Event()
        epochs = asyncio.create_task(engine.run(stop))
        try:
            await asyncio.wait_for(
                scenario(engine, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"), 30
            )
        finally:
            stop.set()
            assert await epochs
            server.close()
            await server.wait_closed()
            await engine.close()
            store.close()

    asyncio.run(main())


def test_a_retry_after_a_commit_that_went_through_does_not_append_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit succeeded but its answer was lost: the retry finds the epoch stored."""

    async def scenario(engine: Engine, clock: Clock) -> None:
        await ingest(engine, balances("core", (1, "alice", "BTC", 150)))
        inclusion = engine.store.inclusion_proof
        lost = [True]

        def lose_the_answer_once(*args: Any) -> Any:
            if lost.pop() if lost else False:
                raise StorageError("server closed the connection unexpectedly")
            return inclusion(*args)

        monkeypatch.setattr(engine.store, "inclusion_proof", lose_the_answer_once)
        with pytest.raises(StorageError):
            await engine.close_epoch()
        assert engine.store.latest_epoch() is not None  # it was committed
        message = await engine.close_epoch()
        assert EpochRecord.decode(message.record).epoch == 0
        assert await balance_in_proof(engine, "alice") == 150
        await ingest(engine, balances("core", (2, "alice", "BTC", 20)))
        assert EpochRecord.decode((await engine.close_epoch()).record).epoch == 1
        assert await balance_in_proof(engine, "alice") == 20
        assert await balance_in_proof(engine, "alice", 0) == 150

    run(tmp_path, scenario)


def test_stop_gives_up_on_a_last_epoch_that_keeps_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "EPOCH_RETRY", Backoff(first=0.01, cap=0.01))

    async def scenario(engine: Engine, clock: Clock) -> None:
        appends = FailingAppends(engine.store, failures=1_000)
        monkeypatch.setattr(engine.store, "append_epoch", appends)
        await ingest(engine, balances("core", (1, "alice", "BTC", 150)))
        stop = asyncio.Event()
        stop.set()
        assert await engine.run(stop) is False
        assert len(appends.attempts) == engine_module.FINAL_ATTEMPTS
        assert (
            engine.health()
            == f"epoch 0 failing: StorageError ({engine_module.FINAL_ATTEMPTS} attempts)"
        )

    run(tmp_path, scenario)
