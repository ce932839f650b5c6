"""A custodian's log of epochs built in memory from the protocol's own pieces (tests only).

The log's leaf of each epoch is its record's header (PROTOCOL §5); ``append``
returns the full frame the prover publishes, and ``assets_frame`` and
``checkpoint_frame`` what it sends a subscriber of chosen assets or of
checkpoints only (§11.2) for the same epoch.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier import rfc9162
from verifier.assetmap import AssetMap
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.hashing import hasher_for
from verifier.proof import AssetPath, ProofFile
from verifier.record import HEADER_SIZE, AssetState, EpochRecord, ReserveSource, Status
from verifier.report import report_hash
from verifier.selection import select_entries
from verifier.stream import AssetsMessage, CheckpointMessage, EpochMessage
from verifier.sumtree import PathStep

ORIGIN = "example.com/solvency/test"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
VKEY = verifier_key_for(ORIGIN, KEY.public_key())


def asset(
    name: str,
    epoch: int,
    liabilities: int = 100,
    reserves: int = 150,
    stale: bool = False,
    timestamp: int | None = None,
) -> AssetState:
    """One asset's entry at ``epoch`` with one reserve source, ``cold``."""
    if timestamp is None:
        timestamp = 1_790_000_000_000 + epoch * 1000
    as_of = timestamp - (120_000 if stale else 500)
    sources = (ReserveSource("cold", reserves, as_of),)
    if stale:
        status = Status.UNPROVEN
    else:
        status = Status.SOLVENT if reserves >= liabilities else Status.INSOLVENT
    return AssetState(name, 8, 4, bytes([epoch % 256]) * 32, liabilities, reserves, status, sources)


def record(
    epoch: int,
    liabilities: int = 100,
    reserves: int = 150,
    stale: bool = False,
    timestamp: int | None = None,
) -> bytes:
    """A full record of one asset, BTC."""
    if timestamp is None:
        timestamp = 1_790_000_000_000 + epoch * 1000
    btc = asset("BTC", epoch, liabilities, reserves, stale, timestamp)
    return EpochRecord(epoch, timestamp, 60_000, (btc,)).encode()


def many(epoch: int, names: Iterable[str], **overrides: dict[str, int]) -> bytes:
    """A full record of the assets ``names`` (each solvent, unless ``overrides``
    names it with ``asset``'s keyword arguments)."""
    timestamp = 1_790_000_000_000 + epoch * 1000
    assets = tuple(
        asset(n, epoch, timestamp=timestamp, **overrides.get(n, {}))  # type: ignore[arg-type]
        for n in sorted(names)
    )
    return EpochRecord(epoch, timestamp, 60_000, assets).encode()


class FakeLog:
    """Appends records and returns the stream messages the prover would publish."""

    def __init__(self, key: Ed25519PrivateKey = KEY, origin: str = ORIGIN) -> None:
        self.key, self.origin = key, origin
        self.hashes: list[bytes] = []
        self.messages: list[EpochMessage] = []

    def checkpoint(self, size: int) -> bytes:
        root = rfc9162.root_from_leaf_hashes(self.hashes[:size])
        return sign_note(Checkpoint(self.origin, size, root).to_note_body(), self.origin, self.key)

    def append(self, data: bytes | None = None, reports: tuple[bytes, ...] = ()) -> EpochMessage:
        """Log the full record ``data`` (default ``record(epoch)``): its header is the leaf."""
        epoch = len(self.hashes)
        data = record(epoch) if data is None else data
        self.hashes.append(rfc9162.leaf_hash(data[:HEADER_SIZE]))
        size = epoch + 1
        message = EpochMessage(
            record=data,
            checkpoint=self.checkpoint(size),
            inclusion=tuple(rfc9162.inclusion_proof(self.hashes, epoch, size)),
            reports=reports,
        )
        self.messages.append(message)
        return message

    def assets_frame(self, epoch: int, chosen: Iterable[str]) -> AssetsMessage:
        """Epoch ``epoch``'s frame for a subscriber of the ``chosen`` assets."""
        full = self.messages[epoch]
        rec = EpochRecord.decode(full.record)
        chosen = set(chosen)
        wanted = {
            s.report_hash for a in rec.assets if a.asset in chosen for s in a.sources if s.attested
        }
        return AssetsMessage(
            header=rec.header.encode(),
            entries=select_entries(rec, chosen),
            checkpoint=full.checkpoint,
            inclusion=full.inclusion,
            reports=tuple(r for r in full.reports if report_hash(r) in wanted),
        )

    def checkpoint_frame(self, epoch: int) -> CheckpointMessage:
        """Epoch ``epoch``'s frame for a subscriber of checkpoints only."""
        full = self.messages[epoch]
        return CheckpointMessage(
            full.checkpoint, tuple(rfc9162.consistency_proof(self.hashes, epoch, epoch + 1))
        )


def user_proof(
    message: EpochMessage,
    user: str,
    salt: bytes,
    leaves: dict[str, tuple[int, int, tuple[PathStep, ...]]],
) -> ProofFile:
    """``user``'s proof of the record ``message`` carries: per asset id of
    ``leaves``, the slot, balance and sum tree path of the user's leaf."""
    rec = EpochRecord.decode(message.record)
    asset_map = AssetMap(hasher_for(rec.version), rec.entries)
    ids = [a.asset for a in rec.assets]
    paths = tuple(
        AssetPath(rec.entries[i], i, tuple(asset_map.path(i)), slot, balance, path)
        for name, (slot, balance, path) in leaves.items()
        for i in (ids.index(name),)
    )
    return ProofFile(user, salt, rec.header.encode(), paths, message.inclusion, message.checkpoint)
