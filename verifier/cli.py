"""``solvency-verify``: the customer's and the auditor's command line.

Commands:
    proof FILE --key VKEY [--user ID] [--json]        verify a proof file
    proof --url URL --user ID --token T --key VKEY    fetch one from the prover, verify it
    watch URL --key VKEY --state DIR [--json] [--keep-going] [--max-silence S]
    checkpoint FILE --key VKEY                        verify a signed checkpoint
    consistency OLD NEW PROOF --key VKEY              verify that NEW extends OLD

Exit status: 0 valid, 1 invalid (the failed check is named), 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from verifier import rfc9162
from verifier.audit import AuditState, audit_epoch, restore
from verifier.checkpoint import VerifierKey, verify_checkpoint
from verifier.errors import FormatError, SolvencyError, VerificationError
from verifier.proof import ProofFile, ProofReport, verify_proof
from verifier.record import EpochRecord
from verifier.stream import EpochMessage, parse_message

__all__ = ["format_amount", "main"]

EXIT_VALID, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments, or a file or server that cannot be read."""


def format_amount(value: int, decimals: int) -> str:
    """``value`` smallest units as a decimal number, exactly (no floats)."""
    if decimals == 0:
        return str(value)
    whole, frac = divmod(value, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}".rstrip("0").rstrip(".")


