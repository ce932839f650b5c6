"""The frames a relay builds from the full frames it verified (docs/PROTOCOL.md
§11.2, §11.7), pure.

A relay follows every asset upstream and keeps the full frames it verified
(``verifier.relay_history``), each with the signed reports its record binds.
A frame is fixed by the subscription (every asset, ``?assets=A,B``, or
``?only=checkpoints``), the encoding (JSON, or MessagePack for the
``solvency-msgpack`` subprotocol) and whether it is its connection's first:
the first carries the report of every attested source of its entries, a
later one those bound anew since the epoch before (``Relayed.fresh``).
Chosen assets get the record's header and the entries
``verifier.selection.select_entries`` picks, with their map paths;
checkpoints only, the checkpoint and the RFC 9162 consistency proof from
the log one record shorter, which the inclusion path of the last leaf gives
(``rfc9162.last_consistency``). The checkpoint and inclusion proof are the
upstream frame's, untouched. The relay cannot sign: a subscriber verifies a
built frame as it verifies the prover's.

Invariants:

- A later frame of every asset in the upstream frame's encoding is the
  upstream frame itself, byte for byte; in the other encoding, the same
  message re-encoded.
- Every other frame is built once per epoch, subscription, encoding and
  variant (first or later; one for both when they carry the same reports,
  always for checkpoints), and the same bytes are sent to every subscriber
  of that kind, live or replayed, while it stays among the built frames
  kept: at most ``budget`` bytes of them, the least recently sent going
  first (built again if asked for again).
- An epoch's upstream frame is parsed, its record decoded and its asset map
  built once for every frame built of it, while it is among the
  ``SELECTORS`` epochs kept.
- MessagePack (``verifier.stream_binary``, msgspec) is imported only when a
  frame is in it.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from verifier import rfc9162
from verifier.assetmap import AssetMap
from verifier.hashing import hasher_for
from verifier.record import EpochRecord
from verifier.relay_history import History, Relayed
from verifier.report import report_hash
from verifier.selection import select_entries
from verifier.stream import (
    AssetsMessage,
    CheckpointMessage,
    EpochMessage,
    StreamMessage,
    parse_message,
)
from verifier.subscription import Subscription

__all__ = ["BUDGET", "Builder", "Selector", "bindings", "decode", "encode"]

BUDGET = 64 << 20  # bytes of built frames kept
SELECTORS = 4  # epochs whose message, record and asset map are kept for building

Bindings = dict[tuple[str, str], bytes]


def bindings(record: EpochRecord) -> Bindings:
    """The report hash ``record`` binds for each attested (asset, source)."""
    return {
        (a.asset, s.name): s.report_hash for a in record.assets for s in a.sources if s.attested
    }


def encode(message: StreamMessage, msgpack: bool) -> bytes:
    """``message`` as JSON, or as canonical MessagePack."""
    if not msgpack:
        return message.to_json().encode()
    from verifier.stream_binary import to_msgpack  # msgspec: only when binary is asked for

    return to_msgpack(message)


def decode(payload: bytes, msgpack: bool) -> StreamMessage:
    """A frame's message, from JSON or from MessagePack."""
    if not msgpack:
        return parse_message(payload)
    from verifier.stream_binary import parse_msgpack

    return parse_msgpack(payload)


