"""Atomic epochs on both databases: the epoch row, its log leaf, checkpoint,
marks and reserve snapshot commit together or not at all, across injected
failures at every statement and a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

from storage.errors import (
    EpochConflictError,
    InvalidAmountError,
    InvalidInputError,
    NotFoundError,
    SequenceError,
    UnknownAssetError,
)
from storage.log import EpochLog
from storage.rows import ReserveRow
from storage.store import MAX_RESERVE, Store
from tests.storage import rfc9162_reference as ref
from tests.storage.conftest import B, R, balances, body, sign

CORE = ("balances", "core")
COLD = ("reserves", "cold")


def test_epochs_are_contiguous_from_zero(store: Store) -> None:
    assert store.latest_epoch() is None and store.log_size() == 0
    with pytest.raises(EpochConflictError, match="epoch 1 does not extend a log of 0"):
        store.append_epoch(1, b"gap", body(b"gap"), sign, created_ms=0)
    records = [b"record %d" % n for n in range(9)]
    for n, r in enumerate(records):
        cp = store.append_epoch(n, r, body(r), sign, created_ms=1000 + n)
        assert cp == sign(n + 1, ref.mth([ref.leaf_hash(x) for x in records[: n + 1]]))
    for bad in (3, 8, 10):
        with pytest.raises(EpochConflictError):
            store.append_epoch(bad, b"rewrite", body(b"rewrite"), sign, created_ms=0)
    latest = store.latest_epoch()
    assert latest is not None
    assert (latest.number, latest.record, latest.created_ms) == (8, body(records[8]), 1008)
    assert latest.leaf_hash == ref.leaf_hash(records[8])
    assert store.epoch(4).checkpoint == sign(5, store.log_root(5))
    assert store.log_size() == 9
    with pytest.raises(NotFoundError):
        store.epoch(9)


def test_the_log_hashes_the_leaf_and_the_row_keeps_the_record(store: Store) -> None:
    """The caller names the leaf (a record's header) and what the row keeps (the
    whole record): the log's root, proofs and stored leaf hash are of the leaf
    only, so changing the rest of the record changes none of them."""
    store.append_epoch(0, b"header 0", b"header 0, entries", sign, created_ms=0)
    store.append_epoch(1, b"header 1", b"header 1, other entries", sign, created_ms=1)
    hashes = [ref.leaf_hash(b"header 0"), ref.leaf_hash(b"header 1")]
    assert store.log_root() == ref.mth(hashes)
    assert ref.verify_inclusion(1, 2, store.inclusion_proof(1, 2), hashes[1], store.log_root())
    row = store.epoch(1)
    assert (row.record, row.leaf_hash) == (b"header 1, other entries", hashes[1])
    assert row.leaf_hash != ref.leaf_hash(row.record)
    for leaf, record in [("header", b"record"), (b"header", "record"), (None, b"record")]:
        with pytest.raises(InvalidInputError, match="must be bytes"):
            store.append_epoch(2, leaf, record, sign, created_ms=2)  # type: ignore[arg-type]
    assert store.log_size() == 2


def test_an_epoch_records_its_marks_and_reserves(store: Store) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", 5), B(2, "b", "ETH", 6)])
    store.apply_reserves("cold", [R(7, "BTC", MAX_RESERVE, 100)])
    snapshot = [ReserveRow("BTC", "cold", MAX_RESERVE, 100), ReserveRow("ETH", "hot", 0, 90)]
    store.append_epoch(
        0, b"r0", body(b"r0"), sign, created_ms=1, marks={CORE: 2, COLD: 7}, reserves=snapshot
    )
    store.apply_balances("core", [B(3, "a", "BTC", 9)])  # acknowledged after epoch 0
    store.append_epoch(1, b"r1", body(b"r1"), sign, created_ms=2, marks={CORE: 2, COLD: 7})
    assert store.epoch_marks(0) == {CORE: 2, COLD: 7} == store.epoch_marks(1)
    assert store.epoch_reserves(0) == snapshot and store.epoch_reserves(1) == []
    assert store.source_marks() == {CORE: 3, COLD: 7}  # epoch 2 will cover seq 3


@pytest.mark.parametrize(
    ("marks", "message"),
    [
        ({CORE: 3}, "up to seq 3, but only 2 was acknowledged"),
        ({("balances", "nobody"): 0}, "but only none was acknowledged"),
        ({CORE: 1}, "less than epoch 0"),
        ({}, "covers balances of core up to nothing, less than epoch 0"),
    ],
)
def test_marks_cover_only_acknowledged_updates_and_never_go_back(
    store: Store, marks: dict[tuple[str, str], int], message: str
) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", 5), B(2, "b", "ETH", 6)])
    store.append_epoch(0, b"r0", body(b"r0"), sign, created_ms=1, marks={CORE: 2})
    with pytest.raises(SequenceError, match=message):
        store.append_epoch(1, b"r1", body(b"r1"), sign, created_ms=2, marks=marks)
    assert store.log_size() == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"marks": {("trades", "core"): 1}}, InvalidInputError),
        ({"marks": {("balances", "bad source"): 1}}, InvalidInputError),
        ({"marks": {CORE: -1}}, SequenceError),
        ({"reserves": [ReserveRow("BTC", "cold", MAX_RESERVE + 1, 1)]}, InvalidAmountError),
        ({"reserves": [ReserveRow("XRP", "cold", 1, 1)]}, UnknownAssetError),
        ({"reserves": [ReserveRow("BTC", "cold", 1, 1)] * 2}, InvalidInputError),
        ({"created_ms": -1}, InvalidInputError),
    ],
)
def test_bad_epoch_arguments_write_nothing(
    store: Store, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        store.append_epoch(0, b"r0", body(b"r0"), sign, **{"created_ms": 0, **kwargs})
    assert store.log_size() == 0 and store.latest_epoch() is None


def test_a_checkpoint_must_be_text(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="UTF-8"):
        store.append_epoch(0, b"r0", body(b"r0"), lambda size, root: b"\xff", created_ms=0)
    assert store.log_size() == 0


class Boom(Exception):
    pass


@pytest.fixture
def fail_at_statement(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Makes the store's N-th SQL statement from now fail (``box[0] = N``; 0:
    never), counting SQLAlchemy's statements and the log's driver-level ones."""
    box = [0]

    def tick() -> None:
        if box[0]:
            box[0] -= 1
            if box[0] == 0:
                raise Boom("injected failure")

    def after(*args: object) -> None:
        tick()

    query = EpochLog._query

    def counted_query(self: EpochLog, name: str, *params: object) -> list[Any]:
        rows = query(self, name, *params)
        tick()
        return rows

    monkeypatch.setattr(EpochLog, "_query", counted_query)
    event.listen(store.engine, "after_cursor_execute", after)
    yield box
    event.remove(store.engine, "after_cursor_execute", after)


