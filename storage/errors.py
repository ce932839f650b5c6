"""The storage package's exceptions::

    StorageError              base of everything storage/ raises
    ├── UnknownAssetError     an update names an asset that is not registered
    ├── InvalidAmountError    an amount is negative or too large for its column
    ├── SequenceError         sequence numbers that do not increase
    ├── EpochConflictError    an epoch number that does not extend the log
    └── NotFoundError         an epoch or proof for a size the log does not have

A method that raises has written nothing: each runs in one transaction.
"""

from __future__ import annotations

__all__ = [
    "EpochConflictError",
    "InvalidAmountError",
    "NotFoundError",
    "SequenceError",
    "StorageError",
    "UnknownAssetError",
]


class StorageError(Exception):
    """Base class of the storage errors."""


class UnknownAssetError(StorageError):
    """An update names an unregistered asset."""


class InvalidAmountError(StorageError):
    """An amount is out of range."""


class SequenceError(StorageError):
    """Sequence numbers within a batch do not strictly increase."""


class EpochConflictError(StorageError):
    """An epoch number is not the next one of the log."""


class NotFoundError(StorageError):
    """The requested epoch or log size does not exist."""
