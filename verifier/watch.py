"""``solvency-verify watch``: the auditor's loop over the root stream.

Subscribe to ``/roots`` from the last verified size, verify each epoch
(``verifier.audit``), keep the state in ``--state``, raise alarms with evidence,
and reconnect with backoff. Silence is measured apart from the connection: from
the last verified checkpoint (or the start), on the monotonic clock, so a
prover that is unreachable, refuses, or accepts and says nothing alarms alike.

A checkpoint without the witnesses' quorum (PROTOCOL §12.3) is an alarm; with
``--keep-going`` its verified chain of custody is followed still, and the
alarm is raised again only once a quorum was seen in between.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from verifier.attestation import attested_findings, parse_attester_keys
from verifier.audit import AuditState, EpochAudit, Finding, check_epoch, restore
from verifier.checkpoint import VerifierKey
from verifier.cli import (
    EXIT_INVALID,
    EXIT_VALID,
    OperationalError,
    UsageError,
    cosigners,
    format_amount,
    load_key,
    read_input,
    when,
)
from verifier.errors import FormatError, SolvencyError, VerificationError
from verifier.hashing import printable_id
from verifier.inputs import load_witnesses
from verifier.stream import EpochMessage, parse_message

__all__ = ["SilenceAlarm", "Watcher", "watch"]

# On first contact, before anything verified, these failures mean the auditor was
# given the wrong key or origin: configuration, not evidence against the custodian.
FIRST_CONTACT_CHECKS = frozenset({"unknown-key", "origin-mismatch"})
MAX_BACKOFF = 30.0


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


class Watcher:
    """Subscribe, verify each epoch, keep state, raise alarms."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.url.rstrip("/")
        self.key = load_key(args.key)
        self.origin = args.origin or self.key.name
        self.witnesses, self.quorum = load_witnesses(args.witness, args.quorum)
        self.attesters = load_attesters(getattr(args, "attester", None) or ())
        self.statuses: dict[str, str] = {}  # this epoch's assets not solvent and attested
        self.witness_alarm: str | None = None  # the witness check failing since it alarmed
        token: str | None = args.token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.state_dir = Path(args.state)
        self.as_json = args.json
        self.keep_going: bool = args.keep_going
        self.max_silence: float = args.max_silence
        self.max_epochs = args.max_epochs
        self.seen = 0
        self.violations = 0
        self.open_findings: dict[str, str] = {}
        self.silence = SilenceAlarm(self.max_silence, time.monotonic())
        self.state_file = self.state_dir / "state.json"
        self.state: AuditState | None = None
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.state_dir):  # writable, before any epoch
                pass
            saved = self.state_file.read_bytes() if self.state_file.exists() else None
        except OSError as exc:
            raise OperationalError(f"--state {self.state_dir}: {exc.strerror or exc}") from None
        if saved is not None:
            try:
                self.state = restore(saved, self.key, self.origin)
            except SolvencyError as exc:
                raise UsageError(f"{self.state_file}: {exc}") from None

    # output

    def _say(self, doc: dict[str, Any], line: str) -> None:
        print(json.dumps(doc) if self.as_json else line, flush=True)

    def _save(self, state: AuditState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(state.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
        except OSError as exc:
            raise OperationalError(f"cannot save {self.state_file}: {exc.strerror}") from None
        self.state = state

    def _evidence(self, check: str, doc: dict[str, Any]) -> str | None:
        path = self.state_dir / f"evidence-{int(time.time() * 1000)}-{check}.json"
        try:
            path.write_text(json.dumps(doc, indent=2))
        except OSError as exc:  # the alarm itself must not be lost
            self._say(
                {"event": "warning", "reason": f"cannot write {path}: {exc.strerror}"},
                f"WARNING: cannot write evidence {path}: {exc.strerror}",
            )
            return None
        return str(path)

    def violation(self, check: str, reason: str, message: EpochMessage | None) -> None:
        self.violations += 1
        evidence: dict[str, Any] = {
            "check": check,
            "reason": reason,
            "last_verified_checkpoint": self.state.checkpoint if self.state else None,
        }
        if message is not None:
            evidence["message"] = json.loads(message.to_json())
        path = self._evidence(check, evidence)
        self._say(
            {"event": "violation", "check": check, "reason": reason, "evidence": path},
            f"ALARM {check}: {printable_id(reason)} (evidence in {path})",
        )

    def _report(self, audit: EpochAudit) -> None:
        record = audit.record
        parts = [
            f"{printable_id(a.asset)} {self.statuses.get(a.asset, 'solvent')} liabilities "
            f"{format_amount(a.liabilities, a.decimals)} reserves "
            f"{format_amount(a.reserves, a.decimals)}"
            for a in record.assets
        ]
        self._say(
            {
                "event": "epoch",
                "epoch": record.epoch,
                "time": when(record.timestamp_ms),
                "solvent": record.solvent,
                "cosigned_by": cosigners(audit.cosignatures),
                "assets": {
                    a.asset: {
                        "status": self.statuses.get(a.asset, "solvent"),
                        "liabilities": str(a.liabilities),
                        "reserves": str(a.reserves),
                    }
                    for a in record.assets
                },
            },
            f"epoch {record.epoch} {when(record.timestamp_ms)} verified: "
            + (" | ".join(parts) or "no assets")
            + (" | cosigned by " if audit.cosignatures else "")
            + ", ".join(printable_id(c.witness.name) for c in audit.cosignatures),
        )

    # verification

    def on_message(self, message: EpochMessage) -> bool:
        """Verify one epoch; return False to stop watching."""
        try:
            audit = check_epoch(
                self.state,
                message,
                self.key,
                self.origin,
                witnesses=self.witnesses,
                quorum=self.quorum,
            )
        except VerificationError as exc:
            if self.state is None and exc.check in FIRST_CONTACT_CHECKS:
                raise UsageError(
                    f"the prover's checkpoints do not verify with --key {self.key.name}"
                    f"+{self.key.key_id:08x} for origin {self.origin} ({exc}): check --key "
                    "and --origin; nothing was verified yet, so this is not evidence"
                ) from None
            self.violation(exc.check, exc.detail, message)
            return self.keep_going
        except FormatError as exc:
            self.violation("format", f"malformed: {exc}", message)
            return self.keep_going
        failure = audit.witness_failure
        if failure is not None and not self.keep_going:
            self.violation(failure.check, failure.detail, message)
            return False
        self._save(audit.state)
        self.silence.verified(time.monotonic())
        self.seen += 1
        findings = self._attested(audit, message)
        self._report(audit)
        self._witnessed(audit, message)
        record = audit.record
        # Alarm when an asset turns insolvent or unproven, not again each epoch it stays so.
        current = {f.asset: f for f in findings}
        for f in findings:
            if self.open_findings.get(f.asset) != f.status:
                self.violation(f.status, f"{f.asset}: {f.detail}", message)
        for asset in set(self.open_findings) - set(current):
            self._say(
                {"event": "recovered", "asset": asset, "epoch": record.epoch},
                f"RECOVERED {printable_id(asset)} is solvent again at epoch {record.epoch}",
            )
        self.open_findings = {a: f.status for a, f in current.items()}
        if findings and not self.keep_going:
            return False
        return not (self.max_epochs and self.seen >= self.max_epochs)

    def _attested(self, audit: EpochAudit, message: EpochMessage) -> list[Finding]:
        """The epoch's findings, with --attester those of its reserve reports
        too (verifier.attestation); each asset's status noted for the report."""
        findings = list(audit.findings)
        if self.attesters:
            findings = attested_findings(audit.record, findings, message.reports, self.attesters)
        self.statuses = {f.asset: f.status for f in findings}
        return findings

    def _witnessed(self, audit: EpochAudit, message: EpochMessage) -> None:
        """With --keep-going: alarm when the witness check starts failing (or fails
        otherwise), and say so when a quorum is back."""
        failure = audit.witness_failure
        if failure is not None and failure.check != self.witness_alarm:
            self.violation(failure.check, failure.detail, message)
        elif failure is None and self.witness_alarm is not None:
            self._say(
                {"event": "recovered", "check": self.witness_alarm, "epoch": audit.record.epoch},
                f"RECOVERED witnesses: a quorum cosigned epoch {audit.record.epoch}",
            )
        self.witness_alarm = failure.check if failure is not None else None

    def _on_frame(self, frame: str | bytes) -> int | None:
        """Handle one frame; an exit status to stop with, or None to go on."""
        try:
            message = parse_message(frame)
        except FormatError as exc:
            self.violation("format", f"malformed: {exc}", None)
            return None if self.keep_going else EXIT_INVALID
        if self.on_message(message):
            return None
        return EXIT_INVALID if self.violations else EXIT_VALID

    # the two loops

    async def run(self) -> int:
        """Follow the stream and watch for silence, until either ends the watch."""
        tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._alarm_on_silence())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return done.pop().result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _alarm_on_silence(self) -> int:
        while True:
            await asyncio.sleep(max(0.0, self.silence.due() - time.monotonic()))
            silent = self.silence.poll(time.monotonic())
            if silent is None:
                continue
            self.violation(
                "stale-log",
                f"no checkpoint verified for {silent:.1f} s (--max-silence {self.max_silence:g})",
                None,
            )
            if not self.keep_going:
                return EXIT_INVALID

    async def _follow(self) -> int:
        from websockets.asyncio.client import connect
        from websockets.exceptions import (
            ConnectionClosed,
            InvalidHandshake,
            InvalidStatus,
            InvalidURI,
        )

        backoff = 1.0
        while True:
            since = self.state.size if self.state else 0
            event: dict[str, Any] = {"event": "disconnected"}
            try:
                async with connect(
                    f"{self.url}/roots?since={since}",
                    additional_headers=self.headers,
                    max_size=1 << 20,
                ) as ws:
                    backoff = 1.0
                    async for frame in ws:
                        code = self._on_frame(frame)
                        if code is not None:
                            return code
                    reason = "the prover closed the stream"
            except InvalidURI as exc:
                raise UsageError(str(exc)) from None
            except InvalidStatus as exc:
                if exc.response.status_code == 401 and self.state is None:
                    raise UsageError("the prover refused --token (401 unauthorized)") from None
                if exc.response.status_code == 400 and b"bad-since" in exc.response.body:
                    # The prover has fewer epochs than this auditor already verified.
                    self.violation(
                        "log-rolled-back", f"the log no longer reaches size {since}", None
                    )
                    if not self.keep_going:
                        return EXIT_INVALID
                event = {"event": "refused", "status": exc.response.status_code}
                reason = f"the prover refused the connection ({exc})"
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                reason = f"disconnected ({exc})"
            self._say(
                {**event, "reason": reason, "retry_in": backoff},
                f"{printable_id(reason)}; retrying in {backoff:g} s",
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


def load_attesters(values: Sequence[str]) -> tuple[VerifierKey, ...]:
    """``--attester`` values: each a verifier key, or a file of keys one per line."""
    keys: list[VerifierKey] = []
    for value in values:
        text = value
        if "+" not in value and os.path.exists(value):
            text = read_input(value).decode("utf-8", "replace")
        try:
            keys += parse_attester_keys(text)
        except FormatError as exc:
            raise UsageError(f"--attester {value}: {exc}") from None
    return tuple(keys)


def watch(args: argparse.Namespace) -> int:
    """Watch until done, or until SIGINT/SIGTERM ends the watch cleanly."""
    watcher = Watcher(args)

    async def until_signalled() -> int:
        task = asyncio.create_task(watcher.run())
        if threading.current_thread() is threading.main_thread():  # else: embedded, e.g. tests
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return EXIT_INVALID if watcher.violations else EXIT_VALID

    return asyncio.run(until_signalled())
