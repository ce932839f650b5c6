"""The log's signing keys (table ``signing_keys``): Ed25519 public keys by
8-hex-digit id. At most one key is active (no ``active_to_ms``); adding a key
ends the active one's activity when the new one's begins, so activity
intervals never overlap.
"""

from __future__ import annotations

from sqlalchemy import select, update

from storage.checks import check_int, check_key_id
from storage.db import Database
from storage.errors import ConstraintError, InvalidInputError
from storage.rows import KeyRow
from storage.schema import SigningKey

__all__ = ["SigningKeys"]


class SigningKeys:
    """Registering the log's signing keys and listing them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, key_id: str, name: str, public_key: bytes, now_ms: int) -> None:
        """Make a key (8 hex digit id, 32-byte Ed25519 public key) the active one;
        the previously active key's activity ends at ``now_ms``.

        Raises:
            InvalidInputError (any subclass): a malformed argument.
            ConstraintError: ``key_id`` is already registered.
        """
        check_key_id(key_id)
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise InvalidInputError(f"key {key_id}: the name must be 1-255 characters")
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise InvalidInputError(f"key {key_id}: an Ed25519 public key is 32 bytes")
        check_int(now_ms, "now_ms")
        with self.db.transaction(write=True) as conn:
            if conn.scalar(select(SigningKey.key_id).where(SigningKey.key_id == key_id)):
                raise ConstraintError(f"signing key {key_id} is already registered")
            conn.execute(
                update(SigningKey)
                .where(SigningKey.active_to_ms.is_(None))
                .values(active_to_ms=now_ms)
            )
            conn.execute(
                self.db.insert(SigningKey).values(
                    key_id=key_id, name=name, public_key=public_key, active_from_ms=now_ms
                )
            )

    def all(self) -> list[KeyRow]:
        """Every key, oldest first."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                select(
                    SigningKey.key_id,
                    SigningKey.name,
                    SigningKey.public_key,
                    SigningKey.active_from_ms,
                    SigningKey.active_to_ms,
                ).order_by(SigningKey.active_from_ms, SigningKey.key_id)
            )
            return [
                KeyRow(r.key_id, r.name, bytes(r.public_key), r.active_from_ms, r.active_to_ms)
                for r in rows
            ]
