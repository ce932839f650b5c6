"""The tree worker process: same answers as an in-process ledger, errors reported."""

import asyncio
import multiprocessing
import signal
from typing import Any

import msgspec
import pytest

from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.worker import EAGER_ROWS, TreeWorker, _serve

PERIOD = SaltPeriod(1, 0, bytes(range(32)))
ROWS = [("a", "BTC", 5), ("b", "BTC", 7), ("a", "ETH", 1)]


def test_worker_matches_ledger() -> None:
    async def run() -> None:
        worker = TreeWorker()
        try:
            roots = await worker.build(PERIOD, ["BTC", "ETH"], [ROWS[:2], ROWS[2:]])
            local = Ledger.build(PERIOD, ["BTC", "ETH"], ROWS)
            assert list(roots) == local.roots()
            applied = await worker.apply(["SOL"], [("c", "BTC", 3), ("a", "SOL", 9)])
            local.add_asset("SOL")
            local.stage("c", "BTC", 3)
            local.stage("a", "SOL", 9)
            assert list(applied.roots) == local.close_epoch()
            assert await worker.proof("a") == local.proof("a")
            with pytest.raises(RuntimeError, match="unknown asset"):
                await worker.apply([], [("a", "DOGE", 1)])
            assert await worker.proof("nobody") is None  # still serving after an error
        finally:
            await worker.close()

    asyncio.run(run())


def test_staged_rows_change_nothing_until_apply() -> None:
    async def run() -> None:
        worker = TreeWorker()
        try:
            await worker.build(PERIOD, ["BTC", "ETH"], [ROWS])
            local = Ledger.build(PERIOD, ["BTC", "ETH"], ROWS)
            before = await worker.proof("a")
            worker.stage([("a", "BTC", 50), ("d", "ETH", 2)])
            worker.stage([("a", "BTC", 60)])
            assert await worker.proof("a") == before == local.proof("a")
            applied = await worker.apply([], [("b", "BTC", 0)])
            for row in [("a", "BTC", 50), ("d", "ETH", 2), ("a", "BTC", 60), ("b", "BTC", 0)]:
                local.stage(*row)
            assert list(applied.roots) == local.close_epoch()
            assert await worker.proof("a") == local.proof("a")
            worker.stage([("a", "DOGE", 1), ("a", "BTC", 1)])  # refused whole, told at apply
            with pytest.raises(RuntimeError, match="unknown asset DOGE"):
                await worker.apply([], [])
            applied = await worker.apply([], [])
            assert list(applied.roots) == local.close_epoch()  # nothing of it was staged
        finally:
            await worker.close()

    asyncio.run(run())


def test_rows_hashed_ahead_of_the_close_change_no_proof_until_it() -> None:
    async def run() -> None:
        worker = TreeWorker()
        try:
            await worker.build(PERIOD, ["BTC", "ETH"], [ROWS])
            local = Ledger.build(PERIOD, ["BTC", "ETH"], ROWS)
            rows = [(f"u{i}", "BTC", i + 1) for i in range(EAGER_ROWS + 10)] + [("a", "BTC", 9)]
            worker.stage(rows)  # more than EAGER_ROWS: the child hashes them in now
            for _ in range(3):
                assert await worker.proof("a") == local.proof("a")  # still the last epoch
                assert await worker.proof("u1") is None
            applied = await worker.apply([], [("b", "BTC", 1)])
            for row in [*rows, ("b", "BTC", 1)]:
                local.stage(*row)
            assert list(applied.roots) == local.close_epoch()
            assert await worker.proof("u1") == local.proof("u1")
        finally:
            await worker.close()

    asyncio.run(run())


class _Script:
    """A parent that sends ``commands`` in order and never has more waiting (poll)."""

    def __init__(self, commands: list[tuple[str, Any]]) -> None:
        self.commands = commands
        self.answers: list[tuple[str, Any]] = []

    def recv(self) -> tuple[str, Any]:
        return self.commands.pop(0)

    def send(self, answer: tuple[str, Any]) -> None:
        self.answers.append(answer)

    def poll(self) -> bool:
        return False

    def serve(self) -> None:
        """Run the child's loop on this script, in this process."""
        ctrl_c = signal.getsignal(signal.SIGINT)  # _serve ignores it, as a worker should
        try:
            _serve(self)  # type: ignore[arg-type]
        finally:
            signal.signal(signal.SIGINT, ctrl_c)


def test_the_worker_hashes_nothing_ahead_from_an_apply_to_its_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flushed: list[int] = []
    monkeypatch.setattr(Ledger, "flush", lambda ledger: flushed.append(ledger.staged))
    many = msgspec.msgpack.encode([(f"u{i}", "BTC", 1) for i in range(EAGER_ROWS)])
    script = _Script(
        [
            ("begin", (PERIOD, ["BTC"], 0, 0)),
            ("build", None),
            ("stage", many),  # idle: hashed ahead at once
            ("apply", ([], [])),
            ("stage", many),  # the parent is handing out the epoch: held
            ("stage", many),
            ("release", None),  # now
            ("stop", None),
        ]
    )
    script.serve()
    assert [status for status, _ in script.answers] == ["ok"] * 4
    assert flushed == [EAGER_ROWS, EAGER_ROWS]  # the apply took the first; release the rest


def test_a_failed_flush_after_release_is_told_at_the_next_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``release`` has no answer, so a failure in it must not send one (the
    parent would take it for the next command's): the next apply fails."""

    def broken(ledger: Ledger) -> None:
        raise MemoryError("no room")

    monkeypatch.setattr(Ledger, "flush", broken)
    many = msgspec.msgpack.encode([(f"u{i}", "BTC", 1) for i in range(EAGER_ROWS)])
    script = _Script(
        [
            ("begin", (PERIOD, ["BTC"], 0, 0)),
            ("build", None),
            ("apply", ([], [])),
            ("stage", many),  # held: not flushed
            ("release", None),  # flushes, and fails
            ("apply", ([], [])),
            ("stop", None),
        ]
    )
    script.serve()
    assert [status for status, _ in script.answers] == ["ok", "ok", "ok", "error", "ok"]
    assert "MemoryError: no room" in script.answers[3][1]


def test_worker_ends_quietly_when_its_parent_is_gone() -> None:
    """kill -9 of the daemon closes the pipe: the worker returns, no traceback."""
    ours, theirs = multiprocessing.Pipe()
    theirs.close()
    ctrl_c = signal.getsignal(signal.SIGINT)  # _serve ignores it, as a worker should
    try:
        _serve(ours)  # returns instead of raising EOFError
    finally:
        signal.signal(signal.SIGINT, ctrl_c)
