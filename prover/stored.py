"""Epochs rebuilt from storage, for the root stream's replays and the proofs
of earlier epochs: the record, the checkpoint with the witnesses'
cosignatures stored for it (PROTOCOL §12.4), the inclusion proof of its
header in the log, and the signed reserve reports the record binds (those
kept).

A stored record is read only if its log leaf is its header (PROTOCOL §5):
a database written before the asset map (record version 2 unreleased, when
the leaf was the whole record) is refused with ``UnreadableEpoch``, saying so.

Every function here but ``stored_record`` reads the store: call it on the
database thread.
"""

from __future__ import annotations

from prover.errors import UnreadableEpoch
from prover.mapped import MappedRecord
from storage.rows import EpochRow
from storage.store import Store
from verifier import rfc9162
from verifier.errors import FormatError
from verifier.record import EpochRecord
from verifier.stream import EpochMessage

__all__ = ["stored_epoch", "stored_record"]


def stored_record(row: EpochRow) -> EpochRecord:
    """The record of a stored epoch, checked against its log leaf.

    Raises:
        UnreadableEpoch: the record does not decode, or its header is not
            the log's leaf (a database of an earlier layout).
    """
    try:
        record = EpochRecord.decode(row.record)
    except FormatError as exc:
        problem = f"its record does not decode ({exc})"
    else:
        if rfc9162.leaf_hash(record.header.encode()) == row.leaf_hash:
            return record
        problem = "its log leaf is not its record's header"
    if rfc9162.leaf_hash(row.record) == row.leaf_hash:
        problem = "its log leaf is the whole record"
    raise UnreadableEpoch(
        f"epoch {row.number} in the database cannot be read: {problem}. It was "
        "written before records had an asset map (record version 2, unreleased, "
        "whose layout changed); this prover does not read such a database: start "
        "with a new one"
    )


def stored_epoch(
    store: Store, epoch: int, known: MappedRecord | None = None
) -> tuple[EpochMessage, MappedRecord]:
    """Epoch ``epoch`` as stored, with what was stored for it since, and its
    record (``known``, if the caller has it already: records never change).

    Raises:
        UnreadableEpoch: see ``stored_record``.
    """
    stored = store.epoch(epoch)
    mapped = MappedRecord(stored_record(stored)) if known is None else known
    message = EpochMessage(
        record=stored.record,
        checkpoint=stored.checkpoint + _cosignatures(store, epoch),
        inclusion=tuple(store.inclusion_proof(epoch, epoch + 1)),
        reports=_reports(store, mapped.record),
    )
    return message, mapped


def _cosignatures(store: Store, epoch: int) -> bytes:
    """The witnesses' cosignature lines stored for ``epoch``."""
    return "".join(row.line for row in store.cosignatures(epoch, epoch)).encode()


def _reports(store: Store, record: EpochRecord) -> tuple[bytes, ...]:
    """The signed reports a stored record binds, in its order (those kept)."""
    hashes = [s.report_hash for a in record.assets for s in a.sources if s.attested]
    notes = store.reserve_reports(hashes) if hashes else {}
    return tuple(notes[h] for h in hashes if h in notes)
