"""A shard of the sharded prover without I/O (docs/SCALING.md, "Roles"):
its part of the ledger stream (an ``Intake``) and its part of every tree
(a ``Ledger``), answering the coordinator's control requests
(prover/shards/control.py). ``Shard`` (prover/shards/shard.py) runs one on
NATS.

An epoch closes in two steps, ``Stage`` then ``Close``; each is answered
again, the same, if asked again: a staged epoch until it is closed, the
last closed epoch's Stage and Close until the next is staged; ``Status``
says which epochs those are, and at which cuts. A staged epoch asked again
at a later cut is staged on to it (the batches between the two cuts staged
after the others, in stream order, as one stage to the later cut would):
a ``Stage`` a shard held while the coordinator gave the epoch up and chose
a later cut does not leave the shards staged at different cuts. A salt rotation rides on
them (``rotation``, prover/shards/nextperiod.py): a ``Stage`` also feeds
the next period's trees, a ``Close`` may begin them or switch to them. With a
``save`` function, a close is saved (prover/shards/saved.py) before it is
answered, so a shard restarted from what was saved (``restore``) answers
the epoch it closed last as it did, and the next ones as if it had never
stopped.

Invariants:

- ``answer`` calls never overlap; ``add`` and ``passed`` may run on another
  thread meanwhile (a lock guards the intake, held only for its own cheap
  steps, never while hashing).
- The ledger is never flushed: what it has staged at a close is every
  change of the epoch, which is what a close saves.
- A failure while the ledger changes (a save included), or a message of
  the stream the shard cannot read, leaves the core ``broken``: it then
  refuses every request ``internal``, and the shard must be restarted. It
  never answers from a half-applied epoch, nor a close it did not save.
- ``Prove`` names an epoch; the core counts back from the epoch it closed
  last and reads the ledger through its undo records (``Ledger.proof(user,
  age)``), for the ``retain`` epochs before the last within
  ``retain_bytes``. A core restored from a save keeps no epoch before it:
  its ledger is rebuilt as of the epoch it saved last, with no undo
  records (and that epoch is gone too once it closes the next).
- An export's first page (``ExportPage`` from user 0) freezes a copy of
  the trees as of the epoch closed last, as the tree worker's snapshot
  does (prover/worker.py), and the next pages are read from it: epochs go
  on closing meanwhile, and an export takes as long as it needs whatever
  ``retain`` is. The copy (each tree's levels, about as much memory again
  as the trees) is dropped after the last page or at the next export's
  first; making it holds the core up for as long as copying that memory.
  (Pages read through the undo records would keep no copy, but would
  bound an export by the retention: docs/SCALING.md.)
"""

from __future__ import annotations

import copy
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prover.errors import NotRetained, ProverError
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.routing import Router
from prover.shards import wire
from prover.shards.control import (
    PAGE_BYTES,
    Close,
    ClosedPart,
    ExportedPage,
    ExportPage,
    NoProof,
    PartProof,
    PartRoot,
    Prove,
    Refused,
    Reply,
    Request,
    ShardStatus,
    Stage,
    Staged,
    Status,
    WireState,
    decode_request,
    encode,
)
from prover.shards.intake import EXPIRE_MS, Intake, NotYet, ReaderState
from prover.shards.nextperiod import BadRotation, NextPeriod
from prover.shards.saved import decode_replies, restored_ledger, saved_close, touched
from prover.sizing import MIN_HEIGHT
from storage.shards import Holding, HoldingChanges, ShardState
from verifier.errors import FormatError
from verifier.hashing import MAX_HEIGHT, check_asset_id, check_user_id

__all__ = ["Save", "ShardCore"]

log = logging.getLogger("solvency.prover")
# saves a close: the epoch closed before it (None: none), the state, the holdings changed
Save = Callable[[int | None, ShardState, HoldingChanges], None]


