"""A prover daemon for the fan-out benchmarks (bench_subscribers.py,
bench_relays.py), driven through its interfaces only: ``solvency-prover
init`` and ``import``, ``run`` as a process of its own on SQLite, ``/ingest``,
``/roots`` and ``/metrics``.

- The ledger: ``accounts`` accounts ``u0, u1, ...``, each holding
  ``holdings`` of the ``assets`` assets ``A000, A001, ...`` drawn at random
  (``seed``), imported before the daemon starts.
- The traffic (``produce``): ``rate`` balance updates a second, in 4
  batches a second, each setting a held balance to a new amount (no leaf
  is added or removed: no tree grows); and every asset's reserves from one
  unattested source, at once and every ``RESERVE_EVERY`` s, well above the
  liabilities, so every asset is solvent from the first epochs on.
- Publication (``Monitor``): the instant the prover hands an epoch to its
  subscribers, its /metrics ``solvency_last_publish_time`` with
  ``solvency_published_epoch``, set as ``Fanout.publish`` starts, before
  the first subscriber's frame is written. The monitor follows ``/roots``
  (one subscriber more) and scrapes /metrics as each frame arrives, with
  the CPU time of the processes it is told to watch: so each epoch gets its
  publication time, its close time and a CPU reading taken at the same
  point of its cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stamped_subscribers import MSGPACK
from websockets.asyncio.client import connect

__all__ = [
    "Monitor",
    "Prover",
    "Scrape",
    "add_ledger_arguments",
    "asset_ids",
    "cpu_seconds",
    "die_with_parent",
    "pct",
    "produce",
    "prover_running",
    "raise_nofile",
]

RESERVE_EVERY = 60.0  # s between reserve updates (max_reserve_age is 300 s)
RESERVES = 10**20  # each asset's reserves: far above its liabilities
BATCHES_PER_SECOND = 4
PR_SET_PDEATHSIG = 1  # prctl(2)
START_TIMEOUT = 300.0  # s for the daemon to answer /healthz


def asset_ids(count: int) -> list[str]:
    """A000, A001, ... (more digits past 1,000 assets)."""
    width = max(3, len(str(count - 1)))
    return [f"A{i:0{width}d}" for i in range(count)]


def die_with_parent() -> None:
    """In a child before its exec: SIGTERM when the benchmark dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def raise_nofile(wanted: int) -> None:
    """Raise RLIMIT_NOFILE (soft and hard: as root) to at least ``wanted``, for
    this process and every process it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted and hard >= wanted:
        return
    new_hard = hard if hard == resource.RLIM_INFINITY else max(hard, wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), new_hard))
    except (ValueError, OSError) as exc:
        raise SystemExit(f"cannot raise RLIMIT_NOFILE to {wanted} (hard {hard}): {exc}") from None


def cpu_seconds(pid: int) -> float:
    """CPU time so far of process ``pid`` and its descendants, to the nanosecond:
    the sum of its threads' ``schedstat`` run times (a thread that ended is
    no longer counted: the daemon's threads live as long as it does)."""
    total = 0.0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return float("nan")
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            total += int((task / "schedstat").read_text().split()[0]) / 1e9
        with contextlib.suppress(OSError):
            children = (task / "children").read_text().split()
            total += sum(c for c in map(cpu_seconds, map(int, children)) if c == c)
    return total


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile, interpolated between samples; nan when none."""
    if not len(values):
        return float("nan")
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


@dataclass(frozen=True)
class Prover:
    """A running daemon: where it answers, what verifies it, its process."""

    url: str  # ws://host:port
    http: str  # http://host:port
    key: str  # verifier key
    token: str  # ingest token
    pid: int
    assets: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]  # (user, asset) held, as imported
    log: Path


def write_ledger(
    path: Path, accounts: int, assets: Sequence[str], holdings: int, seed: int
) -> list[tuple[str, str]]:
    """A balance file (CSV) of ``accounts`` accounts holding ``holdings`` random
    assets each; return the (user, asset) pairs."""
    rng = random.Random(seed)
    pairs = []
    with open(path, "w") as f:
        f.write("user,asset,amount\n")
        for u in range(accounts):
            for asset in rng.sample(assets, min(holdings, len(assets))):
                pairs.append((f"u{u}", asset))
                f.write(f"u{u},{asset},{rng.randrange(1, 10**12)}\n")
    return pairs


def _cli(data: Path, *argv: str) -> str:
    command = [sys.executable, "-m", "prover.cli", "--data-dir", str(data), *argv]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"solvency-prover {argv[0]} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _healthy(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http}/healthz", timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def prover_running(
    work: Path,
    *,
    assets: int,
    accounts: int,
    holdings: int,
    seed: int,
    host: str,
    port: int,
    settings: Mapping[str, str | int],
) -> Iterator[Prover]:
    """Init a data directory under ``work``, import the ledger, run the daemon
    on ``host:port`` with ``settings`` (config keys, as SOLVENCY_<KEY>) until
    the body ends. Its log goes to ``work/prover.log``."""
    data, ids = work / "data", asset_ids(assets)
    out = _cli(
        data,
        "init",
        "--origin",
        "bench.local/solvency",
        "--assets",
        ",".join(f"{a}:8" for a in ids),
    )
    lines = out.splitlines()
    key = next(lines[i + 1].strip() for i, line in enumerate(lines) if "verifier key" in line)
    config = tomllib.loads((data / "config.toml").read_text())
    pairs = write_ledger(work / "ledger.csv", accounts, ids, holdings, seed)
    _cli(data, "import", str(work / "ledger.csv"))
    env = dict(os.environ)
    env.update({f"SOLVENCY_{k.upper()}": str(v) for k, v in settings.items()})
    log_path = work / "prover.log"
    with open(log_path, "wb") as log:
        argv = [sys.executable, "-m", "prover.cli", "--data-dir", str(data)]
        argv += ["--host", host, "--port", str(port), "run"]
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=log, env=env, preexec_fn=die_with_parent
        )
        http = f"http://{host}:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _healthy(http):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise SystemExit(f"the prover did not start; its log ends:\n{tail}")
                time.sleep(0.2)
            yield Prover(
                f"ws://{host}:{port}",
                http,
                key,
                config["ingest_token"],
                proc.pid,
                tuple(ids),
                tuple(pairs),
                log_path,
            )
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Produced:
    """What the producer got back."""

    acked: int = 0
    refused: list[str] = field(default_factory=list)


def reserves_message(assets: Sequence[str], seq: int) -> str:
    """Every asset's reserves from the source ``bench-reserves``, seqs after ``seq``."""
    ms = int(time.time() * 1000)
    updates = [
        {"seq": seq + 1 + i, "asset": a, "amount": str(RESERVES), "as_of_ms": ms}
        for i, a in enumerate(assets)
    ]
    message = {"type": "reserves", "id": f"r{seq}", "source": "bench-reserves", "updates": updates}
    return json.dumps(message)


