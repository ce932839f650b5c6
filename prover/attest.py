"""Attester keys and signed reserve reports, for a reserve source (docs/PROTOCOL.md §13).

    solvency-prover attester-key --source NAME --out FILE
    solvency-prover sign-reports --key FILE [--ingest [--first-seq N]] < lines > lines

An attester key file holds one line, the signer key in the form of Go's
``golang.org/x/mod/sumdb/note``::

    PRIVATE+KEY+<source>+<key id, 8 hex>+<base64(0x01 || Ed25519 seed[32])>

created new with mode 0600; it names its source, so ``sign-reports`` needs no
other argument. ``sign-reports`` reads JSON lines ``{"asset", "amount",
"as_of_ms"[, "chain", "block"]}`` and writes, per line, ``{"report": "<signed
note>"}`` or, with ``--ingest``, a ``reserve-reports`` message ready for
``/ingest`` (sequence numbers from ``--first-seq``, by default the time in
microseconds, so that later runs continue above earlier ones).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.errors import ConfigError, KeyFileError
from verifier.checkpoint import (
    ALG_ED25519,
    VerifierKey,
    format_signer_key,
    parse_signer_key,
    verifier_key_for,
)
from verifier.errors import FormatError
from verifier.report import ReserveReport, check_attested_source, sign_report

__all__ = [
    "AttesterKey",
    "generate_attester_key",
    "load_attester_key",
    "register",
    "sign_lines",
]

_FIELDS = {"asset", "amount", "as_of_ms", "chain", "block"}


class AttesterKey:
    """A reserve source's signing key and its name (the source id)."""

    def __init__(self, source: str, key: Ed25519PrivateKey) -> None:
        check_attested_source(source)
        self.source = source
        self.key = key
        self.verifier_key: VerifierKey = verifier_key_for(source, key.public_key())

    def to_text(self) -> str:
        return format_signer_key(self.source, ALG_ED25519, self.key) + "\n"

    @classmethod
    def parse(cls, text: str) -> AttesterKey:
        """Parse a key file's text; the key id must match the key.

        Raises:
            FormatError: naming what is wrong (never the key's bytes).
        """
        source, key = parse_signer_key(text, ALG_ED25519, "attester key")
        return cls(source, key)


def generate_attester_key(source: str, path: Path) -> AttesterKey:
    """A new key for ``source`` in a new file ``path``, readable by its owner only."""
    try:
        check_attested_source(source)
    except FormatError as exc:
        raise ConfigError(f"--source: {exc}") from None
    key = AttesterKey(source, Ed25519PrivateKey.generate())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists: refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(key.to_text())
        f.flush()
        os.fsync(f.fileno())
    return key


def load_attester_key(path: Path) -> AttesterKey:
    """The key in ``path``; a file others can read is refused."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read attester key {path}: {exc}") from None
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by others (mode {mode & 0o777:o}): chmod 600 it")
    try:
        return AttesterKey.parse(text)
    except FormatError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def _report(source: str, line: str) -> ReserveReport:
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise FormatError("want a JSON object")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise FormatError(f"unknown fields {sorted(unknown)}")
    missing = {"asset", "amount", "as_of_ms"} - set(doc)
    if missing:
        raise FormatError(f"missing fields {sorted(missing)}")
    amount = doc["amount"]
    if isinstance(amount, str) and amount.isascii() and amount.isdigit():
        amount = int(amount) if amount == str(int(amount)) else amount
    for name, value in (("amount", amount), ("as_of_ms", doc["as_of_ms"])):
        if type(value) is not int:
            raise FormatError(f"{name} must be an integer or a canonical decimal string")
    return ReserveReport(
        source, doc["asset"], amount, doc["as_of_ms"], doc.get("chain"), doc.get("block")
    )


def sign_lines(
    key: AttesterKey, lines: Iterable[str], *, ingest: bool = False, first_seq: int = 0
) -> Iterator[str]:
    """One output line per non-blank input line (module docstring).

    Raises:
        ConfigError: naming the input line that is not a valid report.
    """
    seq = first_seq
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            note = sign_report(_report(key.source, line), key.key).decode("utf-8")
        except (ValueError, TypeError, FormatError) as exc:  # JSONDecodeError: a ValueError
            raise ConfigError(f"input line {number}: {exc}") from None
        if not ingest:
            yield json.dumps({"report": note})
            continue
        reports = [{"seq": seq, "report": note}]
        yield json.dumps({"type": "reserve-reports", "source": key.source, "reports": reports})
        seq += 1


def cmd_attester_key(args: argparse.Namespace) -> int:
    key = generate_attester_key(args.source, Path(args.out))
    print(f"wrote {args.out} (keep it secret; it signs {args.source}'s reserve reports)")
    print("verifier key (configure it in the prover's config.toml and give it to auditors):")
    print(key.verifier_key)
    print(f'\n[[attesters]]\nsource = "{args.source}"\nkey = "{key.verifier_key}"')
    return 0


def cmd_sign_reports(args: argparse.Namespace) -> int:
    key = load_attester_key(Path(args.key))
    first = args.first_seq if args.first_seq is not None else time.time_ns() // 1000
    for out in sign_lines(key, sys.stdin, ingest=args.ingest, first_seq=first):
        print(out, flush=True)
    return 0


def register(sub: Any) -> None:
    """Add the two commands to ``solvency-prover``'s subparsers."""
    p = sub.add_parser("attester-key", help="make a reserve source's signing key")
    p.add_argument("--source", required=True, help="the reserve source id (the key's name)")
    p.add_argument("--out", required=True, help="the key file to create (mode 0600)")
    p.set_defaults(run=cmd_attester_key)

    p = sub.add_parser("sign-reports", help="sign reserve reports: JSON lines in and out")
    p.add_argument("--key", required=True, help="the source's attester key file")
    p.add_argument("--ingest", action="store_true", help="write reserve-reports messages")
    p.add_argument("--first-seq", type=int, help="with --ingest (default: time in microseconds)")
    p.set_defaults(run=cmd_sign_reports)
