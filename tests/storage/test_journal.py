"""The balance journal on both databases: acknowledged batches are read
through it before and after a fold, folds match a plain model wherever they
happen, survive dying midway, keep batches acknowledged while they run, and
take turns."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from storage.db import FOLD_LOCK, MIGRATIONS, Database
from storage.errors import InvalidInputError
from storage.journal import JOURNAL_ROWS_PER_READ, Journal, sorted_in_ranges
from storage.marks import SourceMarks
from storage.schema import decode_amount
from storage.store import Store
from tests.databases import POSTGRES_URL, SKIP_PG, postgres_schema_url
from tests.storage.conftest import B, balances


def table(store: Store) -> dict[tuple[str, str], int]:
    """The ``balances`` table itself, without the journal."""
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT user_id, asset, amount FROM balances")).all()
    return {(u, a): decode_amount(m) for u, a, m in rows}


def test_journaled_balances_are_read_and_survive_reopening_without_a_fold(db_url: str) -> None:
    with Store.open(db_url) as store:
        store.ensure_asset("BTC", 8)
        store.apply_balances("core", [B(1, "a", "BTC", 5), B(2, "b", "BTC", 6)])
        store.apply_balances("core", [B(3, "a", "BTC", 7), B(4, "c", "BTC", 0)])
    with Store.open(db_url) as store:
        assert table(store) == {} and store.journal_backlog() == 4
        assert balances(store) == {("a", "BTC"): 7, ("b", "BTC"): 6}  # folds first
        assert store.journal_backlog() == 0
        assert table(store) == {("a", "BTC"): 7, ("b", "BTC"): 6, ("c", "BTC"): 0}


def test_a_batch_is_one_journal_row_of_its_fresh_updates_in_order(store: Store) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", 1)])
    user = "\u00e9\u00a0x"  # non-ASCII, a no-break space inside: journaled as its UTF-8
    batch = [B(1, "a", "BTC", 9), B(4, "b", "ETH", 2), B(5, user, "BTC", 3), B(7, "b", "ETH", 0)]
    store.apply_balances("core", batch)
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT source, first_seq, last_seq, count, body FROM balance_journal ORDER BY id")
        ).all()
    assert [(*r[:4], bytes(r[4])) for r in rows] == [
        ("core", 1, 1, 1, b"a\tBTC\t1\n"),
        ("core", 4, 7, 3, f"b\tETH\t2\n{user}\tBTC\t3\nb\tETH\t0\n".encode()),
    ]
    assert balances(store) == {("a", "BTC"): 1, (user, "BTC"): 3}  # the last of "b" wins


def test_journal_backlog_counts_what_the_next_fold_folds(store: Store) -> None:
    assert store.journal_backlog() == 0 and store.fold() == 0
    store.apply_balances("core", [B(1, "a", "BTC", 1), B(2, "b", "BTC", 2), B(3, "a", "BTC", 3)])
    store.apply_balances("core", [B(3, "a", "BTC", 4)])  # a replay: not journaled
    store.apply_balances("other", [B(1, "a", "ETH", 5)])
    assert store.journal_backlog() == 4  # every fresh update, "a" twice
    assert store.fold() == 4
    assert store.journal_backlog() == 0 and store.fold() == 0
    with pytest.raises(InvalidInputError, match="chunk_size"):
        store.fold(0)


def test_a_fold_can_run_its_writes_elsewhere(store: Store) -> None:
    """With ``run``, every write transaction of a fold goes through it (the
    daemon runs them on its database thread), and nothing else writes."""
    store.apply_balances("core", [B(i + 1, f"u{i}", "BTC", i) for i in range(5)])
    steps: list[object] = []

    def run(step: Callable[[], None]) -> None:
        steps.append(step)
        step()

    assert store.fold(2, run) == 5
    assert len(steps) == 4  # three chunks of at most 2, then the journal's deletion
    assert table(store) == {(f"u{i}", "BTC"): i for i in range(5)}
    assert store.journal_backlog() == 0


def test_a_fold_pauses_between_journal_rows(store: Store) -> None:
    """``pause`` comes before each read of journal rows and before each row
    is parsed (and between key ranges of a large sort), before anything is
    written: a caller blocking in it holds the fold there."""
    for b in range(4):
        store.apply_balances("core", [B(b * 10 + i + 1, f"u{b}{i}", "BTC", i) for i in range(5)])
    calls: list[int] = []
    assert store.fold(2, pause=lambda: calls.append(len(table(store)))) == 20
    assert calls == [0] * (1 + 4)  # one read of up to JOURNAL_ROWS_PER_READ rows, 4 rows
    assert table(store) == {(f"u{b}{i}", "BTC"): i for b in range(4) for i in range(5)}


def test_a_fold_reads_the_journal_a_few_rows_at_a_time(store: Store) -> None:
    """Rows read in separate queries still fold in order: the last line of a
    (user, asset) wins across reads."""
    batches = 3 * JOURNAL_ROWS_PER_READ + 1
    for b in range(batches):
        store.apply_balances(
            "core", [B(2 * b + 1, f"u{b % 5}", "BTC", b), B(2 * b + 2, "all", "BTC", b)]
        )
    calls: list[None] = []
    assert store.fold(3, pause=lambda: calls.append(None)) == 2 * batches
    assert len(calls) == 4 + batches  # before each of 4 reads and each row
    last = {f"u{b % 5}": b for b in range(batches)}
    assert table(store) == {(u, "BTC"): b for u, b in last.items()} | {("all", "BTC"): batches - 1}
    assert store.journal_backlog() == 0


def test_downgrading_refuses_to_drop_unfolded_updates(store: Store) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", 5)])
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with pytest.raises(RuntimeError, match="unfolded"), store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0002")
    assert balances(store) == {("a", "BTC"): 5}


# Property: batches from several sources, replays included, with folds of
# small chunks anywhere in between, read back as the plain model.


RUNS = itertools.count()
UPDATE = st.tuples(
    st.sampled_from("abcd"),
    st.sampled_from(["BTC", "ETH"]),
    st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1)),
)
BATCH = st.tuples(st.integers(0, 2), st.integers(0, 3), st.lists(UPDATE, max_size=8))
FOLD = st.integers(1, 4)  # a fold of chunks of that many rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.one_of(BATCH, FOLD), min_size=1, max_size=12))
def test_folds_anywhere_give_the_model(
    shared_store: Store, steps: list[tuple[int, int, list[tuple[str, str, int]]] | int]
) -> None:
    run = next(RUNS)
    model: dict[tuple[str, str], int] = {}
    marks: dict[str, int] = {}
    backlog = 0
    for step in steps:
        if isinstance(step, int):
            assert shared_store.fold(step) == backlog
            backlog = 0
        else:
            producer, back, updates = step
            source = f"j{run}-{producer}"
            mark = marks.get(source, -1)
            first = max(0, mark + 1 - back)  # ``back`` replays
            batch = [B(first + i, f"j{run}-{u}", a, m) for i, (u, a, m) in enumerate(updates)]
            fresh = [u for u in batch if u.seq > mark]
            assert shared_store.apply_balances(source, batch).applied == tuple(fresh)
            for u in fresh:
                model[(u.user, u.asset)] = u.amount
                marks[source] = u.seq
            backlog += len(fresh)
        assert shared_store.journal_backlog() == backlog
    got = {k: v for k, v in balances(shared_store).items() if k[0].startswith(f"j{run}-")}
    assert got == {k: v for k, v in model.items() if v}


# A fold dying midway, and a fold with a writer (and a second fold) in between
# its chunks.


class Crash(Exception):
    pass


def test_a_fold_that_dies_after_a_chunk_is_finished_by_the_next(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.apply_balances("core", [B(i, f"u{i % 10}", "BTC", i) for i in range(30)])
    store.apply_balances("core", [B(30 + i, f"u{i}", "ETH", 100 + i) for i in range(5)])
    expected = {(f"u{i}", "BTC"): 20 + i for i in range(10)}
    expected |= {(f"u{i}", "ETH"): 100 + i for i in range(5)}
    upsert = Journal._upsert_balances
    chunks: list[object] = []

    def dies_after_one_chunk(self: Journal, conn: object, rows: list[tuple[str, str, int]]) -> None:
        if chunks:
            raise Crash
        chunks.append(rows)
        upsert(self, conn, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "_upsert_balances", dies_after_one_chunk)
    with pytest.raises(Crash):
        store.fold(4)
    monkeypatch.undo()
    first = {("u0", "BTC"): 20, ("u0", "ETH"): 100, ("u1", "BTC"): 21, ("u1", "ETH"): 101}
    assert table(store) == first  # the first chunk, in (user, asset) order
    assert store.journal_backlog() == 35  # the journal is whole
    store.apply_balances("core", [B(40, "u0", "BTC", 7)])  # newer than the chunk
    expected[("u0", "BTC")] = 7
    assert balances(store) == expected
    assert table(store) == expected and store.journal_backlog() == 0


def test_a_fold_that_dies_while_forgetting_the_journal_changes_no_balance(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal is deleted a chunk's worth of lines at a time; dying between
    two deletions leaves every balance as it was, and the next fold ends it."""
    model: dict[tuple[str, str], int] = {}
    for b in range(4):  # journal rows of 3 lines each; u0 is in every one
        batch = [B(b * 3 + i, f"u{b * i}", "BTC", b * 10 + i) for i in range(3)]
        store.apply_balances("core", batch)
        model |= {(u.user, u.asset): u.amount for u in batch}
    forget = Journal._forget_journal
    deleted: list[int] = []

    def dies_after_one_deletion(self: Journal, last: int) -> None:
        if deleted:
            raise Crash
        deleted.append(last)
        forget(self, last)

    monkeypatch.setattr(Journal, "_forget_journal", dies_after_one_deletion)
    with pytest.raises(Crash):
        store.fold(5)  # deletes rows 1-2 (6 lines), then would delete rows 3-4
    monkeypatch.undo()
    assert table(store) == model
    assert store.journal_backlog() == 6  # rows 3-4 are left, and agree with the table
    assert balances(store) == {k: m for k, m in model.items() if m}  # folds them again
    assert table(store) == model and store.journal_backlog() == 0


