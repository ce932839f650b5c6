"""The auditor's policy over the root stream, pure: what is a violation, what is
evidence, when silence alarms, when to stop (``solvency-verify watch``).

An ``Auditor`` takes events (a frame with the monotonic time it arrived, a
connection refused, a tick of the clock) and returns decisions as values, in
the order they are to be carried out; it reads no clock, files or sockets.
``verifier.watch`` does the I/O: it connects, reads frames, saves the state,
writes the evidence and prints.

Invariants:

- ``state`` is the last verified state; a ``SaveState`` precedes every decision
  that relies on it, and evidence names it as ``last_verified_checkpoint``.
- Before anything verified (``state`` None), a wrong key or origin is a
  ``ConfigurationError``, never evidence; afterwards it is a violation.
- A solvency finding alarms when an asset turns insolvent, unproven,
  unattested or report-mismatch, not again each epoch it stays so; a witness
  failure (``--keep-going``) alarms when it starts and recovers with a quorum.
- ``stale-log`` alarms once ``max_silence`` passed since the last verified
  checkpoint (or the start), then again each further ``max_silence``.
- ``Stop`` is the last decision of a list; its code is 1 once any alarm was raised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from verifier.attestation import attested_findings
from verifier.audit import AuditState, EpochAudit, Finding, check_epoch
from verifier.checkpoint import VerifierKey
from verifier.cosignature import WitnessKey
from verifier.errors import FormatError, VerificationError
from verifier.exits import EXIT_INVALID, EXIT_VALID
from verifier.report import report_hash
from verifier.stream import CheckpointMessage, StreamMessage, parse_message
from verifier.subscription import ALL_ASSETS, Subscription

__all__ = [
    "FIRST_CONTACT_CHECKS",
    "Alarm",
    "Auditor",
    "AuditorConfig",
    "ConfigurationError",
    "Decision",
    "Event",
    "Frame",
    "RecoveredAsset",
    "RecoveredWitnesses",
    "Refused",
    "SaveState",
    "SilenceAlarm",
    "Stop",
    "Tick",
    "Verified",
]

# On first contact, before anything verified, these failures mean the auditor was
# given the wrong key or origin: configuration, not evidence against the custodian.
FIRST_CONTACT_CHECKS = frozenset({"unknown-key", "origin-mismatch"})


class SilenceAlarm:
    """When to raise ``stale-log``: once ``max_silence`` has passed since the last
    verified checkpoint (or the start), then again at each further ``max_silence``
    while nothing verifies. Pure: the caller passes the monotonic clock's readings."""

    def __init__(self, max_silence: float, now: float) -> None:
        self.max_silence = max_silence
        self.since = now
        self.raised = 0

    def verified(self, now: float) -> None:
        self.since, self.raised = now, 0

    def due(self) -> float:
        """The clock reading at which the next alarm is due."""
        return self.since + self.max_silence * (self.raised + 1)

    def poll(self, now: float) -> float | None:
        """The silence so far if an alarm is due at ``now`` (at most one per call), else None."""
        if now < self.due():
            return None
        self.raised = max(self.raised + 1, math.floor((now - self.since) / self.max_silence))
        return now - self.since


# configuration and events


