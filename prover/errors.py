"""The prover's exceptions::

    ProverError               base of everything prover/ raises on its own account
    ├── ConfigError           bad configuration file, flag or environment variable
    ├── KeyFileError          signing key missing, unreadable or wrong passphrase
    ├── TreeError             invalid input to a sum tree (slot, amount, shape)
    ├── IngestError           an ingest message is refused; ``code`` goes on the wire
    ├── SubscriberShed        a root stream subscriber fell too far behind
    ├── NotRetained           a proof of an epoch the prover no longer keeps
    └── UnreadableEpoch       a stored epoch of another layout (an earlier database)

Storage failures are storage.errors.StorageError; verification failures are
verifier.errors.SolvencyError.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "IngestError",
    "KeyFileError",
    "NotRetained",
    "ProverError",
    "SubscriberShed",
    "TreeError",
    "UnreadableEpoch",
]


class ProverError(Exception):
    """Base class of the prover's errors."""


class ConfigError(ProverError):
    """The configuration is invalid."""


class KeyFileError(ProverError):
    """The signing key cannot be loaded or written."""


class TreeError(ProverError, ValueError):
    """Invalid input to a sum tree."""


class IngestError(ProverError):
    """An ingest message is refused.

    Attributes:
        code: stable error code sent to the producer (docs/PROTOCOL.md §11.1).
        index: position of the offending update in the batch, if any.
        id: the refused message's ``id``, echoed in the reply (None: none found).
    """

    def __init__(self, code: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.index = index
        self.id: str | int | None = None


class SubscriberShed(ProverError):
    """A root stream subscriber was dropped for falling behind."""


class NotRetained(ProverError):
    """The proofs of that epoch are no longer (or not yet) served."""


class UnreadableEpoch(ProverError):
    """A stored epoch cannot be read: its record, or its log leaf, is not of
    this prover's layout (a database written by an earlier, unreleased one)."""
