"""A custodian's log of epochs built in memory from the protocol's own pieces (tests only)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier import rfc9162
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.stream import EpochMessage

ORIGIN = "example.com/solvency/test"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
VKEY = verifier_key_for(ORIGIN, KEY.public_key())


def record(
    epoch: int,
    liabilities: int = 100,
    reserves: int = 150,
    stale: bool = False,
    timestamp: int | None = None,
) -> bytes:
    if timestamp is None:
        timestamp = 1_790_000_000_000 + epoch * 1000
    as_of = timestamp - (120_000 if stale else 500)
    sources = (ReserveSource("cold", reserves, as_of),)
    if stale:
        status = Status.UNPROVEN
    else:
        status = Status.SOLVENT if reserves >= liabilities else Status.INSOLVENT
    asset = AssetState(
        "BTC", 8, 4, bytes([epoch % 256]) * 32, liabilities, reserves, status, sources
    )
    return EpochRecord(epoch, timestamp, 60_000, (asset,)).encode()


class FakeLog:
    """Appends records and returns the stream message the prover would publish."""

    def __init__(self, key: Ed25519PrivateKey = KEY, origin: str = ORIGIN) -> None:
        self.key, self.origin = key, origin
        self.hashes: list[bytes] = []
        self.messages: list[EpochMessage] = []

    def checkpoint(self, size: int) -> bytes:
        root = rfc9162.root_from_leaf_hashes(self.hashes[:size])
        return sign_note(Checkpoint(self.origin, size, root).to_note_body(), self.origin, self.key)

    def append(self, data: bytes | None = None) -> EpochMessage:
        epoch = len(self.hashes)
        data = record(epoch) if data is None else data
        self.hashes.append(rfc9162.leaf_hash(data))
        size = epoch + 1
        message = EpochMessage(
            record=data,
            checkpoint=self.checkpoint(size),
            inclusion=tuple(rfc9162.inclusion_proof(self.hashes, epoch, size)),
            consistency=tuple(rfc9162.consistency_proof(self.hashes, epoch, size)),
        )
        self.messages.append(message)
        return message
