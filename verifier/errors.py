"""The verifier's exceptions. Every failure it reports is one of these::

    SolvencyError                 base of everything the verifier raises
    ├── FormatError               input is malformed: bad JSON, bytes, types or ranges
    └── VerificationError         input is well formed but a check failed;
                                  ``check`` names the check (see docs/PROTOCOL.md §7)

Parsers translate ValueError, binascii.Error, json.JSONDecodeError and the like
into FormatError, so callers need to catch only SolvencyError.
"""

from __future__ import annotations

__all__ = ["FormatError", "SolvencyError", "VerificationError"]


class SolvencyError(Exception):
    """Base class of the verifier's errors."""


class FormatError(SolvencyError):
    """The input does not follow the wire format."""


class VerificationError(SolvencyError):
    """A verification check failed.

    Attributes:
        check: short stable name of the failed check, e.g. ``"root-mismatch"``.
        detail: what failed, without the check's name (``str()`` is ``check: detail``).
    """

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.detail = message