@dataclass(frozen=True, slots=True)
class _Frozen:
    """The trees frozen for an export: its epoch, the ``instance`` whose
    order of users it keeps, a ledger sharing the users of the shard's
    and holding copies of its trees, and how many users it had then."""

    epoch: int
    instance: int
    ledger: Ledger
    users: int


class _BadRequest(ProverError):
    """The request is malformed or out of turn; nothing changed."""


class ShardCore:
    """One shard without I/O: its ``Intake`` and its ``Ledger`` (one part
    of every tree), driven by ``add``/``passed`` in stream order and by the
    coordinator's requests (``handle``, ``answer``).

    ``epoch`` is the last epoch closed (None before the first); a staged
    epoch is closed next, or staged again at the same cut."""

    def __init__(
        self,
        ledger: Ledger,
        state: ReaderState | None = None,
        epoch: int | None = None,
        expire_ms: int = EXPIRE_MS,
        *,
        last: tuple[Staged, ClosedPart] | None = None,
        save: Save | None = None,
    ) -> None:
        """A shard from its ledger (``part`` set) and where its reader stood
        after the epoch ``epoch`` that ledger holds (a restart; ``last``, the
        replies that closed it), or from the start of the stream. ``save``:
        called with each close before it is answered."""
        if ledger.part is None:
            raise ValueError("a shard's ledger holds one part")
        self.ledger = ledger
        self.part: int = ledger.part
        self.intake = Intake(self.part, state or ReaderState(0, {}, 1), expire_ms)
        self.epoch = epoch
        self.broken: str | None = None
        self._save = save
        self._staged: Staged | None = None
        self._last = last  # the last closed epoch's replies to its Stage and Close
        self._intake_lock = threading.Lock()
        self._work_lock = threading.Lock()
        self.rotation = NextPeriod()  # its ``periods``: the store's, set by the Shard
        self.instance = secrets.randbits(64)  # this ledger's order of users: ExportedPage
        self._began = epoch  # the epoch the ledger held when given (None: the stream's start)
        self._frozen: _Frozen | None = None  # the trees of the export under way

    @classmethod
    def empty(
        cls,
        period: SaltPeriod,
        router: Router,
        part: int,
        retain: int = 0,
        expire_ms: int = EXPIRE_MS,
        save: Save | None = None,
        retain_bytes: int = 512 << 20,
    ) -> ShardCore:
        """Part ``part`` of ``router``'s parts, no asset, no holder, at the
        stream's start; the proofs of ``retain`` earlier epochs kept, in at
        most ``retain_bytes``."""
        if not 0 <= part < router.parts:
            raise ValueError(f"no part {part} of {router.parts}")
        ledger = Ledger(period, retain=retain, retain_bytes=retain_bytes, router=router, part=part)
        return cls(ledger, expire_ms=expire_ms, save=save)

    @classmethod
    def restore(
        cls,
        state: ShardState,
        holdings: Iterable[list[Holding]],
        period: SaltPeriod,
        router: Router,
        part: int,
        retain: int = 0,
        expire_ms: int = EXPIRE_MS,
        save: Save | None = None,
        retain_bytes: int = 512 << 20,
    ) -> ShardCore:
        """Part ``part`` as it was saved after closing ``state.epoch``, with
        its ``holdings`` (in chunks); its reader resumes where that close left
        it. No earlier epoch's proofs: those of the epochs it closes from
        then on are kept as ``empty``'s are.

        Raises:
            ProverError: the state is of another salt period, or does not
                hold together (prover/shards/saved.py).
        """
        ledger = restored_ledger(state, holdings, period, router, part, retain)
        ledger.retain_bytes = retain_bytes
        last = decode_replies(state)
        reader = ReaderState(state.cut, dict(state.marks), state.resume)
        return cls(ledger, reader, state.epoch, expire_ms, last=last, save=save)

    # The stream

    @property
    def read(self) -> int:
        """The stream sequence read so far: every message of this shard up to it is added."""
        with self._intake_lock:
            return self.intake.read

    def add(self, seq: int, time_ms: int, message: wire.Part | wire.Commit) -> None:
        """The message at stream sequence ``seq``, stored at ``time_ms``: a
        part of this shard's or a commit, in stream order.

        Raises:
            ProverError: out of order, or a commit naming a part not read
                (the core is then ``broken``).
        """
        with self._intake_lock:
            try:
                self.intake.add(seq, time_ms, message)
            except ProverError as exc:
                self.fail(f"stream message {seq}: {exc}")
                raise

    def passed(self, seq: int) -> None:
        """No message of this shard's up to ``seq`` remains unread: other
        shards' parts, never received, need not be waited for."""
        with self._intake_lock:
            self.intake.passed(seq)

    def fail(self, reason: str) -> None:
        """Refuse every request from now on, ``internal``: ``reason``."""
        if self.broken is None:
            self.broken = reason

    # The coordinator's requests

    def handle(self, data: bytes) -> bytes:
        """The encoded reply to the encoded request ``data`` (``bad-request``
        if it is none)."""
        try:
            request = decode_request(data)
        except ProverError as exc:
            return encode(Refused("bad-request", str(exc)))
        return encode(self.answer(request))

    def answer(self, request: Request) -> Reply:
        """The reply to ``request``; one at a time, whatever the thread."""
        with self._work_lock:
            if self.broken is not None:
                return Refused("internal", f"shard {self.part} failed: {self.broken}")
            try:
                if isinstance(request, Stage):
                    return self._stage(request)
                if isinstance(request, Close):
                    return self._close(request)
                if isinstance(request, Status):
                    return self._status()
                if isinstance(request, ExportPage):
                    return self._export_page(request)
                return self._prove(request)
            except NotYet as exc:
                return Refused("not-yet", str(exc))
            except NotRetained as exc:
                return Refused("not-retained", str(exc))
            except _BadRequest as exc:
                return Refused("bad-request", str(exc))
            except Exception as exc:  # the ledger failed while changing
                log.exception("shard %d: %s failed", self.part, type(request).__name__)
                self.fail(f"{type(request).__name__}: {exc}")
                return Refused("internal", f"shard {self.part} failed: {self.broken}")

    def _stage(self, request: Stage) -> Staged:
        staged = self._staged
        again = staged or (self._last[0] if self._last is not None else None)
        if again is not None and (again.epoch, again.cut) == (request.epoch, request.cut):
            return again  # asked again: the answer was lost
        extends = staged is not None and (staged.epoch, staged.cut) < (request.epoch, request.cut)
        if staged is not None and (not extends or request.epoch != staged.epoch):
            raise _BadRequest(f"epoch {staged.epoch} is staged at cut {staged.cut}, not closed")
        if self.epoch is not None and request.epoch != self.epoch + 1:
            raise _BadRequest(f"epoch {request.epoch} cannot follow epoch {self.epoch}")
        assets = self._heights(request.assets)
        if request.period and request.period < self.ledger.period.number:
            period = self.ledger.period.number
            raise _BadRequest(f"the trees are of salt period {period}, after {request.period}")
        with self._intake_lock:
            last = self.intake.state().cut
            if request.cut < last:
                raise _BadRequest(f"cut {request.cut} is before the last one, {last}")
            if request.cut > self.intake.read:
                raise NotYet(f"shard {self.part} read as far as {self.intake.read}")
        for asset, height in sorted(assets.items()):
            self.ledger.add_asset(asset, height)  # those held already are left as they are
        with self._intake_lock:
            cut = self.intake.through(request.cut)
        self.ledger.stage_rows(cut.rows)
        upcoming = self.rotation.staged(request.period, self.ledger, assets, cut.rows)
        growth, room = self.ledger.growth(), self.ledger.room()
        batches = cut.batches + (staged.batches if staged is not None else 0)
        self._staged = Staged(request.epoch, request.cut, batches, growth, upcoming, room)
        return self._staged

    def _close(self, request: Close) -> ClosedPart:
        staged = self._staged
        if staged is None:
            if self._last is not None and self._last[1].epoch == request.epoch:
                return self._last[1]  # asked again: the answer was lost
            raise _BadRequest(f"epoch {request.epoch} is not staged")
        if request.epoch != staged.epoch:
            raise _BadRequest(f"epoch {staged.epoch} is staged, not {request.epoch}")
        heights = self._heights(request.heights)
        try:
            if request.begin is not None:
                self._heights(request.begin.heights)
            self.rotation.check(request, self.ledger)
        except BadRotation as exc:
            raise _BadRequest(str(exc)) from None
        ledger, bits = self.ledger, self.ledger.router.bits
        if request.switch:  # from here on a refusal is a failure: the next trees are taken
            ledger = self.rotation.switched(request.switch, staged.epoch, ledger, heights)
        try:
            self._check_heights(ledger, heights)
        except _BadRequest as exc:
            if not request.switch:
                raise
            raise ProverError(f"switching to salt period {request.switch}: {exc}") from None
        changed = touched(ledger) if self._save is not None and not request.switch else {}
        roots = ledger.close_epoch(heights)
        with self._intake_lock:
            state = self.intake.state()
        closed = ClosedPart(
            staged.epoch, tuple(PartRoot.of(r, bits) for r in roots), WireState.of(state)
        )
        if self._save is not None:
            saved = saved_close(ledger, staged, closed, changed, bool(request.switch))
            self._save(self.epoch, *saved)
        self.epoch, self._staged, self._last = staged.epoch, None, (staged, closed)
        if ledger is not self.ledger:  # a new salt period: new users' order too
            number = request.switch
            log.info("shard %d: salt period %d from epoch %d", self.part, number, self.epoch)
            self.ledger, self.instance = ledger, secrets.randbits(64)
        self.rotation.closed(request.begin, staged.epoch, ledger)
        return closed

    def _check_heights(self, ledger: Ledger, heights: dict[str, int]) -> None:
        """Refuse ``heights`` that do not grow exactly ``ledger``'s trees that must grow."""
        bits = ledger.router.bits
        for asset, height in heights.items():
            if asset not in ledger.books:
                raise _BadRequest(f"no tree of {asset} to grow")
            if height < ledger.full_height(asset):
                raise _BadRequest(f"{asset}: height {height} below {ledger.full_height(asset)}")
        for asset, holders in ledger.growth().items():
            height = heights.get(asset, ledger.full_height(asset))
            if height == ledger.full_height(asset) or holders > 1 << (height - bits):
                raise _BadRequest(f"{asset}: {holders} holders need a height past {height}")

    def _status(self) -> ShardStatus:
        """The last epoch closed (restored, after a restart) with its cut,
        and the epoch staged with its cut; -1 and 0 for none; the salt
        period that close switched to, with the trees' heights (0 and none:
        it switched nothing)."""
        closed_cut = self._last[0].cut if self._last is not None else self.intake.start.cut
        staged = self._staged
        switched, heights, last = 0, {}, self._last
        upcoming = last[0].next if last is not None else None
        if last is not None and upcoming and upcoming.period == self.ledger.period.number:
            switched = upcoming.period  # the last close was with those trees
            heights = {r.asset: r.height for r in last[1].roots}
        return ShardStatus(
            -1 if self.epoch is None else self.epoch,
            closed_cut,
            -1 if staged is None else staged.epoch,
            0 if staged is None else staged.cut,
            switched,
            heights,
        )

    def _prove(self, request: Prove) -> PartProof | NoProof:
        try:
            check_user_id(request.user)
            part = self.ledger.router.shard(request.user)
        except FormatError as exc:
            raise _BadRequest(str(exc)) from None
        if part != self.part:
            raise _BadRequest(f"user {request.user!r} is in part {part}, not {self.part}")
        age = 0 if request.epoch == -1 else self._age(request.epoch)
        proof = self.ledger.proof(request.user, age)
        return NoProof() if proof is None else PartProof.of(proof)

    def _export_page(self, request: ExportPage) -> ExportedPage:
        """Users ``start`` onwards of the trees frozen for the export (from
        user 0: frozen now), looked at until ``count`` were or the proofs
        found reach ``PAGE_BYTES``; each one's proof as of the epoch.

        Raises:
            NotRetained: the epoch is not the last closed (from user 0), or
                no export of it is under way here (the shard restarted, or
                another export began).
        """
        if request.start == 0:
            self._frozen = None
            self._frozen = self._freeze(request.epoch)
        frozen = self._frozen
        if frozen is None or frozen.epoch != request.epoch:
            raise NotRetained(
                f"shard {self.part} has no export of epoch {request.epoch} under way:"
                " it restarted, or another export began"
            )
        ledger, users = frozen.ledger, frozen.users
        end = min(users, request.start + request.count)
        at, size, proofs = request.start, 0, []
        while at < end and size < PAGE_BYTES:
            user = ledger.users[at]
            at += 1
            found = ledger.proof(user)
            if found is not None:
                proofs.append((user, PartProof.of(found)))
                size += len(user.encode()) + len(encode(proofs[-1][1]))
        if at >= users:
            self._frozen = None  # the last page: the copy is dropped
        at = max(at, request.start)
        return ExportedPage(frozen.epoch, frozen.instance, users, at, tuple(proofs))

    def _freeze(self, epoch: int) -> _Frozen:
        """The trees as of ``epoch``, the last closed, copied (module docstring).

        Raises:
            NotRetained: ``epoch`` is not the last epoch closed.
        """
        if self.epoch != epoch:
            raise NotRetained(
                f"shard {self.part} closed epoch {self.epoch} last, not {epoch}:"
                " an export is of the epoch closed last"
            )
        ledger = copy.copy(self.ledger)  # users, their ids and salts are only added to: shared
        ledger.books = {asset: copy.deepcopy(book) for asset, book in self.ledger.books.items()}
        ledger.open = copy.deepcopy(self.ledger.open)  # the batches flushed since the close
        ledger.history = deque()
        return _Frozen(epoch, self.instance, ledger, len(ledger.users))

    def _age(self, epoch: int) -> int:
        """How many epochs before the last one closed ``epoch`` is.

        Raises:
            NotRetained: the shard did not close ``epoch``, or no longer
                keeps its proofs (a restored shard keeps none before it).
        """
        closed = self.epoch
        if closed is None or not 0 <= epoch <= closed:
            last = "none" if closed is None else closed
            raise NotRetained(f"shard {self.part} has not closed epoch {epoch} (last: {last})")
        age, kept = closed - epoch, self.ledger.retained
        if age > kept:
            restored = ""
            if self._began is not None and epoch <= self._began:
                restored = f"; restored as of epoch {self._began}, it keeps none up to it"
            raise NotRetained(
                f"shard {self.part} keeps the proofs of epochs {closed - kept} to {closed}"
                f" only, not {epoch}{restored}"
            )
        return age

    def _heights(self, heights: dict[str, int]) -> dict[str, int]:
        """``heights`` of whole trees, checked: real asset ids, each tree at
        least ``MIN_HEIGHT`` high in every part."""
        lowest = MIN_HEIGHT + self.ledger.router.bits
        for asset, height in heights.items():
            try:
                check_asset_id(asset)
            except FormatError as exc:
                raise _BadRequest(str(exc)) from None
            if not lowest <= height <= MAX_HEIGHT:
                raise _BadRequest(f"{asset}: height {height} outside {lowest}..{MAX_HEIGHT}")
        return heights
