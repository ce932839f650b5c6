"""The control messages between the coordinator and a shard (docs/SCALING.md,
"Consistent cuts"). Pure.

The coordinator sends a request on ``<prefix>.shard.<i>.control``
(``control_subject``) and shard ``i`` answers it with one reply; both are
msgspec Structs in MessagePack arrays, tagged, encoded and decoded here
only::

    Stage(epoch, cut, assets, period)
                               -> Staged(epoch, cut, batches, growth, next, room)
    Close(epoch, heights, begin, switch)
                               -> ClosedPart(epoch, roots, state)
    Prove(user, epoch)         -> PartProof(salt, entries) | NoProof
    ExportPage(epoch, start, count)
                               -> ExportedPage(epoch, instance, users, next, proofs)
    Status()                   -> ShardStatus(closed, closed_cut, staged, staged_cut,
                                              switched, heights)
    any of them                -> Refused(code, message)

An epoch closes in two steps: ``Stage`` applies nothing yet, it stages the
batches committed up to ``cut`` and tells which trees must grow
(``Ledger.growth``); the coordinator takes the largest per asset over all
shards, computes each new height (``grown_height``) and sends them to every
shard with ``Close``, which rebuilds those parts and answers the roots of
its subtrees. A salt rotation (docs/SCALING.md, "Salt rotation across
shards") rides on the same two steps: ``Stage.period`` names the period
the trees must be of, ``Staged.next`` how far a shard's next trees are,
``Close.begin`` starts their build and ``Close.switch`` closes the epoch
with them.

Invariants:

- Sums of a tree (subtree totals, path sums) travel as ``SUM_SIZE``
  big-endian bytes: they reach past 64 bits. Balances, seqs and heights fit.
- Hashes are ``DIGEST_SIZE`` bytes; a reply with another length is refused
  when decoded.
- Requests and replies have distinct tags: a reply is never decoded as a
  request, nor the other way round.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from prover.errors import NotRetained, ProverError
from prover.ledger import AssetRoot, UserProof
from prover.shards.intake import NotYet, ReaderState
from verifier.hashing import DIGEST_SIZE, MAX_HEIGHT, SUM_SIZE, encode_sum
from verifier.sumtree import PathStep

__all__ = [
    "CODES",
    "PAGE_BYTES",
    "Begin",
    "Close",
    "ClosedPart",
    "ExportPage",
    "ExportedPage",
    "NextState",
    "NoProof",
    "PartProof",
    "PartRoot",
    "Prove",
    "Refused",
    "Reply",
    "Request",
    "ShardStatus",
    "Stage",
    "Staged",
    "Status",
    "UserPart",
    "WireState",
    "control_subject",
    "decode_reply",
    "decode_request",
    "encode",
    "expect",
]

U64 = Annotated[int, Meta(ge=0)]  # msgpack integers end at 2**64 - 1
Height = Annotated[int, Meta(ge=0, le=MAX_HEIGHT)]
Digest = Annotated[bytes, Meta(min_length=DIGEST_SIZE, max_length=DIGEST_SIZE)]
Sum = Annotated[bytes, Meta(min_length=SUM_SIZE, max_length=SUM_SIZE)]  # big-endian
Code = Literal["not-yet", "not-retained", "bad-request", "internal"]
CODES: Final[tuple[Code, ...]] = ("not-yet", "not-retained", "bad-request", "internal")
PAGE_BYTES: Final = 256 << 10  # proofs in an ExportedPage, past which a shard adds no user


def control_subject(prefix: str, shard: int) -> str:
    return f"{prefix}.shard.{shard}.control"


# Values


class PartRoot(Struct, array_like=True, frozen=True):
    """A shard's subtree of one asset: the whole tree's height, the subtree's
    root hash and total."""

    asset: str
    height: Height
    root: Digest
    total: Sum

    @classmethod
    def of(cls, root: AssetRoot, bits: int) -> PartRoot:
        """``root``, a shard ledger's subtree (``Ledger.roots``), of a tree in ``2**bits`` parts."""
        return cls(root.asset, root.height + bits, root.root, encode_sum(root.total))

    @property
    def record(self) -> tuple[bytes, int]:
        """(hash, sum): what ``TopTree.combine`` takes of each part."""
        return self.root, int.from_bytes(self.total, "big")


class WireState(Struct, array_like=True, frozen=True):
    """A ``ReaderState``: the cut, the sources' marks as of it, where to resume."""

    cut: U64
    marks: dict[str, U64]
    resume: U64

    @classmethod
    def of(cls, state: ReaderState) -> WireState:
        return cls(state.cut, dict(state.marks), state.resume)

    def value(self) -> ReaderState:
        return ReaderState(self.cut, dict(self.marks), self.resume)


