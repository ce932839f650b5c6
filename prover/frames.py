"""The root stream's frames of one epoch (docs/PROTOCOL.md §11.2). Pure.

A frame is fixed by three things: the ``Subscription`` (all assets, chosen
assets, checkpoints only), the ``Encoding`` (a JSON text frame, or a
MessagePack binary one for the ``solvency-msgpack`` subprotocol), and
whether it is the first frame of its connection. The first carries the
signed report of every attested source of its entries; a later one only
those its entries bind that the previous epoch's record did not bind for
the same asset and source (usually none).

Invariants:

- ``EpochFrames.frame`` builds the frame of each (subscription, encoding,
  first or later) at most once per epoch, on first demand: the fan-out asks
  once per distinct choice among its subscribers, never once per
  subscriber. When the two variants carry the same reports (always for
  checkpoints; for records when every bound report is new, or none is
  bound), the one built serves for both. The record's asset map is built
  once for all the chosen-assets frames of the epoch (``MappedRecord``).
- Reports are in record order, none twice; a later frame is computed from
  this record and ``previous``, the record of the epoch before. Without
  ``previous`` (not known yet) a later frame carries every report, as a
  first one: more than needed, which §11.2 allows.
- A frame of chosen assets carries the record's header and the entries that
  prove what the record says of each chosen asset (its entry, or the
  entries on either side of where it would sort), and only the chosen
  assets' reports; a checkpoint frame, the checkpoint and its consistency
  proof from the log one record shorter, which the inclusion path of the
  record's header gives (``MappedRecord.consistency``); record frames carry
  no consistency proof.
"""

from __future__ import annotations

import dataclasses
import enum

from prover.mapped import MappedRecord
from verifier.report import report_hash
from verifier.stream import AssetsMessage, CheckpointMessage, EpochMessage, StreamMessage
from verifier.stream_binary import SUBPROTOCOL, to_msgpack
from verifier.subscription import Subscription

__all__ = ["Encoding", "EpochFrames", "Frame"]

Frame = str | bytes  # a JSON text frame, or a MessagePack binary frame


class Encoding(enum.Enum):
    """How a subscriber's frames are encoded: JSON text (the default), or
    canonical MessagePack once it negotiated ``SUBPROTOCOL``."""

    JSON = "json"
    MSGPACK = SUBPROTOCOL

    @classmethod
    def of(cls, subprotocol: str | None) -> Encoding:
        """The encoding of a connection that negotiated ``subprotocol``."""
        return cls.MSGPACK if subprotocol == SUBPROTOCOL else cls.JSON


_Key = tuple[Subscription, Encoding, bool]  # bool: the connection's first frame


class EpochFrames:
    """One epoch's frames (module docstring): ``message`` as published (its
    checkpoint with the cosignatures attached by then, every report its
    record binds), its record, and the record of the epoch before, if known."""

    __slots__ = (
        "_bound_before",
        "_by_hash",
        "_frames",
        "_reports",
        "mapped",
        "message",
        "previous",
    )

    def __init__(
        self, message: EpochMessage, mapped: MappedRecord, previous: MappedRecord | None = None
    ) -> None:
        self.message, self.mapped = message, mapped
        self.previous = previous  # may be set later, once; records never change
        self._frames: dict[_Key, Frame] = {}
        self._reports: dict[tuple[frozenset[str] | None, bool], tuple[bytes, ...]] = {}
        self._by_hash: dict[bytes, bytes] | None = None  # the message's reports, by hash
        self._bound_before: dict[tuple[str, str], bytes] | None = None  # previous's bindings

    def frame(
        self, subscription: Subscription, encoding: Encoding = Encoding.JSON, first: bool = False
    ) -> Frame:
        """The frame for ``subscription`` in ``encoding``, as its connection's
        ``first`` or a later one; built at the first call (module docstring)."""
        key = (subscription, encoding, first)
        frame = self._frames.get(key)
        if frame is None:
            twin = self._frames.get((subscription, encoding, not first))
            if twin is not None and self.reports(subscription, first) == self.reports(
                subscription, not first
            ):
                frame = twin
            else:
                frame = self._build(subscription, encoding, first)
            self._frames[key] = frame
        return frame

    def message_for(self, subscription: Subscription, first: bool) -> StreamMessage:
        """The message a frame of ``subscription`` carries (``first``: on its
        connection's first frame)."""
        m = self.message
        if subscription.checkpoints:
            return CheckpointMessage(m.checkpoint, self.mapped.consistency(m.inclusion))
        reports = self.reports(subscription, first)
        if subscription.assets is None:
            return m if reports == m.reports else dataclasses.replace(m, reports=reports)
        return AssetsMessage(
            header=self.mapped.record.header.encode(),
            entries=self.mapped.select(subscription.assets),
            checkpoint=m.checkpoint,
            inclusion=m.inclusion,
            reports=reports,
        )

    def _build(self, subscription: Subscription, encoding: Encoding, first: bool) -> Frame:
        message = self.message_for(subscription, first)
        return message.to_json() if encoding is Encoding.JSON else to_msgpack(message)

    def reports(self, subscription: Subscription, first: bool) -> tuple[bytes, ...]:
        """The signed reports a frame of ``subscription`` carries: of the
        attested sources of its assets (all, or the chosen ones), in record
        order, none twice; on a later frame, only those not bound by the
        previous record for the same asset and source."""
        if subscription.checkpoints:
            return ()
        key = (subscription.assets, first or self.previous is None)
        reports = self._reports.get(key)
        if reports is None:
            reports = self._reports[key] = self._select_reports(*key)
        return reports

    def _select_reports(self, chosen: frozenset[str] | None, first: bool) -> tuple[bytes, ...]:
        if self._by_hash is None:
            self._by_hash = {report_hash(note): note for note in self.message.reports}
        before = {} if first else self._bindings()
        wanted = (
            s.report_hash
            for a in self.mapped.record.assets
            if chosen is None or a.asset in chosen
            for s in a.sources
            if s.attested and before.get((a.asset, s.name)) != s.report_hash
        )
        return tuple(dict.fromkeys(self._by_hash[h] for h in wanted if h in self._by_hash))

    def _bindings(self) -> dict[tuple[str, str], bytes]:
        """The report hash ``previous`` binds for each attested (asset, source)."""
        if self._bound_before is None:
            assert self.previous is not None
            self._bound_before = {
                (a.asset, s.name): s.report_hash
                for a in self.previous.record.assets
                for s in a.sources
                if s.attested
            }
        return self._bound_before
