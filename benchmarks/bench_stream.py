"""End-to-end stream benchmark on loopback: the prover daemon as its own process,
producers, an auditor verifying every epoch, and many subscribers.

    python benchmarks/bench_stream.py [--accounts 1000000] [--rates 25000,50000,75000,100000]
        [--seconds 15] [--producers 2] [--batch 5000] [--in-flight 4]
        [--traffic ledger|stride] [--partition disjoint|shared] [--assets 4]
        [--new-holders 0.10] [--removals 0.02] [--holding 0.5] [--skew uniform|zipf:S]
        [--seed 0] [--subscribers 1000] [--subscriber-processes 4]
        [--postgres-url URL] [--daemon-log FILE]

Traffic (``traffic.py``), by default: 2 independent producers, each a client
of its own on its own half of the accounts, drawn uniformly at random; 4
assets, each account starting with each asset with probability 0.5; 10% of
updates give an account an asset it did not hold (a new holder-asset leaf),
2% set a held balance to 0 (a removal), the rest change a held balance.
Each producer sends batches of 5,000 updates paced to its share of the
offered rate, with at most 4 unacknowledged. ``--partition shared`` lets
every producer draw from all accounts; ``--skew zipf:S`` draws accounts by
a Zipf law. ``--traffic stride`` is the pattern of earlier versions: every
producer sends ``acct{(seq * 7919) % accounts}`` with the same seqs, one
asset only (with ``--assets 1``, the daemon of those versions).

For each offered update rate: the rate acknowledged, the cores the daemon
used (its process and the tree worker), that CPU per acknowledged update
and the tree workers' part of it, whether every epoch closed within
its 1 s interval (largest gap between consecutive epoch times), p99 of epoch
close to publication (the prover's /metrics), the p50/p99 latency from
epoch close (the record's timestamp) to the auditor, a process of its own,
holding the verified checkpoint; and the tree work offered (``WORK_MODEL``):
distinct leaves changed per epoch, hashes per update, trees grown. Then the
fan-out, at the highest rate: delivery latency to ``--subscribers``
connections, held by ``--subscriber-processes`` processes of their own, at
a lower priority (each frame timed by the kernel as its bytes reach the
subscriber's socket), from publication and from epoch close (after
``WARM_UP`` epochs: the first one after the connections arrive is slower,
about 110 ms), and the epoch cadence meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_storage import postgres_schema
from machine import cpu_model, hash_microseconds
from traffic import (
    WORK_MODEL,
    Batch,
    Producers,
    TrafficError,
    Trees,
    add_arguments,
    asset_ids,
    from_args,
    message,
    offered,
)
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from prover.cli import main as prover_main
from prover.config import load_config
from prover.keys import load_key
from storage.store import Store
from verifier.audit import audit_epoch
from verifier.checkpoint import verifier_key_for
from verifier.record import EpochRecord
from verifier.stream import parse_message

WARM_UP = 2  # fan-out: the first epochs after 1,000 connections arrive are not timed
MAX_BATCH = 100_000  # updates per ingest message (PROTOCOL §11.1)
ACK_TIMEOUT = 120  # s a producer waits for an ack when its window is full


@dataclass(frozen=True)
class Row:
    seq: int
    user: str
    asset: str
    amount: int


def load_accounts(url: str, producers: Producers) -> int:
    """Store the holdings ``producers`` start from; return how many pairs."""
    store = Store.open(url)
    ids = asset_ids(producers.traffic.assets)
    accounts, assets = producers.pairs()
    for start in range(0, len(accounts), 50_000):
        chunk = zip(
            accounts[start:][:50_000].tolist(), assets[start:][:50_000].tolist(), strict=True
        )
        rows = [Row(start + i + 1, f"acct{u}", ids[a], 1000 + u) for i, (u, a) in enumerate(chunk)]
        store.apply_balances("initial-load", rows)
    store.close()
    return len(accounts)


def start_daemon(data: Path, port: int, log: Any) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prover.cli", "--data-dir", str(data), "--port", str(port), "run"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the prover did not start")


@dataclass
class Produced:
    """What producers got back: updates applied, each acked batch with the
    wall time of its ack, the last ack, and the refusals' messages."""

    applied: int = 0
    acked: list[tuple[float, Batch]] = field(default_factory=list)
    last_ack: float = 0.0
    refused: list[str] = field(default_factory=list)

    def add(self, other: Produced) -> None:
        self.applied += other.applied
        self.acked += other.acked
        self.last_ack = max(self.last_ack, other.last_ack)
        self.refused += other.refused


