"""Fan-out from one prover daemon to many root stream subscribers, by kind of
subscription and encoding.

    python benchmarks/bench_subscribers.py [--subscribers 10000] [--processes 8]
        [--cases assets=A000:json,assets=A000:msgpack,all:json,all:msgpack]
        [--subscribe all|assets=A000|checkpoints] [--encoding json|msgpack]
        [--assets 500] [--accounts 20000] [--holdings 4] [--rate 1000]
        [--epochs 20] [--warm-up 3] [--seed 0] [--port 0] [--daemon-log FILE]

The daemon (live_prover.py) runs on SQLite in a temporary directory, as a
process of its own, with a ledger of ``--accounts`` accounts holding
``--holdings`` each of ``--assets`` assets (A000, A001, ...), light traffic
(``--rate`` updates/s changing held balances, every asset's reserves), and
its subscriber limits raised to ``--subscribers`` (max_subscribers,
max_anonymous_per_address: they all come from 127.0.0.1; max_connections
follows). RLIMIT_NOFILE is raised for it and for the holders.

Each case is ``SUBSCRIPTION:ENCODING``: ``all`` (full records), ``assets=A000``
(chosen assets, several joined by ``+``) or ``checkpoints``; ``json`` or
``msgpack`` (the ``solvency-msgpack`` subprotocol offered; the table says
what was received). ``--subscribe``/``--encoding`` ask for one case. For
each, ``--subscribers`` subscriptions are opened by ``--processes`` holder
processes (stamped_subscribers.py: niced, each frame timed by the kernel as
its last bytes reach the subscriber's socket), then after ``--warm-up``
epochs ``--epochs`` epochs are timed:

- bytes: the frame's payload each subscriber received per epoch;
- p50/p99: from publication (the prover's ``solvency_last_publish_time``,
  set as it starts handing the epoch out) to each subscriber's socket, over
  every delivery; "last": the same for each epoch's slowest delivery;
- fan-out: the prover's own time handing an epoch out (its
  ``solvency_fanout_seconds`` histogram, mean);
- CPU: the daemon's and its tree worker's CPU per epoch, beside the same
  with the monitor as its only subscriber (printed first);
- gap: the largest interval between consecutive epochs' closes (1.00: on time);
- got: deliveries of the timed epochs, of subscribers x epochs; shed:
  subscribers the prover closed meanwhile.

Target: p99 <= 50 ms at 10,000 subscribers of one asset each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from live_prover import (
    Monitor,
    Produced,
    Prover,
    Scrape,
    add_ledger_arguments,
    pct,
    produce,
    prover_running,
    raise_nofile,
)
from machine import cpu_model, hash_microseconds
from stamped_subscribers import Deliveries, Holders

DEFAULT_CASES = "assets=A000:json,assets=A000:msgpack,all:json,all:msgpack"
TARGET_P99_MS = 50.0


@dataclass(frozen=True)
class Case:
    subscription: str  # as given: all, checkpoints, assets=A000+A001
    encoding: str

    @property
    def query(self) -> str:
        if self.subscription == "all":
            return ""
        if self.subscription == "checkpoints":
            return "only=checkpoints"
        return self.subscription.replace("+", ",")


def parse_cases(text: str) -> list[Case]:
    """``SUBSCRIPTION:ENCODING,...`` (module docstring)."""
    cases = []
    for item in text.split(","):
        subscription, _, encoding = item.strip().rpartition(":")
        ok = subscription in ("all", "checkpoints") or subscription.startswith("assets=")
        if not ok or encoding not in ("json", "msgpack"):
            raise ValueError(f"case {item!r}: want all|checkpoints|assets=A[+B...]:json|msgpack")
        cases.append(Case(subscription, encoding))
    return cases


@dataclass(frozen=True)
class Timing:
    """Deliveries of the epochs published after scrape ``a`` up to ``b``."""

    epochs: int
    got: int
    expected: int
    frame_bytes: float
    binary_share: float
    p50: float  # ms, every delivery
    p99: float
    last_p50: float  # ms, each epoch's slowest delivery
    last_p99: float
    max_gap: float  # s between consecutive closes


def timing(d: Deliveries, scrapes: dict[int, Scrape], a: Scrape, b: Scrape) -> Timing:
    """From publication to each subscriber's socket, for epochs a+1..b."""
    timed = range(a.epoch + 1, b.epoch + 1)
    published = np.array([scrapes[n].published if n in scrapes else np.nan for n in timed])
    inside = (d.epoch > a.epoch) & (d.epoch <= b.epoch)
    epoch = d.epoch[inside]
    latency = (d.arrived[inside] - published[epoch - timed.start]) * 1000
    known = ~np.isnan(latency)
    slowest = [float(latency[epoch == n].max()) for n in timed if (epoch == n).any()]
    slowest = [s for s in slowest if not np.isnan(s)]
    closes = [(n, s.closed) for n, s in sorted(scrapes.items()) if a.epoch <= n <= b.epoch]
    gaps = [t2 - t1 for (n1, t1), (n2, t2) in itertools.pairwise(closes) if n2 == n1 + 1]
    return Timing(
        epochs=len(timed),
        got=int(inside.sum()),
        expected=d.opened * len(timed),
        frame_bytes=float(d.size[inside].mean()) if inside.any() else float("nan"),
        binary_share=float(d.binary[inside].mean()) if inside.any() else float("nan"),
        p50=pct(latency[known].tolist(), 50),
        p99=pct(latency[known].tolist(), 99),
        last_p50=pct(slowest, 50),
        last_p99=pct(slowest, 99),
        max_gap=max((g for g in gaps if not np.isnan(g)), default=float("nan")),
    )


