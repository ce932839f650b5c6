"""The coordinator's side of the control messages (prover/shards/control.py):
one shard asked, or every shard at once, and where the shards stand after a
coordinator before stopped mid-epoch (docs/SCALING.md, "Consistent cuts").
An epoch's ``Stage`` and ``Close`` across them: prover/shards/rotation.py.

Invariant: a shard that does not answer is in ``down`` (with the time it
first did not) until it answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import nats.errors
from nats.aio.client import Client

from prover.errors import ProverError
from prover.shards import control
from prover.shards.control import ShardStatus, Status
from prover.shards.intake import NotYet

__all__ = ["NOT_YET_WAIT", "ShardLinks"]

NOT_YET_WAIT = 5.0  # seconds a shard may take to read as far as a cut


class ShardLinks:
    """Requests to the ``parts`` shards on ``<prefix>.shard.<i>.control``."""

    def __init__(
        self,
        nc: Client,
        prefix: str,
        parts: int,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._nc, self._prefix, self.parts = nc, prefix, parts
        self._timeout, self._clock = timeout, clock
        self.down: dict[int, float] = {}  # shards not answering: since when

    async def pending_cut(self, number: int) -> int | None:
        """The latest cut at which shards staged or closed epoch ``number``
        already (a coordinator got that far without appending it), or None.

        Raises:
            ProverError: shards that disagree, or stand past ``number``.
        """
        statuses = [control.expect(r, ShardStatus) for r in await self.ask_all(lambda p: Status())]
        if ahead := [s.closed for s in statuses if s.closed > number]:
            raise ProverError(f"shards closed epoch {max(ahead)}, past the log's next, {number}")
        closed = {s.closed_cut for s in statuses if s.closed == number}
        staged = {s.staged_cut for s in statuses if s.staged == number}
        if len(closed) > 1 or (closed and max(staged | closed) > min(closed)):
            cuts = sorted(staged | closed)
            raise ProverError(f"shards staged epoch {number} at different cuts: {cuts}")
        # staged at different cuts (a Stage held past the epoch's try): each
        # is staged on to the latest (ShardCore)
        return max(staged | closed) if staged | closed else None

    async def ask_all(self, request: Callable[[int], control.Request]) -> Sequence[control.Reply]:
        """Every shard's reply to its request, asked at once; a ``not-yet``
        asked again until ``NOT_YET_WAIT``. Once one shard's fails, the
        others' are given up (no more copies sent): a ``Stage`` of an epoch
        that failed, asked on after a ``not-yet``, could reach a shard after
        the coordinator staged that epoch again at another cut."""
        deadline = time.monotonic() + NOT_YET_WAIT

        async def ask(part: int) -> control.Reply:
            while True:
                reply = await self.ask(part, request(part))
                if not (isinstance(reply, control.Refused) and reply.code == "not-yet"):
                    return reply
                if time.monotonic() > deadline:
                    raise NotYet(f"shard {part}: {reply.message}")
                await asyncio.sleep(0.02)

        asked = [asyncio.ensure_future(ask(p)) for p in range(self.parts)]
        try:
            return await asyncio.gather(*asked)
        finally:
            for task in asked:
                task.cancel()

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
