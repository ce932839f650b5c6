"""CPU per update of the daemon's two halves, each run in this process on the
same batches, without sockets: where bench_stream's "cores" go.

    python benchmarks/bench_cpu.py [--accounts 1000000] [--epochs 6]
        [--epoch-updates 100000] [--batch 5000] [traffic.py's options]

Traffic: traffic.py's model (its default: 2 producers on their own halves of
the accounts, 4 assets, 10% new holder-asset pairs, 2% removals), drawn
before anything is timed.

- ``ingest``: what the daemon's process does per batch before it acknowledges
  it: parse the JSON message (prover/messages.py), the batch checks, store
  it (a journal row in a SQLite file of a temporary directory), and encode
  its rows as the tree worker's ``Stage`` message.
- ``trees``: what the tree worker does with them (prover/worker.py): decode
  each ``Stage``, stage its rows, hash them ahead as when idle, and close an
  epoch every ``--epoch-updates`` updates (``Apply``), the first epoch not
  timed (the flush levels follow the last epoch's size).

Printed: CPU seconds per update of each (``time.process_time``: this
process alone, nothing else on the machine counts), the hashes the trees
computed per update (``SumTree.apply``'s count), and two floors: that many
SHA-256 of node messages (97 bytes) at the rate measured in this run, one
``hashlib`` call each, and (when the C extension ``prover._sumhash`` is
loaded, as the trees then use it) many per call. Run it again with
``SOLVENCY_PURE_PYTHON=1`` in the environment for the Python paths alone.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time

import numpy as np
from machine import cpu_model
from traffic import Producers, add_arguments, asset_ids, from_args, message

import prover.tree
from prover import speedups
from prover.ingest import BatchChecks
from prover.messages import BalanceBatch, parse_ingest
from prover.periods import SaltPeriod
from prover.rotation import START_ROOM_SHARE
from prover.tree import SumTree
from prover.worker import EAGER_ROWS, _Trees
from prover.worker_messages import (
    Apply,
    Begin,
    Build,
    Release,
    Rows,
    Stage,
    decode_request,
    encode,
)
from storage.store import Store

NODE_MESSAGE = 97  # tag, then two (hash, 128-bit sum) records


def hash_floor_microseconds(count: int = 200_000) -> float:
    """Microseconds per ``hashlib.sha256(m).digest()`` of a 97-byte message in a
    list comprehension, as the trees call it; the best of 5 runs."""
    messages = [os.urandom(NODE_MESSAGE) for _ in range(count)]
    sha256, runs = hashlib.sha256, []
    for _ in range(5):
        began = time.perf_counter()
        [sha256(m).digest() for m in messages]
        runs.append(time.perf_counter() - began)
    return min(runs) / count * 1e6


def c_floor_microseconds(count: int = 200_000) -> float | None:
    """Microseconds per SHA-256 of a 97-byte message through ``prover._sumhash``
    (contiguous messages, one call for all), the best of 5 runs; None if it
    is not loaded."""
    c = prover.tree._C_HASHING
    if c is None:
        return None
    messages = np.frombuffer(os.urandom(count * NODE_MESSAGE), np.uint8).reshape(count, -1)
    runs = []
    for _ in range(5):
        began = time.perf_counter()
        c.sha256_rows(messages)
        runs.append(time.perf_counter() - began)
    return min(runs) / count * 1e6


class CountedHashes:
    """Sums ``SumTree.apply``'s hash counts while installed (a ``with`` block)."""

    def __init__(self) -> None:
        self.hashes = 0
        self._apply = SumTree.apply

    def __enter__(self) -> CountedHashes:
        original = self._apply

        def counted(tree: SumTree, *args: object, **kwargs: object) -> int:
            n: int = original(tree, *args, **kwargs)  # type: ignore[arg-type]
            self.hashes += n
            return n

        SumTree.apply = counted  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        SumTree.apply = self._apply  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs")
    parser.add_argument("--epoch-updates", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000, help="updates per message")
    args = parser.parse_args()
    traffic = from_args(args)
    producers = Producers(traffic)
    ids = asset_ids(traffic.assets)
    per_epoch = max(1, args.epoch_updates // args.batch)
    epochs = args.epochs + 1  # the first one untimed
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores")
    print(f"C extensions: {speedups.describe()}")
    print(traffic.describe())

    accounts, assets = producers.pairs()
    rows = [
        (f"acct{u}", ids[a], 1 + u) for u, a in zip(accounts.tolist(), assets.tolist(), strict=True)
    ]
    trees = _Trees()
    trees.answer(Begin(SaltPeriod.fresh(1, 0), list(ids), 60, 512 << 20, {}, START_ROOM_SHARE))
    trees.answer(Rows(rows))
    began = time.process_time()
    trees.answer(Build())
    print(f"{len(rows):,} holder-asset pairs built in {time.process_time() - began:.1f} s")
    del rows

    seqs = [0] * traffic.producers
    messages = []
    for n in range(epochs * per_epoch):
        p = n % traffic.producers
        batch = producers.batch(p, seqs[p] + 1, args.batch)
        messages.append(message(f"producer-{p}", seqs[p] + 1, n, batch, ids).encode())
        seqs[p] += len(batch)

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{tmp}/prover.db")
        for asset in ids:
            store.ensure_asset(asset, 8)
        checks = BatchChecks(frozenset(ids), {}, 60.0)
        stages = []
        began = time.process_time()
        for data in messages:
            parsed = parse_ingest(data)
            assert isinstance(parsed, BalanceBatch)
            checks.check(parsed, time.time())
            applied = store.apply_balances(parsed.source, parsed.updates).applied
            fresh = parsed.updates[len(parsed.updates) - len(applied) :]
            stages.append(encode(Stage([(u.user, u.asset, u.amount) for u in fresh])))
        ingest = time.process_time() - began
        store.close()

    apply, release = encode(Apply([], [])), encode(Release())
    closes, timed_cpu = [], 0.0
    with CountedHashes() as counted:
        for epoch in range(epochs):
            if epoch == 1:
                counted.hashes, timed_cpu = 0, -time.process_time()
            for data in stages[epoch * per_epoch : (epoch + 1) * per_epoch]:
                trees.answer(decode_request(data))
                trees.after_stage(idle=True)  # hashes ahead once EAGER_ROWS wait
            began = time.perf_counter()
            trees.answer(decode_request(apply))
            closes.append(time.perf_counter() - began)
            trees.answer(decode_request(release))
        timed_cpu += time.process_time()
    updates = args.epochs * per_epoch * args.batch
    floor, c_floor = hash_floor_microseconds(), c_floor_microseconds()
    hashes = counted.hashes / updates
    tree_us = timed_cpu / updates * 1e6
    in_c = "" if c_floor is None else f", {c_floor:.3f} us many per call in C"
    print(
        f"\nbatches of {args.batch:,}, epochs of {per_epoch * args.batch:,} updates, hashed"
        f" ahead every {EAGER_ROWS:,} staged rows; SHA-256 of a node message:"
        f" {floor:.3f} us a hashlib call{in_c}\n"
    )
    header = f"{'part':>8} {'us/update':>10} {'hashes/upd':>11} {'floor us':>9} {'x floor':>8}"
    print(header + ("" if c_floor is None else f" {'C floor us':>10} {'x C floor':>10}"))
    print(f"{'ingest':>8} {ingest / len(messages) / args.batch * 1e6:>10.2f}")
    print(f"{'trees':>8} {tree_us:>10.2f} {hashes:>11.2f} {hashes * floor:>9.2f}", end="")
    print(f" {tree_us / (hashes * floor):>8.2f}", end="")
    if c_floor is not None:
        print(f" {hashes * c_floor:>10.2f} {tree_us / (hashes * c_floor):>10.2f}", end="")
    print()
    timed = [c * 1000 for c in closes[1:]]
    print(f"\nclose (Apply), ms: p50 {statistics.median(timed):.0f}, max {max(timed):.0f}")


if __name__ == "__main__":
    main()
