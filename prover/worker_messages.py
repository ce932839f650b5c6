"""The tree worker's messages: what the parent sends a tree worker and what it
answers, typed values in msgpack (msgspec), one frame each, so that they
could cross a network as well as a pipe. Pure.

Each request is answered by one reply (``Done`` when there is nothing to
tell) but ``Stage`` and ``Release``, which have none. A refusal is one of the
error replies, raised on the parent's side as today's exceptions, with the
same message (``error_of``): ``Unretained`` as ``NotRetained``,
``ExportFailed`` as ``ProverError`` (a proof file not written), ``Failed`` as
``RuntimeError``.

Invariants:

- Sums of a tree (totals, path sums) reach 2**96, past msgpack's 64-bit
  integers: they travel as ``SUM_SIZE`` big-endian bytes (``WireRoot``,
  ``WireProof``); balances fit 64 bits.
- The salt period (its secret) travels in ``Begin`` only: the worker derives
  salts, padding keys and slot orders from it.
- Paths travel as ``str``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from prover.errors import NotRetained, ProverError
from prover.ledger import AssetRoot, UserProof
from prover.mapped import ProofBasis
from prover.periods import SaltPeriod
from verifier.hashing import encode_sum
from verifier.sumtree import PathStep

__all__ = [
    "Applied",
    "Apply",
    "Begin",
    "Build",
    "Built",
    "Closed",
    "Done",
    "Export",
    "ExportFailed",
    "Failed",
    "Found",
    "FoundMany",
    "Pending",
    "ProofOf",
    "ProofsOf",
    "Release",
    "Reply",
    "Request",
    "Row",
    "Rows",
    "Snapshot",
    "Snapshotted",
    "Stage",
    "Stop",
    "Unhashed",
    "Unretained",
    "WireProof",
    "WireRoot",
    "WriteProofs",
    "Written",
    "decode_reply",
    "decode_request",
    "encode",
    "error_of",
    "merge_proofs",
    "merge_wire_proofs",
]

Row = tuple[str, str, int]  # user, asset, amount


@dataclass(frozen=True, slots=True)
class Applied:
    """The trees' answer to an epoch: every root and how long the trees took;
    each asset's room (``Ledger.room``: the new holders its tree takes in
    this period before it must grow a level); the staged updates the close
    found not hashed ahead; the assets whose tree grew a level in it."""

    roots: tuple[AssetRoot, ...]
    seconds: float
    room: Mapping[str, int] = field(default_factory=dict)
    unhashed: int = 0
    grown: tuple[str, ...] = ()


# Values on the wire


class WireRoot(msgspec.Struct, frozen=True, array_like=True):
    """An ``AssetRoot``, its total as ``SUM_SIZE`` bytes."""

    asset: str
    height: int
    root: bytes
    total: bytes

    @classmethod
    def of(cls, root: AssetRoot) -> WireRoot:
        return cls(root.asset, root.height, root.root, encode_sum(root.total))

    def value(self) -> AssetRoot:
        return AssetRoot(self.asset, self.height, self.root, int.from_bytes(self.total, "big"))


WireStep = tuple[bytes, bytes]  # sibling hash, sum as SUM_SIZE bytes
WireEntry = tuple[str, int, int, tuple[WireStep, ...]]  # asset, slot, balance, path


class WireProof(msgspec.Struct, frozen=True, array_like=True):
    """A ``UserProof``, its path sums as ``SUM_SIZE`` bytes."""

    user: str
    salt: bytes
    entries: tuple[WireEntry, ...]

    @classmethod
    def of(cls, proof: UserProof) -> WireProof:
        return cls(
            proof.user,
            proof.salt,
            tuple(
                (asset, slot, balance, tuple((s.hash, encode_sum(s.sum)) for s in path))
                for asset, slot, balance, path in proof.entries
            ),
        )

    def value(self) -> UserProof:
        entries = tuple(
            (asset, slot, balance, tuple(PathStep(h, int.from_bytes(s, "big")) for h, s in path))
            for asset, slot, balance, path in self.entries
        )
        return UserProof(self.user, self.salt, entries)


def merge_proofs(parts: Iterable[UserProof | None]) -> UserProof | None:
    """One user's proof from the proofs of disjoint sets of trees of one salt
    period: the entries of all, in asset order; None if none holds anything."""
    found = [p for p in parts if p is not None]
    if not found:
        return None
    entries = sorted((e for p in found for e in p.entries), key=lambda e: e[0])
    return UserProof(found[0].user, found[0].salt, tuple(entries))


def merge_wire_proofs(parts: Iterable[WireProof | None]) -> WireProof | None:
    """``merge_proofs`` on the wire form."""
    found = [p for p in parts if p is not None]
    if not found:
        return None
    entries = sorted((e for p in found for e in p.entries), key=lambda e: e[0])
    return WireProof(found[0].user, found[0].salt, tuple(entries))


# Requests


class _Request(msgspec.Struct, frozen=True, tag=True):
    """Base of the requests; each is tagged with its class name."""


class Begin(_Request, frozen=True):
    """A new salt period: ``Rows`` follow, then ``Build``. The proofs of
    ``retain`` earlier epochs are kept, in at most ``retain_bytes``. Each tree
    leaves at least ``room[asset]`` free slots and ``room_share`` times its
    holders (``Ledger.build``); ``ahead``: the trees catch up in the
    background before their first epoch (``Ledger.ahead``)."""

    period: SaltPeriod
    assets: list[str]
    retain: int
    retain_bytes: int
    room: dict[str, int] = {}
    room_share: float = 0.0
    ahead: bool = False


class Rows(_Request, frozen=True):
    """Balance rows of the period being begun."""

    rows: list[Row]


class Build(_Request, frozen=True):
    """Build every tree from the rows received since ``Begin``: ``Built``."""


class Stage(_Request, frozen=True):
    """Rows of the coming epoch, ahead of ``Apply``. No answer: a failure is
    told by the next ``Apply``."""

    rows: list[Row]


class Release(_Request, frozen=True):
    """The parent has handed out the epoch: hash ahead again. No answer."""


class Apply(_Request, frozen=True):
    """Add ``assets``, apply the staged rows then ``rows``, close the epoch: ``Closed``."""

    assets: list[str]
    rows: list[Row]


class Unhashed(_Request, frozen=True):
    """How many staged updates wait to be hashed: ``Pending``."""


class ProofOf(_Request, frozen=True):
    """``user``'s proof as of the last apply, or ``age`` applies before it: ``Found``."""

    user: str
    age: int = 0