LEGEND = "got: the encoding received; '!': not the one asked for (msgpack offered, not selected)"


def received(case: Case, share: float) -> str:
    """The encoding the subscribers got (``!``: not what they offered)."""
    got = "msgpack" if share > 0.99 else "json" if share < 0.01 else "mixed"
    return got if got == case.encoding else f"{got}!"


HEADER = (
    f"{'subscription':<16} {'asked':>7} {'got':>8} {'subs':>6} {'bytes':>7} {'got %':>6}"
    f" {'shed':>5} {'p50 ms':>7} {'p99 ms':>7} {'last p50':>8} {'last p99':>8}"
    f" {'fan-out ms':>10} {'CPU ms/ep':>9} {'gap s':>5}"
)


async def measure(args: argparse.Namespace, prover: Prover, case: Case, work: Path) -> str:
    """One case: its subscribers connected, warmed up, ``args.epochs`` timed."""
    holders = Holders(prover.url, args.subscribers, args.processes, case.query, case.encoding, work)
    async with Monitor(prover.http, prover.url, [prover.pid], case.query, case.encoding) as mon:
        await mon.first()
        holders.start()
        try:
            opened, refused = await asyncio.to_thread(
                holders.wait_ready, 120 + args.subscribers / 50
            )
            first = await mon.first() + args.warm_up
            await mon.wait_for(first + args.epochs + 1)  # the last timed epoch's frames are in
            deliveries = await asyncio.to_thread(holders.stop)
        finally:
            holders.kill()
        a, b = mon.window(first, first + args.epochs)
        t = timing(deliveries, mon.scrapes, a, b)
    shed = b.shed - a.shed
    fanout = (b.fanout_sum - a.fanout_sum) / max(1.0, b.fanout_count - a.fanout_count) * 1000
    cpu = (b.cpu[prover.pid] - a.cpu[prover.pid]) / (b.epoch - a.epoch) * 1000
    row = (
        f"{case.subscription:<16} {case.encoding:>7} {received(case, t.binary_share):>8}"
        f" {opened:>6,} {t.frame_bytes:>7,.0f} {100 * t.got / max(1, t.expected):>6.1f}"
        f" {shed:>5.0f} {t.p50:>7.1f} {t.p99:>7.1f} {t.last_p50:>8.1f} {t.last_p99:>8.1f}"
        f" {fanout:>10.1f} {cpu:>9.1f} {t.max_gap:>5.2f}"
    )
    if refused:
        row += f"\n  refused handshakes by status: {refused}"
    if deliveries.closed:
        row += f"\n  closed by the prover, by close code: {deliveries.closed}"
    return row


