"""The trees behind one interface (``Trees``): a pool of tree workers, the
assets partitioned over them, so that the engine's close does not change
with how many processes hold the trees.

The k-th asset registered with a pool (``build``'s assets in their order,
then each ``apply``'s new ones in theirs) lives in worker k mod N. Every
request goes to every worker at once, each with its own assets' rows, so N
workers hash on N cores; answers are merged: roots in asset order, a user's
proof entries in asset order (one salt period, so one salt).

Invariants:

- An asset's rows reach its worker in the order they came; a lot of rows
  naming an asset no worker holds goes whole to the first worker, which
  refuses it whole, as one worker would.
- ``apply`` sends its request to every worker before it first awaits, so
  rows staged once it is called are the next apply's, never this one's.
- Each worker closes an epoch at each ``apply``, so their retained epochs
  line up; when an apply fails in some workers only, the others closed an
  epoch the pool did not: ``proof`` counts those in when it asks a worker
  for an earlier epoch, and raises ``NotRetained`` if any worker does.
- ``retain_bytes`` is shared evenly: the workers together keep at most that.
- An export with N > 1 snapshots every worker, lists the users of all in
  worker order, and for each chunk collects every worker's part of each
  user's proof; the first worker writes the files, each with all of that
  user's assets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from prover.errors import NotRetained, ProverError
from prover.ledger import AssetRoot, UserProof
from prover.mapped import ProofBasis
from prover.periods import SaltPeriod
from prover.worker import TreeWorker
from prover.worker_messages import (
    Applied,
    Apply,
    Begin,
    Build,
    Built,
    Closed,
    Done,
    Row,
    Rows,
    WireProof,
    merge_proofs,
    merge_wire_proofs,
)

__all__ = ["TreePool", "Trees"]

T = TypeVar("T")


class Trees(Protocol):
    """What the engine, the rotation and the proofs need of the trees of one
    salt period (prover/worker.py describes each)."""

    async def build(
        self,
        period: SaltPeriod,
        assets: Sequence[str],
        chunks: Iterable[Sequence[Row]],
        retain: int = 0,
        retain_bytes: int = 0,
        room: Mapping[str, int] | None = None,
        room_share: float = 0.0,
        ahead: bool = False,
    ) -> tuple[AssetRoot, ...]: ...

    def stage(self, rows: list[Row]) -> None: ...

    async def apply(self, assets: Sequence[str], rows: Sequence[Row]) -> Applied: ...

    async def unhashed(self) -> int: ...

    def release(self) -> None: ...

    async def proof(self, user: str, age: int = 0) -> UserProof | None: ...

    async def snapshot(self) -> int: ...

    async def export(self, out: Path, start: int, count: int, basis: ProofBasis) -> int: ...

    async def close(self) -> None: ...


def _results(futures: Iterable[concurrent.futures.Future[T]]) -> list[T]:
    """Each future's result once all are done; the first one's error, if any."""
    pending = list(futures)
    concurrent.futures.wait(pending)
    return [f.result() for f in pending]


def _roots(parts: Iterable[Iterable[AssetRoot]]) -> tuple[AssetRoot, ...]:
    return tuple(sorted((r for part in parts for r in part), key=lambda r: r.asset))


class TreePool:
    """``workers`` tree workers holding the trees of one salt period (module docstring)."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ProverError(f"a tree pool needs at least one worker, not {workers}")
        self._workers = [TreeWorker() for _ in range(workers)]
        self._owner: dict[str, int] = {}  # asset -> the index of the worker holding it
        self._applies = 0  # applies that succeeded in every worker
        self._retain = 0
        # per worker, the value of _applies at each apply that failed elsewhere
        # but closed an epoch in it
        self._extra: list[list[int]] = [[] for _ in self._workers]
        self._users: list[str] = []  # the snapshot's users, for an export with N > 1

    def owner(self, asset: str) -> int | None:
        """The index of the worker holding ``asset``'s tree (None: no worker)."""
        return self._owner.get(asset)

    def _register(self, assets: Iterable[str]) -> list[list[str]]:
        """Give each new asset its worker; return each worker's share of ``assets``."""
        shares: list[list[str]] = [[] for _ in self._workers]
        for asset in assets:
            if asset not in self._owner:
                self._owner[asset] = len(self._owner) % len(self._workers)
            shares[self._owner[asset]].append(asset)
        return shares

    def _split(self, rows: Iterable[Row]) -> list[list[Row]]:
        """Each worker's rows, in order; all to the first if one names an asset
        no worker holds (refused whole)."""
        rows = rows if isinstance(rows, list) else list(rows)
        if len(self._workers) == 1:
            return [rows]
        parts: list[list[Row]] = [[] for _ in self._workers]
        owner = self._owner
        try:
            for row in rows:
                parts[owner[row[1]]].append(row)
        except KeyError:
            return [rows, *([] for _ in self._workers[1:])]
        return parts

    async def build(
        self,
        period: SaltPeriod,
        assets: Sequence[str],
        chunks: Iterable[Sequence[Row]],
        retain: int = 0,
        retain_bytes: int = 0,
        room: Mapping[str, int] | None = None,
        room_share: float = 0.0,
        ahead: bool = False,
    ) -> tuple[AssetRoot, ...]:
        """``TreeWorker.build``, every worker building its trees at once."""
        self._owner.clear()
        self._applies, self._extra = 0, [[] for _ in self._workers]
        shares = self._register(assets)
        self._retain, share = retain, retain_bytes // len(self._workers)
        workers = self._workers
        wanted = room or {}

        def begin(part: list[str]) -> Begin:  # with the room of the worker's own assets
            own = {a: wanted[a] for a in part if a in wanted}
            return Begin(period, part, retain, share, own, room_share, ahead)

        begins = [begin(part) for part in shares]

        def send_all() -> list[Built]:  # in a thread: chunks may read a database
            _results(w.send(begins[i], Done) for i, w in enumerate(workers))
            for chunk in chunks:
                parts = zip(workers, self._split(chunk), strict=True)
                _results(w.send(Rows(part), Done) for w, part in parts if part)
            return _results(w.send(Build(), Built) for w in workers)

        built = await asyncio.to_thread(send_all)
        return _roots((r.value() for r in b.roots) for b in built)

    def stage(self, rows: list[Row]) -> None:
        """``TreeWorker.stage``, each worker sent its assets' rows."""
        for worker, part in zip(self._workers, self._split(rows), strict=True):
            if part:
                worker.stage(part)

    async def apply(self, assets: Sequence[str], rows: Sequence[Row]) -> Applied:
        """``TreeWorker.apply`` in every worker at once: the roots, room,
        unhashed and grown trees of all, and the seconds of the slowest."""
        shares, parts = self._register(assets), self._split(rows)
        sent = [  # now, before any other task stages rows (module docstring)
            w.send(Apply(shares[i], list(parts[i])), Closed) for i, w in enumerate(self._workers)
        ]
        answers = [
            a.value() if isinstance(a, Closed) else a
            for a in await asyncio.gather(
                *(asyncio.wrap_future(f) for f in sent), return_exceptions=True
            )
        ]
        applied = [a for a in answers if isinstance(a, Applied)]
        if len(applied) < len(answers):
            for i, answer in enumerate(answers):
                if isinstance(answer, Applied):  # an epoch the pool did not close
                    self._extra[i].append(self._applies)
            raise next(a for a in answers if isinstance(a, BaseException))
        self._applies += 1
        for extra in self._extra:  # older than any epoch proof() may be asked for
            extra[:] = [f for f in extra if f >= self._applies - self._retain - 1]
        room = {asset: n for a in applied for asset, n in a.room.items()}
        return Applied(
            _roots(a.roots for a in applied),
            max(a.seconds for a in applied),
            dict(sorted(room.items())),
            sum(a.unhashed for a in applied),
            tuple(sorted(asset for a in applied for asset in a.grown)),
        )

    async def unhashed(self) -> int:
        """``TreeWorker.unhashed`` of every worker, summed."""
        return sum(await asyncio.gather(*(w.unhashed() for w in self._workers)))

    def release(self) -> None:
        for worker in self._workers:
            worker.release()

    async def proof(self, user: str, age: int = 0) -> UserProof | None:
        """``TreeWorker.proof``: the entries of every worker's trees.

        Raises:
            NotRetained: a worker no longer keeps that apply.
        """
        since = self._applies - age
        answers = await asyncio.gather(
            *(
                w.proof(user, age + sum(f >= since for f in self._extra[i]))
                for i, w in enumerate(self._workers)
            ),
            return_exceptions=True,
        )
        for answer in answers:  # a worker asked for an earlier apply says so in its own terms
            if isinstance(answer, NotRetained):
                raise NotRetained(f"the trees of {age} epochs ago are not retained") from answer
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return merge_proofs(a for a in answers if not isinstance(a, BaseException))

    async def snapshot(self) -> int:
        """``TreeWorker.snapshot`` of every worker; the number of users of all."""
        if len(self._workers) == 1:
            return await self._workers[0].snapshot()
        ids = await asyncio.gather(*(w.snapshot_ids() for w in self._workers))
        self._users = list(dict.fromkeys(u for part in ids for u in part))
        return len(self._users)

    async def export(self, out: Path, start: int, count: int, basis: ProofBasis) -> int:
        """``TreeWorker.export``: each file with the user's entries of every worker."""
        if len(self._workers) == 1:
            return await self._workers[0].export(out, start, count, basis)
        users = self._users[start : start + count]
        parts = await asyncio.gather(*(w.snapshot_proofs(users) for w in self._workers))
        merged = (merge_wire_proofs(found) for found in zip(*parts, strict=True))
        proofs: list[WireProof] = [p for p in merged if p is not None]
        return await self._workers[0].write_proofs(out, proofs, basis)

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self._workers))


if TYPE_CHECKING:  # both hold the trees behind the one interface
    _worker: type[Trees] = TreeWorker
    _pool: type[Trees] = TreePool