def balances_message(
    batch: int, seq: int, pairs: Sequence[tuple[str, str]], amounts: Sequence[int]
) -> str:
    """Batch ``batch`` of the source ``bench``: ``pairs`` set to ``amounts``, seqs after ``seq``."""
    rows = ",".join(
        f'{{"seq":{seq + 1 + i},"user":"{u}","asset":"{a}","amount":{m}}}'
        for i, ((u, a), m) in enumerate(zip(pairs, amounts, strict=True))
    )
    return f'{{"type":"balances","id":{batch},"source":"bench","updates":[{rows}]}}'


async def produce(prover: Prover, rate: float, out: Produced, seed: int = 1) -> None:
    """Offer ``rate`` updates/s (module docstring) until cancelled."""
    rng = random.Random(seed)
    size = round(rate / BATCHES_PER_SECOND)
    seq = reserve_seq = batch = 0
    headers = {"Authorization": f"Bearer {prover.token}"}
    async with connect(f"{prover.url}/ingest", additional_headers=headers, max_size=None) as ws:

        async def acks() -> None:
            async for text in ws:
                reply = json.loads(text)
                if reply["type"] == "ack":
                    out.acked += reply["applied"]
                else:
                    out.refused.append(f"{reply.get('code')}: {reply.get('message')}")

        reader = asyncio.create_task(acks())
        try:
            began, reserved = time.monotonic(), -RESERVE_EVERY
            while True:
                now = time.monotonic()
                if now - reserved >= RESERVE_EVERY:
                    reserved = now
                    await ws.send(reserves_message(prover.assets, reserve_seq))
                    reserve_seq += len(prover.assets)
                if size > 0:
                    pairs = rng.choices(prover.pairs, k=size)
                    amounts = [rng.randrange(1, 10**12) for _ in pairs]
                    await ws.send(balances_message(batch, seq, pairs, amounts))
                    seq += size
                batch += 1
                await asyncio.sleep(max(0.0, began + batch / BATCHES_PER_SECOND - time.monotonic()))
        finally:
            reader.cancel()