async def baseline(args: argparse.Namespace, prover: Prover) -> str:
    """The daemon's CPU and fan-out per epoch with only the monitor subscribed."""
    epochs = min(args.epochs, 10)
    async with Monitor(prover.http, prover.url, [prover.pid]) as mon:
        first = await mon.first() + 1
        await mon.wait_for(first + epochs)
        a, b = mon.window(first, first + epochs)
    cpu = (b.cpu[prover.pid] - a.cpu[prover.pid]) / (b.epoch - a.epoch) * 1000
    fanout = (b.fanout_sum - a.fanout_sum) / max(1.0, b.fanout_count - a.fanout_count) * 1000
    return (
        f"with the monitor alone (full frames, JSON) over {b.epoch - a.epoch} epochs: prover CPU"
        f" {cpu:.1f} ms/epoch, fan-out {fanout:.2f} ms/epoch"
    )


async def run(args: argparse.Namespace, prover: Prover, cases: list[Case], work: Path) -> None:
    produced = Produced()
    producer = asyncio.create_task(produce(prover, args.rate, produced, args.seed + 1))
    try:
        print(await baseline(args, prover), flush=True)
        print(f"\n{HEADER}", flush=True)
        for case in cases:
            print(await measure(args, prover, case, work), flush=True)
        print(LEGEND)
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
    if producer.done() and not producer.cancelled() and producer.exception():
        print(f"the producer failed: {producer.exception()!r}")
    print(f"\nproducer: {produced.acked:,} balance updates acknowledged", end="")
    print(
        f", {len(produced.refused)} batches refused: {produced.refused[:1]}"
        if produced.refused
        else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=8, help="subscriber holder processes")
    parser.add_argument("--cases", default=None, help=f"default {DEFAULT_CASES}")
    parser.add_argument("--subscribe", help="one case: all, checkpoints or assets=A000[+A001]")
    parser.add_argument("--encoding", choices=("json", "msgpack"), help="one case's encoding")
    add_ledger_arguments(parser)
    parser.add_argument("--port", type=int, default=0, help="the prover's (0: a free one)")
    parser.add_argument("--daemon-log", type=Path, help="keep the daemon's log here")
    args = parser.parse_args()
    try:
        if args.subscribe or args.encoding:
            cases = parse_cases(f"{args.subscribe or 'assets=A000'}:{args.encoding or 'json'}")
        else:
            cases = parse_cases(args.cases or DEFAULT_CASES)
    except ValueError as exc:
        parser.error(str(exc))
    if args.subscribers < 1 or args.processes < 1 or args.epochs < 2 or args.assets < 1:
        parser.error("want --subscribers, --processes, --assets >= 1 and --epochs >= 2")
    raise_nofile(args.subscribers + 4096)
    port = args.port or _free_port()
    settings = {
        "max_subscribers": args.subscribers + 16,  # the monitor, and room
        "max_anonymous_per_address": args.subscribers + 16,  # all from 127.0.0.1
        "max_connections": 0,  # subscribers + auditor slots + 64
    }
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, SHA-256 of 100 bytes"
        f" {hash_microseconds():.2f} us"
    )
    with tempfile.TemporaryDirectory(prefix="bench-subscribers-") as tmp:
        work = Path(tmp)
        try:
            with prover_running(
                work,
                assets=args.assets,
                accounts=args.accounts,
                holdings=args.holdings,
                seed=args.seed,
                host="127.0.0.1",
                port=port,
                settings=settings,
            ) as prover:
                print(
                    f"ledger: {args.accounts:,} accounts holding {len(prover.pairs):,}"
                    f" holder-asset pairs over {args.assets} assets; traffic:"
                    f" {args.rate:,.0f} balance updates/s offered (4 batches/s, held balances"
                    " changed), every asset's reserves every 60 s; the daemon on SQLite,"
                    f" limits: {settings}"
                )
                print(
                    f"{args.subscribers:,} subscribers per case in {args.processes} processes"
                    f" (niced, kernel-timestamped), {args.warm_up} warm-up + {args.epochs} timed"
                    f" epochs per case; latency from the prover's publication of an epoch;"
                    f" target p99 <= {TARGET_P99_MS:.0f} ms for one asset each"
                )
                asyncio.run(run(args, prover, cases, work))
        finally:
            if args.daemon_log:
                with contextlib.suppress(OSError):
                    args.daemon_log.write_bytes((work / "prover.log").read_bytes())
    print(f"SHA-256 of 100 bytes at the end: {hash_microseconds():.2f} us")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