class Selector:
    """One verified epoch, ready to build the frames of any kind: its full
    frame parsed, its record decoded and its asset map built, each on first use."""

    def __init__(self, entry: Relayed, record: EpochRecord | None = None) -> None:
        """``entry``: the verified full frame, as kept; ``record``: its record,
        if already decoded (it is not checked again)."""
        self.entry = entry
        self._record = record
        self._message: EpochMessage | None = None
        self._map: AssetMap | None = None
        self._hashes: dict[bytes, bytes] | None = None  # report hash -> signed report

    @property
    def message(self) -> EpochMessage:
        if self._message is None:
            message = decode(self.entry.payload, self.entry.msgpack)
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

    def reports(self, chosen: frozenset[str] | None, first: bool) -> tuple[bytes, ...]:
        """The signed reports of a frame of every asset (``chosen`` None) or of
        the ``chosen`` ones: of their attested sources, record order, none
        twice; on a later frame (not ``first``), those bound anew."""
        if self._hashes is None:
            self._hashes = {report_hash(r): r for r in self.entry.reports}
        fresh = None if first else self.entry.fresh
        out: dict[bytes, None] = {}
        for a in self.record.assets:
            if chosen is None or a.asset in chosen:
                for s in a.sources:
                    if s.attested and (fresh is None or (a.asset, s.name) in fresh):
                        report = self._hashes.get(s.report_hash)
                        if report is not None:
                            out[report] = None
        return tuple(out)

    def message_for(self, subscription: Subscription, first: bool) -> StreamMessage:
        """The message of a frame of ``subscription``, its connection's
        ``first`` or a later one; a later one of every asset is the upstream's."""
        m = self.message
        if subscription.checkpoints:
            leaf = rfc9162.leaf_hash(self.record.header.encode())
            proof = rfc9162.last_consistency(self.record.epoch + 1, m.inclusion, leaf)
            return CheckpointMessage(m.checkpoint, tuple(proof))
        if subscription.assets is None:
            return dataclasses.replace(m, reports=self.reports(None, True)) if first else m
        return AssetsMessage(
            header=self.record.header.encode(),
            entries=select_entries(self.record, subscription.assets, self.asset_map),
            checkpoint=m.checkpoint,
            inclusion=m.inclusion,
            reports=self.reports(subscription.assets, first),
        )

    def same_variants(self, subscription: Subscription) -> bool:
        """Whether the first and a later frame of ``subscription`` carry the
        same reports, so that one frame serves for both."""
        if subscription.checkpoints:
            return True
        if subscription.assets is None:
            return self.message.reports == self.reports(None, True)
        return self.reports(subscription.assets, True) == self.reports(subscription.assets, False)


_Key = tuple[int, Subscription, bool, bool]  # epoch, subscription, msgpack, first


class Builder:
    """The frames of ``history``'s epochs for each kind of subscriber, built
    once each and kept within ``budget`` bytes (module docstring)."""

    def __init__(self, history: History, budget: int = BUDGET) -> None:
        self.history = history
        self.budget = budget
        self.built = 0  # frames built so far
        self._frames: OrderedDict[_Key, Relayed] = OrderedDict()
        self._bytes = 0
        self._selectors: OrderedDict[int, Selector] = OrderedDict()
        self._bound: tuple[int, Bindings] | None = None  # the last epoch appended, what it binds

    def __len__(self) -> int:
        """The distinct frames kept (one may serve as both variants)."""
        return len({id(frame) for frame in self._frames.values()})

    def append(self, frame: Relayed, record: EpochRecord) -> Relayed:
        """Keep ``frame``, the next epoch, verified with the record ``record``,
        in the history, with ``fresh`` from the epoch appended before it (if
        any); ready for building, so that it is not decoded again.

        Raises:
            ValueError: ``frame`` is not of the history's next epoch.
        """
        bound = bindings(record)
        fresh = None
        if self._bound is not None and self._bound[0] == frame.epoch - 1:
            before = self._bound[1]
            fresh = frozenset(k for k, h in bound.items() if before.get(k) != h)
        entry = dataclasses.replace(frame, fresh=fresh)
        self.history.append(entry)
        self._bound = (entry.epoch, bound)
        self._keep(entry.epoch, Selector(entry, record))
        return entry

    def frame(
        self, epoch: int, subscription: Subscription, *, msgpack: bool = False, first: bool = False
    ) -> Relayed | None:
        """The frame of ``epoch`` for ``subscription``, in MessagePack or JSON,
        as its connection's ``first`` or a later one; None once the epoch
        has left the history."""
        full = self.history.get(epoch)
        if full is None:
            return None
        every = subscription.assets is None and not subscription.checkpoints
        if every and not first and full.msgpack == msgpack:
            return full
        if subscription.checkpoints:
            first = False
        key = (epoch, subscription, msgpack, first)
        kept = self._frames.get(key)
        if kept is not None:
            self._frames.move_to_end(key)
            return kept
        selector = self._selectors.get(epoch)
        if selector is None:
            selector = self._keep(epoch, Selector(full))
        if first and selector.same_variants(subscription):
            frame = self.frame(epoch, subscription, msgpack=msgpack)
            assert frame is not None
        else:
            payload = encode(selector.message_for(subscription, first), msgpack)
            frame = Relayed(epoch, payload, text=not msgpack, msgpack=msgpack)
            self.built += 1
        self._frames[key] = frame  # one serving as two variants counts twice: within budget
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
