"""What the command line names: input files, the log's key and the witnesses'
keys, and the two errors that are neither the custodian's nor a check's.

Every function raises ``UsageError`` for an argument that cannot be used, so
``solvency-verify`` exits 2 for it (``verifier.cli.EXIT_TABLE``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from verifier.checkpoint import VerifierKey
from verifier.cosignature import WitnessKey
from verifier.errors import FormatError

__all__ = [
    "OperationalError",
    "UsageError",
    "load_key",
    "load_witnesses",
    "read_input",
]


class UsageError(Exception):
    """Bad arguments, or an input named on the command line that cannot be used."""


class OperationalError(Exception):
    """The network or the file system failed us: not the custodian's doing, nor the user's."""


def read_input(path: str) -> bytes:
    """The bytes of a file named on the command line (``-``: standard input)."""
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def load_key(text: str, option: str = "--key") -> VerifierKey:
    """A verifier key given inline or as the path of a file holding it, to
    the command line's ``option``."""
    if "+" not in text and os.path.exists(text):
        text = read_input(text).decode("utf-8", "replace").strip()
    try:
        return VerifierKey.parse(text)
    except FormatError as exc:
        raise UsageError(f"{option}: {exc}") from None


def load_witnesses(
    values: list[str] | None, quorum: int | None
) -> tuple[tuple[WitnessKey, ...], int]:
    """The ``--witness`` keys (each given inline, or as a file holding one key
    per line) and the ``--quorum``: by default all of them, else 1 to their
    number. Two keys of one witness name are refused: a quorum counts witnesses."""
    keys: list[WitnessKey] = []
    for value in values or ():
        from_file = "+" not in value and os.path.exists(value)
        lines = read_input(value).decode("utf-8", "replace").splitlines() if from_file else [value]
        if not any(line.strip() for line in lines):
            raise UsageError(f"--witness {value}: no key in it")
        for line in filter(str.strip, lines):
            try:
                key = WitnessKey.parse(line)
            except FormatError as exc:
                raise UsageError(f"--witness: {exc}") from None
            if any(k.name == key.name for k in keys):
                raise UsageError(f"--witness: two keys of {key.name}: a quorum counts witnesses")
            keys.append(key)
    if quorum is None:
        return tuple(keys), len(keys)
    if not keys:
        raise UsageError("--quorum needs --witness keys")
    if not 1 <= quorum <= len(keys):
        raise UsageError(f"--quorum {quorum}: give 1 to {len(keys)} (the --witness keys)")
    return tuple(keys), quorum
