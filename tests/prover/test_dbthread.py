"""The database thread: calls in order, an urgent one ahead of those waiting."""

from __future__ import annotations

import threading

import pytest

from prover.dbthread import DbThread


def test_calls_run_in_order_urgent_ones_ahead_of_those_waiting() -> None:
    db = DbThread()
    ran: list[str] = []
    running, release = threading.Event(), threading.Event()

    def blocker() -> None:
        running.set()
        assert release.wait(10)
        ran.append("running")

    first = db.submit(blocker)
    assert running.wait(10)  # the thread is busy: what follows waits
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
    assert db.submit(pow, 2, 10).result(10) == 1024
    with pytest.raises(ZeroDivisionError):
        db.submit(divmod, 1, 0).result(10)
    last = db.submit(sum, [1, 2, 3])
    db.shutdown()  # runs what was submitted first
    assert last.result(0) == 6
    with pytest.raises(RuntimeError, match="shut down"):
        db.submit(sum, [])
    db.shutdown()  # again: nothing to do