Step = tuple[Digest, Sum]  # a sibling: hash, sum
Entry = tuple[str, U64, U64, tuple[Step, ...]]  # asset, slot in the whole tree, balance, path


# Requests


class Stage(Struct, array_like=True, frozen=True, tag=1):
    """Stage the batches committed after the last cut and at or before
    ``cut``, as epoch ``epoch``; ``assets``: every asset of the deployment,
    each with its whole tree's height, at which a shard adds those it does
    not hold yet. The same request again (no ``Close`` in between) gets the
    same answer."""

    epoch: U64
    cut: U64
    assets: dict[str, Height]
    period: U64 = 0  # the salt period the trees must be of (0: whichever they are)


class Begin(Struct, array_like=True, frozen=True):
    """Build the trees of salt period ``period`` at these whole ``heights``
    (every asset's), from the holders as of the epoch closed."""

    period: U64
    heights: dict[str, Height]


class Close(Struct, array_like=True, frozen=True, tag=2):
    """Close the staged epoch ``epoch``, the trees of ``heights`` rebuilt at
    those heights (the whole trees'): every asset that must grow in any
    shard, none other. With ``switch``, close it with the trees of that
    salt period instead, ``heights`` every asset's (grown or not); with
    ``begin``, begin those trees' build after the close. The same request
    again gets the same answer."""

    epoch: U64
    heights: dict[str, Height]
    begin: Begin | None = None
    switch: U64 = 0


class Prove(Struct, array_like=True, frozen=True, tag=3):
    """``user``'s paths up to the shard's subtree roots as of epoch
    ``epoch`` (-1: the last the shard closed). The shard counts back from
    the epoch it closed last, which may be one past the coordinator's
    latest (closed, not yet appended); an epoch it no longer keeps (nor
    closed yet) is refused ``not-retained``."""

    user: str
    epoch: Annotated[int, Meta(ge=-1)] = -1


class Status(Struct, array_like=True, frozen=True, tag=4):
    """Where the shard stands: what a coordinator taking the log over asks
    first, since the one before it may have staged or closed an epoch it
    never appended."""


class ExportPage(Struct, array_like=True, frozen=True, tag=9):
    """The lower proofs, as of epoch ``epoch``, of the shard's users
    ``start`` onwards in its ledger's order, at most ``count`` of them
    looked at: a page of an export (``ExportedPage``). The first page
    (``start`` 0) freezes the shard's trees as of ``epoch``, which must be
    the epoch it closed last; the next pages are read from them, while
    epochs go on closing (prover/shards/core.py). Refused ``not-retained``
    if ``epoch`` is not the last closed (first page), or no export of it
    is under way (the shard restarted, or another export began)."""

    epoch: U64
    start: U64
    count: Annotated[int, Meta(ge=1)]


Request = Stage | Close | Prove | Status | ExportPage


# Replies


class NextState(Struct, array_like=True, frozen=True):
    """A shard's trees of the salt period ``period`` it must rotate to:
    built from its holders as of the close of epoch ``since`` (-1: no
    build of that period); ``ready``, built and fed every update staged
    since, this epoch's too: a close may switch to them, at ``heights``
    grown as ``growth`` asks (both empty unless ready). ``holders``: per
    asset, the holders of the part after this epoch, for the heights of a
    build to begin."""

    period: U64
    since: Annotated[int, Meta(ge=-1)]
    ready: bool
    holders: dict[str, U64]
    heights: dict[str, Height]
    growth: dict[str, U64]


class Staged(Struct, array_like=True, frozen=True, tag=11):
    """Epoch ``epoch`` staged up to ``cut``: ``batches`` batches (replays
    included); ``growth``, the assets whose part must grow, each with the
    part's holders (``Ledger.growth``); ``room``, per asset, the slots of
    the part's order not handed out yet once the epoch is staged
    (``Ledger.room`` of the part: a tree grows once any part has none;
    empty in a reply saved before it was reported)."""

    epoch: U64
    cut: U64
    batches: U64
    growth: dict[str, U64]
    next: NextState | None = None  # on an earlier period than the Stage's
    room: dict[str, U64] = {}


class ClosedPart(Struct, array_like=True, frozen=True, tag=12):
    """Epoch ``epoch`` closed: the shard's subtree of every asset, in asset
    order; where its reader stands (``Intake.state``: what a restarted
    shard resumes from, with the balances as of the cut)."""

    epoch: U64
    roots: tuple[PartRoot, ...]
    state: WireState


