"""Strict readers for the JSON documents of the protocol (proof files, stream messages).

Each reader takes the value and a ``where`` label, and raises FormatError naming
it, so that no ValueError, binascii.Error or KeyError escapes a parser.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from verifier.errors import FormatError

__all__ = ["b64", "decimal", "exact_keys", "hex32", "hex32_list", "load_object", "natural", "text"]

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,38}")
_HEX32 = re.compile(r"[0-9a-f]{64}")


def load_object(data: str | bytes, max_bytes: int, where: str) -> dict[str, Any]:
    """Parse ``data`` as one JSON object of at most ``max_bytes``."""
    if len(data) > max_bytes:
        raise FormatError(f"{where} is larger than {max_bytes} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise FormatError(f"{where} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FormatError(f"{where} must be a JSON object")
    return doc


def exact_keys(doc: Any, keys: set[str], where: str) -> dict[str, Any]:
    """``doc`` as a dict with exactly ``keys``: unknown keys are rejected too."""
    if not isinstance(doc, dict):
        raise FormatError(f"{where} must be a JSON object")
    if set(doc) != keys:
        missing, extra = sorted(keys - set(doc)), sorted(set(doc) - keys)
        raise FormatError(f"{where}: missing keys {missing}, unknown keys {extra}")
    return doc


def text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where} must be a string")
    return value


def natural(value: Any, where: str) -> int:
    """A JSON integer >= 0 (booleans and floats are refused)."""
    if type(value) is not int or value < 0:
        raise FormatError(f"{where} must be a non-negative integer")
    return value


def decimal(value: Any, where: str) -> int:
    """An amount written as a decimal string: no sign, no leading zeros, < 10**39."""
    if not isinstance(value, str) or _DECIMAL.fullmatch(value) is None:
        raise FormatError(f"{where} must be a decimal string without sign or leading zeros")
    return int(value)


def hex32(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or _HEX32.fullmatch(value) is None:
        raise FormatError(f"{where} must be 64 lowercase hex digits (32 bytes)")
    return bytes.fromhex(value)


def hex32_list(value: Any, where: str) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise FormatError(f"{where} must be a list")
    return tuple(hex32(h, f"{where}[{i}]") for i, h in enumerate(value))


def b64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(text(value, where), validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise FormatError(f"{where} is not base64: {exc}") from exc