def snapshot(store: Store) -> tuple[object, ...]:
    with store.engine.connect() as conn:
        tables = tuple(
            sorted(conn.execute(text(f"SELECT * FROM {t}")).all())
            for t in ("epochs", "epoch_marks", "epoch_reserves")
        )
    return (*tables, store.log_size(), store.log_root())


def test_a_failure_at_any_statement_of_append_epoch_writes_nothing(
    store: Store, fail_at_statement: list[int]
) -> None:
    """127 epochs, then epoch 127 fails at its 1st, 2nd, ... statement (its
    leaf completes cached 64- and 128-leaf subtrees, which must be forgotten);
    afterwards the log still extends correctly."""
    records = [b"r%d" % n for n in range(127)]
    for n, r in enumerate(records):
        store.append_epoch(n, r, body(r), sign, created_ms=n)
    store.apply_balances("core", [B(1, "a", "BTC", 5)])
    store.apply_reserves("cold", [R(1, "BTC", 7, 1)])
    before = snapshot(store)
    failures = 0
    while True:
        fail_at_statement[0] = failures + 1
        try:
            store.append_epoch(
                127,
                b"the real one",
                body(b"the real one"),
                sign,
                created_ms=127,
                marks={CORE: 1, COLD: 1},
                reserves=[ReserveRow("BTC", "cold", 7, 1)],
            )
        except Boom:
            failures += 1
            fail_at_statement[0] = 0
            assert snapshot(store) == before, f"statement {failures} left something behind"
            continue
        break
    fail_at_statement[0] = 0
    assert failures >= 10  # lock, size, marks, leaf insert, leaf reads, checkpoint, ...
    hashes = [ref.leaf_hash(r) for r in [*records, b"the real one"]]
    assert store.log_root() == ref.mth(hashes)
    assert store.epoch(127).checkpoint == sign(128, ref.mth(hashes))
    assert store.epoch_marks(127) == {CORE: 1, COLD: 1}


