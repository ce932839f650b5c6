"""The root stream's hub: subscribers, publication, shedding, and subscription
with replay from storage.

Invariants:

- ``publish`` runs on the event loop without awaiting: it sets
  ``published_epoch`` and hands the epoch to every subscriber before any
  other task runs.
- A subscriber is never waited for: its queue holds ``subscriber_queue``
  epochs at most (plus room for the end marker); one more, or ``offer``
  answering False, sheds it (counted; its stream ends with
  ``SubscriberShed``).
- ``subscribe`` yields every epoch from ``since`` once, in order: it replays
  stored epochs up to ``published_epoch``, and between its last check of
  that number and its registration there is no await, so no epoch
  published meanwhile falls in a gap.
- ``close`` ends every stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prover.config import Config
from prover.dbthread import DbThread
from prover.errors import SubscriberShed
from prover.metrics import Metrics
from prover.stored import stored_frame
from storage.store import Store
from verifier.stream import EpochMessage

__all__ = ["Fanout"]


@dataclass(eq=False)
class _Subscriber:
    """A root stream subscriber: frames as (epoch, text), or handed to ``offer``
    as they are published; None in the queue ends the stream."""

    queue: asyncio.Queue[tuple[int, str] | None]
    offer: Callable[[str], bool] | None = None
    overflowed: bool = False


class Fanout:
    """The root stream's subscribers (module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        db: DbThread,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._config, self._store, self._db = config, store, db
        self._metrics, self._clock = metrics, clock
        self._subscribers: set[_Subscriber] = set()

    def publish(self, number: int, message: EpochMessage) -> None:
        """Hand epoch ``number`` to every subscriber; shed those too far behind."""
        started = time.perf_counter()
        frame = message.to_json()
        self._metrics.published_epoch, self._metrics.last_publish_time = number, self._clock()
        for sub in list(self._subscribers):
            if sub.offer is not None:
                delivered = sub.offer(frame)
            elif delivered := sub.queue.qsize() < self._config.subscriber_queue:
                sub.queue.put_nowait((number, frame))
            if not delivered:
                self._shed(sub)
        self._metrics.subscribers = len(self._subscribers)
        self._metrics.fanout.observe(time.perf_counter() - started)

    def shed(self, offer: Callable[[str], bool]) -> None:
        """The subscriber fed by ``offer`` stalled (the server saw it): drop it
        at once if it is subscribed yet, and count it as shed either way."""
        subs = [sub for sub in self._subscribers if sub.offer is offer]
        for sub in subs:
            self._shed(sub)
        if not subs:
            self._metrics.shed_subscribers += 1

    def _shed(self, sub: _Subscriber) -> None:
        """Drop ``sub`` now, counted; its stream ends with SubscriberShed."""
        sub.overflowed = True
        self._subscribers.discard(sub)
        self._metrics.shed_subscribers += 1
        self._metrics.subscribers = len(self._subscribers)
        sub.queue.put_nowait(None)  # room was reserved for this marker

    def close(self) -> None:
        """End every subscriber's stream."""
        for sub in list(self._subscribers):
            sub.queue.put_nowait(None)

    async def subscribe(
        self, since: int | None, offer: Callable[[str], bool] | None = None
    ) -> AsyncIterator[str]:
        """Frames from epoch ``since`` (or from the next one), without gap or duplicate.

        Stored epochs are yielded; live ones too, or, with ``offer``, handed to
        it as they are published, without a task switch per subscriber (it
        sends at once; False: too far behind). Ends when the engine closes.

        Raises:
            SubscriberShed: the subscriber fell too far behind and was dropped.
        """
        next_epoch = self._metrics.published_epoch + 1 if since is None else since
        # Replay from storage until caught up; the check and the registration
        # below run without an await in between, so no epoch falls in a gap.
        while next_epoch <= self._metrics.published_epoch:
            frame = self._db.submit(stored_frame, self._store, next_epoch)
            yield await asyncio.wrap_future(frame)
            next_epoch += 1
        sub = _Subscriber(asyncio.Queue(self._config.subscriber_queue + 1), offer)
        self._subscribers.add(sub)
        self._metrics.subscribers = len(self._subscribers)
        try:
            while (item := await sub.queue.get()) is not None:
                yield item[1]
            if sub.overflowed:
                raise SubscriberShed(f"more than {self._config.subscriber_queue} epochs behind")
        finally:
            self._subscribers.discard(sub)
            self._metrics.subscribers = len(self._subscribers)
