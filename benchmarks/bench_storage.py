"""Storage benchmark on SQLite and PostgreSQL, side by side.

    python benchmarks/bench_storage.py [--postgres-url URL] [--balances 1000000]
                                       [--epochs 100000] [--batches 20] [--fold 500000]

PostgreSQL is used when --postgres-url or SOLVENCY_TEST_POSTGRES_URL is set (in
a throw-away schema, dropped afterwards); otherwise its column says why it was
skipped. SQLite runs on a temporary file in WAL mode with synchronous=FULL.

Measures, with the targets of the storage issue:
- apply_balances in batches of 10,000 rows (each batch one durable
  transaction appending one journal row): >= 100,000 rows/s on SQLite,
  >= 50,000 on PostgreSQL;
- iter_balances over 1,000,000 balances, as at start-up: <= 10 s on SQLite
  (the journal of the fill folded beforehand, untimed);
- fold: 500,000 journaled updates of random holders (batches of 10,000) moved
  into the table of 1,000,000 balances, in journaled updates per second;
- append_epoch (record, its header as log leaf, checkpoint, marks, reserve snapshot) at a
  log of 100,000 epochs: <= 5 ms on SQLite;
- consistency proofs between random pairs of sizes of that log: <= 5 ms.
The log is filled by a bulk insert of epoch rows (the same rows append_epoch
writes); the store then warms its subroot cache once, as the prover does at
start (timed separately).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from machine import cpu_model
from sqlalchemy import create_engine, insert, text

from storage.rows import ReserveRow
from storage.schema import Epoch
from storage.store import Store
from verifier import rfc9162

SQLITE = "SQLite (WAL, synchronous=FULL)"
POSTGRES = "PostgreSQL"


@dataclass(frozen=True)
class Update:
    seq: int
    user: str
    asset: str
    amount: int


def ingest_rate(store: Store, batches: int, size: int = 10_000) -> float:
    """Rows per second through apply_balances (journaled batches of ``size``:
    new users at first, then updates of existing ones, 300,000 users in all)."""
    seq = 0
    elapsed = 0.0
    for b in range(batches):
        rows = []
        for i in range(size):
            seq += 1
            rows.append(Update(seq, f"user{(b * size + i) % 300_000}", "BTC", seq))
        began = time.perf_counter()
        store.apply_balances("bench", rows)
        elapsed += time.perf_counter() - began
    return batches * size / elapsed


def load_seconds(store: Store, count: int) -> float:
    """Fill ``count`` balances and fold them, then time streaming all of them back."""
    seq = 0
    for start in range(0, count, 50_000):
        rows = []
        for i in range(start, min(count, start + 50_000)):
            seq += 1
            rows.append(Update(seq, f"holder{i}", "ETH", i + 1))
        store.apply_balances("fill", rows)
    store.fold()
    began = time.perf_counter()
    loaded = sum(len(chunk) for chunk in store.iter_balances(50_000))
    elapsed = time.perf_counter() - began
    assert loaded >= count, loaded
    return elapsed


def fold_rate(store: Store, count: int, holders: int, size: int = 10_000) -> float:
    """Journaled updates per second through fold: ``count`` updates of random
    holders among ``holders`` (filled by load_seconds), batches of ``size``."""
    rng = random.Random(7)
    for start in range(0, count, size):
        rows = [
            Update(seq, f"holder{rng.randrange(holders)}", "ETH", rng.randrange(10**18))
            for seq in range(start, min(count, start + size))
        ]
        store.apply_balances("random", rows)
    backlog = store.journal_backlog()
    began = time.perf_counter()
    folded = store.fold()
    elapsed = time.perf_counter() - began
    assert folded == backlog, (folded, backlog)
    return folded / elapsed


HEADER = b"h" * 63  # the log leaf: a record's header
RECORD = HEADER + b"e" * 237  # the row keeps the whole record, 300 bytes


def fill_log(store: Store, epochs: int) -> None:
    record = RECORD
    digest = rfc9162.leaf_hash(HEADER)
    with store.engine.begin() as conn:
        for start in range(0, epochs, 20_000):
            conn.execute(
                insert(Epoch),
                [
                    {
                        "number": n,
                        "record": record,
                        "leaf_hash": digest,
                        "checkpoint": "",
                        "created_ms": n,
                    }
                    for n in range(start, min(epochs, start + 20_000))
                ],
            )


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        out.append((time.perf_counter() - began) * 1000)
    return out


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def epoch_costs(url: str, epochs: int) -> dict[str, float]:
    """Append and proof costs at a log of ``epochs`` leaves, in a fresh Store
    (empty subroot cache), as after a restart."""
    rng = random.Random(9162)
    with Store.open(url) as store:
        began = time.perf_counter()
        store.log_root()  # the prover warms the cache at start
        warm = time.perf_counter() - began
        marks = store.source_marks()
        reserves = [ReserveRow("BTC", "cold", 10**20, 0), ReserveRow("ETH", "cold", 10**25, 0)]

        def sign(size: int, root: bytes) -> bytes:
            return b"bench.example/log\n%d\n%s\n" % (size, root.hex().encode())

        appends = []
        for n in range(epochs, epochs + 500):
            began = time.perf_counter()
            store.append_epoch(
                n, HEADER, RECORD, sign, created_ms=n, marks=marks, reserves=reserves
            )
            appends.append((time.perf_counter() - began) * 1000)
        size = epochs + 500
        consistency = []
        for _ in range(500):
            new = rng.randint(2, size)
            old = rng.randint(1, new - 1)
            began = time.perf_counter()
            store.consistency_proof(old, new)
            consistency.append((time.perf_counter() - began) * 1000)
        inclusion = []
        for _ in range(500):
            new = rng.randint(1, size)
            index = rng.randrange(new)
            began = time.perf_counter()
            store.inclusion_proof(index, new)
            inclusion.append((time.perf_counter() - began) * 1000)
    return {
        "warm": warm,
        "append50": statistics.median(appends),
        "append99": p(appends, 99),
        "cons50": statistics.median(consistency),
        "cons99": p(consistency, 99),
        "consmax": max(consistency),
        "incl50": statistics.median(inclusion),
    }


def run(url: str, args: argparse.Namespace) -> dict[str, str]:
    with Store.open(url) as store:
        store.ensure_asset("BTC", 8)
        store.ensure_asset("ETH", 18)
        rate = ingest_rate(store, args.batches)
        load = load_seconds(store, args.balances)
        fold = fold_rate(store, args.fold, args.balances)
        fill_log(store, args.epochs)
    e = epoch_costs(url, args.epochs)
    n = f"{args.epochs:,}"
    return {
        "balance rows/s, journaled batches of 10,000": f"{rate:,.0f}",
        f"load {args.balances:,} balances (s)": f"{load:.2f}",
        f"fold {args.fold:,} updates into {args.balances:,} (updates/s)": f"{fold:,.0f}",
        f"log of {n}: cache warm-up at start (s)": f"{e['warm']:.2f}",
        f"append epoch at log of {n} (ms, p50 / p99)": f"{e['append50']:.2f} / {e['append99']:.2f}",
        "consistency proof, random sizes (ms, p50 / p99)": f"{e['cons50']:.2f} / {e['cons99']:.2f}",
        "consistency proof, random sizes (ms, max)": f"{e['consmax']:.2f}",
        "inclusion proof, random (ms, p50)": f"{e['incl50']:.2f}",
    }


TARGETS = {
    "balance rows/s": ">= 100,000 / >= 50,000",
    "load": "<= 10 s (SQLite)",
    "append": "<= 5 ms (SQLite)",
    "consistency proof, random sizes (ms, p50 / p99)": "<= 5 ms (SQLite)",
}


def target(key: str) -> str:
    for prefix, value in TARGETS.items():
        if key.startswith(prefix):
            return value
    return ""


@contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    schema = f"bench_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--postgres-url", default=os.environ.get("SOLVENCY_TEST_POSTGRES_URL"))
    parser.add_argument("--balances", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--fold", type=int, default=500_000)
    args = parser.parse_args()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs (nproc), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results[SQLITE] = run(f"sqlite:///{Path(tmp) / 'bench.db'}", args)
    if args.postgres_url:
        with postgres_schema(args.postgres_url) as url:
            with Store.open(url) as probe, probe.engine.connect() as conn:
                version = conn.execute(text("SHOW server_version")).scalar()
            print(f"PostgreSQL {version} at {args.postgres_url.split('@')[-1]}")
            results[POSTGRES] = run(url, args)
    else:
        reason = "skipped: no --postgres-url / SOLVENCY_TEST_POSTGRES_URL"
        print(f"PostgreSQL {reason}")
        results[POSTGRES] = dict.fromkeys(results[SQLITE], "skipped")
    print()
    print(f"{'measure':<50}{SQLITE:>32}{POSTGRES:>16}   target")
    for key in results[SQLITE]:
        print(f"{key:<50}{results[SQLITE][key]:>32}{results[POSTGRES][key]:>16}   {target(key)}")


if __name__ == "__main__":
    main()
