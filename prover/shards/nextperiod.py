"""A shard's side of a salt rotation (docs/SCALING.md, "Salt rotation
across shards"): its part of the next period's trees, built and fed in a
thread of its own while the shard goes on closing epochs with the current
ones, then switched to inside one close.

``Close(n, begin=Begin(p, heights))`` begins a build: right after closing
epoch ``n`` the shard takes its holders (``holdings``: each asset's in the
order of their slots in the current trees, arrays only, so the close is
not held up) and a thread builds from them a ``Ledger`` of period ``p``
(read from the store by ``periods``) at the whole ``heights`` given. Every
epoch staged meanwhile is handed over (``NextTrees.feed``); the thread
stages the epochs into the new trees in order once they are built, and
hashes ahead (they are ``ahead``: a flush keeps nothing to undo and grows
nothing). Once nothing handed over waits, the next epoch is staged into
them at once and they are ``ready``: ``Close(m, switch=p)`` closes epoch
``m`` with them.

Invariants:

- The next trees hold the shard's holders as of the close of epoch
  ``since``, per asset in the order of their slots then, and every update
  staged since, in staging order: what a single process's ``Ledger`` of
  period ``p`` holds built from every part's holders in that order, with
  the same heights, and fed the same updates (so roots and proofs after
  the switch are byte-identical).
- The thread touches the next trees only while it is ``busy``; the shard
  stages into them, reads them or switches to them only when it is not
  and nothing waits for it, under the same condition's lock.
- A build that fails, or a shard restarted, leaves no build of the period
  (``since`` -1): the coordinator begins one again in every shard.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from prover.book import NO_SLOT
from prover.errors import ProverError
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.shards.control import Begin, Close, NextState
from prover.sizing import grown_height
from prover.users import UserIndex

__all__ = ["SETTLE_WAIT", "BadRotation", "Holdings", "NextPeriod", "NextTrees", "holders"]

log = logging.getLogger("solvency.prover")
SETTLE_WAIT = 0.5  # s a Stage waits for the thread to finish hashing ahead
STOP_EVERY = 10_000  # holdings handed to a build between looks at whether it was stopped

Row = tuple[str, str, int]
Periods = Callable[[int], SaltPeriod]  # a salt period by number, from the store


class BadRotation(ProverError):
    """A rotation request the shard cannot follow; nothing changed."""


class _Stopped(Exception):
    """The build was given up."""


@dataclass(frozen=True)
class Holdings:
    """A ledger's holders, each asset's in the order of their slots, as
    user indices and amounts; ``ids`` the ledger's users (only ever
    appended to, so the first indices stay valid while the ledger goes on)."""

    ids: UserIndex
    assets: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]]

    @classmethod
    def of(cls, ledger: Ledger) -> Holdings:
        """``ledger``'s holders after its last close (nothing staged since)."""
        users = len(ledger.users)
        assets = {}
        for asset, book in sorted(ledger.books.items()):
            held = np.flatnonzero(book.slots[:users] != NO_SLOT)
            slots = book.slots[held]
            order = np.argsort(slots, kind="stable")
            assets[asset] = (held[order], book.tree.amounts()[slots[order]])
        return cls(ledger.users, assets)

    def rows(self, stopped: Callable[[], bool] = lambda: False) -> Iterator[Row]:
        """(user, asset, amount), asset by asset, each in slot order."""
        ids, count = self.ids, 0
        for asset, (users, amounts) in self.assets.items():
            for user, amount in zip(ids.select(users), amounts.tolist(), strict=True):
                yield user, asset, amount
                count += 1
                if count % STOP_EVERY == 0 and stopped():
                    raise _Stopped


def holders(ledger: Ledger) -> dict[str, int]:
    """Per asset, the holders ``ledger`` has once what is staged is applied
    (those waiting for a slot included)."""
    users = len(ledger.users)
    return {
        asset: int(np.count_nonzero(book.staged[:users] != NO_SLOT))
        for asset, book in sorted(ledger.books.items())
    }


