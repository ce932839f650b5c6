"""The coordinator's side of a salt rotation across shards (docs/SCALING.md,
"Salt rotation across shards"; prover/shards/nextperiod.py is the
shard's): which period the trees must be of, when a new one is due, and
each epoch's ``Stage`` and ``Close`` with what a rotation asks of them.

The target is the store's latest salt period. A new one is started
(``start_if_due``) once the target is ``salt_period`` seconds old, or
early, the single process's rule (prover/rotation.py): once some tree
would run out of room within ``TRIGGER`` times the time a rotation takes,
at the rate its slots are taken. A tree grows as a whole once any part has
no slot left, so its room is its least part's (each ``Staged.room``),
times the parts, as ``Ledger.room`` counts a tree in parts; the rate is
smoothed over ``RATE_SECONDS`` from each close's rooms and times. The time
a rotation takes is, as the single process counts it, its build's plus
``SWITCH_EPOCHS`` epochs: the build's, as the shards reported the last
one, from the close that began it to the ``Stage`` every shard answered
ready to (whose close switched); before any, ``BUILD_SECONDS`` per slot
handed out in the fullest shard. The target's trees leave each asset room for
``ROOM_LEADS`` rotation times at that rate (``rooms``), as the single
process's next trees do, at least ``ROOM_SHARE`` of its holders.

Every ``Stage`` names the target;
a shard on an earlier period answers how far its build of the target's
trees is (``Staged.next``). From the replies, ``decide`` picks the close:

- a switch, if the switch reached some shards already and not others (a
  ``Status`` after a failure says so): the same switch again, at the heights
  of a shard that made it;
- none, if no shard is behind the target, or not every shard (some
  staged the epoch in a try that failed, before the target moved: the
  next epoch's replies agree);
- a begin for every shard, if some shard has no build of the target, or
  the builds began after different epochs, at heights with the target's
  room (``begin_heights``: ``Ledger.build``'s ``room`` and ``room_share``);
- a switch, if every shard is ready: at the next trees' heights, grown as
  any close grows them;
- else a plain close, the builds going on.

Invariants:

- ``decide`` is a function of the shards' ``Staged`` replies, the trees'
  heights, what ``Status`` said and the target's room, fixed when the
  target was started: a ``Close`` sent again after a failure is the one
  sent before, unless a shard lost its state since, which the replies then
  show. Rooms and rates are taken in once an epoch's close succeeded.
- A new period is started only while every shard is on the target (no
  rotation under way), and under the lease (``start`` renews it first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from prover.errors import ProverError
from prover.growth import Growth, early, next_room, track
from prover.ledger import AssetRoot
from prover.rotation import START_ROOM_SHARE, SWITCH_EPOCHS
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

__all__ = ["BUILD_SECONDS", "ROOM_SHARE", "Rotations", "begin_heights"]

log = logging.getLogger("solvency.coordinator")
ROOM_SHARE = START_ROOM_SHARE  # the next trees leave room for at least this share of their holders
# s a shard's thread takes to build its part per holding, before a rotation
# was timed: 1.0 s for 99,620 holdings (docs/SCALING.md, "Salt rotation across shards")
BUILD_SECONDS = 10e-6
KEPT_ROOMS = 16  # periods whose room ``rooms`` keeps


@dataclass(frozen=True, slots=True)
class _Forced:
    """A switch to send again: it reached some shards only."""

    epoch: int
    period: int
    heights: dict[str, int]


def begin_heights(
    nexts: Sequence[NextState],
    assets: Sequence[str],
    bits: int,
    room: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Each asset's height in the next period: ``height_for_parts`` of its
    fullest part, with ``room[asset]`` free slots in the whole tree and at
    least ``ROOM_SHARE`` of its holders (``Ledger.build``'s ``room`` and
    ``room_share``)."""
    wanted = room or {}
    total: dict[str, int] = dict.fromkeys(assets, 0)
    largest: dict[str, int] = dict.fromkeys(assets, 0)
    for upcoming in nexts:
        for asset, count in upcoming.holders.items():
            total[asset] = total.get(asset, 0) + count
            largest[asset] = max(largest.get(asset, 0), count)
    return {
        asset: height_for_parts(
            largest[asset], bits, max(wanted.get(asset, 0), math.ceil(total[asset] * ROOM_SHARE))
        )
        for asset in sorted(total)
    }


