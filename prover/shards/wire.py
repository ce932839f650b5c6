"""The messages of the sharded prover's stream on NATS JetStream
(docs/SCALING.md, "The stream"). Pure.

One stream holds two kinds of message, MessagePack arrays encoded and
decoded here only:

- on ``<prefix>.part.<i>``, a ``Part``: shard ``i``'s updates of one balance
  batch, in the batch's order, each with the producer's seq;
- on ``<prefix>.commit``, a ``Commit``: one per accepted batch, after its
  parts, naming their stream sequences (balance batches) or carrying the
  ingest message itself (reserves and reserve reports, which only the
  coordinator reads).

A batch belongs to the epoch whose cut is the first at or above its
commit's stream sequence; a part no commit names is never applied.
Invariant: a ``Commit``'s ``parts`` are in shard order (a shard's part cut
into several under the server's message size limit: those consecutive, in
row order), and every part's stream sequence is below the commit's.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

import msgspec
from msgspec import Meta, Struct

from prover.errors import ProverError

__all__ = [
    "Commit",
    "Part",
    "commit_subject",
    "decode",
    "encode",
    "message_id",
    "part_subject",
]

DEFAULT_PREFIX: Final = "ledger"
U64 = Annotated[int, Meta(ge=0)]  # amounts past 2**64 - 1 are refused by the trees


class Part(Struct, array_like=True, frozen=True, tag=1):
    """One shard's updates of a balance batch: ``(seq, user, asset, amount)``."""

    source: str
    rows: tuple[tuple[U64, str, str, U64], ...]


class Commit(Struct, array_like=True, frozen=True, tag=2):
    """An accepted batch: its source, the seqs of its first and last update,
    and its parts as ``(shard, stream sequence)``; or, for a batch of
    reserves or reserve reports, ``message``: the ingest message (JSON)."""

    source: str
    first_seq: U64
    last_seq: U64
    parts: tuple[tuple[int, U64], ...] = ()
    message: bytes = b""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Part | Commit)


def encode(message: Part | Commit) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Part | Commit:
    """Raises:
    ProverError: not a message of the stream."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProverError(f"not a ledger stream message: {exc}") from None


def part_subject(prefix: str, shard: int) -> str:
    return f"{prefix}.part.{shard}"


def commit_subject(prefix: str) -> str:
    return f"{prefix}.commit"


def message_id(data: bytes) -> str:
    """The ``Nats-Msg-Id`` of an encoded message: a digest of its bytes, so
    that a batch sent again (the same updates, the same parts) is stored
    once within the stream's duplicate window, and different messages never
    share one."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