class PartProof(Struct, array_like=True, frozen=True, tag=13):
    """A user's salt and, per asset held, the leaf's slot in the whole
    tree, the balance and the path up to the shard's subtree root (the
    coordinator adds the top levels)."""

    salt: bytes
    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, proof: UserProof) -> PartProof:
        return cls(
            proof.salt,
            tuple(
                (asset, slot, amount, tuple((s.hash, encode_sum(s.sum)) for s in path))
                for asset, slot, amount, path in proof.entries
            ),
        )

    def value(self, user: str) -> UserProof:
        """The ``UserProof`` of ``user`` that this is (its paths the lower parts)."""
        entries = tuple(
            (asset, slot, amount, tuple(PathStep(h, int.from_bytes(s, "big")) for h, s in path))
            for asset, slot, amount, path in self.entries
        )
        return UserProof(user, self.salt, entries)


UserPart = tuple[str, PartProof]  # a user and their lower proof


class ExportedPage(Struct, array_like=True, frozen=True, tag=19):
    """A page of epoch ``epoch``'s export: the users looked at were
    ``start`` (of the request) to ``next - 1`` of the shard's ledger, of
    ``users`` it knows now (those it took in after the epoch held nothing
    then); ``proofs``, those of them that held anything, in that order.
    ``instance`` names the shard's ledger, whose order of users is its own:
    a page of another instance (the shard restarted) does not continue the
    pages before. A shard stops adding users once ``proofs`` encode to
    ``PAGE_BYTES``: a reply is at most that plus one user's proof."""

    epoch: U64
    instance: U64
    users: U64
    next: U64
    proofs: tuple[UserPart, ...]


class NoProof(Struct, array_like=True, frozen=True, tag=14):
    """The user held nothing in that epoch (or is unknown to the shard)."""


class Refused(Struct, array_like=True, frozen=True, tag=15):
    """The request is not answered: ``not-yet``, the shard has not read as
    far as the cut (ask again); ``not-retained``, the proofs of that epoch
    are gone; ``bad-request``, the request is malformed or out of turn;
    ``internal``, the shard failed and answers nothing until restarted."""

    code: Code
    message: str


class ShardStatus(Struct, array_like=True, frozen=True, tag=16):
    """The last epoch the shard closed and at which cut (-1: none since it
    started), and the epoch staged and not closed, with its cut (-1: none);
    the salt period the last epoch closed switched the trees to, and their
    whole heights then (0 and none: that close switched nothing)."""

    closed: Annotated[int, Meta(ge=-1)]
    closed_cut: U64
    staged: Annotated[int, Meta(ge=-1)]
    staged_cut: U64
    switched: U64 = 0
    heights: dict[str, Height] = {}


Reply = Staged | ClosedPart | PartProof | NoProof | ShardStatus | ExportedPage | Refused

_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(Request)
_replies = msgspec.msgpack.Decoder(Reply)


def encode(message: Request | Reply) -> bytes:
    return _encoder.encode(message)


def decode_request(data: bytes) -> Request:
    """Raises:
    ProverError: ``data`` is not a control request."""
    try:
        return _requests.decode(data)
    except msgspec.DecodeError as exc:
        raise ProverError(f"not a shard control request: {exc}") from None


def decode_reply(data: bytes) -> Reply:
    """Raises:
    ProverError: ``data`` is not a control reply."""
    try:
        return _replies.decode(data)
    except msgspec.DecodeError as exc:
        raise ProverError(f"not a shard control reply: {exc}") from None


R = TypeVar("R", Staged, ClosedPart, PartProof, NoProof, ShardStatus, ExportedPage)


def expect(reply: Reply, *kinds: type[R]) -> R:
    """``reply`` if it is one of ``kinds``; otherwise the error it stands for.

    Raises:
        NotYet: refused ``not-yet``.
        NotRetained: refused ``not-retained``.
        ProverError: refused otherwise, or another reply.
    """
    if isinstance(reply, kinds):
        return reply
    if isinstance(reply, Refused):
        if reply.code == "not-yet":
            raise NotYet(reply.message)
        if reply.code == "not-retained":
            raise NotRetained(reply.message)
        raise ProverError(f"shard refused ({reply.code}): {reply.message}")
    wanted = " or ".join(k.__name__ for k in kinds)
    raise ProverError(f"shard answered {type(reply).__name__}, not {wanted}")
