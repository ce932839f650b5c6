"""The coordinator's side of a salt rotation across shards (docs/SCALING.md,
"Salt rotation across shards"; prover/shards/nextperiod.py is the
shard's): which period the trees must be of, when a new one is due, and
each epoch's ``Stage`` and ``Close`` with what a rotation asks of them.

The target is the store's latest salt period. Every ``Stage`` names it;
a shard on an earlier period answers how far its build of the target's
trees is (``Staged.next``). From the replies, ``decide`` picks the close:

- a switch, if the switch reached some shards already and not others (a
  ``Status`` after a failure says so): the same switch again, at the heights
  of a shard that made it;
- none, if no shard is behind the target, or not every shard (some
  staged the epoch in a try that failed, before the target moved: the
  next epoch's replies agree);
- a begin for every shard, if some shard has no build of the target, or
  the builds began after different epochs, at heights with room for
  ``ROOM_SHARE`` of each tree's holders (``Ledger.build``'s ``room_share``);
- a switch, if every shard is ready: at the next trees' heights, grown as
  any close grows them;
- else a plain close, the builds going on.

Invariants:

- ``decide`` is a function of the shards' ``Staged`` replies, the trees'
  heights and what ``Status`` said: a ``Close`` sent again after a failure
  is the one sent before, unless a shard lost its state since, which the
  replies then show.
- A new period is started only while every shard is on the target (no
  rotation under way), and under the lease (``start`` renews it first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from prover.errors import ProverError
from prover.ledger import AssetRoot
from prover.rotation import START_ROOM_SHARE
from prover.shards import control
from prover.shards.control import (
    Begin,
    Close,
    ClosedPart,
    NextState,
    ShardStatus,
    Stage,
    Staged,
    Status,
)
from prover.shards.links import ShardLinks
from prover.sizing import grown_height, height_for_parts
from prover.top import TopTree
from storage.rows import PeriodRow

__all__ = ["ROOM_SHARE", "Rotations", "begin_heights"]

log = logging.getLogger("solvency.coordinator")
ROOM_SHARE = START_ROOM_SHARE  # the next trees leave room for this share of their holders


@dataclass(frozen=True, slots=True)
class _Forced:
    """A switch to send again: it reached some shards only."""

    epoch: int
    period: int
    heights: dict[str, int]


def begin_heights(nexts: Sequence[NextState], assets: Sequence[str], bits: int) -> dict[str, int]:
    """Each asset's height in the next period: ``height_for_parts`` of its
    fullest part, with room for ``ROOM_SHARE`` of its holders."""
    total: dict[str, int] = dict.fromkeys(assets, 0)
    largest: dict[str, int] = dict.fromkeys(assets, 0)
    for upcoming in nexts:
        for asset, count in upcoming.holders.items():
            total[asset] = total.get(asset, 0) + count
            largest[asset] = max(largest.get(asset, 0), count)
    return {
        asset: height_for_parts(largest[asset], bits, math.ceil(total[asset] * ROOM_SHARE))
        for asset in sorted(total)
    }


class Rotations:
    """The salt periods of a sharded prover's trees (module docstring):
    ``salt_period`` seconds each; ``start`` begins the next one in the
    store under the lease, given the time in milliseconds."""

    def __init__(
        self,
        salt_period: float,
        bits: int,
        start: Callable[[int], Awaitable[PeriodRow]],
    ) -> None:
        self.salt_period, self.bits, self._start = salt_period, bits, start
        self.target: PeriodRow | None = None  # the store's latest (None: no rotation)
        self.rotating = True  # some shard is behind the target (not known before a Stage)
        self.switches = 0  # closes that switched to a new period
        self._forced: _Forced | None = None

    async def start_if_due(self, now: float) -> None:
        """Start the next period if no rotation is under way and the target
        is ``salt_period`` old at ``now``."""
        target = self.target
        if target is None or self.rotating or now - target.started_ms / 1000 < self.salt_period:
            return
        self.target = await self._start(int(now * 1000))
        self.rotating = True
        log.info(
            "salt period %d is over: the shards build salt period %d",
            target.number,
            self.target.number,
        )

    async def pending_cut(self, links: ShardLinks, number: int) -> int | None:
        """``links.pending_cut(number)``; and whether a switch at ``number``
        reached some shards only, to be sent again."""
        cut = await links.pending_cut(number)
        statuses = [control.expect(r, ShardStatus) for r in await links.ask_all(lambda p: Status())]
        ahead = [s for s in statuses if s.closed == number and s.switched]
        self._forced = None
        if ahead:
            self._forced = _Forced(number, ahead[0].switched, dict(ahead[0].heights))
            log.warning(
                "epoch %d: switched to salt period %d in some shards: switching the others",
                number,
                ahead[0].switched,
            )
        return cut

    async def close(
        self,
        links: ShardLinks,
        number: int,
        cut: int,
        assets: Mapping[str, int],
        heights_now: Callable[[str], int],
    ) -> tuple[list[AssetRoot], dict[str, TopTree]]:
        """Close epoch ``number`` at ``cut`` in every shard: ``Stage`` to each;
        the ``Close`` that ``decide`` picks (the trees that must grow, to
        ``grown_height`` of their fullest part, and a rotation's begin or
        switch); each asset's parts combined by ``TopTree``. Returns the roots
        in asset order and each asset's top levels.

        Raises:
            NotYet: a shard did not read as far as ``cut`` in time.
            ProverError: a shard refused, failed or did not answer, or the
                shards stand on different periods.
        """
        target = 0 if self.target is None else self.target.number
        stage = Stage(number, cut, dict(assets), target)
        staged = [control.expect(r, Staged) for r in await links.ask_all(lambda part: stage)]
        request = self.decide(number, staged, sorted(assets), heights_now)
        parts = [control.expect(r, ClosedPart) for r in await links.ask_all(lambda p: request)]
        self.rotating = not request.switch and any(s.next is not None for s in staged)
        if request.switch:
            self.switches += 1
            self._forced = None
            log.info("epoch %d: the shards switched to salt period %d", number, request.switch)
        by_asset = [{p.asset: p for p in closed.roots} for closed in parts]
        roots, tops = [], {}
        for asset in sorted(assets):
            mine = [found[asset] for found in by_asset]
            if len({p.height for p in mine}) != 1:
                raise ProverError(f"the shards' parts of {asset} are of different heights")
            top = tops[asset] = TopTree.combine([p.record for p in mine])
            roots.append(AssetRoot(asset, mine[0].height, top.root, top.total))
        return roots, tops

    def decide(
        self,
        number: int,
        staged: Sequence[Staged],
        assets: Sequence[str],
        heights_now: Callable[[str], int],
    ) -> Close:
        """The ``Close`` of epoch ``number`` for the shards' ``staged``
        replies (module docstring).

        Raises:
            ProverError: the shards' next trees are of different heights.
        """
        forced = self._forced
        if forced is not None and forced.epoch == number:
            return Close(number, forced.heights, switch=forced.period)
        wanted: dict[str, int] = {}
        for reply in staged:
            for asset, largest in reply.growth.items():
                wanted[asset] = max(wanted.get(asset, 0), largest)
        heights = {a: grown_height(heights_now(a), n, self.bits) for a, n in wanted.items()}
        nexts = [s.next for s in staged]
        behind = [n for n in nexts if n is not None]
        if not behind or self.target is None:
            return Close(number, heights)
        if len(behind) < len(nexts):  # some staged it, in a failed try, before the target moved
            return Close(number, heights)
        target = self.target.number
        since = {n.since for n in behind}
        if any(n.period != target for n in behind) or -1 in since or len(since) > 1:
            begin = Begin(target, begin_heights(behind, assets, self.bits))
            log.info("epoch %d: the shards begin salt period %d's trees after it", number, target)
            return Close(number, heights, begin=begin)
        if not all(n.ready for n in behind):
            return Close(number, heights)
        if any(n.heights != behind[0].heights for n in behind):
            raise ProverError(f"epoch {number}: the shards' next trees are of different heights")
        grown: dict[str, int] = {}
        for upcoming in behind:
            for asset, largest in upcoming.growth.items():
                grown[asset] = max(grown.get(asset, 0), largest)
        switch = {
            asset: grown_height(height, grown[asset], self.bits) if asset in grown else height
            for asset, height in behind[0].heights.items()
        }
        return Close(number, switch, switch=target)
