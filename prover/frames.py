"""The root stream's frames of one epoch, one per kind of subscription
(docs/PROTOCOL.md §11.2). Pure.

Invariants:

- ``EpochFrames.frame`` builds the frame of each subscription at most once
  per epoch, on first demand: the fan-out asks once per distinct
  subscription among its subscribers, never once per subscriber, and the
  record's asset map is built once for all the chosen-assets frames of the
  epoch (``MappedRecord``).
- A frame of chosen assets carries the record's header, the entries that
  prove what the record says of each chosen asset (its entry, or the
  entries on either side of where it would sort), and the signed reports
  of the chosen assets' attested sources, in record order, none twice; a
  checkpoint frame, the checkpoint and its consistency proof only.
"""

from __future__ import annotations

from prover.mapped import MappedRecord
from verifier.report import report_hash
from verifier.stream import AssetsMessage, CheckpointMessage, EpochMessage
from verifier.subscription import Subscription

__all__ = ["EpochFrames"]


class EpochFrames:
    """One epoch's frames (module docstring): ``message`` as published (its
    checkpoint with the cosignatures attached by then) and its record."""

    __slots__ = ("_frames", "_reports", "mapped", "message")

    def __init__(self, message: EpochMessage, mapped: MappedRecord) -> None:
        self.message, self.mapped = message, mapped
        self._frames: dict[Subscription, str] = {}
        self._reports: dict[bytes, bytes] | None = None  # by hash, the message's

    def frame(self, subscription: Subscription) -> str:
        """The frame for ``subscription``, built at the first call."""
        frame = self._frames.get(subscription)
        if frame is None:
            frame = self._frames[subscription] = self._build(subscription)
        return frame

    def _build(self, subscription: Subscription) -> str:
        m = self.message
        if subscription.checkpoints:
            return CheckpointMessage(m.checkpoint, m.consistency).to_json()
        if subscription.assets is None:
            return m.to_json()
        chosen = subscription.assets
        return AssetsMessage(
            header=self.mapped.record.header.encode(),
            entries=self.mapped.select(chosen),
            checkpoint=m.checkpoint,
            inclusion=m.inclusion,
            consistency=m.consistency,
            reports=self._reports_of(chosen),
        ).to_json()

    def _reports_of(self, chosen: frozenset[str]) -> tuple[bytes, ...]:
        """The signed reports of the ``chosen`` assets' attested sources, in
        record order, none twice (those the message carries)."""
        if self._reports is None:
            self._reports = {report_hash(note): note for note in self.message.reports}
        wanted = (
            s.report_hash
            for a in self.mapped.record.assets
            if a.asset in chosen
            for s in a.sources
            if s.attested
        )
        return tuple(dict.fromkeys(self._reports[h] for h in wanted if h in self._reports))
