"""The sharded prover's proofs (docs/SCALING.md, "Proofs"): a user's proof
of the latest epoch or of one of the ``proof_epochs`` before it, and every
user's proof of the latest epoch exported to files; byte for byte what the
single process serves and writes for the same ledger (prover/proofs.py).

The coordinator keeps, for the last ``1 + proof_epochs`` epochs it
appended, what a proof needs besides the lower paths (``Kept``: the
epoch's message, its record with the asset map, each asset's top levels);
the shards keep the lower paths of as many epochs, through their ledgers'
undo records (prover/shards/core.py). A proof asks the user's shard for
its paths as of the epoch, by number (``Prove``), then adds the top
levels; an export asks every shard for its users' paths in pages
(``ExportPage``), adds the top levels and writes the files as the tree
worker does (``prover.worker.write_proofs``).

Invariants:

- A proof's lower paths, top levels and record are of one epoch: the
  shard is asked by epoch number, which holds even when it has closed an
  epoch the coordinator has not appended yet.
- An epoch the coordinator no longer keeps, or not yet, or whose paths the
  user's shard no longer keeps (a restored shard keeps none before its
  restore), raises ``NotRetained``, as the daemon's proofs do: ``/proof``
  answers 404 ``not-retained`` alike.
- The latest epoch's proof file carries the message committed with it and
  the cosignatures known; an earlier epoch's is read from the store
  (``stored_epoch``), as the daemon reads it.
- An export holds no lock: epochs go on closing while it runs, each shard
  serving its pages from a copy of its trees frozen at the first page
  (prover/shards/core.py). It fails, saying to run it again, if a shard
  has closed an epoch the coordinator has not appended yet (as the
  daemon's export fails while an epoch is failing), or restarted or began
  another export meanwhile (its frozen trees are gone; a page of another
  ``instance`` would follow another order of users).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from prover.config import Config
from prover.errors import NotRetained, ProverError
from prover.export import create_export_dir
from prover.ledger import UserProof
from prover.mapped import MappedRecord
from prover.routing import Router
from prover.shards import control
from prover.shards.control import ExportedPage, ExportPage, NoProof, PartProof, Prove
from prover.top import TopTree
from prover.witnesses import Witnesses
from prover.worker import write_proofs
from verifier.proof import ProofFile
from verifier.stream import EpochMessage
from verifier.sumtree import PathStep

__all__ = ["PAGE_USERS", "Kept", "ShardedProofs"]

PAGE_USERS = 1_000  # users a shard looks at per page of an export (and PAGE_BYTES at most)

Ask = Callable[[int, control.Request], Awaitable[control.Reply]]
Stored = Callable[[int, MappedRecord], Awaitable[tuple[EpochMessage, MappedRecord]]]


@dataclass(frozen=True, slots=True)
class Kept:
    """What the coordinator keeps of an appended epoch for its proofs."""

    message: EpochMessage  # as committed, without cosignatures
    record: MappedRecord
    tops: dict[str, TopTree]  # each asset's top levels over the shards' parts

    @property
    def epoch(self) -> int:
        return self.record.record.epoch


class ShardedProofs:
    """Proofs and exports of a sharded prover (module docstring): ``ask``
    sends a control request to a shard, ``stored`` reads an epoch's message
    from the store (``stored_epoch``), ``witnesses`` gives the witnesses
    whose cosignatures a proof carries (None: none)."""

    def __init__(
        self,
        config: Config,
        router: Router,
        ask: Ask,
        stored: Stored,
        witnesses: Callable[[], Witnesses | None],
    ) -> None:
        self._config, self._router = config, router
        self._ask, self._stored, self._witnesses = ask, stored, witnesses
        self._kept: deque[Kept] = deque(maxlen=config.proof_epochs + 1)

    def committed(
        self, message: EpochMessage, record: MappedRecord, tops: dict[str, TopTree]
    ) -> None:
        """Epoch ``record`` was appended: keep it, forget the oldest past
        ``proof_epochs``. Epochs are kept in a run of consecutive numbers."""
        if self._kept and self._kept[-1].epoch + 1 != record.record.epoch:
            self._kept.clear()
        self._kept.append(Kept(message, record, tops))

    def _find(self, epoch: int) -> Kept:
        """Raises:
        NotRetained: ``epoch`` is not kept (past the latest, or too old)."""
        first, latest = self._kept[0].epoch, self._kept[-1].epoch
        if epoch > latest:
            raise NotRetained(f"epoch {epoch} is not published yet (latest: {latest})")
        if epoch < first:
            raise NotRetained(
                f"the proofs of epoch {epoch} are not retained (kept: epochs {first} to {latest})"
            )
        return self._kept[epoch - first]

    def _cosigned(self, epoch: int, message: EpochMessage) -> EpochMessage:
        witnesses = self._witnesses()
        return message if witnesses is None else witnesses.attach(epoch, message)

    def _whole(self, kept: Kept, user: str, lower: PartProof) -> UserProof:
        """``user``'s proof of ``kept``'s epoch: ``lower``, the paths up to
        the shard's subtree roots, each followed by the top levels."""
        part, found = self._router.shard(user), lower.value(user)
        entries = []
        for asset, slot, amount, path in found.entries:
            top = kept.tops.get(asset)
            if top is None:
                raise ProverError(f"{user!r} holds {asset}: epoch {kept.epoch} has no such tree")
            above = tuple(PathStep(h, s) for h, s in top.path(part))
            entries.append((asset, slot, amount, path + above))
        return UserProof(user, found.salt, tuple(entries))

    async def proof(self, user: str, epoch: int | None = None) -> ProofFile | None:
        """``user``'s proof of ``epoch`` (None: the latest appended); None if
        they held nothing then, or before the first epoch of this run.

        Raises:
            NotRetained: ``epoch`` is not kept here, or by the user's shard.
            ProverError: the shard refused otherwise, or did not answer.
        """
        if not self._kept:
            return None
        latest = self._kept[-1]
        kept = latest if epoch is None else self._find(epoch)
        reply = await self._ask(self._router.shard(user), Prove(user, kept.epoch))
        if isinstance(reply, NoProof):
            return None
        found = self._whole(kept, user, control.expect(reply, PartProof))
        if kept is latest:
            message = self._cosigned(kept.epoch, kept.message)
        else:
            message, _ = await self._stored(kept.epoch, kept.record)
        return kept.record.basis(message).proof(found)

    async def export(
        self, progress: Callable[[int, int], Awaitable[None]]
    ) -> tuple[int, Path, int]:
        """Write every user's proof of the latest epoch into a new directory
        under ``export_dir`` (made once the shards gave their first pages),
        in pages asked of every shard at once; after each round of pages,
        ``progress(users looked at, users)``. Returns (epoch, directory,
        files written), as the daemon's export does.

        Raises:
            ProverError: no epoch yet; a shard closed a later epoch first,
                restarted or began another export meanwhile, refused or did
                not answer; a file not written.
        """
        if not self._kept:
            raise ProverError("no epoch has been published yet")
        kept = self._kept[-1]
        epoch, out = kept.epoch, None
        starts = dict.fromkeys(range(self._router.parts), 0)  # the shards not done yet
        ends: dict[int, int] = {}  # each shard's users, as its first page says
        instances: dict[int, int] = {}
        written = 0
        while starts:
            asked = list(starts.items())
            pages = await asyncio.gather(*(self._page(p, epoch, s) for p, s in asked))
            found = []
            for (part, start), page in zip(asked, pages, strict=True):
                if instances.setdefault(part, page.instance) != page.instance:
                    raise ProverError(
                        f"shard {part} restarted during the export of epoch {epoch}: run it again"
                    )
                end = ends.setdefault(part, page.users)
                if page.epoch != epoch or (page.next <= start and start < end):
                    raise ProverError(f"shard {part} answered no page from user {start} on")
                found += [self._whole(kept, user, lower) for user, lower in page.proofs]
                if page.next >= end:
                    del starts[part]
                else:
                    starts[part] = page.next
            if out is None:
                out = create_export_dir(self._config.export_path, epoch)
            basis = kept.record.basis(self._cosigned(epoch, kept.message))  # on this thread
            written += await asyncio.to_thread(write_proofs, out, found, basis)
            await progress(sum(starts.get(p, n) for p, n in ends.items()), sum(ends.values()))
        assert out is not None  # every shard answered one page at least
        return epoch, out, written

    async def _page(self, part: int, epoch: int, start: int) -> ExportedPage:
        try:
            return control.expect(
                await self._ask(part, ExportPage(epoch, start, PAGE_USERS)), ExportedPage
            )
        except NotRetained as exc:
            raise ProverError(f"the export of epoch {epoch} failed: {exc}; run it again") from None
