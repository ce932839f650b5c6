"""The coordinator's side of the control messages (prover/shards/control.py):
every shard asked at once, and one epoch closed across them (docs/SCALING.md,
"Consistent cuts").

``ShardLinks.close(n, cut, ...)`` is an epoch's two steps: ``Stage(n, cut)``
to every shard; the trees that must grow and how high (``grown_height`` of
the fullest part of each, as reported); ``Close(n, heights)`` to every
shard; each asset's parts combined by ``TopTree`` into its root.

Invariant: a shard that does not answer is in ``down`` (with the time it
first did not) until it answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

import nats.errors
from nats.aio.client import Client

from prover.errors import ProverError
from prover.ledger import AssetRoot
from prover.shards import control
from prover.shards.control import Close, ClosedPart, ShardStatus, Stage, Staged, Status
from prover.shards.intake import NotYet
from prover.sizing import grown_height
from prover.top import TopTree

__all__ = ["NOT_YET_WAIT", "ShardLinks"]

NOT_YET_WAIT = 5.0  # seconds a shard may take to read as far as a cut


class ShardLinks:
    """Requests to the ``parts`` shards on ``<prefix>.shard.<i>.control``."""

    def __init__(
        self,
        nc: Client,
        prefix: str,
        parts: int,
        bits: int,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._nc, self._prefix, self.parts, self.bits = nc, prefix, parts, bits
        self._timeout, self._clock = timeout, clock
        self.down: dict[int, float] = {}  # shards not answering: since when

    async def close(
        self,
        number: int,
        cut: int,
        assets: Mapping[str, int],
        heights_now: Callable[[str], int],
    ) -> tuple[list[AssetRoot], dict[str, TopTree]]:
        """Close epoch ``number`` at ``cut`` in every shard (module docstring);
        ``assets``: every asset with the height a shard adds it at;
        ``heights_now``: each tree's height before this epoch. Returns the
        roots (in asset order) and each asset's top levels.

        Raises:
            NotYet: a shard did not read as far as ``cut`` in time.
            ProverError: a shard refused, failed or did not answer.
        """
        staged = [
            control.expect(r, Staged)
            for r in await self.ask_all(lambda part: Stage(number, cut, dict(assets)))
        ]
        wanted: dict[str, int] = {}
        for reply in staged:
            for asset, largest in reply.growth.items():
                wanted[asset] = max(wanted.get(asset, 0), largest)
        heights = {
            asset: grown_height(heights_now(asset), largest, self.bits)
            for asset, largest in wanted.items()
        }
        parts = [
            control.expect(r, ClosedPart)
            for r in await self.ask_all(lambda part: Close(number, heights))
        ]
        by_asset = [{p.asset: p for p in closed.roots} for closed in parts]
        roots, tops = [], {}
        for asset in sorted(assets):
            mine = [found[asset] for found in by_asset]
            if len({p.height for p in mine}) != 1:
                raise ProverError(f"the shards' parts of {asset} are of different heights")
            top = tops[asset] = TopTree.combine([p.record for p in mine])
            roots.append(AssetRoot(asset, mine[0].height, top.root, top.total))
        return roots, tops

    async def pending_cut(self, number: int) -> int | None:
        """The cut at which shards staged or closed epoch ``number`` already
        (a coordinator got that far without appending it), or None.

        Raises:
            ProverError: shards that disagree, or stand past ``number``.
        """
        statuses = [control.expect(r, ShardStatus) for r in await self.ask_all(lambda p: Status())]
        if ahead := [s.closed for s in statuses if s.closed > number]:
            raise ProverError(f"shards closed epoch {max(ahead)}, past the log's next, {number}")
        cuts = {s.staged_cut for s in statuses if s.staged == number}
        cuts |= {s.closed_cut for s in statuses if s.closed == number}
        if len(cuts) > 1:
            raise ProverError(f"shards staged epoch {number} at different cuts: {sorted(cuts)}")
        return cuts.pop() if cuts else None

    async def ask_all(self, request: Callable[[int], control.Request]) -> Sequence[control.Reply]:
        """Every shard's reply to its request, asked at once; a ``not-yet``
        asked again until ``NOT_YET_WAIT``."""
        deadline = time.monotonic() + NOT_YET_WAIT

        async def ask(part: int) -> control.Reply:
            while True:
                reply = await self.ask(part, request(part))
                if not (isinstance(reply, control.Refused) and reply.code == "not-yet"):
                    return reply
                if time.monotonic() > deadline:
                    raise NotYet(f"shard {part}: {reply.message}")
                await asyncio.sleep(0.02)

        return await asyncio.gather(*(ask(p) for p in range(self.parts)))

    async def ask(self, part: int, request: control.Request) -> control.Reply:
        """Shard ``part``'s reply to ``request``.

        Raises:
            ProverError: the shard does not answer within the timeout.
        """
        subject = control.control_subject(self._prefix, part)
        try:
            msg = await self._nc.request(subject, control.encode(request), self._timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            self.down.setdefault(part, self._clock())
            raise ProverError(f"shard {part} does not answer ({type(exc).__name__})") from None
        self.down.pop(part, None)
        return control.decode_reply(msg.data)