def _read(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _key(text: str) -> VerifierKey:
    """A verifier key given inline or as the path of a file holding it."""
    if "+" not in text and os.path.exists(text):
        text = _read(text).decode("utf-8", "replace").strip()
    try:
        return VerifierKey.parse(text)
    except FormatError as exc:
        raise UsageError(f"--key: {exc}") from None


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


# proof


def _fetch_proof(url: str, user: str, token: str) -> bytes:
    import urllib.error  # here: verifying a proof file need not load an HTTP client
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise UsageError(f"--url must be ws://, wss://, http:// or https://, got {url}")
    query = urllib.parse.urlencode({"user": user})
    target = urllib.parse.urlunsplit((scheme, parts.netloc, "/proof", query, ""))
    request = urllib.request.Request(target, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body: bytes = response.read(1 << 22)
            return body
    except urllib.error.HTTPError as exc:
        detail = exc.read(4096).decode("utf-8", "replace")
        raise UsageError(f"prover answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UsageError(f"cannot reach {target}: {exc}") from None


def _proof_summary(report: ProofReport) -> dict[str, Any]:
    return {
        "valid": True,
        "user": report.user,
        "epoch": report.epoch,
        "time": _when(report.timestamp_ms),
        "log_size": report.checkpoint.size,
        "solvent": report.record.solvent,
        "assets": [
            {
                "asset": a.asset,
                "balance": format_amount(a.balance, a.decimals),
                "liabilities": format_amount(a.liabilities, a.decimals),
                "reserves": format_amount(a.reserves, a.decimals),
                "status": a.status,
            }
            for a in report.assets
        ],
    }


def cmd_proof(args: argparse.Namespace) -> int:
    key = _key(args.key)
    if args.url:
        if not (args.user and args.token):
            raise UsageError("--url needs --user and --token")
        data = _fetch_proof(args.url, args.user, args.token)
    elif args.file:
        data = _read(args.file)
    else:
        raise UsageError("give a proof FILE or --url")
    report = verify_proof(ProofFile.parse(data), key, user=args.user)
    summary = _proof_summary(report)
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_VALID
    print(f"VALID: {report.user}'s balances are included in epoch {report.epoch}")
    print(f"  signed by {key.name} at {summary['time']}, log of {report.checkpoint.size} epochs")
    for a in summary["assets"]:
        print(
            f"  {a['asset']:<8} your balance {a['balance']:>20}   "
            f"liabilities {a['liabilities']:>20}   reserves {a['reserves']:>20}   {a['status']}"
        )
    print(
        "  custodian solvent in every asset"
        if report.record.solvent
        else "  WARNING: not every asset is proven solvent"
    )
    return EXIT_VALID


# checkpoint and consistency


def cmd_checkpoint(args: argparse.Namespace) -> int:
    cp = verify_checkpoint(_read(args.file), _key(args.key), args.origin)
    print(f"VALID: {cp.origin} size {cp.size} root {cp.root.hex()}")
    return EXIT_VALID


def cmd_consistency(args: argparse.Namespace) -> int:
    key = _key(args.key)
    old = verify_checkpoint(_read(args.old), key, args.origin)
    new = verify_checkpoint(_read(args.new), key, old.origin)
    raw = _read(args.proof).decode("utf-8", "replace")
    try:
        hashes = [bytes.fromhex(line) for line in raw.split()]
    except ValueError:
        raise FormatError("PROOF must hold one hex hash per line") from None
    rfc9162.verify_consistency(old.size, new.size, old.root, new.root, hashes)
    print(f"VALID: the log of {new.size} extends the log of {old.size}")
    return EXIT_VALID


# watch


class Watcher:
    """The auditor's loop: subscribe, verify each epoch, keep state, raise alarms."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.url.rstrip("/")
        self.key = _key(args.key)
        self.origin = args.origin or self.key.name
        self.state_dir = Path(args.state)
        self.as_json = args.json
        self.keep_going: bool = args.keep_going
        self.max_silence = args.max_silence
        self.max_epochs = args.max_epochs
        self.seen = 0
        self.violations = 0
        self.open_findings: dict[str, str] = {}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.state_dir / "state.json"
        self.state: AuditState | None = None
        if self.state_file.exists():
            try:
                self.state = restore(self.state_file.read_bytes(), self.key, self.origin)
            except SolvencyError as exc:
                raise UsageError(f"{self.state_file}: {exc}") from None

    def _save(self, state: AuditState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(state.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)
        self.state = state

    def _evidence(self, name: str, doc: dict[str, Any]) -> Path:
        path = self.state_dir / f"evidence-{int(time.time() * 1000)}-{name}.json"
        path.write_text(json.dumps(doc, indent=2))
        return path

    def _say(self, doc: dict[str, Any], line: str) -> None:
        print(json.dumps(doc) if self.as_json else line, flush=True)

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
            {"event": "violation", "check": check, "reason": reason, "evidence": str(path)},
            f"ALARM {check}: {reason} (evidence in {path})",
        )

    def on_message(self, message: EpochMessage) -> bool:
        """Verify one epoch; return False to stop watching."""
        try:
            state, record, findings = audit_epoch(self.state, message, self.key, self.origin)
        except (VerificationError, FormatError) as exc:
            check = exc.check if isinstance(exc, VerificationError) else "format"
            self.violation(check, str(exc), message)
            return self.keep_going
        self._save(state)
        self.seen += 1
        self._report(record)
        # Alarm when an asset turns insolvent or unproven, not again each epoch it stays so.
        current = {f.asset: f for f in findings}
        for f in findings:
            if self.open_findings.get(f.asset) != f.status:
                self.violation(f.status, f"{f.asset}: {f.detail}", message)
        for asset in set(self.open_findings) - set(current):
            self._say(
                {"event": "recovered", "asset": asset, "epoch": record.epoch},
                f"RECOVERED {asset} is solvent again at epoch {record.epoch}",
            )
        self.open_findings = {a: f.status for a, f in current.items()}
        if findings and not self.keep_going:
            return False
        return not (self.max_epochs and self.seen >= self.max_epochs)

    def _report(self, record: EpochRecord) -> None:
        parts = [
            f"{a.asset} {a.status.name.lower()} liabilities "
            f"{format_amount(a.liabilities, a.decimals)} reserves "
            f"{format_amount(a.reserves, a.decimals)}"
            for a in record.assets
        ]
        self._say(
            {
                "event": "epoch",
                "epoch": record.epoch,
                "time": _when(record.timestamp_ms),
                "solvent": record.solvent,
                "assets": {
                    a.asset: {
                        "status": a.status.name.lower(),
                        "liabilities": str(a.liabilities),
                        "reserves": str(a.reserves),
                    }
                    for a in record.assets
                },
            },
            f"epoch {record.epoch} {_when(record.timestamp_ms)} verified: "
            + (" | ".join(parts) or "no assets"),
        )

    async def run(self) -> int:
        import asyncio  # here and not at the top: ``proof`` starts faster without

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
            try:
                async with connect(f"{self.url}/roots?since={since}", max_size=1 << 20) as ws:
                    backoff = 1.0
                    while True:
                        try:
                            frame = await asyncio.wait_for(ws.recv(), self.max_silence)
                        except TimeoutError:
                            self.violation(
                                "stale-log", f"no epoch for {self.max_silence:g} s", None
                            )
                            if not self.keep_going:
                                return EXIT_INVALID
                            continue
                        try:
                            message = parse_message(frame)
                        except FormatError as exc:
                            self.violation("format", str(exc), None)
                            if not self.keep_going:
                                return EXIT_INVALID
                            continue
                        if not self.on_message(message):
                            return EXIT_INVALID if self.violations else EXIT_VALID
            except InvalidURI as exc:
                raise UsageError(str(exc)) from None
            except InvalidStatus as exc:
                if exc.response.status_code == 400 and b"bad-since" in exc.response.body:
                    # The prover has fewer epochs than this auditor already verified.
                    self.violation(
                        "log-rolled-back", f"the log no longer reaches size {since}", None
                    )
                    if not self.keep_going:
                        return EXIT_INVALID
                self._say(
                    {"event": "refused", "status": exc.response.status_code, "retry_in": backoff},
                    f"prover refused the connection ({exc}); retrying in {backoff:g} s",
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                self._say(
                    {"event": "disconnected", "reason": str(exc), "retry_in": backoff},
                    f"disconnected ({exc}); retrying in {backoff:g} s",
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


def cmd_watch(args: argparse.Namespace) -> int:
    import asyncio
    import threading

    watcher = Watcher(args)

    async def until_signalled() -> int:
        """Watch until done, or until SIGINT/SIGTERM ends the watch cleanly."""
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


# entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solvency-verify", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("proof", help="verify a user's inclusion proof")
    p.add_argument("file", nargs="?", help="proof file (- for standard input)")
    p.add_argument("--key", required=True, help="verifier key, or a file holding it")
    p.add_argument("--user", help="the user id the proof must be for")
    p.add_argument("--url", help="fetch the proof from the prover (ws:// or http://)")
    p.add_argument("--token", help="the user's proof token, with --url")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=cmd_proof)

    p = sub.add_parser("watch", help="follow and verify every epoch")
    p.add_argument("url", help="the prover, e.g. ws://127.0.0.1:8765")
    p.add_argument("--key", required=True, help="verifier key, or a file holding it")
    p.add_argument("--state", required=True, help="directory keeping the last verified state")
    p.add_argument("--origin", help="expected log origin (default: the key's name)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--keep-going", action="store_true", help="report violations, don't stop")
    p.add_argument("--max-silence", type=float, default=30.0, help="alarm after S s without epoch")
    p.add_argument("--max-epochs", type=int, default=0, help="stop after N epochs (0: never)")
    p.set_defaults(run=cmd_watch)

    p = sub.add_parser("checkpoint", help="verify a signed checkpoint")
    p.add_argument("file")
    p.add_argument("--key", required=True)
    p.add_argument("--origin")
    p.set_defaults(run=cmd_checkpoint)

    p = sub.add_parser("consistency", help="verify that one checkpoint extends another")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("proof", help="consistency proof: one hex hash per line")
    p.add_argument("--key", required=True)
    p.add_argument("--origin")
    p.set_defaults(run=cmd_consistency)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        result: int = args.run(args)
        return result
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VerificationError as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except FormatError as exc:
        print(f"INVALID: malformed input: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