class Snapshot(_Request, frozen=True):
    """Freeze a copy of the trees for an export: ``Snapshotted``, with the
    snapshot's user ids if ``ids``."""

    ids: bool = False


class Export(_Request, frozen=True):
    """Write the proofs of snapshot users ``start .. start+count`` into ``out``,
    each with ``basis`` (the record's part, the same for all): ``Written``."""

    out: str
    start: int
    count: int
    basis: ProofBasis


class ProofsOf(_Request, frozen=True):
    """The snapshot's proof of each of ``users``: ``FoundMany``."""

    users: list[str]


class WriteProofs(_Request, frozen=True):
    """Write one proof file per proof into ``out``: ``Written``."""

    out: str
    proofs: list[WireProof]
    basis: ProofBasis


class Stop(_Request, frozen=True):
    """End the worker, after answering ``Done``."""


Request = (
    Begin
    | Rows
    | Build
    | Stage
    | Release
    | Apply
    | Unhashed
    | ProofOf
    | Snapshot
    | Export
    | ProofsOf
    | WriteProofs
    | Stop
)


# Replies


class _Reply(msgspec.Struct, frozen=True, tag=True):
    """Base of the replies; each is tagged with its class name."""


class Done(_Reply, frozen=True):
    """Done, nothing to tell (``Begin``, ``Rows``, ``Stop``)."""


class Built(_Reply, frozen=True):
    """Every root of the period just built, in asset order."""

    roots: tuple[WireRoot, ...]


class Closed(_Reply, frozen=True):
    """An epoch applied (``Applied``)."""

    roots: tuple[WireRoot, ...]
    seconds: float
    room: dict[str, int] = {}
    unhashed: int = 0
    grown: list[str] = []

    def value(self) -> Applied:
        roots = tuple(r.value() for r in self.roots)
        return Applied(roots, self.seconds, self.room, self.unhashed, tuple(self.grown))


class Pending(_Reply, frozen=True):
    """The updates staged and not hashed yet (``Unhashed``)."""

    updates: int


class Found(_Reply, frozen=True):
    """One user's proof; None if they held nothing then."""

    proof: WireProof | None


class FoundMany(_Reply, frozen=True):
    """The proofs of ``ProofsOf``'s users, in its order."""

    proofs: list[WireProof | None]


class Snapshotted(_Reply, frozen=True):
    """The snapshot's number of users, and their ids if asked."""

    users: int
    ids: list[str] = []


class Written(_Reply, frozen=True):
    """The number of proof files written."""

    files: int


class Unretained(_Reply, frozen=True):
    """``NotRetained``: the trees of that epoch are no longer kept."""

    message: str


class ExportFailed(_Reply, frozen=True):
    """``ProverError``: a proof file was not written."""

    message: str


class Failed(_Reply, frozen=True):
    """Any other failure: ``RuntimeError``."""

    message: str


Reply = (
    Done
    | Built
    | Closed
    | Pending
    | Found
    | FoundMany
    | Snapshotted
    | Written
    | Unretained
    | ExportFailed
    | Failed
)

_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(Request)
_replies = msgspec.msgpack.Decoder(Reply)


def encode(message: _Request | _Reply) -> bytes:
    return _encoder.encode(message)


def decode_request(data: bytes) -> Request:
    """Raises ``msgspec.DecodeError`` (a ``ValidationError`` too) if ``data`` is no request."""
    return _requests.decode(data)


def decode_reply(data: bytes) -> Reply:
    """Raises ``msgspec.DecodeError`` (a ``ValidationError`` too) if ``data`` is no reply."""
    return _replies.decode(data)


def error_of(reply: Reply, expected: str) -> Exception:
    """The exception that ``reply``, instead of the ``expected`` one, stands for."""
    if isinstance(reply, Unretained):
        return NotRetained(reply.message)
    if isinstance(reply, ExportFailed):
        return ProverError(reply.message)
    if isinstance(reply, Failed):
        return RuntimeError(f"tree worker: {reply.message}")
    return RuntimeError(f"tree worker: answered {type(reply).__name__}, not {expected}")
