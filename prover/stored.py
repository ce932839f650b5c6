"""Epoch messages rebuilt from storage, for the root stream's replays and the
proofs of earlier epochs: the record, the checkpoint with the witnesses'
cosignatures stored for it (PROTOCOL §12.4), the log proofs, and the signed
reserve reports the record binds (those kept).

Every function here reads the store: call it on the database thread.
"""

from __future__ import annotations

from storage.store import Store
from verifier.record import EpochRecord
from verifier.stream import EpochMessage

__all__ = ["stored_frame", "stored_message"]


def stored_frame(store: Store, epoch: int) -> str:
    """Epoch ``epoch`` as the root stream's frame."""
    return stored_message(store, epoch).to_json()


def stored_message(store: Store, epoch: int) -> EpochMessage:
    """Epoch ``epoch`` as stored, with what was stored for it since."""
    stored = store.epoch(epoch)
    return EpochMessage(
        record=stored.record,
        checkpoint=stored.checkpoint + _cosignatures(store, epoch),
        inclusion=tuple(store.inclusion_proof(epoch, epoch + 1)),
        consistency=tuple(store.consistency_proof(epoch, epoch + 1)),
        reports=_reports(store, stored.record),
    )


def _cosignatures(store: Store, epoch: int) -> bytes:
    """The witnesses' cosignature lines stored for ``epoch``."""
    return "".join(row.line for row in store.cosignatures(epoch, epoch)).encode()


def _reports(store: Store, record: bytes) -> tuple[bytes, ...]:
    """The signed reports a stored record binds, in its order (those kept)."""
    assets = EpochRecord.decode(record).assets
    hashes = [s.report_hash for a in assets for s in a.sources if s.attested]
    notes = store.reserve_reports(hashes) if hashes else {}
    return tuple(notes[h] for h in hashes if h in notes)
