"""Strict readers for the JSON documents of the protocol (proof files, stream messages).

Each reader takes the value and a ``where`` label, and raises FormatError naming
it, so that no ValueError, binascii.Error or KeyError escapes a parser.

``load_object`` reads the JSON dialect of docs/PROTOCOL.md §6.1, which every
JSON parser can be held to byte for byte: UTF-8 without a byte order mark, no
key twice in one object, numbers only as unsigned integer literals of at most
20 digits (no sign, fraction, exponent, NaN or Infinity), strings of Unicode
scalar values (no lone surrogate, checked by ``text``). ``b64`` accepts only
the canonical base64 of a byte string (§6.2): the one text re-encoding gives.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, NoReturn

from verifier.errors import FormatError

__all__ = ["b64", "decimal", "exact_keys", "hex32", "hex32_list", "load_object", "natural", "text"]

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,38}")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_INTEGER = re.compile(r"0|[1-9][0-9]{0,19}")
_BOM = "\ufeff"


class _Refused(Exception):
    """Raised inside json.loads by the hooks below; load_object names the document."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"key {key!r} appears twice in one object")
            seen.add(key)
    return doc


def _integer(literal: str) -> int:
    if _INTEGER.fullmatch(literal) is None:
        raise _Refused(f"number {literal[:30]!r} is not an unsigned integer of at most 20 digits")
    return int(literal)


def _not_integer(literal: str) -> NoReturn:
    raise _Refused(f"number {literal[:30]!r} is not an integer literal")


def load_object(data: str | bytes, max_bytes: int, where: str) -> dict[str, Any]:
    """Parse ``data`` (UTF-8 if bytes) as one JSON object of at most ``max_bytes``
    UTF-8 bytes, in the strict dialect of the module docstring."""
    if len(data) > max_bytes:
        raise FormatError(f"{where} is larger than {max_bytes} bytes")
    if isinstance(data, str):
        text = data
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError:
            raise FormatError(f"{where} is not UTF-8 (it holds a lone surrogate)") from None
        if size > max_bytes:
            raise FormatError(f"{where} is larger than {max_bytes} bytes")
    else:
        try:
            text = bytes(data).decode("utf-8")  # strict: no surrogates, no overlong forms
        except UnicodeDecodeError as exc:
            raise FormatError(f"{where} is not UTF-8: {exc}") from None
    if text.startswith(_BOM):
        raise FormatError(f"{where} starts with a byte order mark (U+FEFF): want UTF-8 without")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_integer,
            parse_float=_not_integer,
            parse_constant=_not_integer,
        )
    except _Refused as exc:
        raise FormatError(f"{where}: {exc}") from None
    except (ValueError, RecursionError) as exc:
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
    """A JSON string of Unicode scalar values (a lone surrogate escape is refused)."""
    if not isinstance(value, str):
        raise FormatError(f"{where} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{where} holds a lone surrogate (\\ud800-\\udfff)") from None
    return value


def natural(value: Any, where: str) -> int:
    """A JSON integer >= 0 (booleans and floats are refused)."""
    if type(value) is not int or value < 0:
        raise FormatError(f"{where} must be a non-negative integer")
    return value


def decimal(value: Any, where: str) -> int:
    """An amount written as a decimal string: no sign, no leading zeros, 1-39 digits.

    Only the syntax is checked: the caller checks the range (PROTOCOL §3)."""
    if not isinstance(value, str) or _DECIMAL.fullmatch(value) is None:
        raise FormatError(f"{where} must be a decimal string of 1-39 digits, no sign or leading 0")
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
    """Canonical base64 (RFC 4648 §4): alphabet ``A-Z a-z 0-9 + /``, padded with
    ``=`` to a multiple of 4 characters, unused bits of the last character zero
    (RFC 4648 §3.5); that is, exactly ``base64(decoded)``."""
    encoded = text(value, where)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise FormatError(f"{where} is not base64: {exc}") from None
    if base64.b64encode(raw).decode("ascii") != encoded:
        raise FormatError(f"{where} is not canonical base64 (non-zero pad bits)")
    return raw