async def produce(
    args: argparse.Namespace,
    url: str,
    token: str,
    producers: Producers,
    source: str,
    p: int,
    rate: float,
) -> Produced:
    """Producer ``p``: a client of its own, sending batches of ``args.batch``
    updates paced to ``rate``/s (batch ``k`` not before ``k * batch / rate``
    s), with at most ``args.in_flight`` of them unacknowledged, for
    ``args.seconds``; then wait for the last acks. Batches are drawn just
    before they are due, and acks matched to them by the message id."""
    out, waiting = Produced(), dict[int, Batch]()
    window = asyncio.Semaphore(args.in_flight)
    ids = asset_ids(producers.traffic.assets)
    source, seq = f"{source}-{p}", 0
    async with connect(
        f"{url}/ingest", additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    ) as ws:

        async def read_acks() -> None:
            async for frame in ws:
                reply = json.loads(frame)
                batch = waiting.pop(reply["id"])
                if reply["type"] == "ack":
                    out.applied += reply["applied"]
                    out.last_ack = time.time()
                    out.acked.append((out.last_ack, batch))
                else:
                    out.refused.append(f"{reply['code']}: {reply['message']}")
                window.release()

        async def take_slot() -> None:
            slot = asyncio.ensure_future(window.acquire())
            await asyncio.wait(
                [slot, reader], timeout=ACK_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            if not slot.done():
                slot.cancel()
                if reader.done():
                    reader.result()  # the connection's error, if any
                raise SystemExit(f"{source}: no ack within {ACK_TIMEOUT} s, or connection lost")

        reader = asyncio.create_task(read_acks())
        began = time.monotonic()
        for k in itertools.count():
            due = began + k * args.batch / rate
            if due >= began + args.seconds:
                break
            await take_slot()
            batch = producers.batch(p, seq + 1, args.batch)
            text = message(source, seq + 1, k, batch, ids)
            seq += args.batch
            await asyncio.sleep(due - time.monotonic())
            waiting[k] = batch
            await ws.send(text)
        for _ in range(args.in_flight):
            await take_slot()
        reader.cancel()
    return out


async def produce_all(
    args: argparse.Namespace, url: str, token: str, producers: Producers, source: str, rate: float
) -> Produced:
    """Offer ``rate`` updates/s for ``args.seconds`` from every producer at once."""
    n = producers.traffic.producers
    out = Produced()
    for one in await asyncio.gather(
        *[produce(args, url, token, producers, source, p, rate / n) for p in range(n)]
    ):
        out.add(one)
    return out


def published_at(http: str) -> tuple[int, float]:
    """The last epoch's number and when it was handed to subscribers (/metrics)."""
    with urllib.request.urlopen(f"{http}/metrics", timeout=5) as reply:
        values = dict(
            line.split(" ", 1) for line in reply.read().decode().splitlines() if line[:1] != "#"
        )
    return int(float(values["solvency_epoch"])), float(values["solvency_last_publish_time"])


async def audit(
    url: str, key: object, origin: str, ready: Any, stop: Any, published: dict[int, float]
) -> list[tuple[int, int, float]]:
    """Verify every epoch; return (epoch, its time ms, latency s to verified) per epoch,
    and note in ``published`` when each epoch was published, if /metrics still shows it."""
    out: list[tuple[int, int, float]] = []
    state = None
    http = url.replace("ws://", "http://")
    async with connect(f"{url}/roots", max_size=1 << 22) as ws:
        ready.set()
        while not stop.is_set():
            try:
                frame = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            message = parse_message(frame)
            state, record, _ = audit_epoch(state, message, key, origin)  # type: ignore[arg-type]
            verified = time.time()
            out.append((record.epoch, record.timestamp_ms, verified - record.timestamp_ms / 1000))
            epoch, at = await asyncio.to_thread(published_at, http)
            if epoch == record.epoch:
                published[epoch] = at
    return out


Audit = tuple[list[tuple[int, int, float]], dict[int, float]]  # audit's epochs, published


def auditor(url: str, key: object, origin: str, ready: Any, stop: Any, out: Any) -> None:
    """``audit`` in a process of its own, as an auditor runs on a machine of its
    own: put its epochs and ``published`` on ``out`` once ``stop`` is set."""

    async def main() -> Audit:
        published: dict[int, float] = {}
        return await audit(url, key, origin, ready, stop, published), published

    out.put(asyncio.run(main()))


@contextlib.asynccontextmanager
async def audited(
    url: str, key: object, origin: str
) -> AsyncIterator[Callable[[], Awaitable[Audit]]]:
    """Run an auditor process while the body runs; the body ends it by awaiting
    what it yields, which returns the auditor's epochs and publication times."""
    mp = multiprocessing.get_context("spawn")
    ready, stop, out = mp.Event(), mp.Event(), mp.Queue()
    process = mp.Process(target=auditor, args=(url, key, origin, ready, stop, out))
    process.start()
    try:
        if not await asyncio.to_thread(ready.wait, 60):
            raise SystemExit("the auditor did not connect")

        async def finish() -> Audit:
            stop.set()
            result: Audit = await asyncio.to_thread(out.get, True, 300)
            return result

        yield finish
    finally:
        stop.set()
        process.join(30)


SO_TIMESTAMPNS = 35  # Linux: each read carries the time its bytes reached the socket
STAMP = struct.Struct("qq")  # struct timespec
# Subscribers run at a lower priority: woken by each frame, at the default one
# they preempted the daemon in the middle of handing an epoch out (its 1,000
# sends took 17-59 ms for 9-22 ms of its own CPU, and p99 delivery was 47 ms;
# niced, 11-29 ms and 22 ms; one 30 s run each on the 2-core Xeon VM).
# Machines of their own would not take the prover's cores.
SUBSCRIBER_NICE = 10


class Subscription:
    """One root stream subscription: a plain socket and websockets' sans-I/O
    client. Each frame is timed by the kernel, when its last bytes reached
    the socket (``SO_TIMESTAMPNS``), not when this process got round to
    reading them: subscribers stand in for machines of their own, and their
    turn on the shared cores is not the prover's latency."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("ws://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.protocol = ClientProtocol(parse_uri(f"{url}/roots"), max_size=1 << 22)
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        self.sock.setblocking(False)
        self.frames: list[tuple[float, bytes]] = []

    def readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(STAMP.size))
        except BlockingIOError:
            return
        arrived = time.time()
        for level, kind, value in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS):
                seconds, nanoseconds = STAMP.unpack(value)
                arrived = seconds + nanoseconds / 1e9
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.frames.append((arrived, bytes(event.data)))
        self.flush()

    def flush(self) -> None:  # handshake, pongs, close: a few bytes, sent whole
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)
            else:
                self.sock.shutdown(socket.SHUT_WR)


def subscribers(url: str, count: int, ready: Any, stop: Any, out: Any) -> None:
    """A process holding ``count`` subscriptions, niced: set ``ready`` once all are
    open; when ``stop`` is set, put (received, epoch, epoch close ms) per frame
    on ``out``. Frames are decoded at the end; the producers and the auditor
    run in another process."""
    os.nice(SUBSCRIBER_NICE)
    subs = [Subscription(url) for _ in range(count)]
    with selectors.DefaultSelector() as selector:
        for sub in subs:
            selector.register(sub.sock, selectors.EVENT_READ, sub)
        while not stop.is_set():
            for key, _ in selector.select(0.1):
                key.data.readable()
            if not ready.is_set() and all(s.protocol.state is State.OPEN for s in subs):
                ready.set()
    rows = []
    for sub in subs:
        sub.sock.close()
        for received, frame in sub.frames:
            record = EpochRecord.decode(parse_message(frame.decode()).record)
            rows.append((received, record.epoch, record.timestamp_ms))
    out.put(rows)


def own_cpu_seconds(pid: int) -> float:
    """CPU time so far of process ``pid`` alone (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cpu_seconds(pid: int) -> float:
    """CPU time so far of process ``pid`` and its descendants (Linux /proc)."""
    total = own_cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += sum(map(cpu_seconds, map(int, (task / "children").read_text().split())))
    return total


def pct(values: list[float], q: int) -> float:
    """The ``q``-th percentile, interpolated between samples, never beyond the
    largest: of 16 epochs, p99 lies between the two slowest."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run(
    args: argparse.Namespace,
    url: str,
    token: str,
    key: object,
    origin: str,
    daemon: int,
    producers: Producers,
) -> None:
    trees = Trees(producers.holders().tolist())
    header = ["offered/s", "acked/s", "cores", "us/upd", "trees us", "epochs", "max gap s"]
    header += ["pub p99 ms", "p50", "p99"]
    header += ["leaves p50", "leaves max", "hash/upd", "grown"]
    print(" ".join(f"{h:>10}" for h in header))
    for rate in [float(r) for r in args.rates.split(",")]:
        async with audited(url, key, origin) as audit_done:
            cpu, own, began = cpu_seconds(daemon), own_cpu_seconds(daemon), time.time()
            sent = await produce_all(args, url, token, producers, f"bench-{int(rate)}", rate)
            elapsed = time.time() - began
            cpu, own = cpu_seconds(daemon) - cpu, own_cpu_seconds(daemon) - own
            cores = cpu / elapsed
            await asyncio.sleep(2)
            epochs, published = await audit_done()
        times = [t for _, t, _ in epochs]
        gaps = [(b - a) / 1000 for a, b in itertools.pairwise(times)]
        lat = [s * 1000 for _, _, s in epochs]
        build = [(published[n] - t / 1000) * 1000 for n, t, _ in epochs if n in published]
        work = offered(sent.acked, [t / 1000 for t in times], trees)
        acked = sent.applied / max(args.seconds, sent.last_ack - began)
        per_update = 1e6 / max(1, sent.applied)  # CPU seconds to us per acked update
        print(
            f"{rate:>10,.0f} {acked:>10,.0f} {cores:>10.2f} "
            f"{cpu * per_update:>10.1f} {(cpu - own) * per_update:>10.1f} {len(epochs):>10} "
            f"{max(gaps, default=0):>10.2f} {pct(build, 99):>10.0f} "
            f"{pct(lat, 50):>10.0f} {pct(lat, 99):>10.0f} {work.leaves_median:>10,.0f} "
            f"{work.leaves_max:>10,} {work.hashes_per_update:>10.2f} {work.growths:>10}"
        )
        if sent.refused:
            print(f"  {len(sent.refused)} batches refused, the first: {sent.refused[0]}")

    if args.subscribers:
        await fan_out(args, url, token, key, origin, producers, trees)
    updates = max(1, trees.updates)
    ids = asset_ids(producers.traffic.assets)
    holders = ", ".join(
        f"{a} {n:,} (height {h})" for a, n, h in zip(ids, trees.holders, trees.heights, strict=True)
    )
    print(
        f"\nacked updates: {trees.created / updates:.1%} created a holder-asset pair,"
        f" {trees.removed / updates:.1%} removed one; holders at the end (model): {holders}"
    )


async def fan_out(
    args: argparse.Namespace,
    url: str,
    token: str,
    key: object,
    origin: str,
    producers: Producers,
    trees: Trees,
) -> None:
    """``args.subscribers`` subscriptions, spread over ``args.subscriber_processes``
    processes, while the highest rate is offered; ``trees`` follows its batches."""
    mp = multiprocessing.get_context("spawn")
    stop, out = mp.Event(), mp.Queue()
    workers = []
    for i in range(args.subscriber_processes):
        count = len(range(i, args.subscribers, args.subscriber_processes))
        ready = mp.Event()
        worker = mp.Process(target=subscribers, args=(url, count, ready, stop, out))
        worker.start()
        workers.append((worker, ready))
    for _, ready in workers:
        if not await asyncio.to_thread(ready.wait, 300):
            raise SystemExit("the subscribers did not connect")
    rate = max(float(r) for r in args.rates.split(","))
    async with audited(url, key, origin) as audit_done:
        sent = await produce_all(args, url, token, producers, "fanout", rate)
        await asyncio.sleep(2)
        epochs, published = await audit_done()
    offered(sent.acked, [t / 1000 for _, t, _ in epochs], trees)
    stop.set()
    rows = [row for _ in workers for row in await asyncio.to_thread(out.get, True, 300)]
    for worker, _ in workers:
        worker.join()
    from_close, from_publication = [], []
    warm = min(n for n, _, _ in epochs) + WARM_UP  # epochs from here on are timed
    for received, epoch, timestamp_ms in rows:
        if epoch < warm:
            continue
        from_close.append((received - timestamp_ms / 1000) * 1000)
        if epoch in published:
            from_publication.append((received - published[epoch]) * 1000)
    times = [t for _, t, _ in epochs]
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(times)]
    print(
        f"\nfan-out to {args.subscribers} subscribers ({args.subscriber_processes} processes)"
        f" at {rate:,.0f} updates/s: {len(from_close)} deliveries after {WARM_UP} warm-up"
        f" epochs; from publication p50 {pct(from_publication, 50):.0f} ms, p99"
        f" {pct(from_publication, 99):.0f} ms ({len(from_publication)} timed); from epoch"
        f" close p50 {pct(from_close, 50):.0f} ms, p99 {pct(from_close, 99):.0f} ms; largest"
        f" gap between epochs {max(gaps, default=0):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25000,50000,75000,100000")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--batch", type=int, default=5000, help="updates per message")
    parser.add_argument("--in-flight", type=int, default=4, help="unacked batches per producer")
    add_arguments(parser)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--subscriber-processes", type=int, default=4)
    parser.add_argument(
        "--postgres-url", help="run the daemon on a new schema of this server (default: SQLite)"
    )
    parser.add_argument(
        "--daemon-log", type=Path, help="write the daemon's log here (per-epoch timings)"
    )
    args = parser.parse_args()
    if not 1 <= args.batch <= MAX_BATCH or args.in_flight < 1:
        parser.error(f"--batch must lie in 1..{MAX_BATCH:,} and --in-flight be 1 or more")
    try:
        traffic = from_args(args)
    except TrafficError as e:
        parser.error(str(e))
    producers = Producers(traffic)
    with contextlib.ExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "data"
        assets = ",".join(f"{a}:8" for a in asset_ids(args.assets))
        init = ["init", "--origin", "bench.local/solvency", "--assets", assets]
        if args.postgres_url:
            url = stack.enter_context(postgres_schema(args.postgres_url))
            init = ["--database-url", url, *init]
        prover_main(["--data-dir", str(data), *init])
        os.environ["SOLVENCY_MAX_SUBSCRIBERS"] = str(args.subscribers + 10)
        os.environ["SOLVENCY_MAX_ANONYMOUS_PER_ADDRESS"] = str(args.subscribers + 10)  # one host
        config = load_config(data)
        began = time.monotonic()
        pairs = load_accounts(config.url, producers)
        print(
            f"machine: {cpu_model()}, {os.cpu_count()} cores, SHA-256 of 100 bytes"
            f" {hash_microseconds():.2f} us; {args.accounts:,} accounts holding {pairs:,}"
            f" holder-asset pairs loaded in {time.monotonic() - began:.1f} s"
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        began = time.monotonic()
        log = stack.enter_context(open(args.daemon_log, "wb")) if args.daemon_log else None
        proc = start_daemon(data, port, log or subprocess.DEVNULL)
        print(f"prover up in {time.monotonic() - began:.1f} s\n")
        print(
            f"{traffic.describe()}; batches of {args.batch:,}, at most {args.in_flight}"
            " unacknowledged per producer\n" + WORK_MODEL + "\n"
        )
        key = verifier_key_for(config.origin, load_key(config.key_path).public_key())
        try:
            url = f"ws://127.0.0.1:{port}"
            asyncio.run(
                run(args, url, config.ingest_token, key, config.origin, proc.pid, producers)
            )
        finally:
            proc.terminate()
            proc.wait(30)
        print(f"\nSHA-256 of 100 bytes at the end: {hash_microseconds():.2f} us")


if __name__ == "__main__":
    main()
