"""The tree worker process: same answers as an in-process ledger, errors reported."""

import asyncio
import multiprocessing
import signal
from pathlib import Path

import msgspec
import pytest

from prover.errors import NotRetained, ProverError
from prover.ledger import Ledger
from prover.mapped import ProofBasis
from prover.periods import SaltPeriod
from prover.worker import EAGER_ROWS, TreeWorker, _serve
from prover.worker_messages import (
    Apply,
    Begin,
    Build,
    Built,
    Closed,
    Done,
    Failed,
    Found,
    Pending,
    ProofOf,
    Release,
    Reply,
    Request,
    Rows,
    Stage,
    Stop,
    Unhashed,
    Unretained,
    decode_reply,
    encode,
)
from verifier.hashing import MAX_BALANCE
from verifier.selection import MapEntry

PERIOD = SaltPeriod(1, 0, bytes(range(32)))
BASIS = ProofBasis(  # the record's part of the proof files: stand-ins
    b"header",
    {a: MapEntry(a.encode(), i, (bytes(32),)) for i, a in enumerate(["BTC", "ETH"])},
    (bytes(32),),
    b"checkpoint",
)
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


def test_sums_past_64_bits_and_refusals_cross_the_pipe(tmp_path: Path) -> None:
    """Totals and path sums past msgpack's integers arrive whole; a proof no
    longer retained and a file not written raise as before, same message."""
    big = [(f"u{i}", "BTC", MAX_BALANCE) for i in range(5)] + [("a", "ETH", 1)]

    async def run() -> None:
        worker = TreeWorker()
        try:
            roots = await worker.build(
                PERIOD, ["BTC", "ETH"], [big], retain=1, retain_bytes=1 << 20
            )
            local = Ledger.build(PERIOD, ["BTC", "ETH"], big)
            assert list(roots) == local.roots() and roots[0].total == 5 * MAX_BALANCE
            assert await worker.proof("u0") == local.proof("u0")
            await worker.apply([], [])
            with pytest.raises(NotRetained, match=r"^the trees of 2 epochs ago are not retained$"):
                await worker.proof("u0", 2)
            assert await worker.snapshot() == 6
            assert await worker.export(tmp_path, 0, 6, BASIS) == 6
            with pytest.raises(ProverError, match=r"u0\.json exists: an export never overwrites"):
                await worker.export(tmp_path, 0, 6, BASIS)
            assert await worker.proof("a") == local.proof("a")  # still serving
        finally:
            await worker.close()

    asyncio.run(run())


class _Script:
    """A parent that sends ``requests`` in order and never has more waiting (poll)."""

    def __init__(self, requests: list[Request | bytes]) -> None:
        self.requests = [r if isinstance(r, bytes) else encode(r) for r in requests]
        self.answers: list[Reply] = []

    def recv_bytes(self) -> bytes:
        if not self.requests:
            raise EOFError
        return self.requests.pop(0)

    def send_bytes(self, answer: bytes) -> None:
        self.answers.append(decode_reply(answer))

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
    many = Stage([(f"u{i}", "BTC", 1) for i in range(EAGER_ROWS)])
    script = _Script(
        [
            Begin(PERIOD, ["BTC"], 0, 0),
            Build(),
            many,  # idle: hashed ahead at once
            Apply([], []),
            many,  # the parent is handing out the epoch: held
            many,
            Release(),  # now
            Stop(),
        ]
    )
    script.serve()
    assert [type(a).__name__ for a in script.answers] == ["Done", "Built", "Closed", "Done"]
    assert flushed == [EAGER_ROWS, EAGER_ROWS]  # the apply took the first; release the rest