class Rotations:
    """The salt periods of a sharded prover's trees (module docstring):
    ``salt_period`` seconds each at most; ``start`` begins the next one in
    the store under the lease, given the time in milliseconds; epochs close
    every ``epoch_interval`` seconds while updates come."""

    def __init__(
        self,
        salt_period: float,
        bits: int,
        start: Callable[[int], Awaitable[PeriodRow]],
        epoch_interval: float = 1.0,
    ) -> None:
        self.salt_period, self.bits, self._start = salt_period, bits, start
        self.epoch_interval = epoch_interval
        self.target: PeriodRow | None = None  # the store's latest (None: no rotation)
        self.rotating = True  # some shard is behind the target (not known before a Stage)
        self.switches = 0  # closes that switched to a new period
        self.early_rotations = 0  # periods started because a tree was filling up
        self.grown_in_close = 0  # trees that grew a level inside a close all the same
        # per period this coordinator started (the last ``KEPT_ROOMS``): each
        # asset's room its trees leave (``begin_heights``)
        self.rooms: dict[int, dict[str, int]] = {}
        self._forced: _Forced | None = None
        self._growth: dict[str, Growth] = {}
        self._heights: dict[str, int] = {}  # of the trees whose room ``_growth`` has
        self._fresh = False  # switched: the rooms known are the old trees', the next a baseline
        self._slots = 0  # slots handed out in the fullest shard (every asset), last close
        self._begun_at: float | None = None  # the close that began the builds under way
        self._build_seconds: float | None = None  # from begin to every shard ready, the last one

    @property
    def lead(self) -> float:
        """How long a rotation takes, in seconds: its build's (the last
        one's as the shards reported it; before any, an estimate from the
        fullest shard's slots handed out), plus ``SWITCH_EPOCHS`` epochs."""
        build = self._build_seconds
        if build is None:
            build = BUILD_SECONDS * self._slots
        return build + SWITCH_EPOCHS * self.epoch_interval

    async def start_if_due(self, now: float) -> None:
        """Start the next period if no rotation is under way and the target
        is ``salt_period`` old at ``now``, or early, if a tree fills within
        ``TRIGGER`` rotation times; log why."""
        target = self.target
        if target is None or self.rotating:
            return
        lead = self.lead
        # none early right after a switch: the rooms known were the old trees'
        why = None if self._fresh else early(self._growth, lead)
        is_early = why is not None
        if now - target.started_ms / 1000 >= self.salt_period:
            why, is_early = f"salt period {target.number} is over", False
        elif why is None:
            return
        room = next_room(self._growth, self._heights, lead)
        self.target = await self._start(int(now * 1000))
        self.rotating = True
        if is_early:
            self.early_rotations += 1
        self.rooms[self.target.number] = room
        for number in sorted(self.rooms)[:-KEPT_ROOMS]:
            del self.rooms[number]
        log.info(
            "%s: the shards build salt period %d, its trees with room for %s new holders",
            why,
            self.target.number,
            ", ".join(f"{n} {asset}" for asset, n in room.items()) or "a share of their",
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
        now: float,
    ) -> tuple[list[AssetRoot], dict[str, TopTree]]:
        """Close epoch ``number`` at ``cut`` in every shard: ``Stage`` to each;
        the ``Close`` that ``decide`` picks (the trees that must grow, to
        ``grown_height`` of their fullest part, and a rotation's begin or
        switch); each asset's parts combined by ``TopTree``; then the rooms
        the shards reported taken in, as of ``now`` (the epoch's time).
        Returns the roots in asset order and each asset's top levels.

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
        if request.begin is not None:
            self._begun_at = now
        if request.switch:
            self.switches += 1
            self._forced = None
            took = ""
            if self._begun_at is not None:
                self._build_seconds = max(0.0, now - self._begun_at)
                took = f" ({self._build_seconds:.1f} s after their build began)"
            self._begun_at = None
            log.info(
                "epoch %d: the shards switched to salt period %d%s", number, request.switch, took
            )
        self._watch(number, staged, request, heights_now, now)
        by_asset = [{p.asset: p for p in closed.roots} for closed in parts]
        roots, tops = [], {}
        for asset in sorted(assets):
            mine = [found[asset] for found in by_asset]
            if len({p.height for p in mine}) != 1:
                raise ProverError(f"the shards' parts of {asset} are of different heights")
            top = tops[asset] = TopTree.combine([p.record for p in mine])
            roots.append(AssetRoot(asset, mine[0].height, top.root, top.total))
        return roots, tops

    def _watch(
        self,
        number: int,
        staged: Sequence[Staged],
        request: Close,
        heights_now: Callable[[str], int],
        now: float,
    ) -> None:
        """Take in the rooms the shards reported for epoch ``number``, closed
        by ``request``: each asset's least part's (of the trees before any
        growth of the close), and the rate its slots are taken at."""
        if not request.switch and request.heights:
            self.grown_in_close += len(request.heights)
            log.warning(
                "epoch %d: the tree of %s grew a level in the close: a part's room ran out"
                " before a new salt period was ready",
                number,
                ", ".join(sorted(request.heights)),
            )
        if request.switch:  # the rooms are the old trees': the next ones a new baseline
            self._fresh = True
            return
        parts = len(staged)
        rooms = {
            asset: min(s.room[asset] for s in staged) * parts
            for asset in staged[0].room
            if all(asset in s.room for s in staged)  # a reply saved before rooms: none
        }
        self._heights = {asset: heights_now(asset) for asset in rooms}
        self._slots = max(
            sum((1 << (self._heights[a] - self.bits)) - s.room[a] for a in rooms) for s in staged
        )
        track(self._growth, rooms, now, self._fresh)
        if rooms:
            self._fresh = False

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
            room = self.rooms.get(target)
            begin = Begin(target, begin_heights(behind, assets, self.bits, room))
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
