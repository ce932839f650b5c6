"""The capacity model of docs/SCALING.md: what a sharded deployment needs for
a given ledger and rate, computed from per-role costs measured by
bench_shards.py (and bench_storage.py for PostgreSQL), with the next
bottleneck named.

    python benchmarks/capacity.py --shard-us 6.1 --frontend-us 4.2 \\
        --coordinator-ms 35 --coordinator-ms-per-asset 0.4 --holder-bytes 110 \\
        --user-asset-bytes 16 --stream-bytes 38 [--accounts 1e8 --assets 500 ...]

Every cost is an argument without a default: the model computes nothing
from figures nobody measured. What it assumes is printed with the result.

Model (one epoch of ``interval`` seconds at ``rate`` updates/s):

- shards: CPU ``rate * shard_us`` spread over shard processes of one core
  each at ``utilisation``; memory ``holder_assets * holder_bytes`` plus the
  per-user slot arrays, ``users * assets * user_asset_bytes`` (one entry
  per user and asset in every part that holds the user);
- front-ends: CPU ``rate * frontend_us`` at ``utilisation``;
- coordinator: ``coordinator_ms + assets * coordinator_ms_per_asset`` per
  epoch, whatever the rate (bench_shards checks that it is);
- NATS: ``rate * stream_bytes`` bytes/s written, times the replicas;
- PostgreSQL: each epoch's record (``assets * record_bytes_per_asset``),
  and each shard's changed holdings (``changed * holding_row_bytes``);
- machines: processes packed on ``cores``-core machines of ``memory_gb``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

GB = 1 << 30


@dataclass(frozen=True)
class Costs:
    shard_us: float  # shard CPU per update
    frontend_us: float  # front-end CPU per update
    coordinator_ms: float  # coordinator CPU per epoch, fixed part
    coordinator_ms_per_asset: float  # and per asset
    holder_bytes: float  # shard memory per holder-asset (tree, leaf)
    user_asset_bytes: float  # shard memory per user and asset (slot arrays)
    stream_bytes: float  # bytes on the ledger stream per update
    record_bytes_per_asset: float = 200.0  # an asset entry of the record (PROTOCOL §4)
    holding_row_bytes: float = 120.0  # a changed holding persisted by a shard (row + index)


@dataclass(frozen=True)
class Deployment:
    accounts: float
    assets: int
    holdings: float  # assets held per account, on average
    rate: float  # updates/s
    interval: float  # s per epoch
    cores: int  # per machine
    memory_gb: float  # per machine
    utilisation: float  # of a core, at most, for a role's process
    replicas: int  # of the ledger stream


def model(costs: Costs, d: Deployment) -> list[tuple[str, str]]:
    holder_assets = d.accounts * d.holdings
    shard_cores = d.rate * costs.shard_us / 1e6 / d.utilisation
    tree_bytes = holder_assets * costs.holder_bytes
    slot_bytes = d.accounts * d.assets * costs.user_asset_bytes
    shard_memory = tree_bytes + slot_bytes
    shards_for_cpu = math.ceil(shard_cores)
    per_machine_memory = d.memory_gb * GB * 0.8
    shards_for_memory = math.ceil(shard_memory / per_machine_memory * d.cores)
    shards = 1 << max(0, math.ceil(math.log2(max(shards_for_cpu, shards_for_memory, 1))))
    frontends = math.ceil(d.rate * costs.frontend_us / 1e6 / d.utilisation)
    coordinator = (costs.coordinator_ms + d.assets * costs.coordinator_ms_per_asset) / 1000
    coordinator_share = coordinator / d.interval
    machines = max(
        math.ceil((shards + frontends + 1) / d.cores),  # a core per process
        math.ceil(shard_memory / per_machine_memory),  # and the shards' memory
    )
    nats = d.rate * costs.stream_bytes * d.replicas
    changed = min(d.rate * d.interval, holder_assets)
    pg = (d.assets * costs.record_bytes_per_asset + changed * costs.holding_row_bytes) / d.interval
    limits = {
        "slot arrays (users x assets)": slot_bytes / shard_memory,
        "coordinator core": coordinator_share,
        "shard CPU": shard_cores / shards,
    }
    bottleneck = max(limits, key=lambda k: limits[k])
    return [
        ("holder-assets", f"{holder_assets:,.0f}"),
        ("shard cores needed (CPU)", f"{shard_cores:,.1f}"),
        (
            "shard memory",
            f"{shard_memory / GB:,.1f} GB (trees {tree_bytes / GB:,.1f},"
            f" slot arrays {slot_bytes / GB:,.1f})",
        ),
        ("shards (a power of two)", f"{shards} (CPU {shards_for_cpu}, memory {shards_for_memory})"),
        ("front-ends", f"{frontends}"),
        (
            "coordinator per epoch",
            f"{coordinator * 1000:,.0f} ms ({coordinator_share:.0%} of a core)",
        ),
        ("machines", f"{machines} of {d.cores} cores and {d.memory_gb:.0f} GB"),
        ("NATS writes", f"{nats / 1e6:,.1f} MB/s ({d.replicas} replicas)"),
        ("PostgreSQL writes", f"{pg / 1e6:,.1f} MB/s"),
        ("next bottleneck", bottleneck),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in (
        "shard-us",
        "frontend-us",
        "coordinator-ms",
        "coordinator-ms-per-asset",
        "holder-bytes",
        "user-asset-bytes",
        "stream-bytes",
    ):
        p.add_argument(f"--{name}", type=float, required=True)
    p.add_argument("--accounts", type=float, default=1e8)
    p.add_argument("--assets", type=int, default=500)
    p.add_argument("--holdings", type=float, default=4.0, help="assets held per account")
    p.add_argument("--rate", type=float, default=1e6)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--cores", type=int, default=32)
    p.add_argument("--memory-gb", type=float, default=256.0)
    p.add_argument("--utilisation", type=float, default=0.7)
    p.add_argument("--replicas", type=int, default=3)
    a = p.parse_args()
    costs = Costs(
        a.shard_us,
        a.frontend_us,
        a.coordinator_ms,
        a.coordinator_ms_per_asset,
        a.holder_bytes,
        a.user_asset_bytes,
        a.stream_bytes,
    )
    d = Deployment(
        a.accounts,
        a.assets,
        a.holdings,
        a.rate,
        a.interval,
        a.cores,
        a.memory_gb,
        a.utilisation,
        a.replicas,
    )
    print(
        f"{d.accounts:,.0f} accounts x {d.assets} assets ({d.holdings} held each),"
        f" {d.rate:,.0f} updates/s, epochs of {d.interval} s"
    )
    for name, value in model(costs, d):
        print(f"  {name:32} {value}")


if __name__ == "__main__":
    main()