class NextTrees:
    """The next period's part of every tree, built and fed by a thread
    (module docstring)."""

    def __init__(
        self,
        number: int,
        since: int,
        heights: Mapping[str, int],
        holdings: Holdings,
        template: Ledger,
        periods: Periods,
    ) -> None:
        """Begin building period ``number``'s trees at ``heights`` from
        ``holdings`` as of epoch ``since``, split and retained as ``template``."""
        self.number, self.since, self.heights = number, since, dict(heights)
        self._cond = threading.Condition()
        self._waiting: deque[tuple[dict[str, int], list[Row]]] = deque()  # handed over
        self._ledger: Ledger | None = None
        self._busy = True  # the thread builds first
        self._flush = False  # staged at once, not hashed ahead yet
        self._stopped = False
        self.error: str | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(holdings, template, periods),
            name=f"shard-{template.part}-period-{number}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, holdings: Holdings, template: Ledger, periods: Periods) -> None:
        try:
            period = periods(self.number)
            ledger = Ledger.build(
                period,
                sorted(self.heights),
                holdings.rows(lambda: self._stopped),
                router=template.router,
                part=template.part,
                heights=self.heights,
            )
            ledger.retain, ledger.retain_bytes = template.retain, template.retain_bytes
            ledger.ahead = True
            log.info(
                "shard %s: salt period %d's trees built from %d holdings as of epoch %d",
                template.part,
                self.number,
                sum(len(u) for u, _ in holdings.assets.values()),
                self.since,
            )
            with self._cond:
                self._ledger = ledger
            while True:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                    while not (self._waiting or self._flush or self._stopped):
                        self._cond.wait()
                    if self._stopped:
                        return
                    waiting, self._flush, self._busy = list(self._waiting), False, True
                    self._waiting.clear()
                for assets, rows in waiting:
                    for asset, height in sorted(assets.items()):
                        ledger.add_asset(asset, height)
                    ledger.stage_rows(rows)
                ledger.flush()
        except _Stopped:
            pass
        except Exception as exc:
            log.exception("shard %s: salt period %d's trees failed", template.part, self.number)
            with self._cond:
                self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def feed(
        self, assets: Mapping[str, int], rows: Sequence[Row]
    ) -> tuple[dict[str, int], dict[str, int]] | None:
        """Hand over an epoch staged in the current trees: ``assets`` added
        at those heights, then ``rows``. Staged at once if the thread is idle
        (waiting up to ``SETTLE_WAIT`` for it to finish hashing ahead): then
        the next trees are ready, and this returns their whole heights and
        ``growth``; else None, and the thread stages them later."""
        with self._cond:
            if self.error is None and self._ledger is not None and not self._waiting:
                self._cond.wait_for(lambda: not (self._busy or self._flush), SETTLE_WAIT)
            ledger = self._ledger
            if self._idle() is None or ledger is None:
                self._waiting.append((dict(assets), list(rows)))
                self._cond.notify_all()
                return None
            for asset, height in sorted(assets.items()):
                ledger.add_asset(asset, height)
            ledger.stage_rows(rows)
            heights = {a: ledger.full_height(a) for a in sorted(ledger.books)}
            return heights, ledger.growth()

    def _idle(self) -> Ledger | None:
        """The trees, if built and the thread has nothing to do (under the lock)."""
        if self.error is not None or self._busy or self._flush or self._waiting:
            return None
        return self._ledger

    def settle(self) -> None:
        """Let the thread hash ahead what was staged at once."""
        with self._cond:
            self._flush = True
            self._cond.notify_all()

    def take(self) -> Ledger | None:
        """The ready trees, the thread stopped; None if they are not ready."""
        with self._cond:
            ledger = self._idle()
            if ledger is not None:
                self._stopped = True
                self._cond.notify_all()
        return ledger

    def stop(self) -> None:
        """Give the build up (the thread ends at its next look)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


class NextPeriod:
    """A shard core's rotation: at most one ``NextTrees`` at a time, driven
    by the coordinator's Stage and Close (module docstring). ``periods``:
    where a salt period is read by number (None: the shard has no store and
    cannot rotate: its builds fail)."""

    def __init__(self, periods: Periods | None = None) -> None:
        self.periods = periods
        self.trees: NextTrees | None = None
        # (period, epoch its trees were built after or -1: in the close, epoch switched at)
        self.switches: list[tuple[int, int, int]] = []

    def staged(
        self, target: int, ledger: Ledger, assets: Mapping[str, int], rows: Sequence[Row]
    ) -> NextState | None:
        """After ``ledger`` (the current trees) staged an epoch (``assets``
        added, then ``rows``): where the rotation to ``target`` stands
        (None: no rotation, ``target`` 0 or the trees' own period).

        Raises:
            BadRotation: ``target`` is a period before the trees'.
        """
        current = ledger.period.number
        if not target or target == current:
            self.stop()
            return None
        if target < current:
            raise BadRotation(f"the trees are of salt period {current}, after {target}")
        count = holders(ledger)
        trees = self.trees
        if trees is None or trees.number != target or trees.error is not None:
            return NextState(target, -1, False, count, {}, {})
        fed = trees.feed(assets, rows)
        if fed is None:
            return NextState(target, trees.since, False, count, {}, {})
        return NextState(target, trees.since, True, count, *fed)

    def check(self, request: Close, ledger: Ledger) -> None:
        """Refuse a ``Close`` whose rotation does not fit ``ledger`` (the
        current trees, the epoch staged), before anything changes.

        Raises:
            BadRotation: a begin or switch to a period not after the trees',
                or whose heights leave out an asset or fit not its holders.
        """
        if request.switch and request.begin:
            raise BadRotation("a close both switches and begins a salt period")
        current, asked = ledger.period.number, []
        if request.switch:
            asked.append((request.switch, request.heights))
        if request.begin is not None:
            asked.append((request.begin.period, request.begin.heights))
        for number, heights in asked:
            if number <= current:
                raise BadRotation(f"salt period {number} is not after the trees', {current}")
            bits = ledger.router.bits
            for asset, count in holders(ledger).items():
                if asset not in heights:
                    raise BadRotation(f"no height of {asset} for salt period {number}")
                if count > 1 << (heights[asset] - bits):
                    raise BadRotation(f"{asset}: {count} holders past height {heights[asset]}")

    def switched(
        self, number: int, epoch: int, ledger: Ledger, heights: Mapping[str, int]
    ) -> Ledger:
        """The trees of salt period ``number`` to close the staged ``epoch``
        with: the ready ones; else (a shard restarted since it was ready,
        or the switch sent again, docs/SCALING.md) built now from
        ``ledger``'s holders after the epoch, ``ledger`` closed on the way."""
        trees, self.trees = self.trees, None
        if trees is not None and trees.number == number:
            ready = trees.take()
            if ready is not None:
                self.switches.append((number, trees.since, epoch))
                return ready
        if trees is not None:
            trees.stop()
        if self.periods is None:
            raise ProverError(f"no store to read salt period {number} from")
        log.warning(
            "shard %s: no ready trees of salt period %d at its switch: building them in the close",
            ledger.part,
            number,
        )
        bits = ledger.router.bits
        own = {a: grown_height(ledger.full_height(a), n, bits) for a, n in ledger.growth().items()}
        ledger.close_epoch(own)  # these trees are dropped: their growth is their own
        built = Ledger.build(
            self.periods(number),
            sorted(heights),
            Holdings.of(ledger).rows(),
            router=ledger.router,
            part=ledger.part,
            heights=heights,
        )
        built.retain, built.retain_bytes = ledger.retain, ledger.retain_bytes
        self.switches.append((number, -1, epoch))
        return built

    def closed(self, begin: Begin | None, epoch: int, ledger: Ledger) -> None:
        """After ``ledger`` closed ``epoch`` (the trees of any switch): begin
        the build ``begin`` asks for, dropping any other; else let the
        build under way hash ahead."""
        if begin is None:
            if self.trees is not None:
                self.trees.settle()
            return
        self.stop()
        if self.periods is None:
            log.error("shard %s: no store to read salt period %d from", ledger.part, begin.period)
            return
        holdings = Holdings.of(ledger)
        self.trees = NextTrees(begin.period, epoch, begin.heights, holdings, ledger, self.periods)
        log.info(
            "shard %s: building salt period %d's trees after epoch %d",
            ledger.part,
            begin.period,
            epoch,
        )

    def stop(self) -> None:
        """Give up any build."""
        trees, self.trees = self.trees, None
        if trees is not None:
            trees.stop()