@contextmanager
def paused_fold(
    store: Store, monkeypatch: pytest.MonkeyPatch, chunk_size: int
) -> Iterator[list[int]]:
    """``store.fold(chunk_size)`` in a thread, paused once its first chunk has
    committed (holding no database lock but its fold lock) while the body
    runs; yields the list that receives fold's result once it returns."""
    transaction = Database.transaction
    chunk_written, resume = threading.Event(), threading.Event()
    result: list[int] = []
    folder = threading.Thread(target=lambda: result.append(store.fold(chunk_size)))

    @contextmanager
    def pausing(self: Database, *, write: bool = False) -> Iterator[object]:
        with transaction(self, write=write) as conn:
            yield conn
        if write and threading.current_thread() is folder and not chunk_written.is_set():
            chunk_written.set()
            assert resume.wait(30)

    monkeypatch.setattr(Database, "transaction", pausing)
    folder.start()
    try:
        assert chunk_written.wait(30)
        yield result
    finally:
        resume.set()
        folder.join(30)
    monkeypatch.undo()
    assert not folder.is_alive()


def test_a_batch_acknowledged_during_a_fold_is_kept(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = [f"u{i:02d}" for i in range(40)]
    store.apply_balances("core", [B(i, u, "BTC", 1) for i, u in enumerate(users)])
    with paused_fold(store, monkeypatch, 10) as folded:
        assert table(store) == {(u, "BTC"): 1 for u in users[:10]}
        # every third user, in the folded chunk and in those still to come
        store.apply_balances("other", [B(i, u, "BTC", 2) for i, u in enumerate(users[::3])])
    assert folded == [40]  # the journal up to the fold's start, not the new batch
    expected = {(u, "BTC"): 1 if i % 3 else 2 for i, u in enumerate(users)}
    assert table(store) == {(u, "BTC"): 1 for u in users}  # older, but the journal
    assert store.journal_backlog() == 14  # still holds the newer batch
    assert balances(store) == expected


def test_folds_take_turns(db_url: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second fold, by another store on the same database, waits for the one
    under way, then folds what was journaled meanwhile."""
    store.apply_balances("core", [B(i, f"u{i:02d}", "BTC", 1) for i in range(20)])
    second: list[int] = []
    with Store.open(db_url) as other:
        follower = threading.Thread(target=lambda: second.append(other.fold()))
        with paused_fold(store, monkeypatch, 5) as first:
            store.apply_balances("core", [B(20, "u00", "BTC", 2)])
            follower.start()
            follower.join(0.5)
            assert follower.is_alive() and second == []  # waiting for the lock
        follower.join(30)
    assert (first, second) == ([20], [1])
    assert balances(store) == {**{(f"u{i:02d}", "BTC"): 1 for i in range(1, 20)}, ("u00", "BTC"): 2}


FOLDER = """
import sys
from storage.store import Store

with Store.open(sys.argv[1]) as store:
    print(store.fold())
"""


@pytest.mark.postgres
def test_a_fold_in_another_process_waits_on_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    if not POSTGRES_URL:
        pytest.skip(SKIP_PG)
    root = Path(__file__).resolve().parents[2]
    with postgres_schema_url() as url, Store.open(url) as store:
        store.ensure_asset("BTC", 8)
        store.apply_balances("core", [B(i, f"u{i:02d}", "BTC", 1) for i in range(20)])
        with paused_fold(store, monkeypatch, 5) as first:
            store.apply_balances("core", [B(20, "u00", "BTC", 2)])
            proc = subprocess.Popen(
                [sys.executable, "-c", FOLDER, url],
                stdout=subprocess.PIPE,
                text=True,
                cwd=root,
                env={**os.environ, "PYTHONPATH": str(root)},
            )
            waiting = text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k"
                " AND NOT granted"
            )
            deadline = time.monotonic() + 30
            with store.engine.connect() as conn:
                while not conn.execute(waiting, {"k": FOLD_LOCK}).scalar():
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.05)
        out, _ = proc.communicate(timeout=30)
        assert (first, proc.returncode, out) == ([20], 0, "1\n")
        expected = {**{(f"u{i:02d}", "BTC"): 1 for i in range(1, 20)}, ("u00", "BTC"): 2}
        assert balances(store) == expected


def test_journal_ids_follow_commit_order(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of another source waits while one is being journaled (SQLite: the
    write lock; PostgreSQL: the journal lock), so no fold can see a later id
    before an earlier one commits, and the later batch wins."""
    set_mark = SourceMarks.set
    journaled, resume = threading.Event(), threading.Event()

    def slow(self: SourceMarks, conn: object, kind: str, source: str, seq: int) -> None:
        if source == "slow":
            journaled.set()
            assert resume.wait(30)
        set_mark(self, conn, kind, source, seq)  # type: ignore[arg-type]

    monkeypatch.setattr(SourceMarks, "set", slow)
    first = threading.Thread(target=store.apply_balances, args=("slow", [B(1, "a", "BTC", 1)]))
    second = threading.Thread(target=store.apply_balances, args=("fast", [B(1, "a", "BTC", 2)]))
    first.start()
    try:
        assert journaled.wait(30)
        second.start()
        second.join(0.5)
        assert second.is_alive()  # waiting for the first to commit
    finally:
        resume.set()
        first.join(30)
        second.join(30)
    with store.engine.connect() as conn:
        ids = conn.execute(text("SELECT source FROM balance_journal ORDER BY id")).scalars()
        assert list(ids) == ["slow", "fast"]
    assert balances(store) == {("a", "BTC"): 2}


def test_folding_while_writers_write(store: Store) -> None:
    """Folds in a loop, in small chunks, while two sources write the same keys."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def fold_until_stopped() -> None:
        try:
            while not stop.is_set():
                store.fold(3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    folder = threading.Thread(target=fold_until_stopped)
    folder.start()
    model: dict[tuple[str, str], int] = {}
    try:
        for n in range(60):
            source = f"s{n % 2}"
            batch = [B(n * 5 + i, f"u{(n + i) % 7}", "BTC", n * 10 + i) for i in range(5)]
            store.apply_balances(source, batch)
            model.update({(u.user, u.asset): u.amount for u in batch})
    finally:
        stop.set()
        folder.join(30)
    assert errors == []
    assert balances(store) == model


def test_sqlite_journal_ids_are_the_rowid(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'p.db'}") as store:
        store.ensure_asset("BTC", 8)
        store.apply_balances("core", [B(1, "a", "BTC", 5)])
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT id, rowid FROM balance_journal")).all() == [(1, 1)]
            assert (
                conn.execute(
                    text(
                        "SELECT sql FROM sqlite_master WHERE name LIKE "
                        "'sqlite_autoindex_balance_journal%'"
                    )
                ).all()
                == []
            )


@given(st.lists(st.text(max_size=6)), st.integers(1, 40))
def test_sorting_in_ranges_is_sorting(keys: list[str], piece: int) -> None:
    pauses: list[None] = []
    ranges = list(sorted_in_ranges(keys, lambda: pauses.append(None), piece))
    assert [key for r in ranges for key in r] == sorted(keys)
    if len(keys) > piece:  # a pause before each step of about ``piece`` keys
        assert len(pauses) > len(keys) // piece
    if len(keys) <= piece:  # one range, sorted at once
        assert len(ranges) == 1
    elif len(set(keys)) == len(keys):  # a range: 16 sampled keys apart, give or take a run each
        runs, step = -(-len(keys) // piece), max(1, piece // 16)
        assert max(map(len, ranges)) <= step * (16 + runs)
