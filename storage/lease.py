"""The log's single writer: a lease with a fencing token (table
``writer_leases``, migration 0007; docs/SCALING.md, "Recovery").

A sharded prover runs one active coordinator and standbys. Whoever holds
the lease of a log may append to it; taking the lease over (once it has
expired) increments its token, and every append made under a lease checks,
in its own transaction, that the token is still the appender's. So a
coordinator that paused past its lease (a long GC, SIGSTOP, a cut network)
and wakes up cannot append: its token is stale, and its append writes
nothing.

Invariants: a lease's token only grows; at most one holder has a lease that
has not expired; an append fenced by a token other than the current one
writes nothing (``FencedError``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from storage.checks import check_int
from storage.db import APPEND_LOCK, Database
from storage.errors import FencedError, InvalidInputError
from storage.schema import WriterLease

__all__ = ["Fence", "Leases"]


@dataclass(frozen=True, slots=True)
class Fence:
    """What an append under a lease carries: the lease's name and the token
    its holder was given."""

    name: str
    token: int


class Leases:
    """Taking, renewing and checking leases."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def acquire(self, name: str, holder: str, now_ms: int, ttl_ms: int) -> Fence | None:
        """Lease ``name`` for ``holder`` until ``now_ms + ttl_ms``: free or
        expired, it is taken with the next token; already ``holder``'s, it is
        extended with the same token. None while another holds it."""
        _check(name, holder, now_ms, ttl_ms)
        with self.db.transaction(write=True) as conn:
            self.db.advisory_lock(conn, APPEND_LOCK)
            row = conn.execute(
                select(WriterLease.holder, WriterLease.token, WriterLease.expires_ms).where(
                    WriterLease.name == name
                )
            ).first()
            if row is None:
                conn.execute(
                    self.db.insert(WriterLease),
                    {"name": name, "holder": holder, "token": 1, "expires_ms": now_ms + ttl_ms},
                )
                return Fence(name, 1)
            current_holder, token, expires = row
            if current_holder != holder and expires > now_ms:
                return None
            if current_holder != holder:
                token += 1
            conn.execute(
                update(WriterLease)
                .where(WriterLease.name == name)
                .values(holder=holder, token=token, expires_ms=now_ms + ttl_ms)
            )
            return Fence(name, token)

    def renew(self, fence: Fence, holder: str, now_ms: int, ttl_ms: int) -> bool:
        """Extend the lease ``fence`` names, if its token is still ``holder``'s
        (even past its expiry, if no one took it over); False if it was lost."""
        _check(fence.name, holder, now_ms, ttl_ms)
        with self.db.transaction(write=True) as conn:
            self.db.advisory_lock(conn, APPEND_LOCK)
            done = conn.execute(
                update(WriterLease)
                .where(
                    WriterLease.name == fence.name,
                    WriterLease.token == fence.token,
                    WriterLease.holder == holder,
                )
                .values(expires_ms=now_ms + ttl_ms)
            )
            return bool(done.rowcount)

    def release(self, fence: Fence, holder: str) -> None:
        """Let the lease go at once (a clean stop), if still ``holder``'s."""
        with self.db.transaction(write=True) as conn:
            conn.execute(
                update(WriterLease)
                .where(
                    WriterLease.name == fence.name,
                    WriterLease.token == fence.token,
                    WriterLease.holder == holder,
                )
                .values(expires_ms=0)
            )

    def check(self, conn: Connection, fence: Fence) -> None:
        """Within an append's transaction (which holds ``APPEND_LOCK``): raise
        ``FencedError`` unless ``fence`` is the lease's current token."""
        token = conn.execute(
            select(WriterLease.token).where(WriterLease.name == fence.name)
        ).scalar_one_or_none()
        if token != fence.token:
            raise FencedError(
                f"lease {fence.name!r}: token {fence.token} is stale (the lease is at {token})"
            )


def _check(name: str, holder: str, now_ms: int, ttl_ms: int) -> None:
    for what, value in (("lease name", name), ("holder", holder)):
        if not isinstance(value, str) or not 1 <= len(value) <= 128:
            raise InvalidInputError(f"{what} must be 1-128 characters")
    check_int(now_ms, "now_ms")
    check_int(ttl_ms, "ttl_ms")
