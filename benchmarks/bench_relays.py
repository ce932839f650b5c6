"""Relays in network namespaces: one prover daemon on the host, ``--relays``
relays (``solvency-verify relay``) each in a network namespace of its own
following it, and ``--subscribers`` subscribers per relay held by processes
in that relay's namespace. Run as root (``ip netns``, veth pairs).

    python benchmarks/bench_relays.py [--relays 3] [--subscribers 3000] [--processes 4]
        [--cases all:json,assets=A000:json] [--assets 500] [--accounts 20000]
        [--holdings 4] [--rate 1000] [--epochs 20] [--warm-up 3] [--seed 0] [--port 8765]

A smoke test: ``--relays 1 --subscribers 50 --epochs 3``.

The network: for relay k (1, 2, ...), a namespace ``sbrelay-PID-k`` joined to
the host by a veth pair, 10.200.k.1/24 on the host's side and 10.200.k.2/24
in the namespace (its default route: the host). The prover (live_prover.py:
SQLite, a ledger of ``--assets`` assets, light traffic) listens on 10.200.1.1,
which every namespace reaches through its own pair; relay k listens on
10.200.k.2:8766 and follows the prover for every asset, as a relay does; its
subscribers connect to it from inside its namespace. The namespaces and
links are removed on exit, on failure and on SIGTERM too; those left by a
run that was killed (its PID gone) are removed at the next start.

Each case (``SUBSCRIPTION:ENCODING`` as in bench_subscribers.py) opens the
subscribers, then after ``--warm-up`` epochs times ``--epochs`` epochs:

- p50/p99 from publication (the prover's ``solvency_last_publish_time``, as
  it starts handing the epoch out, to the relays among others) to each
  subscriber's socket (``SO_TIMESTAMPNS``), over every delivery; "last": to
  each epoch's last subscriber, over all relays;
- each relay's CPU per epoch, per subscriber per epoch, and what its
  subscribers add per subscriber per epoch (against its CPU with none,
  measured first: verifying each frame and saving its state).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np
from bench_subscribers import LEGEND, Case, Timing, parse_cases, received, timing
from live_prover import (
    Monitor,
    Produced,
    Prover,
    add_ledger_arguments,
    die_with_parent,
    produce,
    prover_running,
    raise_nofile,
)
from machine import cpu_model, hash_microseconds
from stamped_subscribers import Deliveries, Holders

DEFAULT_CASES = "all:json,assets=A000:json"
RELAY_PORT = 8766
PREFIX = "sbrelay"  # namespace names: sbrelay-PID-k
START_TIMEOUT = 120.0  # s for a relay to verify its first frame


@dataclass(frozen=True)
class Namespace:
    """Relay ``k``'s namespace and veth pair."""

    k: int
    name: str
    host_link: str

    @property
    def host_address(self) -> str:
        return f"10.200.{self.k}.1"

    @property
    def address(self) -> str:
        return f"10.200.{self.k}.2"

    @property
    def exec(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


def _ip(*argv: str, check: bool = True) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if check and done.returncode:
        raise SystemExit(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def _remove(ns: Namespace) -> None:
    _ip("netns", "del", ns.name, check=False)  # takes its end of the pair, and so the pair
    _ip("link", "del", ns.host_link, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Remove the namespaces (and links) of earlier runs whose process is gone,
    ending the processes those runs left in them."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(rf"^{PREFIX}-(\d+)-(\d+)", listed, re.M):
        pid, k = int(name[0]), int(name[1])
        if _alive(pid):
            continue
        ns = Namespace(k, f"{PREFIX}-{pid}-{k}", f"sbh{k}-{pid}")
        left = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True)
        for child in map(int, left.stdout.split()):
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        _remove(ns)


@contextlib.contextmanager
def network(relays: int) -> Iterator[list[Namespace]]:
    """The namespaces and pairs (module docstring), removed when the body ends."""
    made: list[Namespace] = []
    try:
        for k in range(1, relays + 1):
            pid = os.getpid()
            ns = Namespace(k, f"{PREFIX}-{pid}-{k}", f"sbh{k}-{pid}")
            peer = f"sbn{k}-{pid}"
            _ip("netns", "add", ns.name)
            made.append(ns)
            _ip("link", "add", ns.host_link, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns.name)
            _ip("addr", "add", f"{ns.host_address}/24", "dev", ns.host_link)
            _ip("link", "set", ns.host_link, "up")
            _ip("-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", peer)
            _ip("-n", ns.name, "link", "set", peer, "up")
            _ip("-n", ns.name, "link", "set", "lo", "up")
            _ip("-n", ns.name, "route", "add", "default", "via", ns.host_address)
        yield made
    finally:
        for ns in made:
            _remove(ns)


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


@dataclass
class Relay:
    ns: Namespace
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"ws://{self.ns.address}:{RELAY_PORT}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://{self.ns.address}:{RELAY_PORT}/healthz", timeout=1
            ):
                return True
        except OSError:
            return False


def start_relays(
    namespaces: list[Namespace], prover: Prover, work: Path, max_subscribers: int
) -> list[Relay]:
    """A relay in each namespace, following the prover; once each verified a frame."""
    relays = []
    for ns in namespaces:
        state, log = work / f"relay-{ns.k}", work / f"relay-{ns.k}.log"
        state.mkdir()
        argv = [*ns.exec, sys.executable, "-m", "verifier.cli", "relay", "--json"]
        argv += ["--upstream", prover.url, "--listen", f"{ns.address}:{RELAY_PORT}"]
        argv += ["--key", prover.key, "--state", str(state)]
        argv += ["--max-subscribers", str(max_subscribers)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        relays.append(Relay(ns, proc, log))  # ip netns exec execs: proc.pid is the relay's
    deadline = time.monotonic() + START_TIMEOUT
    for relay in relays:
        while not relay.healthy():
            if relay.proc.poll() is not None or time.monotonic() > deadline:
                tail = relay.log.read_text(errors="replace")[-1500:]
                raise SystemExit(f"relay {relay.ns.k} did not come up; its log ends:\n{tail}")
            time.sleep(0.2)
    return relays


def stop_relays(relays: list[Relay]) -> None:
    for relay in relays:
        if relay.proc.poll() is None:
            relay.proc.terminate()
    for relay in relays:
        try:
            relay.proc.wait(15)
        except subprocess.TimeoutExpired:
            relay.proc.kill()
            relay.proc.wait()


HEADER = (
    f"{'subscription':<16} {'asked':>7} {'got':>8} {'relay':>5} {'subs':>6} {'bytes':>7}"
    f" {'got %':>6} {'closed':>6} {'p50 ms':>7} {'p99 ms':>7} {'last p50':>8} {'last p99':>8}"
    f" {'CPU ms/ep':>9} {'us/sub/ep':>9} {'added':>7}"
)


def _row(case: Case, relay: str, d: Deliveries, t: Timing) -> str:
    closed, got = sum(d.closed.values()), 100 * t.got / max(1, t.expected)
    return (
        f"{case.subscription:<16} {case.encoding:>7} {received(case, t.binary_share):>8}"
        f" {relay:>5} {d.opened:>6,} {t.frame_bytes:>7,.0f} {got:>6.1f}"
        f" {closed:>6} {t.p50:>7.1f} {t.p99:>7.1f} {t.last_p50:>8.1f} {t.last_p99:>8.1f}"
    )


def _merged(parts: list[Deliveries]) -> Deliveries:
    closed: dict[int, int] = {}
    for d in parts:
        for code, n in d.closed.items():
            closed[code] = closed.get(code, 0) + n
    cat = np.concatenate
    return Deliveries(
        sub=cat([d.sub for d in parts]),
        epoch=cat([d.epoch for d in parts]),
        arrived=cat([d.arrived for d in parts]),
        size=cat([d.size for d in parts]),
        binary=cat([d.binary for d in parts]),
        opened=sum(d.opened for d in parts),
        refused={},
        closed=closed,
        selected=sum(d.selected for d in parts),
        wire_bytes=sum(d.wire_bytes for d in parts),
    )


async def measure(
    args: argparse.Namespace,
    prover: Prover,
    relays: list[Relay],
    alone: dict[int, float],
    case: Case,
    work: Path,
) -> str:
    """One case over every relay; ``alone``: each relay's CPU ms/epoch with no subscriber."""
    pids = [prover.pid, *(r.proc.pid for r in relays)]
    groups = [
        Holders(
            r.url,
            args.subscribers,
            args.processes,
            case.query,
            case.encoding,
            work,
            prefix=r.ns.exec,
        )
        for r in relays
    ]
    async with Monitor(prover.http, prover.url, pids) as mon:
        await mon.first()
        try:
            for holders in groups:
                holders.start()
            for holders in groups:
                await asyncio.to_thread(holders.wait_ready, 120 + args.subscribers / 50)
            first = await mon.first() + args.warm_up
            await mon.wait_for(first + args.epochs + 1)
            parts = [await asyncio.to_thread(h.stop) for h in groups]
        finally:
            for holders in groups:
                holders.kill()
        a, b = mon.window(first, first + args.epochs)
    epochs = b.epoch - a.epoch
    lines = []
    for relay, d in zip(relays, parts, strict=True):
        cpu = (b.cpu[relay.proc.pid] - a.cpu[relay.proc.pid]) / epochs * 1000
        per = cpu * 1000 / max(1, d.opened)
        added = (cpu - alone[relay.ns.k]) * 1000 / max(1, d.opened)
        line = _row(case, str(relay.ns.k), d, timing(d, mon.scrapes, a, b))
        lines.append(f"{line} {cpu:>9.1f} {per:>9.1f} {added:>7.1f}")
        if d.refused:
            lines.append(f"  relay {relay.ns.k} refused handshakes by status: {d.refused}")
    everything = _merged(parts)
    t = timing(everything, mon.scrapes, a, b)
    prover_cpu = (b.cpu[prover.pid] - a.cpu[prover.pid]) / epochs * 1000
    lines.append(
        f"{_row(case, 'all', everything, t)}   (prover CPU {prover_cpu:.1f} ms/epoch,"
        f" largest gap between closes {t.max_gap:.2f} s)"
    )
    return "\n".join(lines)


async def baseline(prover: Prover, relays: list[Relay], epochs: int) -> dict[int, float]:
    """Each relay's CPU ms/epoch with no subscriber."""
    async with Monitor(prover.http, prover.url, [r.proc.pid for r in relays]) as mon:
        first = await mon.first() + 1
        await mon.wait_for(first + epochs)
        a, b = mon.window(first, first + epochs)
    return {
        r.ns.k: (b.cpu[r.proc.pid] - a.cpu[r.proc.pid]) / (b.epoch - a.epoch) * 1000 for r in relays
    }


async def run(
    args: argparse.Namespace, prover: Prover, relays: list[Relay], cases: list[Case], work: Path
) -> None:
    produced = Produced()
    producer = asyncio.create_task(produce(prover, args.rate, produced, args.seed + 1))
    try:
        alone = await baseline(prover, relays, min(args.epochs, 10))
        each = ", ".join(f"relay {k} {ms:.1f} ms" for k, ms in alone.items())
        print(f"relay CPU per epoch with no subscriber (verifying, saving its state): {each}")
        print(f"\n{HEADER}", flush=True)
        for case in cases:
            print(await measure(args, prover, relays, alone, case, work), flush=True)
        print(LEGEND)
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
    print(
        f"\nproducer: {produced.acked:,} balance updates acknowledged"
        + (f", {len(produced.refused)} refused: {produced.refused[:1]}" if produced.refused else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relays", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=3000, help="per relay")
    parser.add_argument("--processes", type=int, default=4, help="holder processes per relay")
    parser.add_argument("--cases", default=DEFAULT_CASES)
    add_ledger_arguments(parser)
    parser.add_argument("--port", type=int, default=8765, help="the prover's, on 10.200.1.1")
    args = parser.parse_args()
    try:
        cases = parse_cases(args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    if not 1 <= args.relays <= 250 or args.subscribers < 1 or args.processes < 1:
        parser.error("want 1 <= --relays <= 250, --subscribers and --processes >= 1")
    if args.epochs < 2:
        parser.error("want --epochs >= 2")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the relays run in network namespaces (ip netns)")
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)
    raise_nofile(args.subscribers + 4096)
    remove_stale()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, SHA-256 of 100 bytes"
        f" {hash_microseconds():.2f} us"
    )
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-relays-")))
        namespaces = stack.enter_context(network(args.relays))
        prover = stack.enter_context(
            prover_running(
                work,
                assets=args.assets,
                accounts=args.accounts,
                holdings=args.holdings,
                seed=args.seed,
                host=namespaces[0].host_address,
                port=args.port,
                settings={},
            )
        )
        relays: list[Relay] = []
        stack.callback(stop_relays, relays)
        relays += start_relays(namespaces, prover, work, args.subscribers + 16)
        print(
            f"ledger: {args.accounts:,} accounts holding {len(prover.pairs):,} holder-asset"
            f" pairs over {args.assets} assets; traffic: {args.rate:,.0f} balance updates/s"
            " offered (4 batches/s, held balances changed), every asset's reserves every 60 s;"
            f" the prover on SQLite at {prover.url}; {args.relays} relay(s), each in a network"
            f" namespace of its own (veth pair), {args.subscribers:,} subscribers each held by"
            f" {args.processes} processes in its namespace (niced, kernel-timestamped);"
            f" {args.warm_up} warm-up + {args.epochs} timed epochs per case; latency from the"
            " prover's publication; 'added': what subscribers add, us per subscriber per epoch"
        )
        asyncio.run(run(args, prover, relays, cases, work))
    print(f"SHA-256 of 100 bytes at the end: {hash_microseconds():.2f} us")


if __name__ == "__main__":
    main()
