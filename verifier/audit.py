"""The auditor's rules for the root stream, pure (docs/PROTOCOL.md §7, §11.2).

``audit_epoch`` takes the last verified state and the next stream message and
either returns the new state or raises. In order:

1. ``signature``: the checkpoint is signed by the custodian's key for the origin;
2. the record's header is in the log at index ``epoch`` (RFC 9162
   inclusion), and the entries sent are in its asset map: all of them (a
   full record), or those proving what it says of the chosen assets
   (``verifier.selection``: ``asset-map-mismatch``, ``asset-map-incomplete``);
3. ``epoch-size-mismatch``: it is the newest record: its epoch is the size - 1;
4. history only grows: ``replayed-checkpoint`` (a size not above the last),
   ``epoch-gap`` (a size skipped), ``fork`` (same size, other root, or a log
   that does not extend the last verified one: the root of its first ``size
   - 1`` leaves, from the inclusion path of the last, is not the last
   verified root; for a checkpoint alone, its RFC 9162 consistency proof);
5. ``time-went-back``: record times never decrease;
6. with witnesses configured, the checkpoint is witnessed (PROTOCOL §12.3):
   ``witness-signature-invalid``, ``witness-time``, ``witness-quorum``, with
   the checkpoint's record as the one its cosignatures vouch for.

A subscriber of checkpoints only gets no record: rules 2, 3 and 5 do not
apply, and rule 6 checks cosignatures without the record's time.

Solvency findings (an asset INSOLVENT or UNPROVEN, or a chosen asset the
record lacks: ``absent``) do not stop the chain of custody: they are
returned as ``alarms`` for the caller to act on.
``check_epoch`` returns a failure of rule 6 alongside the verified state,
for a caller that follows the chain of custody past it (``watch
--keep-going``); ``audit_epoch`` raises it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from verifier import rfc9162
from verifier.checkpoint import Checkpoint, VerifierKey, verify_checkpoint
from verifier.cosignature import Cosignature, WitnessKey
from verifier.errors import FormatError, VerificationError
from verifier.fields import exact_keys, hex32, load_object, natural, text
from verifier.proof import header_in_log
from verifier.quorum import plausible_cosignatures, require_quorum
from verifier.record import EpochRecord, Status
from verifier.selection import PartialRecord, check_selection
from verifier.stream import AssetsMessage, CheckpointMessage, EpochMessage, StreamMessage
from verifier.subscription import ALL_ASSETS, Subscription

__all__ = [
    "AuditState",
    "EpochAudit",
    "Finding",
    "RecordView",
    "audit_epoch",
    "check_epoch",
    "restore",
]

RecordView = EpochRecord | PartialRecord
"""What a frame proves of a record: all of it, or its chosen assets."""


@dataclass(frozen=True, slots=True)
class AuditState:
    """What the auditor keeps between epochs (and across restarts)."""

    origin: str
    size: int
    root: bytes
    timestamp_ms: int
    checkpoint: str  # the signed note, kept as evidence

    def to_json(self) -> str:
        doc = asdict(self)
        doc["root"] = self.root.hex()
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def parse(cls, data: str | bytes) -> AuditState:
        doc = exact_keys(
            load_object(data, 1 << 16, "audit state"),
            {"origin", "size", "root", "timestamp_ms", "checkpoint"},
            "audit state",
        )
        return cls(
            origin=text(doc["origin"], "origin"),
            size=natural(doc["size"], "size"),
            root=hex32(doc["root"], "root"),
            timestamp_ms=natural(doc["timestamp_ms"], "timestamp_ms"),
            checkpoint=text(doc["checkpoint"], "checkpoint"),
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """An alarm about one asset of a verified record."""

    asset: str
    status: str  # "insolvent", "unproven" or "absent"
    detail: str


@dataclass(frozen=True, slots=True)
class EpochAudit:
    """One epoch whose chain of custody (rules 1-5) verified.

    ``cosignatures`` are the valid ones by configured witnesses, and
    ``witness_failure`` is rule 6's failure or None: when set, ``state`` rests
    on the custodian's signature alone, not on a quorum of witnesses.
    """

    state: AuditState
    record: RecordView | None  # None: a checkpoint alone
    findings: tuple[Finding, ...]
    cosignatures: tuple[Cosignature, ...]
    witness_failure: VerificationError | None

    @property
    def epoch(self) -> int:
        """The epoch verified: the newest of the log of ``state.size`` records."""
        return self.state.size - 1


def audit_epoch(
    state: AuditState | None,
    message: StreamMessage,
    key: VerifierKey,
    origin: str,
    *,
    witnesses: Sequence[WitnessKey] = (),
    quorum: int = 0,
    now: float | None = None,
    subscription: Subscription = ALL_ASSETS,
) -> tuple[AuditState, RecordView | None, list[Finding]]:
    """Verify one epoch message after ``state`` (None: the first one ever seen);
    ``witnesses``, ``quorum`` and ``now`` as for ``check_epoch``.

    Raises:
        VerificationError: naming the failed rule; the message must not be trusted.
        FormatError: the record or checkpoint is malformed.
    """
    audit = check_epoch(
        state,
        message,
        key,
        origin,
        witnesses=witnesses,
        quorum=quorum,
        now=now,
        subscription=subscription,
    )
    if audit.witness_failure is not None:
        raise audit.witness_failure
    return audit.state, audit.record, list(audit.findings)


def check_epoch(
    state: AuditState | None,
    message: StreamMessage,
    key: VerifierKey,
    origin: str,
    *,
    witnesses: Sequence[WitnessKey] = (),
    quorum: int = 0,
    now: float | None = None,
    subscription: Subscription = ALL_ASSETS,
) -> EpochAudit:
    """Verify one epoch message after ``state``; a failure of rule 6 (a
    quorum of ``witnesses``, cosignatures dated plausibly against the record
    and the verifier's clock ``now``, POSIX seconds) is returned, not raised.

    Raises:
        VerificationError: naming the failed rule 1-5; the message must not be trusted.
        FormatError: the record or checkpoint (its cosignature lines too) is
            malformed, or the frame is not of the kind ``subscription`` asks for.
        ValueError: ``quorum`` is not in ``0..len(witnesses)``.
    """
    _check_kind(message, subscription)
    if not 0 <= quorum <= len(witnesses):
        raise ValueError(f"a quorum of {quorum} out of {len(witnesses)} witnesses")
    # 1. Signed by the custodian, for this log.
    checkpoint = verify_checkpoint(message.checkpoint, key, origin)

    # 2-3. The record is the newest leaf of the log it comes with.
    record = _record_in_log(message, checkpoint, subscription)
    if record is not None and record.epoch != checkpoint.size - 1:
        raise VerificationError(
            "epoch-size-mismatch",
            f"record of epoch {record.epoch} comes with a log of {checkpoint.size} records",
        )

    # 4. History only grows, consistently.
    if state is not None:
        if checkpoint.size == state.size and checkpoint.root != state.root:
            raise VerificationError(
                "fork", f"two different signed roots for a log of {state.size} records"
            )
        if checkpoint.size <= state.size:
            raise VerificationError(
                "replayed-checkpoint",
                f"log of {checkpoint.size} records after one of {state.size}",
            )
        if checkpoint.size != state.size + 1:
            raise VerificationError(
                "epoch-gap", f"epochs {state.size} to {checkpoint.size - 2} were skipped"
            )
        _check_extends(state, checkpoint, message)
        # 5. Time runs forward.
        if record is not None and record.timestamp_ms < state.timestamp_ms:
            raise VerificationError("time-went-back", "record is older than the previous one")

    # 6. Witnessed by a quorum, plausibly dated.
    cosignatures: tuple[Cosignature, ...] = ()
    failure = None
    if witnesses:
        try:
            cosignatures = plausible_cosignatures(
                message.checkpoint,
                witnesses,
                record_ms=None if record is None else record.timestamp_ms,
                now=now,
            )
            require_quorum(cosignatures, quorum)
        except VerificationError as exc:
            failure = exc

    findings = () if record is None else _findings(record)
    if record is not None:
        timestamp_ms = record.timestamp_ms
    else:
        timestamp_ms = state.timestamp_ms if state is not None else 0
    new_state = AuditState(
        origin=origin,
        size=checkpoint.size,
        root=checkpoint.root,
        timestamp_ms=timestamp_ms,
        checkpoint=message.checkpoint.decode("utf-8"),
    )
    return EpochAudit(new_state, record, findings, cosignatures, failure)


def _check_extends(state: AuditState, checkpoint: Checkpoint, message: StreamMessage) -> None:
    """``fork`` unless the checkpoint's log (one record longer) extends ``state``'s.

    A frame with a record has had its inclusion proof verified as that of the
    last leaf, so its hashes are the complete subtrees of the older log."""
    if isinstance(message, CheckpointMessage):
        try:
            rfc9162.verify_consistency(
                state.size, checkpoint.size, state.root, checkpoint.root, message.consistency
            )
        except VerificationError as exc:
            raise VerificationError("fork", f"not an extension of the last log: {exc}") from exc
    elif rfc9162.prefix_root(message.inclusion) != state.root:
        raise VerificationError(
            "fork", f"its first {state.size} records are not the log last verified"
        )


def _check_kind(message: StreamMessage, subscription: Subscription) -> None:
    """Refuse a frame of another kind than asked for: a checkpoint, or some
    assets, where records were asked for would hide what was not sent."""
    if subscription.checkpoints:
        if not isinstance(message, CheckpointMessage):
            raise FormatError("a record in a stream of checkpoints only")
    elif isinstance(message, CheckpointMessage):
        raise FormatError("a checkpoint without its record")
    elif isinstance(message, AssetsMessage) and subscription.assets is None:
        raise FormatError("chosen assets' entries where the whole record was asked for")
    elif isinstance(message, EpochMessage) and subscription.assets is not None:
        # a whole record would not be checked to hold the chosen assets (absent)
        raise FormatError("a whole record where chosen assets' entries were asked for")


def _record_in_log(
    message: StreamMessage, checkpoint: Checkpoint, subscription: Subscription
) -> RecordView | None:
    """The record, or the chosen part of it, the frame proves in the checkpoint's log."""
    if isinstance(message, CheckpointMessage):
        return None
    if isinstance(message, EpochMessage):
        record = EpochRecord.decode(message.record)
        header_in_log(record.header.encode(), message.inclusion, checkpoint)
        return record
    header = header_in_log(message.header, message.inclusion, checkpoint)
    return check_selection(header, message.entries, subscription.assets or ())


def _findings(record: RecordView) -> tuple[Finding, ...]:
    found = [
        Finding(a.asset, a.status.name.lower(), _detail(record, a.asset))
        for a in record.assets
        if a.status is not Status.SOLVENT
    ]
    if isinstance(record, PartialRecord):
        found += [Finding(a, "absent", "the record has no entry for it") for a in record.absent]
    return tuple(found)


def _detail(record: RecordView, asset: str) -> str:
    a = record.asset(asset)
    if a.status is Status.INSOLVENT:
        return f"reserves {a.reserves} < liabilities {a.liabilities}"
    stale = [
        s.name for s in a.sources if s.is_stale(record.timestamp_ms, record.max_reserve_age_ms)
    ]
    return f"stale reserve sources: {', '.join(stale)}"


def restore(data: str | bytes, key: VerifierKey, origin: str) -> AuditState:
    """Load a saved state and re-check its checkpoint, so a tampered file is caught."""
    state = AuditState.parse(data)
    checkpoint = verify_checkpoint(state.checkpoint.encode("utf-8"), key, origin)
    if (checkpoint.size, checkpoint.root) != (state.size, state.root):
        raise FormatError("audit state does not match its own checkpoint")
    return state
