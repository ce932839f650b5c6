"""An accepted ingest batch as a front-end puts it on the ledger stream
(docs/SCALING.md, "The stream"). Pure.

A balance batch becomes one ``Part`` per shard holding its users' updates,
then a ``Commit`` naming the parts' stream sequences; a batch of reserves or
reserve reports becomes a ``Commit`` alone, carrying the ingest message.

Invariants:

- The parts of a batch hold exactly its updates, each once, on its user's
  shard (``Router.shard``), in the batch's order within each part.
- Parts are in ascending shard order. A shard's updates go in one part,
  unless its encoding would pass ``max_part_bytes`` (a NATS message's
  limit): they are then cut, in order, into consecutive parts of that shard
  that each fit. The commit names the parts in the same order, so a reader
  concatenating its shard's parts in commit order reads its updates in the
  batch's order.
- The same batch (the same updates) always gives the same parts, byte for
  byte, and so the same ``message_id``s: a retry is stored once within the
  stream's duplicate window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prover.errors import ProverError
from prover.messages import BalanceBatch, ReserveBatch, ReserveReportBatch
from prover.routing import Router
from prover.shards.wire import Commit, Part, encode

__all__ = ["PartTooLarge", "Split", "split_balances", "split_reserves"]

Row = tuple[int, str, str, int]  # seq, user, asset, amount: a Part's row


class PartTooLarge(ProverError):
    """One update alone encodes past ``max_part_bytes``."""


@dataclass(frozen=True, slots=True)
class Split:
    """One batch as it goes on the stream: ``parts`` as ``(shard, part)`` in
    publishing order, ``data`` their encodings (same order), and what its
    commit says besides the parts' stream sequences."""

    source: str
    first_seq: int
    last_seq: int
    parts: tuple[tuple[int, Part], ...] = ()
    data: tuple[bytes, ...] = ()
    message: bytes = b""  # reserves and reserve reports: the ingest message

    def commit(self, seqs: Sequence[int]) -> Commit:
        """The commit once ``seqs``, the parts' stream sequences (in the order
        of ``parts``), are known.

        Raises:
            ValueError: not one stream sequence per part.
        """
        if len(seqs) != len(self.parts):
            raise ValueError(f"{len(seqs)} stream sequences for {len(self.parts)} parts")
        parts = tuple((shard, seq) for (shard, _), seq in zip(self.parts, seqs, strict=True))
        return Commit(self.source, self.first_seq, self.last_seq, parts, self.message)


def split_balances(batch: BalanceBatch, router: Router, max_part_bytes: int | None = None) -> Split:
    """``batch`` split by its users' shards (module docstring).

    Raises:
        PartTooLarge: ``max_part_bytes`` cannot hold a part of one update.
    """
    by_shard: dict[int, list[Row]] = {}
    if router.bits:
        shard = router.shard
        for u in batch.updates:
            by_shard.setdefault(shard(u.user), []).append((u.seq, u.user, u.asset, u.amount))
    else:
        by_shard[0] = [(u.seq, u.user, u.asset, u.amount) for u in batch.updates]
    parts: list[tuple[int, Part]] = []
    data: list[bytes] = []
    for shard_index in sorted(by_shard):
        for part, encoded in _fitting(batch.source, by_shard[shard_index], max_part_bytes):
            parts.append((shard_index, part))
            data.append(encoded)
    first, last = batch.updates[0].seq, batch.updates[-1].seq
    return Split(batch.source, first, last, tuple(parts), tuple(data))


def split_reserves(batch: ReserveBatch | ReserveReportBatch, message: str | bytes) -> Split:
    """A batch of reserves or reserve reports: no parts; its commit carries
    ``message``, the ingest message as received (UTF-8)."""
    body = message.encode() if isinstance(message, str) else message
    return Split(batch.source, batch.updates[0].seq, batch.updates[-1].seq, message=body)


def _fitting(source: str, rows: list[Row], limit: int | None) -> list[tuple[Part, bytes]]:
    """``rows`` as one part, or as consecutive parts each encoding to at most
    ``limit`` bytes (halved until they fit)."""
    part = Part(source, tuple(rows))
    encoded = encode(part)
    if limit is None or len(encoded) <= limit:
        return [(part, encoded)]
    if len(rows) == 1:
        raise PartTooLarge(f"one update of {len(encoded)} bytes, above {limit}")
    half = len(rows) // 2
    return _fitting(source, rows[:half], limit) + _fitting(source, rows[half:], limit)
