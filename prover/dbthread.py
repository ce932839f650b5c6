"""The thread that makes every storage call of the engine, one at a time.

Calls run in the order they were submitted, except that an urgent one goes
ahead of those still waiting (never of the one running): an epoch's commit
does not queue behind the ingest batches that arrived while the epoch
closed. Batches not yet committed are not acknowledged, so the epoch, which
covers only acknowledged ones, does not depend on them.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["DbThread"]

T = TypeVar("T")
_URGENT, _NORMAL, _STOP = 0, 1, 2  # queue priorities
_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class DbThread:
    """A single worker thread with a two-level queue (see the module docstring)."""

    def __init__(self, name: str = "db") -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()  # first in, first out within a priority
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> Future[T]:
        """Run ``fn(*args)`` on the thread; its future holds the result.

        Raises:
            RuntimeError: the thread was shut down.
        """
        if self._closed:
            raise RuntimeError("the database thread is shut down")
        future: Future[T] = Future()
        self._queue.put((_URGENT if urgent else _NORMAL, next(self._order), (future, fn, args)))
        return future

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Keep the thread idle until the block ends, once the calls already
        running or urgent are done; calls submitted meanwhile wait."""
        release = threading.Event()
        self.submit(release.wait, urgent=True)
        try:
            yield
        finally:
            release.set()

    def shutdown(self) -> None:
        """Run every call submitted so far, then end the thread (if it started)."""
        if not self._closed:
            self._closed = True
            self._queue.put((_STOP, next(self._order), None))
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        while (job := self._queue.get()[2]) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
