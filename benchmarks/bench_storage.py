"""Storage benchmark on SQLite and PostgreSQL, side by side.

    python benchmarks/bench_storage.py [--postgres-url URL] [--balances 1000000] [--epochs 100000]

PostgreSQL is used when --postgres-url or SOLVENCY_TEST_POSTGRES_URL is set
(in a throw-away schema); otherwise its column says why it was skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert

from storage.schema import Epoch
from storage.store import Store
from verifier import rfc9162


@dataclass(frozen=True)
class Update:
    seq: int
    user: str
    asset: str
    amount: int


def ingest_rate(store: Store, batches: int, size: int = 10_000) -> float:
    """Rows per second through apply_balances, batches of ``size``."""
    seq = 0
    start = time.perf_counter()
    for b in range(batches):
        rows = []
        for i in range(size):
            seq += 1
            rows.append(Update(seq, f"user{(b * size + i) % 300_000}", "BTC", seq))
        store.apply_balances("bench", rows)
    return batches * size / (time.perf_counter() - start)


def load_seconds(store: Store, count: int) -> float:
    """Fill ``count`` balances, then time streaming all of them back."""
    seq = 10**9
    for start in range(0, count, 50_000):
        rows = []
        for i in range(start, min(count, start + 50_000)):
            seq += 1
            rows.append(Update(seq, f"holder{i}", "ETH", i + 1))
        store.apply_balances("fill", rows)
    began = time.perf_counter()
    loaded = sum(len(chunk) for chunk in store.iter_balances(50_000))
    elapsed = time.perf_counter() - began
    assert loaded >= count
    return elapsed


def epoch_costs(store: Store, epochs: int) -> tuple[float, float, float]:
    """Fill the log to ``epochs`` (bulk), then: append ms, consistency ms (p50, p99)."""
    record = b"r" * 300
    digest = rfc9162.leaf_hash(record)
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
    store.log_root()  # warm the subroot cache, as a running prover has it

    def sign(size: int, root: bytes) -> bytes:
        return b"checkpoint %d" % size

    appends = []
    for n in range(epochs, epochs + 200):
        began = time.perf_counter()
        store.append_epoch(n, record, sign, created_ms=n)
        appends.append(time.perf_counter() - began)
    size = epochs + 200
    consistency = []
    for old in range(1, size, max(1, size // 200)):
        began = time.perf_counter()
        store.consistency_proof(old, size)
        consistency.append(time.perf_counter() - began)
    return (
        statistics.median(appends) * 1000,
        statistics.median(consistency) * 1000,
        statistics.quantiles(consistency, n=100)[98] * 1000,
    )


def run(url: str, args: argparse.Namespace) -> dict[str, str]:
    store = Store.open(url)
    store.ensure_asset("BTC", 8)
    store.ensure_asset("ETH", 18)
    rate = ingest_rate(store, args.batches)
    load = load_seconds(store, args.balances)
    append, cons50, cons99 = epoch_costs(store, args.epochs)
    store.close()
    return {
        "balance rows/s (batches of 10,000)": f"{rate:,.0f}",
        f"load {args.balances:,} balances (s)": f"{load:.2f}",
        f"append epoch at log of {args.epochs:,} (ms, p50)": f"{append:.2f}",
        "consistency proof, any sizes (ms, p50)": f"{cons50:.2f}",
        "consistency proof, any sizes (ms, p99)": f"{cons99:.2f}",
    }


def postgres_schema(url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    schema = f"bench_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default=os.environ.get("SOLVENCY_TEST_POSTGRES_URL"))
    parser.add_argument("--balances", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = {"SQLite (WAL, synchronous=FULL)": run(f"sqlite:///{Path(tmp) / 'b.db'}", args)}
    if args.postgres_url:
        for url in postgres_schema(args.postgres_url):
            results["PostgreSQL"] = run(url, args)
    else:
        results["PostgreSQL"] = {
            k: "skipped: no --postgres-url" for k in results["SQLite (WAL, synchronous=FULL)"]
        }
    names = list(results)
    print(f"{'measure':<46}" + "".join(f"{n:>32}" for n in names))
    for key in results[names[0]]:
        print(f"{key:<46}" + "".join(f"{results[n][key]:>32}" for n in names))


if __name__ == "__main__":
    main()
