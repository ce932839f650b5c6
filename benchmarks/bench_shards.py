"""Sharded prover benchmark (docs/SCALING.md, "Measurements to make"): each
role's CPU per update against the single daemon, the coordinator's CPU per
epoch, throughput with 1, 2 and 4 shards, a shard's memory and build time,
epoch close at 100,000 updates/s.

    python benchmarks/bench_shards.py [--modes cpu,coordinator,throughput,memory,close]
        [--quick] [--accounts 1000000] [--rate 25000] [--shards 2] [--frontends 1]
        [--shard-counts 1,2,4] [--offered 200000]
        [--memory-accounts 10000000] [--memory-shards 4]
        [--close-accounts 10000000] [--close-shards 4] [--close-rate 100000]
        [--seconds 20] [--warm-up 5] [--batch 5000] [--in-flight 4]
        [--database-url URL | --sqlite] [--shard-store database|sqlite|none] [--fold-every N]
        [--nats nats://127.0.0.1:4222]
        [--epoch-interval 1] [--max-interval 1] [traffic.py's options: --producers 2 ...]

Every role runs in a process of its own (``shard_roles.py``), as does the
single daemon (``solvency-prover run``, as bench_stream starts it), all
ending with this one. The sharded prover: ``--shards`` shards, ``--frontends``
front-ends, one coordinator, on the NATS server at ``--nats`` (a stream of
each deployment's own, deleted after); the coordinator and the single
daemon each on a fresh schema of ``--database-url`` (default
$SOLVENCY_BENCH_POSTGRES_URL, else the local server's ``test`` database),
or on SQLite files with ``--sqlite``. Both start from the same ledger: the
traffic model's starting holdings (the daemon loads them as bench_stream
does; each shard builds its part of them from rows, at the whole trees'
heights). The producers (``traffic.py``'s model, in this process) send to
the front-ends in turn, and are paced as bench_stream's are.

The shards save each close to a store and fold the saved deltas, as
deployed ones do (``--shard-store``): ``database``, one fresh schema of
``--database-url`` for them all; ``sqlite``, a SQLite file per shard in
the work directory; ``none``, no store (each shard serves the part it
built). By default, the daemon's kind: ``database``, or ``sqlite`` with
``--sqlite``. (On SQLite a fold holds the file's write lock while it
runs: a close whose save waits for it past the busy timeout breaks the
shard, which then restores from the store.)

A store-backed shard seeds its empty store from the part it built
(``shard_roles.seed_part``: saved as its close of epoch 0, then folded)
and restores from it before it serves, as a restarted shard does; the
start-up report gives the seed's and the restore's seconds. The
shards note each save and fold (the thread's CPU), which the ``cpu``
report gives apart: the folds in the window, and each fold's CPU per
holding folded so far times the holdings saved in the window (a fold
comes every ``--fold-every`` changed holdings of a shard, by default the
shard's ``FOLD_EVERY``: tens of seconds apart at 25,000 updates/s, so a
window holds few).

Each measurement is a window of ``--seconds`` after ``--warm-up`` seconds
at one offered rate: updates acknowledged in it, CPU of each process in it
(``/proc``: its threads and children), epochs closed, and for the sharded
prover each ``close_epoch`` the coordinator began in it (cut, every shard's
stage and close, record, append).

Modes:

- ``cpu``: the single daemon, then the sharded prover, at ``--rate``: us of
  CPU per acknowledged update of each role, their total and total/single
  (target <= 1.3); the NATS server's (if local), PostgreSQL's (if local,
  all its processes: other clients' too) and the producers' apart, and the
  ratio with each side's PostgreSQL added; with shard stores, the shards'
  saves and folds (above).
- ``coordinator``: the coordinator's CPU per epoch at ``--rate`` and a
  quarter of it (it should not depend on the rate).
- ``throughput``: ``--offered`` updates/s (above what the machine takes) to
  1, 2 and 4 shards: acknowledged/s, epoch gaps, close p50/p99, the busiest
  process and the machine's busy share, and which resource limits.
- ``memory``: ``--memory-shards`` parts of ``--memory-accounts`` accounts,
  each built in a process of its own, one after another (``shard_roles.py
  build``): seconds, resident bytes per holder-asset (VmRSS growth; and the
  ledger's numpy arrays alone). Built from rows, not recovered from
  PostgreSQL.
- ``close``: close p50/p99 at ``--close-rate`` with ``--close-shards`` shards
  of ``--close-accounts`` accounts, or the rate the machine holds.

Measurements on one deployment run in one go, lowest rate first; a window
shared by two modes (``cpu`` and ``coordinator`` at ``--rate``) is measured
once. ``--quick`` shrinks every size and window to run everything in about
a minute (a test of the benchmark, not a measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
from bench_stream import ACK_TIMEOUT, MAX_BATCH, load_accounts
from live_prover import cpu_seconds, die_with_parent, log_tail, pct
from machine import cpu_model, hash_microseconds
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from shard_roles import DECIMALS, ORIGIN, heights, write_ledger
from sqlalchemy import create_engine, text
from traffic import Producers, Traffic, TrafficError, add_arguments, asset_ids, from_args, message
from websockets.asyncio.client import connect

from prover.cli import main as prover_main
from prover.config import load_config
from prover.shards.shard import FOLD_EVERY
from prover.shards.stream import ensure_stream
from storage.store import Store

MODES = ("cpu", "coordinator", "throughput", "memory", "close")
DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOCAL = {"127.0.0.1", "localhost", "::1"}
RUNNER = Path(__file__).with_name("shard_roles.py")
START_TIMEOUT = 900.0  # s for a role to serve: 4 shards of 10M accounts build on 2 cores
STOP_TIMEOUT = 30.0
BUILD_TIMEOUT = 900.0  # s for one part of the memory mode
FIRST_EPOCH_TIMEOUT = 120.0  # s for the first epoch after traffic starts
SATURATED = 0.9  # a process or the machine at least this busy limits

# The sizes, by default and with --quick (any given option wins).
SIZES: dict[str, tuple[float, float]] = {
    "accounts": (1_000_000, 20_000),
    "rate": (25_000, 2_000),
    "offered": (200_000, 20_000),
    "memory_accounts": (10_000_000, 40_000),
    "close_accounts": (10_000_000, 20_000),
    "close_rate": (100_000, 10_000),
    "seconds": (20, 2),
    "warm_up": (5, 1),
    "batch": (5000, 100),
}


# What runs


@dataclass(frozen=True)
class Layout:
    """A deployment: the single daemon (``shards`` 0) or the sharded prover."""

    shards: int
    frontends: int
    accounts: int

    def describe(self) -> str:
        if not self.shards:
            return f"single daemon, {self.accounts:,} accounts"
        return (
            f"{self.shards} shard{'s' * (self.shards > 1)}, {self.frontends}"
            f" front-end{'s' * (self.frontends > 1)}, 1 coordinator, {self.accounts:,} accounts"
        )


@dataclass(frozen=True)
class Running:
    """A deployment up: its processes by name, where producers send, its /metrics."""

    layout: Layout
    roles: dict[str, int]  # the prover's processes: name, pid
    others: dict[str, int]  # measured apart: the NATS server, PostgreSQL
    ingest: tuple[str, ...]  # ws://.../ingest
    token: str
    http: str  # serves /metrics
    timings: Path | None  # the coordinator's close_epoch lines
    start: Start | None  # a sharded deployment's
    saves: tuple[Path, ...] = ()  # each store-backed shard's save and fold lines


@dataclass(frozen=True)
class Sample:
    mono: float
    wall: float
    cpu: dict[str, float]
    machine: tuple[int, int]  # /proc/stat: busy and total jiffies
    epoch: int


@dataclass(frozen=True)
class Window:
    """One measurement: a deployment at one offered rate."""

    layout: Layout
    offered: float
    seconds: float
    acked: int  # updates acknowledged in the window
    epochs: int  # closed in it
    cpu: dict[str, float]  # CPU seconds in it, every process measured
    roles: tuple[str, ...]  # which of them are the prover's
    machine: float  # share of every core busy
    closes: tuple[float, ...]  # s, each close_epoch begun in the window
    gaps: tuple[float, ...]  # s between the beginnings of consecutive closes
    failed: tuple[str, ...]  # close_epoch calls that failed in it: why
    refused: tuple[str, ...]
    saves: Saves | None = None  # the shards' saves and folds, with a store

    @property
    def rate(self) -> float:
        return self.acked / self.seconds

    def cores(self, name: str) -> float:
        return self.cpu[name] / self.seconds

    def us(self, names: Sequence[str]) -> float:
        """us of CPU per acknowledged update of the processes ``names``."""
        return sum(self.cpu[n] for n in names) / max(1, self.acked) * 1e6

    @property
    def ours(self) -> float:
        """Cores this benchmark's processes used: the prover's, NATS, PostgreSQL, producers."""
        return sum(self.cpu.values()) / self.seconds

    def failures(self) -> str:
        return (
            f"; {len(self.failed)} closes failed, the first: {self.failed[0]}"
            if self.failed
            else ""
        )

    def busiest(self) -> tuple[str, float]:
        name = max(self.cpu, key=self.cpu.__getitem__)
        return name, self.cores(name)


Windows = dict[tuple[Layout, float], Window]  # by deployment and offered rate


@dataclass(frozen=True)
class Saves:
    """The store-backed shards' saves and folds (shard_roles.py ``--saves``)
    done in a window, and every fold done up to its end: count, CPU seconds
    of the thread that did them, changed holdings they named."""

    saves: int
    save_cpu: float
    saved: int
    folds: int
    fold_cpu: float
    folded: int
    all_fold_cpu: float  # every fold up to the window's end
    all_folded: int

    @classmethod
    def read(cls, paths: Sequence[Path], first: float, last: float) -> Saves:
        """The lines of ``paths`` done between ``first`` and ``last`` (unix s)."""
        lines = [
            json.loads(line)
            for path in paths
            if path.exists()
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        inside = [x for x in lines if first < x["at"] <= last]
        saves = [x for x in inside if x["kind"] == "save"]
        folds = [x for x in inside if x["kind"] == "fold" and x["holdings"]]
        done = [x for x in lines if x["kind"] == "fold" and x["holdings"] and x["at"] <= last]
        return cls(
            len(saves),
            sum(x["cpu"] for x in saves),
            sum(x["holdings"] for x in saves),
            len(folds),
            sum(x["cpu"] for x in folds),
            sum(x["holdings"] for x in folds),
            sum(x["cpu"] for x in done),
            sum(x["holdings"] for x in done),
        )

    @property
    def fold_per_holding(self) -> float | None:
        """CPU seconds per changed holding folded, over every fold so far (None: none yet)."""
        return self.all_fold_cpu / self.all_folded if self.all_folded else None

    def amortized(self) -> float | None:
        """CPU seconds the window's saved holdings cost their fold, at ``fold_per_holding``."""
        per = self.fold_per_holding
        return None if per is None else per * self.saved


