"""Sum tree benchmark: full build, one batch of changes, memory, path verification.

    .venv/bin/python benchmarks/bench_tree.py [--holders 1000000] [--assets 4] [--batch 100000]

Every hashing time is printed next to its **hashlib floor**, measured in the
same run right after it: the time of the same number of
``hashlib.sha256(m).digest()`` calls, in a plain list comprehension, over
pre-made bytes messages of the same sizes (user leaf, padding leaf, 97-byte
node). The ratio is the cost of everything that is not SHA-256. One core.

The trees are built twice: *cold* (the first builds in this process, on
memory it never touched) and *warm* (the same builds after freeing the first
trees, as a daemon that rebuilds trees would run them). The "kernel" column is
the system CPU time inside the timed section: on a VM whose guest memory is
backed lazily, first-touch page faults of fresh memory can cost far more than
on bare metal; the ratio counts them anyway.

Resident bytes are the growth of VmRSS (/proc/self/status) across each cold
build, summed and divided by holders x assets; the inputs exist before the
first reading and each floor's messages are made after the build's reading.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import ssl
import time
from dataclasses import dataclass

import numpy as np
from machine import cpu_model

from prover.sizing import height_for
from prover.tree import SumTree, Undo
from verifier.hashing import NODE_MESSAGE_SIZE, TAG_LEAF, TAG_PADDING, asset_prefix, leaf_hash
from verifier.sumtree import PathStep, verify_path

ASSETS = ["BTC", "ETH", "USDT", "SOL", "XRP", "ADA", "DOGE", "DOT", "USDC", "TRX"]
TARGETS = {"build": 1.5, "batch": 2.0, "resident": 256, "verify_ms": 1.0}
POOL = 4096  # distinct pre-made messages per size, reused: they stay in cache


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def message_sizes(asset: str) -> tuple[int, int]:
    """Sizes of a user leaf message and a padding leaf message of ``asset``."""
    leaf = len(asset_prefix(TAG_LEAF, asset)) + 32 + 16  # commitment, amount u128
    padding = len(asset_prefix(TAG_PADDING, asset)) + 32 + 8  # key, slot u64
    return leaf, padding


def floor_seconds(counts: dict[int, int]) -> float:
    """Seconds for ``count`` ``hashlib.sha256(m).digest()`` calls per message ``size``."""
    total = 0.0
    for size, count in counts.items():
        pool = [os.urandom(size) for _ in range(min(count, POOL))]
        done = 0
        while done < count:
            messages = pool[: min(POOL, count - done)]
            start = time.perf_counter()
            [hashlib.sha256(m).digest() for m in messages]
            total += time.perf_counter() - start
            done += len(messages)
    return total


def hash_counts(asset: str, leaves: int, paddings: int, nodes: int) -> dict[int, int]:
    leaf, padding = message_sizes(asset)
    counts: dict[int, int] = {}
    for size, count in ((leaf, leaves), (padding, paddings), (NODE_MESSAGE_SIZE, nodes)):
        counts[size] = counts.get(size, 0) + count
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--holders", type=int, default=1_000_000)
    parser.add_argument("--assets", type=int, default=4, choices=range(1, len(ASSETS) + 1))
    parser.add_argument("--batch", type=int, default=100_000, help="changes in the batch")
    parser.add_argument("--height", type=int, help="default: the ledger's height_for(holders)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n, k = args.holders, args.assets
    height = height_for(n) if args.height is None else args.height
    capacity = 1 << height
    if n > capacity:
        parser.error(f"{n} holders do not fit a tree of height {height}")
    rng = np.random.default_rng(args.seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cpu_model()}; nproc {cores}; one core used")
    print(
        f"Python {platform.python_version()}, numpy {np.__version__}, hashlib on "
        f"{ssl.OPENSSL_VERSION}"
    )
    print(f"{n:,} holders x {k} assets, height {height} ({capacity:,} slots per asset)\n")

    # Inputs first: they exist before any RSS reading.
    inputs = []
    for asset in ASSETS[:k]:
        slots = rng.permutation(capacity)[:n]  # random placement
        commitments = rng.integers(0, 256, (n, 32), dtype=np.uint8)
        amounts = rng.integers(0, 10**12, n, dtype=np.uint64)
        inputs.append((asset, slots, commitments, amounts))

    # (a), (c) Cold: the first builds in this process, on memory never touched
    # before; each build's RSS growth is read before its floor's messages exist.
    # Warm: the same builds after freeing the first trees (a daemon rebuilding).
    build_hashes = 0
    resident = 0
    rows = []
    trees: list[SumTree] = []
    roots: dict[str, list[bytes]] = {}
    for run in ("cold", "warm"):
        del trees[:]
        gc.collect()
        wall = system = floor = 0.0
        for asset, slots, commitments, amounts in inputs:
            counts = hash_counts(asset, n, capacity - n, capacity - 1)
            rss_before, sys_before = rss_bytes(), os.times().system
            start = time.perf_counter()
            trees.append(SumTree.build(asset, height, bytes(32), slots, commitments, amounts))
            wall += time.perf_counter() - start
            system += os.times().system - sys_before
            if run == "cold":
                build_hashes += sum(counts.values())
                gc.collect()
                resident += rss_bytes() - rss_before
            floor += floor_seconds(counts)  # right after: same machine load
        rows.append(Row(f"full build of {k} trees, {run}", wall, system, floor, TARGETS["build"]))
        roots[run] = [t.root for t in trees]
    assert roots["cold"] == roots["warm"], "the same inputs built two different trees"
    per_holder_asset = resident / (n * k)

    # (b) One batch into the first tree: 80% updates, 10% inserts into padding, 10% clears.
    tree, (asset, slots, _, _) = trees[0], inputs[0]
    b = args.batch
    n_update, n_insert = b * 8 // 10, b // 10
    n_clear = b - n_update - n_insert
    if n_update + n_clear > n or n_insert > capacity - n:
        parser.error(f"a batch of {b:,} does not fit {n:,} holders in {capacity:,} slots")
    free = np.flatnonzero(np.isin(np.arange(capacity), slots, invert=True))
    holders = rng.choice(slots, size=n_update + n_clear, replace=False)
    set_slots = rng.permutation(
        np.concatenate([holders[:n_update], rng.choice(free, n_insert, replace=False)])
    )
    clear_slots = holders[n_update:]
    set_commitments = rng.integers(0, 256, (len(set_slots), 32), dtype=np.uint8)
    set_amounts = rng.integers(0, 10**12, len(set_slots), dtype=np.uint64)
    sys_before = os.times().system
    start = time.perf_counter()
    rehashed = tree.apply(set_slots, set_commitments, set_amounts, clear_slots)
    batch_s = time.perf_counter() - start
    batch_sys = os.times().system - sys_before
    batch_floor = floor_seconds(hash_counts(asset, len(set_slots), len(clear_slots), rehashed - b))
    rows.append(
        Row(
            f"batch of {b:,} changes into one tree",
            batch_s,
            batch_sys,
            batch_floor,
            TARGETS["batch"],
        )
    )

    # (c) The same shape of batch again, keeping what it overwrites, as the daemon
    # does to serve proofs of earlier epochs (proof_epochs > 0).
    kept: list[Undo] = []
    amounts_again = rng.integers(0, 10**12, len(set_slots), dtype=np.uint64)
    start = time.perf_counter()
    tree.apply(set_slots, set_commitments, amounts_again, clear_slots, kept)
    undo_s = time.perf_counter() - start
    rows.append(
        Row(
            f"the same, keeping its undo record ({kept[0].nbytes / 1e6:.0f} MB)",
            undo_s,
            0.0,
            batch_floor,
            TARGETS["batch"],
        )
    )

    # (d) One path, checked as its user would: leaf hash from the commitment, then the path.
    slot, commitment = int(set_slots[0]), set_commitments[0].tobytes()
    amount = int(amounts_again[0])
    path = [PathStep(h, s) for h, s in tree.path(slot)]
    root, total = tree.root, tree.total
    runs = 2000
    start = time.perf_counter()
    for _ in range(runs):
        verify_path(
            height=height,
            root=root,
            liabilities=total,
            slot=slot,
            leaf=leaf_hash(asset, commitment, amount),
            amount=amount,
            path=path,
        )
    verify_ms = (time.perf_counter() - start) / runs * 1000

    print(f"{'measure':<40} {'value':>10} {'kernel':>8} {'floor':>8} {'ratio':>5}  target")
    for row in rows:
        ratio = row.seconds / row.floor
        print(
            f"{row.name:<40} {row.seconds:>8.3f} s {row.kernel:>6.2f} s {row.floor:>6.3f} s "
            f"{ratio:>5.2f}  <= {row.target}x {met(ratio <= row.target)}"
        )
    limit = TARGETS["resident"]
    print(
        f"{'resident bytes per holder-asset':<40} {per_holder_asset:>8.0f} B {'':>27}"
        f"<= {limit} B {met(per_holder_asset <= limit)}"
    )
    limit = TARGETS["verify_ms"]
    print(
        f"{f'verify one path of {height} levels':<40} {verify_ms:>7.3f} ms {'':>27}"
        f"<= {limit} ms {met(verify_ms <= limit)}"
    )
    print(
        f"\nSHA-256 calls: {build_hashes:,} per full build of {k} trees, "
        f"{rehashed:,} for the batch ({b:,} leaves, {rehashed - b:,} nodes)"
    )


def met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


@dataclass(frozen=True)
class Row:
    """One timed measure (wall and kernel seconds) and its hashlib floor."""

    name: str
    seconds: float
    kernel: float
    floor: float
    target: float


if __name__ == "__main__":
    main()
