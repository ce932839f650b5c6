"""What a shard, or the coordinator, reads from the ledger stream, and the
epochs it cuts out of it (docs/SCALING.md, "Consistent cuts"). Pure.

Messages are added in stream order (a consumer of ``<prefix>.commit`` and,
for a shard, its own ``<prefix>.part.<i>``). A part waits until its commit
comes; ``through(cut)`` then gives the updates of every batch whose commit
is at or below ``cut``, in commit order. Every reader keeps each source's
balance mark (the last seq applied) from the commits it reads, so all
agree on which updates are replays: those at or below the mark when their
commit comes, skipped as the single process's store skips them. Reserves
and reserve reports pass through whole (``Cut.messages``): the
coordinator's store keeps their marks and skips their replays.

Invariants:

- A batch is given whole, in one ``through``, or not at all.
- ``state()`` after a ``through`` is what a reader restarted from it needs:
  the cut, the marks as of the cut, and ``resume``, the first stream
  sequence to read again (the oldest part read and not applied by then).
  A reader restarted from it skips the commits at or below the cut, with
  their parts, and gives the same cuts after.
- A part older than ``expire_ms`` of stream time is dropped: no commit
  names it. A retry within the duplicate window names parts up to a
  window old, and front-ends commit within a third of a window of
  starting, so a part is at most 4/3 of a window old when its commit
  comes; ``expire_ms`` must be more than that (the default: three times
  JetStream's default window of two minutes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prover.errors import ProverError
from prover.shards.wire import Commit, Part

__all__ = ["Cut", "Intake", "NotYet", "ReaderState"]

Row = tuple[str, str, int]  # user, asset, amount
EXPIRE_MS = 360_000


class NotYet(ProverError):
    """The cut is past the last message read."""


@dataclass(frozen=True, slots=True)
class Cut:
    """What ``through`` takes: the updates of the batches committed in
    ``(after, cut]``, in commit order; the ingest messages of the others
    (reserves, reports: for the coordinator); how many batches, replays
    included."""

    after: int
    cut: int
    rows: list[Row]
    messages: list[bytes]
    batches: int


@dataclass(frozen=True, slots=True)
class ReaderState:
    """Where a reader stands after a cut: see the module docstring."""

    cut: int
    marks: dict[str, int]
    resume: int


@dataclass
class _Batch:
    commit: int  # its commit's stream sequence
    first: int  # the lowest stream sequence of it this reader read
    source: str
    last_seq: int
    rows: list[Row]
    message: bytes


@dataclass
class Intake:
    """One reader of the ledger stream: shard ``shard``'s, or with ``shard``
    None the coordinator's, which keeps no parts."""

    shard: int | None
    start: ReaderState = field(default_factory=lambda: ReaderState(0, {}, 1))
    expire_ms: int = EXPIRE_MS
    read: int = 0  # the stream sequence of the last message added
    _marks: dict[str, int] = field(default_factory=dict)  # as of ``read``
    _parts: dict[int, tuple[int, Part]] = field(default_factory=dict)  # seq: (time, part)
    _ready: list[_Batch] = field(default_factory=list)  # committed, not taken
    _state: ReaderState | None = None

    def __post_init__(self) -> None:
        self._marks = dict(self.start.marks)
        self._state = self.start
        self.read = self.start.resume - 1

    def add(self, seq: int, time_ms: int, message: Part | Commit) -> None:
        """The message at stream sequence ``seq``, stored at ``time_ms``.

        Raises:
            ProverError: out of stream order, or a commit names a part of
                this shard that was not read.
        """
        if seq <= self.read:
            raise ProverError(f"stream sequence {seq} after {self.read}: out of order")
        self.read = seq
        if isinstance(message, Part):
            if self.shard is not None:
                self._parts[seq] = (time_ms, message)
                self._expire(time_ms)
            return
        mine = [s for shard, s in message.parts if shard == self.shard]
        parts = [self._parts.pop(s, None) for s in mine]
        if seq <= self.state().cut:  # applied before this reader began
            return
        if message.message:  # reserves or reports: the coordinator's store skips replays
            self._ready.append(_Batch(seq, seq, message.source, -1, [], message.message))
            return
        rows: list[Row] = []
        mark = self._marks.get(message.source, -1)
        for s, found in zip(mine, parts, strict=True):
            if found is None:
                raise ProverError(f"commit {seq} names part {s} of shard {self.shard}: not read")
            rows += [(u, a, m) for q, u, a, m in found[1].rows if q > mark]
        self._marks[message.source] = max(mark, message.last_seq)
        batch = _Batch(
            seq, min([seq, *mine]), message.source, message.last_seq, rows, message.message
        )
        self._ready.append(batch)

    def passed(self, seq: int) -> None:
        """Nothing of this reader's up to stream sequence ``seq`` remains
        unread (a shard never receives the other shards' parts): a cut up
        to ``seq`` may be taken."""
        self.read = max(self.read, seq)

    def through(self, cut: int) -> Cut:
        """The batches committed after the last cut taken and at or before ``cut``.

        Raises:
            NotYet: the reader has not read as far as ``cut``.
            ProverError: ``cut`` is before the last cut taken.
        """
        before = self.state()
        if cut < before.cut:
            raise ProverError(f"cut {cut} is before the last one, {before.cut}")
        if cut > self.read:
            raise NotYet(f"read as far as {self.read}, not yet {cut}")
        count = 0
        while count < len(self._ready) and self._ready[count].commit <= cut:
            count += 1
        taken, self._ready = self._ready[:count], self._ready[count:]
        marks = dict(before.marks)
        for batch in taken:
            if not batch.message:
                marks[batch.source] = max(marks.get(batch.source, -1), batch.last_seq)
        held = [s for s in self._parts if s <= cut] + [b.first for b in self._ready]
        self._state = ReaderState(cut, marks, min([cut + 1, *held]))
        return Cut(
            before.cut,
            cut,
            [row for batch in taken for row in batch.rows],
            [batch.message for batch in taken if batch.message],
            count,
        )

    def state(self) -> ReaderState:
        """The last cut taken, the marks as of it and where to resume from."""
        assert self._state is not None
        return self._state

    def _expire(self, now_ms: int) -> None:
        while self._parts:
            oldest = next(iter(self._parts))
            if self._parts[oldest][0] >= now_ms - self.expire_ms:
                return
            del self._parts[oldest]
