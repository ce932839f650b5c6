"""The database thread: calls in order, an urgent one ahead of those waiting."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from prover.dbthread import DbThread


def busy(db: DbThread, ran: list[str]) -> tuple[Future[None], threading.Event]:
    """Keep ``db`` running a call until the event returned is set; the call
    then notes "running" in ``ran``."""
    running, release = threading.Event(), threading.Event()

    def blocker() -> None:
        running.set()
        assert release.wait(10)
        ran.append("running")

    call = db.submit(blocker)
    assert running.wait(10)
    return call, release


def test_calls_run_in_order_urgent_ones_ahead_of_those_waiting() -> None:
    db = DbThread()
    db.start()
    ran: list[str] = []
    first, release = busy(db, ran)  # the thread is busy: what follows waits
    futures = [db.submit(ran.append, name) for name in ("a", "b")]
    futures.append(db.submit(ran.append, "urgent", urgent=True))
    futures.append(db.submit(ran.append, "c"))
    release.set()
    for future in [first, *futures]:
        future.result(10)
    db.shutdown()
    assert ran == ["running", "urgent", "a", "b", "c"]


def test_results_errors_and_shutdown() -> None:
    db = DbThread()
    db.start()
    assert db.submit(pow, 2, 10).result(10) == 1024
    with pytest.raises(ZeroDivisionError):
        db.submit(divmod, 1, 0).result(10)
    last = db.submit(sum, [1, 2, 3])
    db.shutdown()  # runs what was submitted first
    assert last.result(0) == 6
    with pytest.raises(RuntimeError, match="shut down"):
        db.submit(sum, [])
    db.shutdown()  # again: nothing to do


def test_a_held_thread_runs_what_went_before_and_nothing_more_until_released() -> None:
    db = DbThread()
    db.start()
    ran: list[str] = []
    _, release = busy(db, ran)
    waiting = db.submit(ran.append, "waiting")
    commit = db.submit(ran.append, "urgent", urgent=True)
    with db.held():
        later = db.submit(ran.append, "later", urgent=True)
        release.set()
        commit.result(10)
        assert not waiting.done() and not later.done()
        assert ran == ["running", "urgent"]
    waiting.result(10)
    later.result(10)
    db.shutdown()
    assert ran == ["running", "urgent", "later", "waiting"]


def test_a_hold_ends_when_its_block_fails() -> None:
    db = DbThread()
    db.start()
    with pytest.raises(RuntimeError, match="the block failed"), db.held():
        raise RuntimeError("the block failed")
    assert db.submit(pow, 2, 3).result(10) == 8
    db.shutdown()
