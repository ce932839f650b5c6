"""Epochs and their RFC 9162 log (tables ``epochs``, ``epoch_marks``,
``epoch_reserves``; the log itself is storage/log.py).

Invariants:

- epoch ``n`` is leaf ``n`` of the log, and the same row: the log and the
  epochs cannot diverge. The caller names the leaf (the record's header,
  PROTOCOL §5) and the record the row keeps; storage reads neither;
- ``append`` writes the epoch, its log leaf, its signed checkpoint (over the
  root of the log that includes it), the marks it covers and the reserves it
  used in one transaction, so after a crash the store holds exactly the
  epochs that committed, each with everything it covered;
- an epoch covers only acknowledged updates, and never fewer than the epoch
  before it (its marks neither exceed the producers' marks nor go back);
- one appender at a time: the log's lock in the process and, on PostgreSQL,
  an advisory lock, so the log's size read in the transaction stays its size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import Connection, Row, select

from storage.assets import Assets
from storage.checks import MAX_RESERVE, check_amount, check_asset, check_int, check_source
from storage.db import APPEND_LOCK, Database
from storage.errors import EpochConflictError, InvalidInputError, NotFoundError, SequenceError
from storage.lease import Fence, Leases
from storage.log import EpochLog
from storage.marks import Marks, SourceMarks, check_marks
from storage.rows import EpochRow, ReserveReport, ReserveRow
from storage.schema import Epoch, EpochMark, EpochReserve

__all__ = ["Epochs"]

_COLUMNS = select(Epoch.number, Epoch.record, Epoch.checkpoint, Epoch.created_ms, Epoch.leaf_hash)


class Epochs:
    """Appending epochs to the log, reading them, and proving the log."""

    def __init__(self, db: Database, assets: Assets, marks: SourceMarks) -> None:
        self.db = db
        self.assets = assets
        self.marks = marks
        self.leases = Leases(db)
        self.log = EpochLog()

    def append(
        self,
        number: int,
        leaf: bytes,
        record: bytes,
        sign: Callable[[int, bytes], bytes],
        *,
        created_ms: int,
        marks: Marks | None = None,
        reserves: Iterable[ReserveReport] | None = None,
        fence: Fence | None = None,
    ) -> bytes:
        """Append epoch ``number``, all in one transaction: ``leaf`` as log leaf
        ``number`` in the epoch's own row, which keeps ``record`` (the log
        hashes the leaf; both are opaque bytes here), the checkpoint ``sign(size, root)``
        returns for the log with that leaf (the root is computed inside the
        transaction, hence a callback), the producer marks the epoch covers
        (``(kind, source) -> seq``) and the reserve reports its record used;
        with ``fence``, only if its token is still its lease's (storage/lease.py).
        Returns the checkpoint.

        Raises:
            EpochConflictError: ``number`` is not the log's size.
            FencedError: ``fence``'s token is stale.
            SequenceError: a mark exceeds what was acknowledged for its source, or
                is below (or drops) one of the previous epoch's marks.
            InvalidInputError, UnknownAssetError, InvalidAmountError: bad
                arguments.
            Whatever ``sign`` raises. In every case nothing is written.
        """
        check_int(number, "epoch number")
        check_int(created_ms, "created_ms")
        if not isinstance(leaf, bytes) or not isinstance(record, bytes):
            raise InvalidInputError(f"epoch {number}: the leaf and the record must be bytes")
        mark_rows = check_marks(marks or {})
        reserve_rows = self._check_reserves(reserves or ())
        size: int | None = None
        try:
            with self.log.lock, self.db.transaction(write=True) as conn, self.log.bound(conn):
                self.db.advisory_lock(conn, APPEND_LOCK)
                if fence is not None:
                    self.leases.check(conn, fence)
                size = self.log.size()
                if number != size:
                    raise EpochConflictError(f"epoch {number} does not extend a log of {size}")
                self._check_marks_against(conn, number, mark_rows)
                self.log.append(leaf, record, created_ms)
                checkpoint = sign(size + 1, self.log.root(size + 1))
                if not isinstance(checkpoint, bytes):
                    raise InvalidInputError("sign() must return the checkpoint as bytes")
                try:
                    text_ = checkpoint.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInputError("the checkpoint is not UTF-8 text") from None
                self.log.set_checkpoint(number, text_)
                if mark_rows:
                    conn.execute(
                        self.db.insert(EpochMark),
                        [
                            {"epoch": number, "kind": k, "source": s, "last_seq": q}
                            for (k, s), q in mark_rows.items()
                        ],
                    )
                if reserve_rows:
                    conn.execute(
                        self.db.insert(EpochReserve),
                        [
                            {
                                "epoch": number,
                                "asset": r.asset,
                                "source": r.source,
                                "amount": r.amount,
                                "as_of_ms": r.as_of_ms,
                            }
                            for r in reserve_rows
                        ],
                    )
        except BaseException:
            if size is not None:
                self.log.forget_after(size)  # subroots over the rolled-back leaf
            raise
        return checkpoint

    def latest(self) -> EpochRow | None:
        """The last committed epoch, or None before the first."""
        with self.db.transaction() as conn:
            row = conn.execute(_COLUMNS.order_by(Epoch.number.desc()).limit(1)).first()
        return None if row is None else _epoch_row(row)

    def get(self, number: int) -> EpochRow:
        """Epoch ``number``; NotFoundError if there is none."""
        with self.db.transaction() as conn:
            row = conn.execute(_COLUMNS.where(Epoch.number == number)).first()
        if row is None:
            raise NotFoundError(f"no epoch {number}")
        return _epoch_row(row)

    def marks_of(self, number: int) -> dict[tuple[str, str], int]:
        """The producer marks epoch ``number`` covers (empty if it has none)."""
        with self.db.transaction() as conn:
            return self._marks_of(conn, number)

    def reserves_of(self, number: int) -> list[ReserveRow]:
        """The reserve reports epoch ``number``'s record used, by asset and source."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                select(
                    EpochReserve.asset,
                    EpochReserve.source,
                    EpochReserve.amount,
                    EpochReserve.as_of_ms,
                )
                .where(EpochReserve.epoch == number)
                .order_by(EpochReserve.asset, EpochReserve.source)
            ).all()
        return [ReserveRow(r.asset, r.source, int(r.amount), int(r.as_of_ms)) for r in rows]

    # The log

    def log_size(self) -> int:
        """The number of leaves of the log (= the number of epochs)."""
        with self.log.lock, self.db.transaction() as conn, self.log.bound(conn):
            return self.log.size()

    def log_root(self, size: int | None = None) -> bytes:
        """RFC 9162 root of the log's first ``size`` leaves (default: all)."""
        with self.log.lock, self.db.transaction() as conn, self.log.bound(conn):
            current = self.log.size()
            if size is None:
                size = current
            _check_size(size, current)
            return self.log.root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the log of ``size`` leaves."""
        with self.log.lock, self.db.transaction() as conn, self.log.bound(conn):
            _check_size(size, self.log.size())
            return self.log.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof from the log of ``old_size`` leaves to the
        log of ``new_size`` (empty when equal, or from the empty log)."""
        with self.log.lock, self.db.transaction() as conn, self.log.bound(conn):
            _check_size(new_size, self.log.size())
            return self.log.consistency_proof(old_size, new_size)

    # Checks of an append

    def _check_reserves(self, reserves: Iterable[ReserveReport]) -> list[ReserveRow]:
        checked: dict[tuple[str, str], ReserveRow] = {}
        for i, r in enumerate(reserves):
            where = f"reserves[{i}]"
            check_asset(r.asset, where)
            self.assets.check_known(r.asset, where)
            check_source(r.source, where)
            check_amount(r.amount, MAX_RESERVE, "reserve", where)
            check_int(r.as_of_ms, "as_of_ms", where)
            if (r.asset, r.source) in checked:
                raise InvalidInputError(f"{where}: a second report of {r.asset} from {r.source}")
            checked[(r.asset, r.source)] = ReserveRow(r.asset, r.source, r.amount, r.as_of_ms)
        return list(checked.values())

    def _check_marks_against(
        self, conn: Connection, number: int, marks: dict[tuple[str, str], int]
    ) -> None:
        """An epoch covers only acknowledged updates, and never fewer than the
        epoch before it (a stream's cut, which no producer acknowledges, only
        that)."""
        acknowledged = self.marks.read(conn)
        for key, seq in marks.items():
            if key[0] != "stream" and seq > acknowledged.get(key, -1):
                raise SequenceError(
                    f"epoch {number} covers {key[0]} of {key[1]} up to seq {seq}, but only "
                    f"{acknowledged.get(key, 'none')} was acknowledged"
                )
        if number == 0:
            return
        for key, seq in self._marks_of(conn, number - 1).items():
            if marks.get(key, -1) < seq:
                raise SequenceError(
                    f"epoch {number} covers {key[0]} of {key[1]} up to "
                    f"{marks.get(key, 'nothing')}, less than epoch {number - 1} ({seq})"
                )

    def _marks_of(self, conn: Connection, number: int) -> dict[tuple[str, str], int]:
        rows = conn.execute(
            select(EpochMark.kind, EpochMark.source, EpochMark.last_seq).where(
                EpochMark.epoch == number
            )
        )
        return {(r.kind, r.source): int(r.last_seq) for r in rows}


def _check_size(size: int, current: int) -> None:
    if not isinstance(size, int) or not 0 <= size <= current:
        raise NotFoundError(f"no log of size {size} (the log has {current})")


def _epoch_row(row: Row[int, bytes, str, int, bytes]) -> EpochRow:
    return EpochRow(
        int(row.number),
        bytes(row.record),
        row.checkpoint.encode(),
        int(row.created_ms),
        bytes(row.leaf_hash),
    )
