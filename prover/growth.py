"""How fast each tree fills up, and what that asks of a salt rotation: the
rule the single process (prover/rotation.py) and the sharded coordinator
(prover/shards/rotation.py) share. Pure.

Each asset's ``Growth`` is its room (free slots) as last reported and the
rate its slots are taken at, smoothed over ``RATE_SECONDS``. A rotation
is due early once some tree fills within ``TRIGGER`` rotation times
(``lead``, seconds), and the next period's trees leave room for
``ROOM_LEADS`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prover.sizing import MIN_HEIGHT

__all__ = ["RATE_SECONDS", "ROOM_LEADS", "TRIGGER", "Growth", "early", "next_room", "track"]

TRIGGER = 3.0  # an early rotation starts once a tree fills within this many rotation times
ROOM_LEADS = 8.0  # the next trees leave room for this many rotation times of growth
RATE_SECONDS = 5.0  # time constant of the smoothed rate at which an asset's slots are taken


@dataclass
class Growth:
    """One asset's room as last reported, and the rate its slots are taken at
    (per second, smoothed over ``RATE_SECONDS``)."""

    room: int
    at: float
    rate: float = 0.0


def track(growth: dict[str, Growth], rooms: Mapping[str, int], now: float, fresh: bool) -> None:
    """Take in each asset's ``rooms`` reported at ``now``: a new baseline
    for new trees (``fresh``, a new asset, or more room than before), else
    the rate moved toward what the room lost since the last report."""
    for asset, room in rooms.items():
        g = growth.get(asset)
        if g is None or fresh or room > g.room:
            growth[asset] = Growth(room, now, 0.0 if g is None else g.rate)
        elif now > g.at:
            sample = (g.room - room) / (now - g.at)
            weight = 1 - math.exp((g.at - now) / RATE_SECONDS)
            g.rate += weight * (sample - g.rate)
            g.room, g.at = room, now


def early(growth: Mapping[str, Growth], lead: float) -> str | None:
    """Why a rotation taking ``lead`` seconds is due early (the tree that
    fills soonest within ``TRIGGER`` of them), or None."""
    filling = sorted(
        (g.room / g.rate, asset)
        for asset, g in growth.items()
        if g.rate > 0 and g.room < g.rate * TRIGGER * lead
    )
    if not filling:
        return None
    seconds, asset = filling[0]
    g = growth[asset]
    return (
        f"early: {asset}'s tree fills in ~{seconds:.1f} s ({g.room} free slots,"
        f" ~{g.rate:.0f} taken a second), a new salt period takes ~{lead:.1f} s"
    )


def next_room(
    growth: Mapping[str, Growth], heights: Mapping[str, int], lead: float
) -> dict[str, int]:
    """Each asset's room in the next period: its rate for ``ROOM_LEADS``
    rotation times of ``lead``, at most the slots taken now (trees of
    ``heights``; at least a tree of ``MIN_HEIGHT``'s)."""
    room = {}
    for asset, g in sorted(growth.items()):
        taken = (1 << heights.get(asset, MIN_HEIGHT)) - g.room
        room[asset] = math.ceil(min(g.rate * ROOM_LEADS * lead, max(taken, 1 << MIN_HEIGHT)))
    return room
