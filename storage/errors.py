"""The storage package's exceptions::

    StorageError                  base of everything storage/ raises
    ├── InvalidInputError         an argument is refused before anything is written
    │   ├── UnknownAssetError     an update names an asset that is not registered
    │   ├── InvalidAmountError    an amount is negative or too large for its column
    │   ├── InvalidIdentifierError  a malformed user, asset, source or key id (or decimals)
    │   └── SequenceError         sequence numbers that do not increase, or epoch
    │                             marks the store never acknowledged
    ├── ConstraintError           the database refused a write (a constraint of the
    │                             schema), or it contradicts what is stored
    ├── EpochConflictError        an epoch number that does not extend the log
    └── NotFoundError             an epoch, period or log size that does not exist

A method that raises has written nothing: each runs in one transaction.
Database failures that are none of the above (connection lost, disk full,
lock timeout) are raised as plain ``StorageError`` with the cause chained.
"""

from __future__ import annotations

__all__ = [
    "ConstraintError",
    "EpochConflictError",
    "FencedError",
    "InvalidAmountError",
    "InvalidIdentifierError",
    "InvalidInputError",
    "NotFoundError",
    "SequenceError",
    "StorageError",
    "UnknownAssetError",
]


class StorageError(Exception):
    """Base class of the storage errors."""


class InvalidInputError(StorageError):
    """An argument was refused by validation; nothing was written."""


class UnknownAssetError(InvalidInputError):
    """An update names an unregistered asset."""


class InvalidAmountError(InvalidInputError):
    """An amount is not an integer in its column's range."""


class InvalidIdentifierError(InvalidInputError):
    """A user id, asset id, source name, key id or decimals value is malformed."""


class SequenceError(InvalidInputError):
    """Sequence numbers within a batch do not strictly increase, or an epoch's
    marks go backwards or past what was acknowledged."""


class ConstraintError(StorageError):
    """The database refused a write because of a schema constraint, or the
    write contradicts stored state (e.g. an asset's decimals)."""


class EpochConflictError(StorageError):
    """An epoch number is not the next one of the log."""


class FencedError(StorageError):
    """An append under a lease whose token is no longer the lease's
    (storage/lease.py): another writer took the log over."""


class NotFoundError(StorageError):
    """The requested epoch, salt period or log size does not exist."""