@dataclass(frozen=True, slots=True)
class AuditorConfig:
    """What the auditor checks against; ``max_epochs`` 0: never stop on a count."""

    key: VerifierKey
    origin: str
    witnesses: tuple[WitnessKey, ...] = ()
    quorum: int = 0
    attesters: tuple[VerifierKey, ...] = ()
    keep_going: bool = False
    max_silence: float = 30.0
    max_epochs: int = 0
    subscription: Subscription = ALL_ASSETS


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame of the root stream, received at ``now`` (monotonic seconds);
    ``msgpack``: its connection negotiated ``solvency-msgpack``, so it is
    canonical MessagePack in a binary frame (else JSON)."""

    data: str | bytes
    now: float
    msgpack: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """The prover answered the subscription from ``since`` with HTTP ``status``;
    ``bad_since``: it says its log does not reach ``since``."""

    status: int
    since: int
    bad_since: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """The monotonic clock reads ``now``."""

    now: float


Event = Frame | Refused | Tick


# decisions


@dataclass(frozen=True, slots=True)
class SaveState:
    """Persist ``state`` before acting on what follows."""

    state: AuditState


@dataclass(frozen=True, slots=True)
class Verified:
    """An epoch verified; ``statuses`` names its assets not solvent and attested;
    ``reports``: the signed reports its record binds that the auditor holds
    (from this frame or earlier ones), in record order."""

    audit: EpochAudit
    statuses: Mapping[str, str] = field(default_factory=dict)
    reports: tuple[bytes, ...] = ()

    def status(self, asset: str) -> str:
        return self.statuses.get(asset, "solvent")


@dataclass(frozen=True, slots=True)
class Alarm:
    """A violation by the custodian: ``evidence`` is the document to keep."""

    check: str
    reason: str
    evidence: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RecoveredAsset:
    """``asset``, alarmed before, is solvent and attested again at ``epoch``."""

    asset: str
    epoch: int


@dataclass(frozen=True, slots=True)
class RecoveredWitnesses:
    """A quorum cosigned ``epoch`` again, after ``check`` alarmed."""

    check: str
    epoch: int


@dataclass(frozen=True, slots=True)
class ConfigurationError:
    """The auditor's own configuration is wrong (nothing verified yet): not evidence."""

    message: str


@dataclass(frozen=True, slots=True)
class Stop:
    """End the watch with exit status ``code``."""

    code: int


Decision = (
    SaveState | Verified | Alarm | RecoveredAsset | RecoveredWitnesses | ConfigurationError | Stop
)


