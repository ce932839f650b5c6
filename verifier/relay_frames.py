"""The frames a relay builds for subscribers of chosen assets or of
checkpoints only (docs/PROTOCOL.md §11.2, §11.7), pure.

A relay follows every asset upstream and keeps the full frames it verified
(``verifier.relay_history``). A subscriber of ``?assets=A,B`` or
``?only=checkpoints`` gets what the prover would send it, built by the relay
from the full frame of the same epoch: the record's header and the entries
``verifier.selection.select_entries`` picks, with their map paths, and the
signed reports of the chosen assets' attested sources (record order, none
twice); or the checkpoint and its consistency proof. The checkpoint,
inclusion and consistency proofs are the upstream frame's, untouched. The
relay cannot sign: a subscriber verifies a built frame as it verifies the
prover's.

Invariants:

- A frame is built once per epoch and distinct subscription, and the same
  bytes are sent to every subscriber of that choice, live or replayed, while
  it stays among the built frames kept: at most ``budget`` bytes of them, the
  least recently sent going first (built again if asked for again).
- An epoch's record is decoded and its asset map built once for every
  choice asked of it, while it is among the ``selectors`` epochs kept.
- A full subscription gets the upstream frame itself (``Relayed`` as received).
"""

from __future__ import annotations

from collections import OrderedDict

from verifier.assetmap import AssetMap
from verifier.hashing import hasher_for
from verifier.record import EpochRecord
from verifier.relay_history import History, Relayed
from verifier.report import report_hash
from verifier.selection import select_entries
from verifier.stream import AssetsMessage, CheckpointMessage, EpochMessage, parse_message
from verifier.subscription import Subscription

__all__ = ["BUDGET", "Builder", "Selector"]

BUDGET = 64 << 20  # bytes of built frames kept
SELECTORS = 4  # epochs whose record and asset map are kept for building


class Selector:
    """One verified epoch, ready to build the frames of any subscription: its
    full frame, parsed, its record decoded and its asset map built, each on
    first use."""

    def __init__(self, payload: bytes, record: EpochRecord | None = None) -> None:
        """``payload``: the verified full frame; ``record``: its record, if
        already decoded (it is not checked again)."""
        self.payload = payload
        self._record = record
        self._message: EpochMessage | None = None
        self._map: AssetMap | None = None
        self._hashes: dict[bytes, bytes] | None = None  # report hash -> signed report

    @property
    def message(self) -> EpochMessage:
        if self._message is None:
            message = parse_message(self.payload)
            assert isinstance(message, EpochMessage)  # verified as one when it came
            self._message = message
        return self._message

    @property
    def record(self) -> EpochRecord:
        if self._record is None:
            self._record = EpochRecord.decode(self.message.record)
        return self._record

    @property
    def asset_map(self) -> AssetMap:
        if self._map is None:
            self._map = AssetMap(hasher_for(self.record.version), self.record.entries)
        return self._map

    def build(self, subscription: Subscription) -> bytes:
        """The frame's JSON for a subscriber of chosen assets or of checkpoints."""
        m = self.message
        if subscription.checkpoints:
            return CheckpointMessage(m.checkpoint, m.consistency).to_json().encode()
        chosen = subscription.assets or frozenset()
        return (
            AssetsMessage(
                header=self.record.header.encode(),
                entries=select_entries(self.record, chosen, self.asset_map),
                checkpoint=m.checkpoint,
                inclusion=m.inclusion,
                consistency=m.consistency,
                reports=self._reports(chosen),
            )
            .to_json()
            .encode()
        )

    def _reports(self, chosen: frozenset[str]) -> tuple[bytes, ...]:
        """The signed reports of the chosen assets' attested sources, in record order."""
        if self._hashes is None:
            self._hashes = {report_hash(r): r for r in self.message.reports}
        out: dict[bytes, None] = {}
        for a in self.record.assets:
            if a.asset in chosen:
                for s in a.sources:
                    report = self._hashes.get(s.report_hash) if s.attested else None
                    if report is not None:
                        out[report] = None
        return tuple(out)


class Builder:
    """The frames of ``history``'s epochs for each subscription, built once
    each and kept within ``budget`` bytes (module docstring)."""

    def __init__(self, history: History, budget: int = BUDGET) -> None:
        self.history = history
        self.budget = budget
        self.built = 0  # frames built so far
        self._frames: OrderedDict[tuple[int, Subscription], Relayed] = OrderedDict()
        self._bytes = 0
        self._selectors: OrderedDict[int, Selector] = OrderedDict()

    def __len__(self) -> int:
        """The built frames kept."""
        return len(self._frames)

    def verified(self, frame: Relayed, record: EpochRecord) -> None:
        """``frame`` verified, its record decoded as ``record``: kept for
        building, so that it is not decoded again."""
        self._keep(frame.epoch, Selector(frame.payload, record))

    def frame(self, epoch: int, subscription: Subscription) -> Relayed | None:
        """The frame of ``epoch`` for ``subscription``; None once the epoch
        has left the history."""
        full = self.history.get(epoch)
        if full is None:
            return None
        if subscription.assets is None and not subscription.checkpoints:
            return full
        key = (epoch, subscription)
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            return frame
        selector = self._selectors.get(epoch)
        if selector is None:
            selector = self._keep(epoch, Selector(full.payload))
        frame = Relayed(epoch, selector.build(subscription))
        self.built += 1
        self._frames[key] = frame
        self._bytes += len(frame.payload)
        while self._bytes > self.budget and len(self._frames) > 1:
            _, dropped = self._frames.popitem(last=False)
            self._bytes -= len(dropped.payload)
        return frame

    def _keep(self, epoch: int, selector: Selector) -> Selector:
        self._selectors[epoch] = selector
        self._selectors.move_to_end(epoch)
        while len(self._selectors) > SELECTORS:
            self._selectors.popitem(last=False)
        return selector