def _metrics(http: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{http}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values = {}
    for line in text.splitlines():
        if line[:1] != "#" and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


@dataclass(frozen=True)
class Scrape:
    """The prover's state just after it published ``epoch``."""

    epoch: int
    published: float  # unix time the epoch was handed out (module docstring)
    closed: float  # unix time the epoch closed
    fanout_sum: float  # s spent handing epochs out, and how many, since start
    fanout_count: float
    shed: float  # subscribers shed since start
    cpu: Mapping[int, float]  # CPU seconds so far of each watched process


class Monitor:
    """One subscriber of ``url``'s ``/roots?query`` noting, as each frame arrives,
    what /metrics at ``http`` says of the epoch just published and the CPU of
    ``pids``."""

    def __init__(
        self, http: str, url: str, pids: Sequence[int], query: str = "", encoding: str = "json"
    ) -> None:
        self.http, self.url, self.pids = http, url, tuple(pids)
        self.query, self.encoding = query, encoding
        self.scrapes: dict[int, Scrape] = {}
        self.latest = -1
        self._grew = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def _scrape(self) -> Scrape:
        m = _metrics(self.http)
        epoch = int(m.get("solvency_published_epoch", m["solvency_epoch"]))
        closed = m["solvency_last_epoch_time"] if m["solvency_epoch"] == epoch else float("nan")
        return Scrape(
            epoch,
            m["solvency_last_publish_time"],
            closed,
            m.get("solvency_fanout_seconds_sum", float("nan")),
            m.get("solvency_fanout_seconds_count", float("nan")),
            m.get("solvency_shed_subscribers_total", float("nan")),
            {pid: cpu_seconds(pid) for pid in self.pids},
        )

    async def _follow(self) -> None:
        url = f"{self.url}/roots{'?' + self.query if self.query else ''}"
        offered = [MSGPACK] if self.encoding == "msgpack" else None
        async with connect(url, max_size=None, subprotocols=offered) as ws:
            async for _ in ws:
                scrape = await asyncio.to_thread(self._scrape)
                if scrape.epoch in self.scrapes:
                    continue
                async with self._grew:
                    self.scrapes[scrape.epoch] = scrape
                    self.latest = max(self.latest, scrape.epoch)
                    self._grew.notify_all()

    async def __aenter__(self) -> Monitor:
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for(self, epoch: int, timeout: float | None = None) -> None:
        """Until an epoch at or past ``epoch`` was published and scraped (by
        default within 30 s plus 3 s per epoch to go)."""
        if timeout is None:
            timeout = 30 + 3 * max(0, epoch - self.latest)
        assert self._task is not None

        async def grown() -> None:
            async with self._grew:
                await self._grew.wait_for(lambda: self.latest >= epoch)

        waiting = asyncio.ensure_future(grown())
        done, _ = await asyncio.wait(
            [waiting, self._task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiting not in done:
            waiting.cancel()
            if self._task.done():
                self._task.result()  # its error
                raise SystemExit(f"the monitor's stream {self.url} ended")
            raise SystemExit(f"epoch {epoch} was not published within {timeout:.0f} s")

    async def first(self, timeout: float | None = None) -> int:
        """The first epoch scraped from now on."""
        after = self.latest
        await self.wait_for(after + 1, timeout)
        return self.latest

    def window(self, first: int, last: int) -> tuple[Scrape, Scrape]:
        """The scrapes nearest inside ``first``..``last`` (an epoch may lack one)."""
        inside = [n for n in self.scrapes if first <= n <= last]
        if len(inside) < 2:
            raise SystemExit(f"fewer than 2 epochs of {first}..{last} were scraped")
        return self.scrapes[min(inside)], self.scrapes[max(inside)]


def log_tail(path: Path, chars: int = 1500) -> str:
    """The end of a log file, for a failure's message."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def add_ledger_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the ledger, the traffic and the timing both benchmarks share."""
    parser.add_argument("--assets", type=int, default=500)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--holdings", type=int, default=4, help="assets each account holds")
    parser.add_argument("--rate", type=float, default=1000.0, help="balance updates/s offered")
    parser.add_argument("--epochs", type=int, default=20, help="epochs timed per case")
    parser.add_argument("--warm-up", type=int, default=3, help="epochs not timed per case")
    parser.add_argument("--seed", type=int, default=0)