def test_a_failed_flush_after_release_is_told_at_the_next_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``release`` has no answer, so a failure in it must not send one (the
    parent would take it for the next command's): the next apply fails."""

    def broken(ledger: Ledger) -> None:
        raise MemoryError("no room")

    monkeypatch.setattr(Ledger, "flush", broken)
    many = Stage([(f"u{i}", "BTC", 1) for i in range(EAGER_ROWS)])
    script = _Script(
        [
            Begin(PERIOD, ["BTC"], 0, 0),
            Build(),
            Apply([], []),
            many,  # held: not flushed
            Release(),  # flushes, and fails
            Apply([], []),
            Stop(),
        ]
    )
    script.serve()
    answers = script.answers
    assert [type(a).__name__ for a in answers] == ["Done", "Built", "Closed", "Failed", "Done"]
    assert isinstance(answers[3], Failed) and "MemoryError: no room" in answers[3].message


def test_worker_ends_quietly_when_its_parent_is_gone() -> None:
    """kill -9 of the daemon closes the pipe: the worker returns, no traceback."""
    ours, theirs = multiprocessing.Pipe()
    theirs.close()
    ctrl_c = signal.getsignal(signal.SIGINT)  # _serve ignores it, as a worker should
    try:
        _serve(ours)  # returns instead of raising EOFError
    finally:
        signal.signal(signal.SIGINT, ctrl_c)


def test_a_frame_that_is_no_request_ends_the_worker_unanswered() -> None:
    """Answering it could pair a later answer with the wrong request."""
    script = _Script([Begin(PERIOD, ["BTC"], 0, 0), msgspec.msgpack.encode(("stage", b"")), Stop()])
    script.serve()
    assert [type(a).__name__ for a in script.answers] == ["Done"]
    assert len(script.requests) == 1  # the Stop after it was never read


def test_trees_built_ahead_hash_while_idle_and_tell_how_much_waits() -> None:
    """The next period's trees: built with room, no proof before their first
    apply, staged rows hashed ahead (a tree outgrowing its room grown there),
    ``Unhashed`` answered with what waits; each apply tells every room."""
    few = Stage([(f"u{i}", "BTC", 1) for i in range(10)])
    many = Stage([(f"v{i}", "BTC", 1) for i in range(EAGER_ROWS)])
    script = _Script(
        [
            Begin(PERIOD, ["BTC", "ETH"], 0, 0, {"BTC": 100}, ahead=True),
            Rows(ROWS),
            Build(),
            ProofOf("a"),
            few,
            Unhashed(),  # fewer than EAGER_ROWS: they wait
            many,
            Unhashed(),  # idle: hashed, BTC's tree grown past its 126 free slots
            Apply([], []),
            ProofOf("a"),
            Stop(),
        ]
    )
    script.serve()
    kinds = [type(a) for a in script.answers]
    assert kinds == [Done, Done, Built, Unretained, Pending, Pending, Closed, Found, Done]
    built, _, waiting, hashed, closed = script.answers[2:7]
    assert isinstance(built, Built) and [r.height for r in built.roots] == [7, 5]
    assert waiting == Pending(10) and hashed == Pending(0)
    holders = 2 + 10 + EAGER_ROWS
    assert isinstance(closed, Closed) and [r.height for r in closed.roots] == [13, 5]
    assert closed.room == {"BTC": 2**13 - holders, "ETH": 2**5 - 1}
    assert closed.unhashed == 0 and closed.grown == []  # all hashed, and grown, ahead
    local = Ledger.build(PERIOD, ["BTC", "ETH"], ROWS)
    local.stage_rows([*few.rows, *many.rows])
    local.close_epoch()
    assert [r.value().total for r in closed.roots] == [r.total for r in local.roots()]


def test_an_apply_tells_what_its_close_hashed_and_grew() -> None:
    """Trees serving proofs leave a tree that outgrows its room to the close:
    ``Closed`` names it, and counts the updates the close found unhashed."""
    many = Stage([(f"v{i}", "BTC", 1) for i in range(EAGER_ROWS)])
    script = _Script(
        [Begin(PERIOD, ["BTC", "ETH"], 0, 0), Rows(ROWS), Build(), many, Apply([], []), Stop()]
    )
    script.serve()
    closed = script.answers[3]
    assert isinstance(closed, Closed) and [r.height for r in closed.roots] == [13, 5]
    assert closed.unhashed == EAGER_ROWS and closed.grown == ["BTC"]