class Auditor:
    """The watch's policy: ``handle`` each event, carry out the decisions in order."""

    def __init__(self, config: AuditorConfig, state: AuditState | None, now: float) -> None:
        """``state``: the last verified state, if any; ``now``: the start (monotonic)."""
        self.config = config
        self.state = state
        self.silence = SilenceAlarm(config.max_silence, now)
        self.seen = 0  # epochs verified by this auditor
        self.violations = 0  # alarms raised by this auditor
        self.open_findings: dict[str, str] = {}  # asset -> status alarmed and not recovered
        self.witness_alarm: str | None = None  # the witness check failing since it alarmed
        self.reports: dict[bytes, bytes] = {}  # by hash, the reports the last record binds

    @property
    def exit_code(self) -> int:
        return EXIT_INVALID if self.violations else EXIT_VALID

    def handle(self, event: Event) -> list[Decision]:
        if isinstance(event, Frame):
            return self.on_frame(event.data, event.now, event.msgpack)
        if isinstance(event, Refused):
            return self.on_refused(event.status, event.since, event.bad_since)
        return self.on_tick(event.now)

    def _alarm(self, check: str, reason: str, message: StreamMessage | None) -> Alarm:
        self.violations += 1
        evidence: dict[str, Any] = {
            "check": check,
            "reason": reason,
            "last_verified_checkpoint": self.state.checkpoint if self.state else None,
        }
        if message is not None:
            evidence["message"] = json.loads(message.to_json())
        return Alarm(check, reason, evidence)

    def _stop_unless_keep_going(self, out: list[Decision]) -> list[Decision]:
        if not self.config.keep_going:
            out.append(Stop(EXIT_INVALID))
        return out

    def on_tick(self, now: float) -> list[Decision]:
        """A ``stale-log`` alarm if one is due at ``now``; ``silence.due()`` says when."""
        silent = self.silence.poll(now)
        if silent is None:
            return []
        reason = (
            f"no checkpoint verified for {silent:.1f} s (--max-silence {self.config.max_silence:g})"
        )
        return self._stop_unless_keep_going([self._alarm("stale-log", reason, None)])

    def on_refused(self, status: int, since: int, bad_since: bool = False) -> list[Decision]:
        """A refused subscription: the token, on first contact, is configuration; a
        log that no longer reaches what was verified is ``log-rolled-back``."""
        if status == 401 and self.state is None:
            return [ConfigurationError("the prover refused --token (401 unauthorized)")]
        if status == 400 and bad_since:
            alarm = self._alarm("log-rolled-back", f"the log no longer reaches size {since}", None)
            return self._stop_unless_keep_going([alarm])
        return []

    def on_frame(self, data: str | bytes, now: float, msgpack: bool = False) -> list[Decision]:
        """Verify one frame of the root stream, received at ``now``, in JSON or
        (``msgpack``) in MessagePack."""
        try:
            message = _parse_msgpack(data) if msgpack else parse_message(data)
        except FormatError as exc:
            return self._stop_unless_keep_going([self._alarm("format", f"malformed: {exc}", None)])
        return self.on_message(message, now)

    def on_message(self, message: StreamMessage, now: float) -> list[Decision]:
        """Verify one parsed epoch message, received at ``now``."""
        c = self.config
        try:
            audit = check_epoch(
                self.state,
                message,
                c.key,
                c.origin,
                witnesses=c.witnesses,
                quorum=c.quorum,
                subscription=c.subscription,
            )
        except VerificationError as exc:
            if self.state is None and exc.check in FIRST_CONTACT_CHECKS:
                return [
                    ConfigurationError(
                        f"the prover's checkpoints do not verify with --key {c.key.name}"
                        f"+{c.key.key_id:08x} for origin {c.origin} ({exc}): check --key "
                        "and --origin; nothing was verified yet, so this is not evidence"
                    )
                ]
            return self._stop_unless_keep_going([self._alarm(exc.check, exc.detail, message)])
        except FormatError as exc:
            alarm = self._alarm("format", f"malformed: {exc}", message)
            return self._stop_unless_keep_going([alarm])
        failure = audit.witness_failure
        if failure is not None and not c.keep_going:
            return [self._alarm(failure.check, failure.detail, message), Stop(EXIT_INVALID)]
        out: list[Decision] = [SaveState(audit.state)]
        self.state = audit.state
        self.silence.verified(now)
        self.seen += 1
        findings = self._attested(audit, message)
        reports = tuple(self.reports.values())
        out.append(Verified(audit, {f.asset: f.status for f in findings}, reports))
        out += self._witnessed(audit, message)
        # Alarm when an asset turns insolvent or unproven, not again each epoch it stays so.
        current = {f.asset: f for f in findings}
        for f in findings:
            if self.open_findings.get(f.asset) != f.status:
                out.append(self._alarm(f.status, f"{f.asset}: {f.detail}", message))
        for asset in set(self.open_findings) - set(current):
            out.append(RecoveredAsset(asset, audit.epoch))
        self.open_findings = {a: f.status for a, f in current.items()}
        done = bool(c.max_epochs) and self.seen >= c.max_epochs
        if (findings and not c.keep_going) or done:
            out.append(Stop(self.exit_code))
        return out

    def _attested(self, audit: EpochAudit, message: StreamMessage) -> list[Finding]:
        """The epoch's findings, with attesters those of its reserve reports too.

        A frame carries the reports new since the previous epoch (all of them
        on a connection's first frame, PROTOCOL §11.2): ``reports`` keeps, by
        hash, those the last verified record binds, so that each record is
        checked against every report it binds."""
        findings = list(audit.findings)
        if isinstance(message, CheckpointMessage) or audit.record is None:
            return findings
        known = self.reports | {report_hash(note): note for note in message.reports}
        bound = [s.report_hash for a in audit.record.assets for s in a.sources if s.attested]
        self.reports = {h: known[h] for h in bound if h in known}
        if self.config.attesters:
            findings = attested_findings(
                audit.record, findings, self.reports.values(), self.config.attesters
            )
        return findings

    def _witnessed(self, audit: EpochAudit, message: StreamMessage) -> list[Decision]:
        """With keep_going: alarm when the witness check starts failing (or fails
        otherwise), and say so when a quorum is back."""
        failure = audit.witness_failure
        out: list[Decision] = []
        if failure is not None and failure.check != self.witness_alarm:
            out.append(self._alarm(failure.check, failure.detail, message))
        elif failure is None and self.witness_alarm is not None:
            out.append(RecoveredWitnesses(self.witness_alarm, audit.epoch))
        self.witness_alarm = failure.check if failure is not None else None
        return out


def _parse_msgpack(data: str | bytes) -> StreamMessage:
    """A frame of a ``solvency-msgpack`` connection: binary, canonical MessagePack."""
    if isinstance(data, str):
        raise FormatError("a text frame on a solvency-msgpack connection")
    from verifier.stream_binary import parse_msgpack  # msgspec: only when it was negotiated

    return parse_msgpack(data)