@dataclass
class Deadline:
    """When producers stop sending (monotonic s); set once the window is known."""

    at: float = math.inf


@dataclass
class Acks:
    """What the producers got back: (monotonic time, updates) per ack."""

    at: list[tuple[float, int]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def between(self, first: float, last: float) -> int:
        return sum(n for t, n in self.at if first < t <= last)


def acked_updates(reply: dict[str, Any]) -> int:
    """Updates an ack covers: the daemon's ``applied``, a front-end's
    ``accepted`` (replays included: these producers never send one again)."""
    return int(reply["applied"] if "applied" in reply else reply["accepted"])


# The bench's own setup


class Bench:
    """Options, a work directory, and what deployments share: the ledgers
    written for the shards, the routing key, the salt period's secret."""

    def __init__(self, args: argparse.Namespace, traffic: Traffic, work: Path) -> None:
        self.args, self.traffic, self.work = args, traffic, work
        self.assets = asset_ids(traffic.assets)
        self.key = os.urandom(32)
        self.secret = os.urandom(32)
        self.nats_host = urlsplit(args.nats.split(",")[0]).hostname or ""
        self.database = None if args.sqlite else args.database_url
        self.shard_store: str = args.shard_store
        self._ledgers: dict[int, Path] = {}
        self.count = 0

    def producers(self, accounts: int) -> Producers:
        return Producers(dataclasses.replace(self.traffic, accounts=accounts))

    def ledger(self, producers: Producers) -> Path:
        """The shards' ledger of ``producers``' starting holdings (written once per size)."""
        accounts = producers.traffic.accounts
        if accounts not in self._ledgers:
            began = time.monotonic()
            directory = self.work / f"ledger-{accounts}"
            write_ledger(directory, producers.holdings, self.key)
            print(
                f"  {accounts:,} accounts routed and written for the shards in"
                f" {time.monotonic() - began:.1f} s"
            )
            self._ledgers[accounts] = directory
        return self._ledgers[accounts]

    def directory(self, name: str) -> Path:
        self.count += 1
        path = self.work / f"{self.count}-{name}"
        path.mkdir()
        return path

    @contextlib.contextmanager
    def schema(self, name: str) -> Iterator[str | None]:
        """A fresh schema of the database (dropped after), or None: SQLite."""
        if self.database is None:
            yield None
            return
        schema = f"bench_shards_{os.getpid()}_{name}"
        admin = create_engine(self.database, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            sep = "&" if "?" in self.database else "?"
            yield f"{self.database}{sep}options=-csearch_path%3D{schema}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()

    def others(self) -> dict[str, int]:
        """The NATS server and PostgreSQL, when they run here (measured apart):
        each with every process it started, PostgreSQL's other clients'
        backends included."""
        found = {}
        if self.nats_host in LOCAL and (pid := oldest("nats-server")):
            found["NATS server"] = pid
        local_database = self.database and urlsplit(self.database).hostname in LOCAL
        if local_database and (pid := oldest("postgres")):
            found["PostgreSQL"] = pid
        return found


def oldest(name: str) -> int | None:
    """The oldest process named ``name`` (a server's parent), if any."""
    done = subprocess.run(["pgrep", "-o", "-x", name], capture_output=True, text=True)
    return int(done.stdout.split()[0]) if done.stdout.split() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready: Path


def spawn(
    name: str, argv: Sequence[str], directory: Path, env: dict[str, str] | None = None
) -> Child:
    """``argv`` (after the interpreter) as a process of its own, logging to
    ``directory/<name>.log``, ending with this one. A runner's (``RUNNER``)
    is told to write its ready file, ``directory/<name>.ready``."""
    stem = directory / name.replace(" ", "-")
    log, ready_file = stem.with_suffix(".log"), stem.with_suffix(".ready")
    if argv[0] == str(RUNNER):
        argv = [*argv, "--ready", str(ready_file)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            env=env,
        )
    return Child(name, proc, log, ready_file)


async def ready(children: Sequence[Child], timeout: float = START_TIMEOUT) -> list[dict[str, Any]]:
    """Each child's ready file, polled until every one is written; SystemExit
    if one exits first or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not all(c.ready.exists() for c in children):
        for c in children:
            if c.proc.poll() is not None:
                raise SystemExit(f"{c.name} exited ({c.proc.returncode}):\n{log_tail(c.log)}")
        if time.monotonic() > deadline:
            late = [c.name for c in children if not c.ready.exists()]
            raise SystemExit(f"not serving within {timeout:.0f} s: {', '.join(late)}")
        await asyncio.sleep(0.1)
    return [json.loads(c.ready.read_text()) for c in children]


def stop(children: Sequence[Child]) -> None:
    """SIGTERM to each, then wait; SIGKILL whoever does not end in time."""
    for c in children:
        if c.proc.poll() is None:
            c.proc.terminate()
    for c in children:
        try:
            c.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  {c.name} did not stop in {STOP_TIMEOUT:.0f} s: killed")
            c.proc.kill()
            c.proc.wait()


def answers(url: str) -> None:
    """GET ``url``: OSError unless it answers 2xx within a second."""
    with urllib.request.urlopen(url, timeout=1):
        pass


async def healthy(child: Child, http: str, timeout: float = START_TIMEOUT) -> None:
    """Poll ``http``/healthz until it answers; SystemExit if ``child`` exits first or is late."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(answers, f"{http}/healthz")
            return
        except OSError:
            pass
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{child.name} did not start:\n{log_tail(child.log)}")
        await asyncio.sleep(0.2)


# Deployments


@contextlib.asynccontextmanager
async def single(bench: Bench, layout: Layout, producers: Producers) -> AsyncIterator[Running]:
    """The daemon as bench_stream starts it, loaded with ``producers``' holdings."""
    work = bench.directory("single")
    data = work / "data"
    with bench.schema(f"single{bench.count}") as url:
        init = ["--data-dir", str(data)] + (["--database-url", url] if url else [])
        assets = ",".join(f"{a}:{DECIMALS}" for a in bench.assets)
        with contextlib.redirect_stdout(io.StringIO()):
            prover_main([*init, "init", "--origin", ORIGIN, "--assets", assets])
        config = load_config(data)
        began = time.monotonic()
        pairs = load_accounts(config.url, producers)
        print(f"  {pairs:,} holder-asset pairs stored in {time.monotonic() - began:.1f} s")
        began = time.monotonic()
        port = free_port()
        env = {
            **os.environ,
            "SOLVENCY_EPOCH_INTERVAL": str(bench.args.epoch_interval),
            "SOLVENCY_MAX_INTERVAL": str(bench.args.max_interval),
        }
        argv = ["-m", "prover.cli", "--data-dir", str(data), "--port", str(port), "run"]
        daemon = spawn("single daemon", argv, work, env)
        try:
            http = f"http://127.0.0.1:{port}"
            await healthy(daemon, http)
            print(f"  daemon up in {time.monotonic() - began:.1f} s")
            yield Running(
                layout,
                {"single daemon": daemon.proc.pid},
                bench.others(),
                (f"ws://127.0.0.1:{port}/ingest",),
                config.ingest_token,
                http,
                None,
                None,
            )
        finally:
            stop([daemon])


@contextlib.asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url.split(","), connect_timeout=2, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def sharded(bench: Bench, layout: Layout, producers: Producers) -> AsyncIterator[Running]:
    """Shards built from ``producers``' holdings, front-ends, then the coordinator."""
    bits = layout.shards.bit_length() - 1
    if layout.shards != 1 << bits or layout.frontends < 1:
        raise SystemExit(f"shards must be a power of 2, front-ends 1 or more: {layout}")
    ledger = bench.ledger(producers)
    whole = heights(ledger, bits, bench.assets)
    tag = uuid.uuid4().hex[:10]
    stream, prefix = f"BENCH_SHARDS_{tag}", f"benchshards.{tag}.ledger"
    work = bench.directory(f"sharded-{layout.shards}")
    token = uuid.uuid4().hex
    common = [str(RUNNER), "--nats", bench.args.nats, "--stream", stream, "--prefix", prefix]
    common += ["--bits", str(bits), "--routing-key", bench.key.hex(), "--token", token]
    common += ["--assets", ",".join(bench.assets), "--data-dir", str(work)]
    async with nats_client(bench.args.nats) as nc:
        await ensure_stream(nc.jetstream(), stream, prefix, 1, 120.0)
    children: list[Child] = []
    saves = tuple(work / f"saves-{part}.jsonl" for part in range(layout.shards))
    began = time.monotonic()
    try:
        with (
            bench.schema(f"coordinator{bench.count}") as url,
            shard_stores(bench, work, layout.shards) as stores,
        ):
            try:
                shards = []
                for part in range(layout.shards):
                    argv = [*common, "shard", "--part", str(part), "--ledger", str(ledger)]
                    argv += ["--period-secret", bench.secret.hex()]
                    argv += ["--heights", ",".join(f"{a}:{h}" for a, h in whole.items())]
                    if stores:
                        argv += ["--store", stores[part], "--saves", str(saves[part])]
                        argv += ["--fold-every", str(bench.args.fold_every or FOLD_EVERY)]
                    shards.append(spawn(f"shard {part}", argv, work))
                frontends = [
                    spawn(f"front-end {i}", [*common, "frontend"], work)
                    for i in range(layout.frontends)
                ]
                children += shards + frontends
                facts = await ready(shards + frontends)
                timings = work / "timings.jsonl"
                argv = [*common, "coordinator", "--timings", str(timings)]
                argv += ["--epoch-interval", str(bench.args.epoch_interval)]
                argv += ["--max-interval", str(bench.args.max_interval)]
                argv += ["--database-url", url] if url else []
                coordinator = spawn("coordinator", argv, work)
                children.append(coordinator)
                (up,) = await ready([coordinator])
                start = Start(time.monotonic() - began, whole, tuple(facts[: layout.shards]))
                start.report()
                ports = [f["port"] for f in facts[layout.shards :]]
                yield Running(
                    layout,
                    {c.name: c.proc.pid for c in children},
                    bench.others(),
                    tuple(f"ws://127.0.0.1:{p}/ingest" for p in ports),
                    token,
                    f"http://127.0.0.1:{up['port']}",
                    timings,
                    start,
                    saves if stores else (),
                )
            finally:
                stop(children[::-1])  # before the schema is dropped
    finally:
        async with nats_client(bench.args.nats) as nc:
            with contextlib.suppress(NotFoundError):
                await nc.jetstream().delete_stream(stream)


@contextlib.contextmanager
def shard_stores(bench: Bench, work: Path, shards: int) -> Iterator[list[str]]:
    """Each shard's store URL (``--shard-store``; none: an empty list): a
    SQLite file each under ``work``, or one fresh schema of the database
    for them all, migrated here once (not by the shards at once)."""
    if bench.shard_store == "none":
        yield []
    elif bench.shard_store == "sqlite":
        yield [f"sqlite:///{work / f'shard-{part}.sqlite3'}" for part in range(shards)]
    else:
        with bench.schema(f"shards{bench.count}") as url:
            assert url is not None  # parse: not with --sqlite
            Store.open(url).close()
            yield [url] * shards


@dataclass(frozen=True)
class Start:
    """How a sharded deployment started: seconds until every role served,
    the whole trees' heights, each shard's ready facts (shard_roles.py)."""

    seconds: float
    heights: dict[str, int]
    shards: tuple[dict[str, Any], ...]

    def report(self) -> None:
        print(f"  up in {self.seconds:.1f} s; trees of heights {self.heights_text}")
        for i, f in enumerate(self.shards):
            print(
                f"    shard {i}: {f['users']:,} users, {f['pairs']:,} holder-assets built in"
                f" {f['build_s']:.1f} s ({f['build_cpu_s']:.1f} s CPU), resident"
                f" {f['rss_after'] / 2**20:,.0f} MB ({self.grown(f):.0f} B per holder-asset"
                " grown by the build)"
            )
            if "seed_s" in f:
                print(
                    f"      its store seeded with {f['seeded']:,} holdings in {f['seed_s']:.1f} s"
                    f" ({f['seed_cpu_s']:.1f} s CPU here); restored from it in"
                    f" {f['restore_s']:.1f} s, serving {f['serving_s']:.1f} s after the seed,"
                    f" resident {f['rss_served'] / 2**20:,.0f} MB"
                )

    @property
    def heights_text(self) -> str:
        return ", ".join(f"{a} {h}" for a, h in self.heights.items())

    @staticmethod
    def grown(facts: dict[str, Any]) -> float:
        """Resident bytes per holder-asset the build added."""
        grown = int(facts["rss_after"]) - int(facts["rss_before"])
        return grown / max(1, int(facts["pairs"]))

    def summary(self) -> str:
        build = max(f["build_s"] for f in self.shards)
        rss = max(f["rss_after"] for f in self.shards)
        grown = max(map(self.grown, self.shards))
        return (
            f"start-up {self.seconds:.1f} s to every role serving (the slowest shard's build"
            f" {build:.1f} s, all built at once); the largest shard resident {rss / 2**20:,.0f} MB,"
            f" at most {grown:.0f} B per holder-asset grown by its build (target <= 128 B)"
        )


# Producers and windows


async def produce(
    url: str,
    token: str,
    producers: Producers,
    p: int,
    source: str,
    rate: float,
    args: argparse.Namespace,
    until: Deadline,
    acks: Acks,
) -> None:
    """Producer ``p`` on a connection of its own: batches of ``args.batch``
    paced to ``rate``/s (batch ``k`` not before ``k * batch / rate`` s after the
    start), at most ``args.in_flight`` unacknowledged, none sent after
    ``until``; then every ack waited for."""
    window = asyncio.Semaphore(args.in_flight)
    ids = asset_ids(producers.traffic.assets)
    async with connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    ) as ws:

        async def read_acks() -> None:
            async for frame in ws:
                reply = json.loads(frame)
                if reply["type"] == "ack":
                    acks.at.append((time.monotonic(), acked_updates(reply)))
                else:
                    acks.refused.append(f"{reply.get('code')}: {reply.get('message')}")
                window.release()

        reader = asyncio.create_task(read_acks())

        async def take_slot() -> None:
            slot = asyncio.ensure_future(window.acquire())
            await asyncio.wait({slot, reader}, timeout=ACK_TIMEOUT, return_when="FIRST_COMPLETED")
            if not slot.done():
                slot.cancel()
                if reader.done():
                    reader.result()  # the connection's error, if any
                raise SystemExit(f"{source}: no ack within {ACK_TIMEOUT} s, or connection lost")

        began, seq, k = time.monotonic(), 0, 0
        while (due := began + k * args.batch / rate) < until.at and time.monotonic() < until.at:
            await take_slot()
            batch = producers.batch(p, seq + 1, args.batch)
            text = message(source, seq + 1, k, batch, ids)
            seq += args.batch
            await asyncio.sleep(due - time.monotonic())
            await ws.send(text)
            k += 1
        for _ in range(args.in_flight):
            await take_slot()
        reader.cancel()


def machine_jiffies() -> tuple[int, int]:
    """Busy and total jiffies of every core so far (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # up to steal; guest time is counted in user already
    return total - idle, total


def metric(http: str, name: str) -> float:
    with urllib.request.urlopen(f"{http}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


def sample(running: Running) -> Sample:
    cpu = {name: cpu_seconds(pid) for name, pid in {**running.roles, **running.others}.items()}
    cpu["producers (this process)"] = time.process_time()
    epoch = metric(running.http, "solvency_epoch")
    return Sample(time.monotonic(), time.time(), cpu, machine_jiffies(), int(epoch))


def closes(
    path: Path | None, first: float, last: float
) -> tuple[list[float], list[float], list[str]]:
    """The coordinator's close_epoch calls begun between ``first`` and
    ``last`` (unix s): seconds each, gaps since the one before, failures."""
    if path is None or not path.exists():
        return [], [], []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    done = sorted((x["began"], x["seconds"]) for x in lines if "epoch" in x)
    took = [s for b, s in done if first <= b <= last]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(done) if first <= b <= last]
    failed = [x["failed"] for x in lines if "failed" in x and first <= x["began"] <= last]
    return took, gaps, failed


async def measure(
    bench: Bench, running: Running, producers: Producers, rate: float, name: str
) -> Window:
    """Offer ``rate`` until an epoch closes (a coordinator that found nothing
    to close waits up to its ``max_interval`` before it looks again), then
    for the warm-up and the window; measure the window."""
    args = bench.args
    acks, n, until = Acks(), producers.traffic.producers, Deadline()
    epoch = await asyncio.to_thread(metric, running.http, "solvency_epoch")
    tasks = [
        asyncio.create_task(
            produce(
                running.ingest[p % len(running.ingest)],
                running.token,
                producers,
                p,
                f"{name}-{p}",
                rate / n,
                args,
                until,
                acks,
            )
        )
        for p in range(n)
    ]
    everyone = asyncio.gather(*tasks)

    async def wait(seconds: float) -> None:
        """Sleep, unless a producer fails meanwhile (its error is raised)."""
        end = time.monotonic() + seconds
        await asyncio.wait({everyone}, timeout=max(0.0, seconds))
        if everyone.done() and everyone.exception() is not None:
            everyone.result()
        await asyncio.sleep(max(0.0, end - time.monotonic()))

    try:
        deadline = time.monotonic() + FIRST_EPOCH_TIMEOUT
        while await asyncio.to_thread(metric, running.http, "solvency_epoch") <= epoch:
            if time.monotonic() > deadline:
                raise SystemExit(f"no epoch closed in {FIRST_EPOCH_TIMEOUT:.0f} s")
            await wait(0.2)
        began = time.monotonic()
        until.at = began + args.warm_up + args.seconds
        await wait(args.warm_up)
        first = await asyncio.to_thread(sample, running)
        await wait(until.at - time.monotonic())
        last = await asyncio.to_thread(sample, running)
        await everyone
    finally:
        everyone.cancel()
    seconds = last.mono - first.mono
    took, gaps, failed = closes(running.timings, first.wall, last.wall)
    saves = Saves.read(running.saves, first.wall, last.wall) if running.saves else None
    busy, total = (b - a for a, b in zip(first.machine, last.machine, strict=True))
    return Window(
        running.layout,
        rate,
        seconds,
        acks.between(first.mono, last.mono),
        last.epoch - first.epoch,
        {k: last.cpu[k] - first.cpu[k] for k in first.cpu},
        tuple(running.roles),
        busy / max(1, total),
        tuple(took),
        tuple(gaps),
        tuple(failed),
        tuple(acks.refused),
        saves,
    )


# The plan: which deployments, which rates


def plan(args: argparse.Namespace) -> dict[Layout, list[float]]:
    """Each deployment the chosen modes need, with the rates to offer it, lowest first."""
    wanted: dict[Layout, set[float]] = {}
    sharded = Layout(args.shards, args.frontends, args.accounts)
    if "cpu" in args.modes:
        wanted.setdefault(Layout(0, 0, args.accounts), set()).add(args.rate)
        wanted.setdefault(sharded, set()).add(args.rate)
    if "coordinator" in args.modes:
        wanted.setdefault(sharded, set()).update({args.rate, args.rate / 4})
    if "throughput" in args.modes:
        for shards in args.shard_counts:
            wanted.setdefault(Layout(shards, args.frontends, args.accounts), set()).add(
                args.offered
            )
    if "close" in args.modes:
        layout = Layout(args.close_shards, args.frontends, args.close_accounts)
        wanted.setdefault(layout, set()).add(args.close_rate)
    return {layout: sorted(rates) for layout, rates in wanted.items()}


async def run_plan(bench: Bench) -> tuple[Windows, dict[Layout, Start]]:
    """Every window of the plan, and how each sharded deployment started."""
    windows: Windows = {}
    starts: dict[Layout, Start] = {}
    for layout, rates in plan(bench.args).items():
        print(f"\n{layout.describe()}: offering {', '.join(f'{r:,.0f}' for r in rates)} updates/s")
        producers = bench.producers(layout.accounts)
        deploy = single if not layout.shards else sharded
        async with deploy(bench, layout, producers) as running:
            if running.start is not None:
                starts[layout] = running.start
            for i, rate in enumerate(rates):
                window = await measure(bench, running, producers, rate, f"w{i}-{int(rate)}")
                windows[layout, rate] = window
                print(
                    f"  {rate:,.0f}/s offered: {window.rate:,.0f}/s acknowledged,"
                    f" {window.epochs} epochs; measured processes {window.ours:.2f} cores,"
                    f" machine {window.machine:.0%} busy{window.failures()}"
                )
                if window.refused:
                    print(f"  {len(window.refused)} refused, the first: {window.refused[0]}")
    return windows, starts


# Reports


def report_cpu(args: argparse.Namespace, windows: Windows) -> None:
    one = windows[Layout(0, 0, args.accounts), args.rate]
    many = windows[Layout(args.shards, args.frontends, args.accounts), args.rate]
    print(
        f"\n## CPU per acknowledged update at {args.rate:,.0f} updates/s offered"
        f" ({args.accounts:,} accounts; windows of {one.seconds:.1f} and {many.seconds:.1f} s)\n"
    )
    print(f"{'process':<28}{'acked/s':>10}{'cores':>8}{'us/update':>11}")

    def row(label: str, w: Window, names: Sequence[str]) -> None:
        cores = sum(w.cpu[n] for n in names) / w.seconds
        print(f"{label:<28}{w.rate:>10,.0f}{cores:>8.2f}{w.us(names):>11.1f}")

    row("single daemon", one, one.roles)
    groups = {
        "front-end": [n for n in many.roles if n.startswith("front-end")],
        "shard": [n for n in many.roles if n.startswith("shard")],
        "coordinator": ["coordinator"],
    }
    for label, names in groups.items():
        for n in names if len(names) > 1 else ():
            row(f"  {n}", many, [n])
        row(f"{label}{'s' * (len(names) > 1)} ({len(names)})", many, names)
        if label == "shard" and many.saves is not None:
            report_saves(many, many.saves)
    row("sharded total", many, many.roles)
    ratio = many.us(many.roles) / one.us(one.roles)
    print(f"{'total / single':<28}{'':>18}{ratio:>11.2f}   (target <= 1.3)")
    if many.saves is not None and (amortized := many.saves.amortized()) is not None:
        total = sum(many.cpu[n] for n in many.roles) - many.saves.fold_cpu + amortized
        us = total / max(1, many.acked) * 1e6
        print(
            f"{'  folds amortized':<28}{'':>18}{us / one.us(one.roles):>11.2f}   (total"
            f" {us:.1f} us: the window's folds replaced by its saved holdings' share)"
        )
    if all("PostgreSQL" in w.cpu for w in (one, many)):
        with_db = many.us([*many.roles, "PostgreSQL"]) / one.us([*one.roles, "PostgreSQL"])
        print(f"{'  with PostgreSQL':<28}{'':>18}{with_db:>11.2f}   (each side's PostgreSQL added)")
    print("apart (not in the totals):")
    for name in ("NATS server", "PostgreSQL", "producers (this process)"):  # see Bench.others
        sides = [f"{w.us([name]):.1f}" if name in w.cpu else "-" for w in (one, many)]
        print(f"  {name:<26}single {sides[0]:>6}  sharded {sides[1]:>6} us/update")
    if many.saves is None:
        print(
            "These shards run without a store: the save of each close (storage/shards.py, one"
            " delta row, then a fold in a thread of the shard; a few us of its CPU per changed"
            " holding) is not in their figure, where the daemon's journal and fold are in its."
        )
    else:
        stores = {"sqlite": "a SQLite file each", "database": "PostgreSQL"}[args.shard_store]
        daemon = "SQLite" if args.sqlite else "PostgreSQL"
        print(
            f"The shards save each close to {stores} and fold in a thread of theirs; the"
            f" single daemon journals to {daemon}. PostgreSQL's CPU is apart, SQLite's in"
            " the process using it."
        )


def report_saves(w: Window, saves: Saves) -> None:
    """The shards' saves and folds in ``w``: us per acknowledged update, share of the shards'."""
    shards = sum(w.cpu[n] for n in w.roles if n.startswith("shard"))

    def line(label: str, cpu: float, what: str) -> None:
        us = cpu / max(1, w.acked) * 1e6
        print(f"{label:<28}{'':>10}{cpu / w.seconds:>8.2f}{us:>11.1f}   {cpu / shards:.0%}; {what}")

    per_save = saves.saved / max(1, saves.saves)
    line(
        "  of which saves",
        saves.save_cpu,
        f"{saves.saves} saves, {per_save:,.0f} changed holdings each",
    )
    folded = f"{saves.folded:,} holdings" if saves.folds else "none in the window"
    line("  of which folds", saves.fold_cpu, f"{saves.folds} folds, {folded}")
    if (amortized := saves.amortized()) is not None:
        per = saves.fold_per_holding or 0.0
        line(
            "  folds amortized",
            amortized,
            f"{per * 1e6:.2f} us per holding folded ({saves.all_folded:,} so far)"
            f" x {saves.saved:,} saved in the window",
        )


def report_coordinator(args: argparse.Namespace, windows: Windows) -> None:
    layout = Layout(args.shards, args.frontends, args.accounts)
    print(f"\n## Coordinator CPU per epoch ({layout.describe()})\n")
    header = f"{'offered/s':>10}{'acked/s':>10}{'epochs':>8}{'cores':>8}{'ms/epoch':>10}"
    print(f"{header}{'close p50':>11}")
    per = []
    for rate in (args.rate / 4, args.rate):
        w = windows[layout, rate]
        ms = w.cpu["coordinator"] / max(1, w.epochs) * 1000
        per.append(ms)
        print(
            f"{rate:>10,.0f}{w.rate:>10,.0f}{w.epochs:>8}{w.cores('coordinator'):>8.3f}{ms:>10.1f}"
            f"{pct(w.closes, 50) * 1000:>9.0f} ms"
        )
    print(f"ms/epoch at the higher rate / the lower: {per[1] / per[0]:.2f} (independent: ~1)")


def limit(args: argparse.Namespace, w: Window) -> str:
    """Which resource limited the window."""
    name, cores = w.busiest()
    if w.rate >= 0.98 * w.offered:
        return "none: the offered rate was held"
    if cores >= SATURATED:
        return f"{name}: a whole core (one process, one GIL)"
    cores_busy = w.machine * (os.cpu_count() or 1)
    if w.machine >= SATURATED and w.ours >= 0.8 * cores_busy:
        return f"the machine's {os.cpu_count()} cores ({w.machine:.0%} busy)"
    if w.machine >= SATURATED:
        return (
            f"the machine's cores, {w.machine:.0%} busy, but only {w.ours:.2f} of its"
            f" {cores_busy:.2f} busy cores were this benchmark's: other work ran meanwhile"
        )
    return (
        f"no core saturated ({w.machine:.0%} busy): the producers' window"
        f" ({args.in_flight} x {args.batch:,} per producer) over the acks' latency"
    )


def report_throughput(args: argparse.Namespace, windows: Windows) -> None:
    print(
        f"\n## Throughput at {args.offered:,.0f} updates/s offered ({args.accounts:,} accounts,"
        f" {args.frontends} front-end{'s' * (args.frontends > 1)}, {os.cpu_count()} cores)\n"
    )
    header = ["shards", "acked/s", "epochs", "gap p99", "close p50", "p99", "machine", "busiest"]
    print(
        f"{header[0]:>6}{header[1]:>10}{header[2]:>8}{header[3]:>9}{header[4]:>11}"
        f"{header[5]:>7}{header[6]:>9}  {header[7]}"
    )
    for shards in args.shard_counts:
        w = windows[Layout(shards, args.frontends, args.accounts), args.offered]
        name, cores = w.busiest()
        print(
            f"{shards:>6}{w.rate:>10,.0f}{w.epochs:>8}{pct(w.gaps, 99):>8.2f}s"
            f"{pct(w.closes, 50) * 1000:>8.0f} ms{pct(w.closes, 99) * 1000:>7.0f}"
            f"{w.machine:>9.0%}  {name} {cores:.2f} cores"
        )
        print(f"{'':>6}limited by {limit(args, w)}{w.failures()}")


def report_close(
    args: argparse.Namespace,
    windows: Windows,
    starts: dict[Layout, Start],
) -> None:
    layout = Layout(args.close_shards, args.frontends, args.close_accounts)
    w = windows[layout, args.close_rate]
    print(f"\n## Epoch close at {args.close_rate:,.0f} updates/s ({layout.describe()})\n")
    print(f"{starts[layout].summary()}; built from rows, not recovered from PostgreSQL")
    longest = max(w.closes, default=math.nan) * 1000
    print(
        f"acknowledged {w.rate:,.0f}/s; {len(w.closes)} closes: p50 {pct(w.closes, 50) * 1000:.0f}"
        f" ms, p99 {pct(w.closes, 99) * 1000:.0f} ms, max {longest:.0f} ms; gaps between"
        f" closes p99 {pct(w.gaps, 99):.2f} s, max {max(w.gaps, default=math.nan):.2f} s"
        f"{w.failures()}"
    )
    if w.rate < 0.98 * args.close_rate:
        print(f"not held: the machine holds {w.rate:,.0f}/s of it; limited by {limit(args, w)}")
    busiest = sorted(w.cpu, key=w.cpu.__getitem__, reverse=True)[:4]
    print(
        "cores: "
        + ", ".join(f"{n} {w.cores(n):.2f}" for n in busiest)
        + f"; all measured {w.ours:.2f}; machine {w.machine:.0%} busy"
    )


def memory_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


async def report_memory(bench: Bench) -> None:
    args = bench.args
    accounts, parts = args.memory_accounts, args.memory_shards
    bits = parts.bit_length() - 1
    if parts != 1 << bits:
        raise SystemExit("--memory-shards must be a power of 2")
    assets = len(bench.assets)
    print(f"\n## A shard's part of {accounts:,} accounts x {assets} assets over {parts} shards\n")
    producers = bench.producers(accounts)
    ledger = bench.ledger(producers)
    whole = heights(ledger, bits, bench.assets)
    del producers
    print(
        f"trees of heights {', '.join(f'{a} {h}' for a, h in whole.items())}; each part built in"
        f" a process of its own, one after another ({memory_available() / 2**30:.1f} GB available)"
    )
    common = [str(RUNNER), "build", "--ledger", str(ledger), "--bits", str(bits)]
    common += ["--routing-key", bench.key.hex(), "--period-secret", bench.secret.hex()]
    common += ["--assets", ",".join(bench.assets)]
    common += ["--heights", ",".join(f"{a}:{h}" for a, h in whole.items())]
    print(
        f"{'part':>4}{'users':>12}{'holder-assets':>15}{'build s':>9}{'CPU s':>7}"
        f"{'RSS grown':>11}{'B/pair':>8}{'arrays':>10}{'B/pair':>8}"
    )
    worst, kinds = 0.0, dict.fromkeys(("trees", "slot_orders", "holder_slots", "arrays"), 0)
    pairs_all = slots_all = 0
    for part in range(parts):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, *common, "--part", str(part)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
        if done.returncode:
            raise SystemExit(f"part {part} failed:\n{done.stderr[-2000:]}")
        f = json.loads(done.stdout)
        grown, pairs = f["rss_after"] - f["rss_before"], max(1, f["pairs"])
        worst = max(worst, grown / pairs)
        pairs_all, slots_all = pairs_all + pairs, slots_all + f["slots"]
        for kind in kinds:
            kinds[kind] += f[kind]
        print(
            f"{part:>4}{f['users']:>12,}{f['pairs']:>15,}{f['build_s']:>9.1f}{f['build_cpu_s']:>7.1f}"
            f"{grown / 2**20:>9,.0f} MB{grown / pairs:>8.0f}{f['arrays'] / 2**20:>8,.0f} MB"
            f"{f['arrays'] / pairs:>8.0f}"
        )
    other = kinds["arrays"] - kinds["trees"] - kinds["slot_orders"] - kinds["holder_slots"]
    print(
        f"arrays per holder-asset: trees {kinds['trees'] / pairs_all:.0f} B, slot orders"
        f" {kinds['slot_orders'] / pairs_all:.0f} B, holders' slots"
        f" {kinds['holder_slots'] / pairs_all:.0f} B, the rest (commitments, users' parts)"
        f" {other / pairs_all:.0f} B; {slots_all / pairs_all:.2f} slots per holder-asset"
    )
    print(
        f"resident bytes per holder-asset, the largest of {parts}: {worst:.0f} B (target <= 128 B)."
        " Built from rows in process (Ledger.build of the part's users); a restart restores"
        " from PostgreSQL instead (Ledger.restore), not measured here."
    )


# Main


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Traffic]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help=",".join(MODES))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a test of the benchmark")
    add_arguments(parser)  # --accounts among them
    parser.set_defaults(accounts=None)
    parser.add_argument("--rate", type=float, help="cpu, coordinator: updates/s offered")
    parser.add_argument("--shards", type=int, default=2, help="cpu, coordinator")
    parser.add_argument("--frontends", type=int, default=1)
    parser.add_argument("--shard-counts", default="1,2,4", help="throughput")
    parser.add_argument("--offered", type=float, help="throughput: updates/s offered")
    parser.add_argument("--memory-accounts", type=int)
    parser.add_argument("--memory-shards", type=int, default=4)
    parser.add_argument("--close-accounts", type=int)
    parser.add_argument("--close-shards", type=int, default=4)
    parser.add_argument("--close-rate", type=float)
    parser.add_argument("--seconds", type=float, help="each measured window")
    parser.add_argument("--warm-up", type=float, help="before each window, at its rate")
    parser.add_argument("--batch", type=int, help="updates per message")
    parser.add_argument("--in-flight", type=int, default=4, help="unacked batches per producer")
    parser.add_argument("--epoch-interval", type=float, default=1.0)
    parser.add_argument(
        "--max-interval",
        type=float,
        help="epochs with nothing waiting (default: --epoch-interval; the prover's is 10 s)",
    )
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SOLVENCY_BENCH_POSTGRES_URL", DEFAULT_DATABASE),
        help="PostgreSQL: a fresh schema per deployment",
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite files instead")
    parser.add_argument(
        "--shard-store",
        choices=("database", "sqlite", "none"),
        help="where shards save: a schema of --database-url, a SQLite file each, or nowhere"
        " (default: database, or sqlite with --sqlite)",
    )
    parser.add_argument(
        "--fold-every",
        type=int,
        help=f"changed holdings a shard saves before a fold (default: the shard's, {FOLD_EVERY:,})",
    )
    args = parser.parse_args(argv)
    for name, (full, quick) in SIZES.items():
        if getattr(args, name) is None:
            kind = int if name.endswith("accounts") or name == "batch" else float
            setattr(args, name, kind(quick if args.quick else full))
    if args.max_interval is None:
        args.max_interval = args.epoch_interval
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.shard_counts = [int(s) for s in args.shard_counts.split(",")]
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"unknown modes {', '.join(sorted(unknown))}: choose from {', '.join(MODES)}")
    if args.shard_store is None:
        args.shard_store = "sqlite" if args.sqlite else "database"
    if args.shard_store == "database" and args.sqlite:
        parser.error("--shard-store database is --database-url's: not with --sqlite")
    if not 1 <= args.batch <= MAX_BATCH or args.in_flight < 1:
        parser.error(f"--batch must lie in 1..{MAX_BATCH:,} and --in-flight be 1 or more")
    try:
        traffic = from_args(args)
    except TrafficError as e:
        parser.error(str(e))
    return args, traffic


async def versions(bench: Bench) -> str:
    parts = [f"Python {platform.python_version()}"]
    with contextlib.suppress(Exception):
        async with nats_client(bench.args.nats) as nc:
            parts.append(str(nc.connected_server_version).strip("<>"))
    if bench.database:
        with contextlib.suppress(Exception):
            engine = create_engine(bench.database)
            with engine.connect() as conn:
                parts.append(f"PostgreSQL {conn.execute(text('SHOW server_version')).scalar()}")
            engine.dispose()
    else:
        parts.append("SQLite")
    return ", ".join(parts)


async def run(args: argparse.Namespace, traffic: Traffic, work: Path) -> None:
    bench = Bench(args, traffic, work)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, SHA-256 of 100 bytes"
        f" {hash_microseconds():.2f} us, {memory_available() / 2**30:.1f} GB available;"
        f" {await versions(bench)}"
    )
    print(
        f"{traffic.describe()}; batches of {args.batch:,}, at most {args.in_flight}"
        f" unacknowledged per producer; producers send to the front-ends in turn"
    )
    print(f"windows of {args.seconds:g} s after {args.warm_up:g} s at the same rate")
    windows, starts = await run_plan(bench)
    if "cpu" in args.modes:
        report_cpu(args, windows)
    if "coordinator" in args.modes:
        report_coordinator(args, windows)
    if "throughput" in args.modes:
        report_throughput(args, windows)
    if "close" in args.modes:
        report_close(args, windows, starts)
    if "memory" in args.modes:
        await report_memory(bench)
    print(f"\nSHA-256 of 100 bytes at the end: {hash_microseconds():.2f} us")


def main() -> None:
    args, traffic = parse()
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as work:
        asyncio.run(run(args, traffic, Path(work)))


if __name__ == "__main__":
    main()
