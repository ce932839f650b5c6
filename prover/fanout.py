"""The root stream's hub: subscribers, publication, shedding, and subscription
with replay from storage.

Invariants:

- ``publish`` runs on the event loop without awaiting: it sets
  ``published_epoch`` and hands the epoch to every subscriber before any
  other task runs.
- Subscribers are grouped by what they asked for (all assets, chosen
  assets, checkpoints only: ``Subscription``) and their ``Encoding``; each
  epoch's frame is built once per group and variant (prover/frames.py),
  never once per subscriber, and the subscribers of one group are handed
  that one frame in a row.
- A connection's first frame, replayed or live, is the "first" variant
  (every report its entries bind); each next one the "later" variant of its
  epoch, relative to the epoch before it, which is the frame it got just
  before: replays go in order and run into live epochs without a gap. The
  fan-out knows the record published last (``start`` gives the last one
  stored), so a live epoch always knows the record before it.
- Replays share frames too: the last ``REPLAY_EPOCHS`` epochs' frames are
  kept, and one is served again while the epoch as stored is the same
  (its checkpoint gained no cosignature since); a record never changes,
  so its asset map is kept even then.
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
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from prover.config import Config
from prover.dbthread import DbThread
from prover.errors import SubscriberShed
from prover.frames import Encoding, EpochFrames, Frame
from prover.mapped import MappedRecord
from prover.metrics import Metrics
from prover.stored import stored_epoch
from storage.store import Store
from verifier.stream import EpochMessage
from verifier.subscription import ALL_ASSETS, Subscription

__all__ = ["REPLAY_EPOCHS", "Fanout"]

REPLAY_EPOCHS = 32  # epochs whose frames are kept for replays

_Kind = tuple[Subscription, Encoding]  # what a group of subscribers asked for


@dataclass(eq=False)
class _Subscriber:
    """A root stream subscriber: frames as (epoch, frame), or handed to ``offer``
    as they are published; None in the queue ends the stream."""

    queue: asyncio.Queue[tuple[int, Frame] | None]
    kind: _Kind
    offer: Callable[[Frame], bool] | None = None
    overflowed: bool = False


@dataclass(eq=False)
class _Group:
    """The subscribers of one kind: ``fresh`` ones get their connection's
    first frame next, the ``steady`` ones a later frame."""

    fresh: set[_Subscriber] = field(default_factory=set)
    steady: set[_Subscriber] = field(default_factory=set)


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
        self._groups: dict[_Kind, _Group] = {}
        self._count = 0  # subscribers in all the groups
        self._recent: OrderedDict[int, EpochFrames] = OrderedDict()  # for replays
        self._last: tuple[int, MappedRecord] | None = None  # the record published last

    def start(self, number: int, record: MappedRecord | None) -> None:
        """Epoch ``number`` (its ``record``) is the last published before this
        run (-1, None: none): the record before the next epoch's."""
        self._last = None if record is None else (number, record)

    def publish(self, number: int, message: EpochMessage, mapped: MappedRecord) -> None:
        """Hand epoch ``number`` (``message``, its record ``mapped``) to every
        subscriber, each group's frame built once per variant; shed those too
        far behind."""
        started = time.perf_counter()
        last = self._last
        frames = EpochFrames(message, mapped, last[1] if last and last[0] == number - 1 else None)
        self._last = number, mapped
        self._remember(number, frames)
        self._metrics.published_epoch, self._metrics.last_publish_time = number, self._clock()
        limit = self._config.subscriber_queue
        for (subscription, encoding), group in list(self._groups.items()):
            steady, fresh = list(group.steady), list(group.fresh)
            if fresh:
                group.fresh.clear()
                group.steady.update(fresh)
            for subs, first in ((fresh, True), (steady, False)):
                if not subs:
                    continue
                frame = frames.frame(subscription, encoding, first)
                for sub in subs:
                    if sub.offer is not None:
                        delivered = sub.offer(frame)
                    elif delivered := sub.queue.qsize() < limit:
                        sub.queue.put_nowait((number, frame))
                    if not delivered:
                        self._shed(sub)
        self._metrics.subscribers = self._count
        self._metrics.fanout.observe(time.perf_counter() - started)

    def _remember(self, number: int, frames: EpochFrames) -> None:
        """Keep ``frames`` for replays of epoch ``number``, the last ``REPLAY_EPOCHS``."""
        self._recent[number] = frames
        self._recent.move_to_end(number)
        while len(self._recent) > REPLAY_EPOCHS:
            self._recent.popitem(last=False)

    def _add(self, sub: _Subscriber, fresh: bool) -> None:
        group = self._groups.setdefault(sub.kind, _Group())
        (group.fresh if fresh else group.steady).add(sub)
        self._count += 1
        self._metrics.subscribers = self._count

    def _discard(self, sub: _Subscriber) -> None:
        group = self._groups.get(sub.kind)
        if group is None or (sub not in group.fresh and sub not in group.steady):
            return
        group.fresh.discard(sub)
        group.steady.discard(sub)
        if not group.fresh and not group.steady:
            del self._groups[sub.kind]
        self._count -= 1
        self._metrics.subscribers = self._count

    def _subscribers(self) -> list[_Subscriber]:
        return [sub for g in self._groups.values() for sub in (*g.fresh, *g.steady)]

    def shed(self, offer: Callable[[Frame], bool]) -> None:
        """The subscriber fed by ``offer`` stalled (the server saw it): drop it
        at once if it is subscribed yet, and count it as shed either way."""
        subs = [sub for sub in self._subscribers() if sub.offer is offer]
        for sub in subs:
            self._shed(sub)
        if not subs:
            self._metrics.shed_subscribers += 1

    def _shed(self, sub: _Subscriber) -> None:
        """Drop ``sub`` now, counted; its stream ends with SubscriberShed."""
        sub.overflowed = True
        self._discard(sub)
        self._metrics.shed_subscribers += 1
        sub.queue.put_nowait(None)  # room was reserved for this marker

    def close(self) -> None:
        """End every subscriber's stream."""
        for sub in self._subscribers():
            sub.queue.put_nowait(None)

    async def subscribe(
        self,
        since: int | None,
        offer: Callable[[Frame], bool] | None = None,
        subscription: Subscription = ALL_ASSETS,
        encoding: Encoding = Encoding.JSON,
    ) -> AsyncIterator[Frame]:
        """Frames of ``subscription`` in ``encoding`` from epoch ``since`` (or
        from the next one), without gap or duplicate; the first one is its
        connection's first frame, each next one a later frame.

        Stored epochs are yielded; live ones too, or, with ``offer``, handed to
        it as they are published, without a task switch per subscriber (it
        sends at once; False: too far behind). Ends when the engine closes.

        Raises:
            SubscriberShed: the subscriber fell too far behind and was dropped.
            UnreadableEpoch: a stored epoch to replay is of another layout.
        """
        next_epoch = self._metrics.published_epoch + 1 if since is None else since
        previous: MappedRecord | None = None  # the record of the frame yielded last
        # Replay from storage until caught up; the check and the registration
        # below run without an await in between, so no epoch falls in a gap.
        while next_epoch <= self._metrics.published_epoch:
            frames = await self._replay(next_epoch, previous)
            yield frames.frame(subscription, encoding, first=previous is None)
            previous = frames.mapped
            next_epoch += 1
        queue: asyncio.Queue[tuple[int, Frame] | None] = asyncio.Queue(
            self._config.subscriber_queue + 1
        )
        sub = _Subscriber(queue, (subscription, encoding), offer)
        self._add(sub, fresh=previous is None)
        try:
            while (item := await sub.queue.get()) is not None:
                yield item[1]
            if sub.overflowed:
                raise SubscriberShed(f"more than {self._config.subscriber_queue} epochs behind")
        finally:
            self._discard(sub)

    async def _replay(self, number: int, previous: MappedRecord | None) -> EpochFrames:
        """Epoch ``number``'s frames as stored now: those kept if it is
        unchanged; ``previous``, the record of epoch ``number - 1``, if known."""
        kept = self._recent.get(number)
        read = self._db.submit(
            stored_epoch, self._store, number, None if kept is None else kept.mapped
        )
        message, mapped = await asyncio.wrap_future(read)
        if kept is None or kept.message != message:  # e.g. a cosignature came since
            kept = EpochFrames(message, mapped, previous if kept is None else kept.previous)
        if kept.previous is None:
            kept.previous = previous
        self._remember(number, kept)
        return kept
