"""Ingest: producers' batches of balances and reserve reports, made durable.

Durability contract with the prover: a batch is acknowledged to its producer
only after ``apply_balances`` / ``apply_reserves`` / ``apply_reserve_reports``
returns. Each is one transaction that locks the producer's mark, writes the
fresh updates (those above the mark; the others are replays, counted and
ignored) and advances the mark to the last of them (storage/marks.py). A
refused batch writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from storage.assets import Assets
from storage.checks import (
    MAX_BALANCE,
    MAX_RESERVE,
    check_amount,
    check_asset,
    check_int,
    check_source,
    check_users,
)
from storage.db import Database
from storage.errors import InvalidInputError, SequenceError
from storage.journal import Journal
from storage.marks import MAX_SEQ, SourceMarks
from storage.reserves import Reserves
from storage.rows import (
    UNATTESTED,
    ApplyResult,
    AttestedReserveUpdate,
    BalanceUpdate,
    ReserveUpdate,
    Update,
)

__all__ = ["Ingest"]


class Ingest:
    """Applying producers' batches (balances to the journal, reserve reports to
    the reserves) and reading their marks."""

    def __init__(
        self,
        db: Database,
        assets: Assets,
        marks: SourceMarks,
        journal: Journal,
        reserves: Reserves,
    ) -> None:
        self.db = db
        self.assets = assets
        self.marks = marks
        self.journal = journal
        self.reserves = reserves

    def apply_balances(self, source: str, updates: Sequence[BalanceUpdate]) -> ApplyResult:
        """Durably store a producer's batch of absolute balances, skipping replays.

        Updates must have strictly increasing ``seq``; those at or below the
        source's mark are replays (counted, not written). The fresh ones become
        one ``balance_journal`` row (the last update of a (user, asset) in the
        batch wins when it is read), and the mark advances to the last seq, in one
        transaction: on return the batch is durable and ``iter_balances`` sees
        it; ``fold`` moves it into the ``balances`` table later.

        Raises:
            InvalidIdentifierError, SequenceError, UnknownAssetError,
            InvalidAmountError: the batch is refused; nothing of it is written.
            ConstraintError: an asset of the batch is registered no more (it
                was deleted behind the store's back); nothing is written.
        """
        check_source(source)
        self._check_updates(updates, MAX_BALANCE, "balance")
        check_users([u.user for u in updates])
        if not updates:
            return ApplyResult((), 0, self.source_marks().get(("balances", source), -1))
        with self.db.transaction(write=True) as conn:
            mark = self.marks.lock(conn, "balances", source)
            fresh = [u for u in updates if u.seq > mark]
            if fresh:
                self.journal.append(conn, source, fresh)
                mark = fresh[-1].seq
                self.marks.set(conn, "balances", source, mark)
        return ApplyResult(tuple(fresh), len(updates) - len(fresh), mark)

    def apply_reserves(self, source: str, updates: Sequence[ReserveUpdate]) -> ApplyResult:
        """Durably store a reserve source's reports, keeping the latest per asset,
        skipping replays (same rules as ``apply_balances``; amounts up to 2**96-1).
        Each becomes the source's unattested figure for its asset.

        Raises:
            InvalidInputError (any subclass): nothing of the batch is written.
        """
        return self._apply_reserves(source, updates, ())

    def apply_reserve_reports(
        self, source: str, updates: Sequence[AttestedReserveUpdate]
    ) -> ApplyResult:
        """As ``apply_reserves``, for signed reports (their signatures checked by
        the caller): each fresh one is also kept by its hash (``reserve_reports``)
        and named beside its reserve (key id and hash), in the same transaction.

        Raises:
            InvalidInputError (any subclass): nothing of the batch is written.
        """
        for i, u in enumerate(updates):
            check_int(u.key_id, "key_id", f"updates[{i}]")
            if not isinstance(u.report_hash, bytes) or len(u.report_hash) != 32:
                raise InvalidInputError(f"updates[{i}]: report_hash must be 32 bytes")
            if u.report_hash == UNATTESTED or not isinstance(u.note, bytes) or not u.note:
                raise InvalidInputError(f"updates[{i}]: a signed report needs its note")
        return self._apply_reserves(source, updates, updates)

    def source_marks(self) -> dict[tuple[str, str], int]:
        """``(kind, source) -> last applied seq`` for every producer seen
        (kind is ``"balances"`` or ``"reserves"``)."""
        with self.db.transaction() as conn:
            return self.marks.read(conn)

    def _apply_reserves(
        self,
        source: str,
        updates: Sequence[ReserveUpdate],
        attested: Sequence[AttestedReserveUpdate],
    ) -> ApplyResult:
        """Both of the above; ``attested`` is ``updates`` or empty."""
        check_source(source)
        self._check_updates(updates, MAX_RESERVE, "reserve")
        for i, u in enumerate(updates):
            check_int(u.as_of_ms, "as_of_ms", f"updates[{i}]")
        if not updates:
            return ApplyResult((), 0, self.source_marks().get(("reserves", source), -1))
        with self.db.transaction(write=True) as conn:
            mark = self.marks.lock(conn, "reserves", source)
            fresh = [u for u in updates if u.seq > mark]
            if fresh:
                signed = {u.seq: u for u in attested if u.seq > mark}
                self.reserves.write(conn, source, fresh, signed)
                mark = fresh[-1].seq
                self.marks.set(conn, "reserves", source, mark)
        return ApplyResult(tuple(fresh), len(updates) - len(fresh), mark)

    def _check_updates(self, updates: Sequence[Update], amount_limit: int, what: str) -> None:
        """Sequence numbers strictly increase, assets are registered, amounts
        fit. The ingest hot path: the common case costs a few comparisons."""
        last = -1
        known = self.assets.known or {}
        for i, u in enumerate(updates):
            seq = u.seq
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
                raise SequenceError(f"updates[{i}]: seq {seq!r} is not an integer in 0..2**63-1")
            if seq <= last:
                raise SequenceError(f"updates[{i}]: seq {seq} does not increase (after {last})")
            last = seq
            if u.asset not in known:
                check_asset(u.asset, f"updates[{i}]")
                self.assets.check_known(u.asset, f"updates[{i}]")
                known = self.assets.known or {}
            amount = u.amount
            if type(amount) is not int or not 0 <= amount <= amount_limit:
                check_amount(amount, amount_limit, what, f"updates[{i}] (asset {u.asset})")
