"""The store on both databases: exact amounts, idempotent ingest, atomic epochs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage.errors import (
    EpochConflictError,
    InvalidAmountError,
    NotFoundError,
    SequenceError,
    StorageError,
    UnknownAssetError,
)
from storage.schema import Base
from storage.store import MAX_RESERVE, Store
from verifier import rfc9162
from verifier.hashing import MAX_BALANCE


@dataclass(frozen=True)
class B:
    seq: int
    user: str
    asset: str
    amount: int


@dataclass(frozen=True)
class R:
    seq: int
    asset: str
    amount: int
    as_of_ms: int


def balances(store: Store) -> dict[tuple[str, str], int]:
    return {(u, a): m for chunk in store.iter_balances(3) for u, a, m in chunk}


def test_schema_matches_the_migrations(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_amounts_round_trip_exactly(store: Store) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", MAX_BALANCE), B(2, "b", "BTC", 2**63 + 1)])
    store.apply_reserves("cold", [R(1, "BTC", MAX_RESERVE, 5)])
    assert balances(store) == {("a", "BTC"): MAX_BALANCE, ("b", "BTC"): 2**63 + 1}
    assert [(r.amount, r.as_of_ms) for r in store.reserves()] == [(MAX_RESERVE, 5)]


def test_replays_are_ignored(store: Store) -> None:
    first = store.apply_balances("core", [B(1, "a", "BTC", 5), B(2, "b", "BTC", 6)])
    assert (len(first.applied), first.duplicates, first.last_seq) == (2, 0, 2)
    again = store.apply_balances("core", [B(1, "a", "BTC", 99), B(2, "b", "BTC", 99)])
    assert (len(again.applied), again.duplicates, again.last_seq) == (0, 2, 2)
    partial = store.apply_balances("core", [B(2, "b", "BTC", 99), B(5, "b", "BTC", 7)])
    assert (len(partial.applied), partial.duplicates, partial.last_seq) == (1, 1, 5)
    other = store.apply_balances("other", [B(1, "a", "BTC", 8)])  # marks are per source
    assert other.last_seq == 1
    assert balances(store) == {("a", "BTC"): 8, ("b", "BTC"): 7}
    assert store.source_marks() == {("balances", "core"): 5, ("balances", "other"): 1}


def test_last_update_of_a_key_in_a_batch_wins(store: Store) -> None:
    store.apply_balances("core", [B(1, "a", "BTC", 5), B(2, "a", "BTC", 0), B(3, "a", "BTC", 9)])
    assert balances(store) == {("a", "BTC"): 9}


@pytest.mark.parametrize(
    ("batch", "error"),
    [
        ([B(1, "a", "BTC", 5), B(1, "b", "BTC", 5)], SequenceError),
        ([B(2, "a", "BTC", 5), B(1, "b", "BTC", 5)], SequenceError),
        ([B(1, "a", "BTC", 5), B(2, "b", "DOGE", 5)], UnknownAssetError),
        ([B(1, "a", "BTC", 5), B(2, "b", "BTC", -1)], InvalidAmountError),
        ([B(1, "a", "BTC", 5), B(2, "b", "BTC", MAX_BALANCE + 1)], InvalidAmountError),
        ([B(1, "a", "BTC", 5), B(2, "", "BTC", 1)], StorageError),
    ],
)
def test_a_bad_batch_writes_nothing(store: Store, batch: list[B], error: type) -> None:
    with pytest.raises(error):
        store.apply_balances("core", batch)
    assert balances(store) == {} and store.source_marks() == {}


def test_reserves_keep_the_latest_report_per_asset(store: Store) -> None:
    store.apply_reserves("cold", [R(1, "BTC", 10, 100), R(2, "ETH", 3, 100)])
    store.apply_reserves("cold", [R(3, "BTC", 12, 200)])
    store.apply_reserves("hot", [R(1, "BTC", 1, 150)])
    got = sorted((r.asset, r.source, r.amount, r.as_of_ms) for r in store.reserves())
    assert got == [("BTC", "cold", 12, 200), ("BTC", "hot", 1, 150), ("ETH", "cold", 3, 100)]
    with pytest.raises(InvalidAmountError):
        store.apply_reserves("cold", [R(4, "BTC", MAX_RESERVE + 1, 1)])


def test_assets(store: Store) -> None:
    store.ensure_asset("BTC", 8)  # idempotent
    with pytest.raises(StorageError, match="decimals"):
        store.ensure_asset("BTC", 6)
    with pytest.raises(StorageError):
        store.ensure_asset("btc", 8)
    assert [(a.id, a.decimals) for a in store.assets()] == [("BTC", 8), ("ETH", 18)]


def sign(size: int, root: bytes) -> bytes:
    return f"test\n{size}\n{root.hex()}\n".encode()


def test_epochs_extend_the_log(store: Store) -> None:
    records = [b"record %d" % n for n in range(9)]
    for n, r in enumerate(records):
        cp = store.append_epoch(n, r, sign, created_ms=1000 + n, marks={("balances", "core"): n})
        assert cp == sign(
            n + 1, rfc9162.root_from_leaf_hashes([rfc9162.leaf_hash(x) for x in records[: n + 1]])
        )
    with pytest.raises(EpochConflictError):
        store.append_epoch(3, b"rewrite", sign, created_ms=0)
    with pytest.raises(EpochConflictError):
        store.append_epoch(10, b"gap", sign, created_ms=0)
    latest = store.latest_epoch()
    assert latest is not None and (latest.number, latest.record) == (8, records[8])
    assert store.epoch(4).checkpoint == sign(5, store.log_root(5))
    assert store.epoch_marks(4) == {("balances", "core"): 4}
    assert store.log_size() == 9
    with pytest.raises(NotFoundError):
        store.epoch(9)


def test_log_proofs_verify(store: Store) -> None:
    hashes = []
    for n in range(20):
        store.append_epoch(n, b"r%d" % n, sign, created_ms=n)
        hashes.append(rfc9162.leaf_hash(b"r%d" % n))
    for size in (1, 2, 7, 8, 13, 20):
        root = store.log_root(size)
        assert root == rfc9162.root_from_leaf_hashes(hashes[:size])
        for index in range(size):
            proof = store.inclusion_proof(index, size)
            rfc9162.verify_inclusion(hashes[index], index, size, proof, root)
        for old in range(1, size + 1):
            proof = store.consistency_proof(old, size)
            assert proof == rfc9162.consistency_proof(hashes, old, size)
            rfc9162.verify_consistency(old, size, store.log_root(old), root, proof)
    with pytest.raises(NotFoundError):
        store.inclusion_proof(3, 21)


def test_pymerkle_inclusion_proofs_are_accepted_by_the_verifier(store: Store) -> None:
    for n in range(11):
        store.append_epoch(n, b"r%d" % n, sign, created_ms=n)
    with store._log():
        for index in range(11):
            theirs = store.log.prove_inclusion(index + 1, 11)  # pymerkle counts from 1
            leaf = rfc9162.leaf_hash(b"r%d" % index)
            assert theirs.path[0] == leaf
            rfc9162.verify_inclusion(leaf, index, 11, theirs.path[1:], store.log.root(11))


def test_failed_epoch_writes_nothing_and_the_log_recovers(store: Store) -> None:
    for n in range(127):  # the next leaf completes a cached 128-leaf subtree
        store.append_epoch(n, b"r%d" % n, sign, created_ms=n)

    def broken(size: int, root: bytes) -> bytes:
        raise RuntimeError("signer crashed")

    with pytest.raises(RuntimeError):
        store.append_epoch(127, b"doomed", broken, created_ms=0)
    assert store.log_size() == 127 and store.latest_epoch().number == 126  # type: ignore[union-attr]
    store.append_epoch(127, b"r127", sign, created_ms=0)
    hashes = [rfc9162.leaf_hash(b"r%d" % n) for n in range(128)]
    assert store.log_root() == rfc9162.root_from_leaf_hashes(hashes)


def test_salt_periods_and_signing_keys(store: Store) -> None:
    one, two = store.start_salt_period(10), store.start_salt_period(20)
    assert (one.number, two.number) == (1, 2) and one.secret != two.secret
    store.add_signing_key("aabbccdd", "log", bytes(32), 100)
    store.add_signing_key("11223344", "log", bytes([1]) * 32, 200)
    keys = store.signing_keys()
    assert [(k.key_id, k.active_to_ms) for k in keys] == [("aabbccdd", 200), ("11223344", None)]


def test_reopen_sees_the_committed_state(db_url: str) -> None:
    store = Store.open(db_url)
    store.ensure_asset("BTC", 8)
    store.apply_balances("core", [B(1, "a", "BTC", 5)])
    store.append_epoch(0, b"r0", sign, created_ms=0)
    store.close()
    again = Store.open(db_url)
    assert balances(again) == {("a", "BTC"): 5} and again.log_size() == 1
    again.close()


WRITER = """
import sys
from dataclasses import dataclass
from storage.store import Store

@dataclass(frozen=True)
class B:
    seq: int
    user: str
    asset: str
    amount: int

store = Store.open(sys.argv[1])
store.ensure_asset("BTC", 8)
print("ready", flush=True)
for seq in range(1, 1_000_000):
    # batch `seq` sets every user to `seq`: a torn batch would show mixed values
    store.apply_balances("core", [B(seq * 100 + i, f"u{i}", "BTC", seq) for i in range(100)])
"""


def test_kill_9_mid_ingest_leaves_whole_batches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'prover.db'}"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store.open(url)
    mark = store.source_marks()[("balances", "core")]
    values = set(balances(store).values())
    assert mark % 100 == 99 and values == {mark // 100}  # whole batches only, and all of them
    store.close()
