"""Balance files for ``solvency-prover import``: CSV with the header
``user,asset,amount``, or JSON lines (``.jsonl``, ``.ndjson``) of objects with
those keys; amounts are decimal integers 0..2**64-1 (strings or numbers)."""

from __future__ import annotations

import csv
import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, TextIO

from prover.errors import ConfigError, ProverError
from verifier.errors import FormatError
from verifier.hashing import MAX_BALANCE, check_asset_id, check_user_id

__all__ = ["read_rows"]


def _records(path: Path, f: TextIO) -> Iterator[tuple[int, Any, Any, Any]]:
    """``(line, user, asset, amount)`` as written in a CSV or JSONL file."""
    if path.suffix in (".jsonl", ".ndjson"):
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{path}:{line}: not JSON ({exc})") from None
            if not isinstance(doc, dict) or not {"user", "asset", "amount"} <= doc.keys():
                raise ConfigError(f'{path}:{line}: want {{"user", "asset", "amount"}}')
            yield line, doc["user"], doc["asset"], doc["amount"]
        return
    reader = csv.reader(f)
    if next(reader, None) != ["user", "asset", "amount"]:
        raise ConfigError(f"{path}: the CSV header must be user,asset,amount")
    for row in reader:
        if len(row) != 3:
            raise ConfigError(f"{path}:{reader.line_num}: want 3 columns, got {len(row)}")
        yield reader.line_num, row[0], row[1], row[2]


def read_rows(path: Path, assets: Collection[str]) -> Iterator[tuple[int, str, str, int]]:
    """``(line, user, asset, amount)`` from a CSV or JSONL file, validated.

    Raises:
        ConfigError: a malformed line, or an asset not in ``assets``.
        ProverError: the file cannot be read.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line, user, asset, amount in _records(path, f):
                try:
                    check_user_id(user)
                    check_asset_id(asset)
                except FormatError as exc:
                    raise ConfigError(f"{path}:{line}: {exc}") from None
                if asset not in assets:
                    raise ConfigError(f"{path}:{line}: asset {asset} is not configured")
                text = str(amount) if type(amount) in (int, str) else ""
                if not (text.isascii() and text.isdigit() and int(text) <= MAX_BALANCE):
                    raise ConfigError(f"{path}:{line}: amount {amount!r} is not in 0..2**64-1")
                yield line, user, asset, int(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ProverError(f"cannot read {path}: {exc.strerror or exc}") from None
