"""Sum tree benchmark: build, batch update, memory and path verification.

    python benchmarks/bench_tree.py [--holders 1000000] [--assets 4] [--batch 100000]

Each timing is printed next to the **hashlib floor** measured in the same run:
the time of the same number of ``hashlib.sha256(m).digest()`` calls over
pre-made messages of the same sizes, in a plain list comprehension. The ratio
is the overhead of everything that is not hashing. One core (no threads).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import time

import numpy as np

from prover.ledger import height_for
from prover.tree import SumTree
from verifier.hashing import NODE_MESSAGE_SIZE, TAG_LEAF, asset_prefix, commitment, leaf_hash
from verifier.sumtree import PathStep, verify_path

ASSETS = ["BTC", "ETH", "USDT", "SOL", "XRP", "ADA", "DOGE", "DOT"]


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def floor_seconds(sizes: dict[int, int]) -> float:
    """Time ``count`` SHA-256 calls over messages of each ``size`` (bytes: count).

    The messages are made beforehand and reused in lists of 4,096, which stay
    in cache: the fastest way to make that many calls, hence a strict floor.
    """
    total = 0.0
    for size, count in sizes.items():
        chunk = min(count, 4096)
        messages = [os.urandom(size) for _ in range(chunk)]
        done = 0
        while done < count:
            batch = messages[: min(chunk, count - done)]
            start = time.perf_counter()
            [hashlib.sha256(m).digest() for m in batch]
            total += time.perf_counter() - start
            done += len(batch)
        del messages
    return total


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holders", type=int, default=1_000_000)
    parser.add_argument("--assets", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100_000)
    args = parser.parse_args()
    n, k = args.holders, args.assets
    rng = np.random.default_rng(1)
    height = height_for(n)
    key = bytes(32)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{n:,} holders x {k} assets, tree height {height} ({1 << height:,} slots per asset)\n")

    # Inputs, made before the RSS baseline so that only the trees are counted.
    inputs = []
    for asset in ASSETS[:k]:
        slots = rng.permutation(1 << height)[:n]
        commitments = rng.integers(0, 256, (n, 32), dtype=np.uint8)
        amounts = rng.integers(0, 10**12, n, dtype=np.uint64)
        inputs.append((asset, slots, commitments, amounts))
    gc.collect()
    rss_before = rss_bytes()

    start = time.perf_counter()
    trees = [SumTree.build(a, height, key, s, c, m) for a, s, c, m in inputs]
    build = time.perf_counter() - start
    rss_after = rss_bytes()
    per_holder_asset = (rss_after - rss_before) / (n * k)

    leaf_size = len(asset_prefix(TAG_LEAF, "BTC")) + 48
    pad_size = len(asset_prefix(TAG_LEAF, "BTC")) + 40
    capacity = 1 << height
    build_floor = floor_seconds(
        {leaf_size: n * k, pad_size: (capacity - n) * k, NODE_MESSAGE_SIZE: (capacity - 1) * k}
    )

    # One batch of changes per asset: 80% updates, 10% inserts, 10% clears.
    tree, (asset, slots, commitments, _) = trees[0], inputs[0]
    b = args.batch
    free = np.setdiff1d(np.arange(capacity), slots)
    chosen = rng.choice(n, size=b - b // 10, replace=False)
    set_slots = np.concatenate([slots[chosen[: b * 8 // 10]], free[: b // 10]])
    clears = slots[chosen[b * 8 // 10 :]]
    set_commitments = rng.integers(0, 256, (len(set_slots), 32), dtype=np.uint8)
    set_amounts = rng.integers(0, 10**12, len(set_slots), dtype=np.uint64)
    start = time.perf_counter()
    rehashed = tree.apply(set_slots, set_commitments, set_amounts, clears)
    update = time.perf_counter() - start
    leaves = len(set_slots) + len(clears)
    update_floor = floor_seconds(
        {leaf_size: len(set_slots), pad_size: len(clears), NODE_MESSAGE_SIZE: rehashed - leaves}
    )

    # One path verified with the verifier's own code.
    c = commitment("alice", bytes(32))
    tree.apply([int(free[-1])], np.frombuffer(c, np.uint8).reshape(1, 32), [123])
    path = [PathStep(h, s) for h, s in tree.path(int(free[-1]))]
    runs = 2000
    start = time.perf_counter()
    for _ in range(runs):
        verify_path(
            height=height,
            root=tree.root,
            liabilities=tree.total,
            slot=int(free[-1]),
            leaf=leaf_hash("BTC", c, 123),
            amount=123,
            path=path,
        )
    verify_ms = (time.perf_counter() - start) / runs * 1000

    print(f"{'measure':<44} {'value':>14} {'hashlib floor':>14} {'ratio':>7}")
    print(
        f"{'full build, all trees (s)':<44} {build:>14.2f} {build_floor:>14.2f} "
        f"{build / build_floor:>7.2f}"
    )
    print(
        f"{f'batch of {b:,} changes, {rehashed:,} hashes (s)':<44} {update:>14.3f} "
        f"{update_floor:>14.3f} {update / update_floor:>7.2f}"
    )
    print(f"{'resident bytes per holder-asset':<44} {per_holder_asset:>14.0f}")
    print(f"{f'verify one path of {height} levels (ms)':<44} {verify_ms:>14.3f}")


if __name__ == "__main__":
    main()