def test_a_failing_signer_writes_nothing(store: Store) -> None:
    for n in range(63):
        store.append_epoch(n, b"r%d" % n, body(b"r%d" % n), sign, created_ms=n)

    def broken(size: int, root: bytes) -> bytes:
        raise RuntimeError("signer crashed")

    with pytest.raises(RuntimeError, match="signer crashed"):  # passes through unchanged
        store.append_epoch(63, b"doomed", body(b"doomed"), broken, created_ms=0)
    assert store.log_size() == 63 and store.latest_epoch().number == 62  # type: ignore[union-attr]
    store.append_epoch(63, b"r63", body(b"r63"), sign, created_ms=0)
    assert store.log_root() == ref.mth([ref.leaf_hash(b"r%d" % n) for n in range(64)])


def test_reopen_sees_the_last_committed_epoch(db_url: str) -> None:
    with Store.open(db_url) as store:
        store.ensure_asset("BTC", 8)
        store.apply_balances("core", [B(1, "a", "BTC", 5)])
        store.append_epoch(0, b"r0", body(b"r0"), sign, created_ms=0, marks={CORE: 1})
        store.apply_balances("core", [B(2, "a", "BTC", 6)])
    with Store.open(db_url) as again:
        latest = again.latest_epoch()
        assert latest is not None and latest.number == 0 and again.log_size() == 1
        assert again.epoch_marks(0) == {CORE: 1} and again.source_marks() == {CORE: 2}
        assert balances(again) == {("a", "BTC"): 6}
        again.append_epoch(1, b"r1", body(b"r1"), sign, created_ms=1, marks={CORE: 2})
        assert again.log_root() == ref.mth([ref.leaf_hash(b"r0"), ref.leaf_hash(b"r1")])


# SIGKILL: a real process dies mid-write; the reopened store holds whole
# batches and whole epochs only.

WRITER = """
import sys
from storage.log import EpochLog
from storage.rows import ReserveRow
from storage.store import Store
from tests.storage.conftest import B, R, body, sign

store = Store.open(sys.argv[1])
store.ensure_asset("BTC", 8)
seq = 0
for n in range(1_000_000):
    # batch n sets every user to n: a torn batch would show mixed values
    batch = [B(seq + i + 1, f"u{i}", "BTC", n + 1) for i in range(200)]
    seq += 200
    store.apply_balances("core", batch)
    store.apply_reserves("cold", [R(n + 1, "BTC", n + 1, n)])
    store.append_epoch(
        n, b"epoch %d" % n, body(b"epoch %d" % n), sign, created_ms=n,
        marks={("balances", "core"): seq, ("reserves", "cold"): n + 1},
        reserves=[ReserveRow("BTC", "cold", n + 1, n)],
    )
    print(n, flush=True)
"""


def test_sigkill_mid_write_leaves_whole_batches_and_epochs(db_url: str) -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, db_url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert proc.stdout is not None
    for _ in range(40):  # let it get well into its stride, then kill it mid-flight
        assert proc.stdout.readline(), "the writer died on its own"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    with Store.open(db_url) as store:
        latest = store.latest_epoch()
        assert latest is not None and latest.number >= 39
        n = latest.number
        assert store.log_size() == n + 1
        hashes = [ref.leaf_hash(b"epoch %d" % i) for i in range(n + 1)]
        assert store.log_root() == ref.mth(hashes)
        assert latest.checkpoint == sign(n + 1, ref.mth(hashes))
        assert store.epoch_marks(n) == {CORE: 200 * (n + 1), COLD: n + 1}
        assert store.epoch_reserves(n) == [ReserveRow("BTC", "cold", n + 1, n)]
        mark = store.source_marks()[CORE]
        assert mark % 200 == 0 and mark >= 200 * (n + 1)  # whole batches, at or past the epoch
        assert set(balances(store).values()) == {mark // 200}
        # the next start carries on from exactly there
        marks = store.source_marks()
        store.append_epoch(n + 1, b"after", body(b"after"), sign, created_ms=0, marks=marks)
