"""A sharded prover deployed over several "machines" for the fault tests
(tests/prover/test_sharded_faults.py): the coordinator(s) on the host, each
shard and each front-end in a network namespace of its own (tests/netns.py),
a three-node NATS cluster on the bridge's host address
(tests/nats_cluster.py), PostgreSQL reached from the namespaces through a
relay on the bridge (a schema of the test's own, tests/databases.py).

Every process is ``solvency-prover run --role R`` on a data directory of
its own: the one ``init`` made, its config.toml with the process's
settings, the same routing key, and the signing key for coordinators only.

``ControlTap`` sees the coordinator's requests to the shards and their
replies on NATS (and can freeze a coordinator at one), ``Relay`` lets an
auditor follow whichever coordinator is active.

Producers (``Producer``) send balance batches to the front-ends, each
waiting for its ack; one whose front-end fails goes on to the next and
sends again from its last ack. A user's balance is set absolutely
(``amount = seq + 1``), so the balances every producer's acknowledged
batches leave are known exactly (``expected``), and ``replay`` sends old
acknowledged batches again: applied a second time, they would set users
back to older amounts and the liabilities would fall short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from prover.cli import main as prover_main
from prover.config import load_config
from prover.errors import ProverError
from prover.keys import load_key
from prover.shards import control, wire
from storage.store import Store
from tests.databases import POSTGRES_URL, SKIP_PG, postgres_schema_url
from tests.nats_cluster import NO_SERVER, NatsCluster, find_server
from tests.netns import Network, forward, netns_available
from verifier.checkpoint import verifier_key_for
from verifier.record import EpochRecord

__all__ = [
    "ASSET",
    "Auditor",
    "ControlTap",
    "Deployment",
    "EpochRow",
    "Exchange",
    "Producer",
    "Relay",
    "RoleProcess",
    "deployment",
    "http_get",
    "producing",
    "requires_deployment",
    "send_reserves",
    "wait_until",
]

ASSET: Final = "BTC"
RESERVE: Final = 10**15  # far above every liability: the auditor has nothing to alarm on
NET: Final = 217  # namespaces on 10.217.0.0/24, apart from tests/test_netns.py's
FRONT_END_PORT: Final = 8700  # in each front-end's own namespace
STOP_DEADLINE: Final = 15.0  # seconds a process has to exit after SIGTERM
START_DEADLINE: Final = 40.0  # seconds for a role to answer /healthz after it starts
ACK_TIMEOUT: Final = 10.0  # seconds a producer waits for an ack before giving up a front-end


def unavailable() -> str | None:
    """Why the deployment cannot run here, or None."""
    return (
        netns_available()
        or (NO_SERVER if find_server() is None else None)
        or (None if POSTGRES_URL else SKIP_PG)
    )


_MISSING = unavailable()
requires_deployment = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float, poll: float = 0.05
) -> float:
    """Poll ``condition`` until it holds; the seconds it took.

    Raises:
        AssertionError: ``what`` did not happen within ``timeout`` seconds.
    """
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(poll)
    return time.monotonic() - started


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """The status and body of ``GET http://host:port/path``; (0, why) if nothing answered."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


# Processes


class RoleProcess:
    """One ``solvency-prover run --role R`` process, its standard error in a file."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "ab") as err:
            # its configuration is its config.toml alone: no SOLVENCY_* of the test run
            env = {k: v for k, v in os.environ.items() if not k.startswith("SOLVENCY_")}
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=env
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self, pattern: str) -> list[str]:
        """The log's messages (of its JSON lines) that ``pattern`` finds."""
        found = []
        for line in self.text().splitlines():
            try:
                message = str(json.loads(line).get("message", line))
            except ValueError:
                message = line
            if re.search(pattern, message):
                found.append(message)
        return found

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM (SIGCONT first, should it be stopped); the exit status, or
        None if it had to be killed."""
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode


@dataclass(frozen=True, slots=True)
class EpochRow:
    """One stored epoch as the tests look at it."""

    number: int
    created_ms: int
    cut: int  # the ledger stream's sequence it was cut at
    liabilities: int


class Deployment:
    """Coordinators on the host (``127.0.0.1``), shard ``i`` in namespace
    ``i`` and front-end ``j`` in namespace ``shards + j`` of ``net``, on
    ``nats`` and the PostgreSQL schema of ``pg_url`` (which the namespaces
    reach at ``net.host:pg_port``)."""

    def __init__(
        self,
        directory: Path,
        net: Network,
        nats: NatsCluster,
        pg_url: str,
        pg_port: int,
        *,
        shard_bits: int = 1,
        front_ends: int = 2,
        lease_ttl: float = 3.0,
        epoch_interval: float = 0.2,
        max_interval: float = 1.0,
        replicas: int = 3,
    ) -> None:
        self.directory, self.net, self.nats = directory, net, nats
        self.shards, self.front_ends = 1 << shard_bits, front_ends
        if net.count < self.shards + front_ends:
            raise ValueError(
                f"{self.shards} shards and {front_ends} front-ends need more namespaces"
            )
        self.pg_url = pg_url
        self.pg_url_in_namespaces = (
            make_url(pg_url).set(host=net.host, port=pg_port).render_as_string(hide_password=False)
        )
        self.base = directory / "init"
        self.settings: dict[str, object] = {
            "shard_bits": shard_bits,
            "nats_url": nats.url,
            "ledger_replicas": replicas,
            "epoch_interval": epoch_interval,
            "max_interval": max_interval,
            "lease_ttl": lease_ttl,
            "max_reserve_age": 3600.0,  # reserves are sent once: fresh for the whole test
        }
        self.processes: dict[str, RoleProcess] = {}
        self.auditors: list[Auditor] = []  # stopped with the deployment
        self._opened: Store | None = None
        self.coordinator_ports: dict[str, int] = {}
        init = ["--data-dir", str(self.base), "--database-url", pg_url, "init"]
        assert prover_main([*init, "--assets", f"{ASSET}:8"]) == 0
        config = load_config(self.base, environ={})
        self.token = config.ingest_token
        self.verifier_key = str(
            verifier_key_for(config.origin, load_key(config.key_path).public_key())
        )
        self.stream = config.ledger_stream

    # the data directories

    def _data_dir(self, name: str, settings: dict[str, object], signing: bool) -> Path:
        """A directory of its own for process ``name``: the config.toml of
        ``init`` with ``settings`` (and the deployment's) at the top."""
        data = self.directory / name
        data.mkdir(mode=0o700)
        values = {**self.settings, **settings}
        text = (self.base / "config.toml").read_text(encoding="utf-8")
        head, found, tables = text.partition("[[")  # top-level keys come before the tables
        kept = [line for line in head.splitlines() if line.split("=")[0].strip() not in values]
        lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        (data / "config.toml").write_text("\n".join([*kept, *lines]) + "\n\n" + found + tables)
        (data / "config.toml").chmod(0o600)
        for file in ("routing.key", "signing.key") if signing else ("routing.key",):
            shutil.copy2(self.base / file, data / file)
        return data

    def _run(self, name: str, role: str, data: Path, prefix: Sequence[str] = ()) -> RoleProcess:
        argv = [*prefix, sys.executable, "-m", "prover.cli", "--data-dir", str(data)]
        process = RoleProcess(
            name, [*argv, "run", "--role", role, "--json-logs"], self.directory / f"{name}.log"
        )
        self.processes[name] = process
        return process

    # starting the roles

    def start_coordinator(self, name: str) -> RoleProcess:
        """Coordinator ``name`` (its ``coordinator_name`` too) on 127.0.0.1, a free port."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        settings = {"coordinator_name": name, "database_url": self.pg_url, "port": port}
        self.coordinator_ports[name] = port
        return self._run(name, "coordinator", self._data_dir(name, settings, signing=True))

    def start_shard(self, part: int) -> RoleProcess:
        settings = {"shard": part, "database_url": self.pg_url_in_namespaces}
        data = self._data_dir(f"shard{part}", settings, signing=False)
        return self._run(f"shard{part}", "shard", data, self.net.exec(part))

    def start_front_end(self, index: int) -> RoleProcess:
        settings = {"host": "0.0.0.0", "port": FRONT_END_PORT}
        data = self._data_dir(f"front-end{index}", settings, signing=False)
        namespace = self.shards + index
        return self._run(f"front-end{index}", "front-end", data, self.net.exec(namespace))

    def start(self, coordinators: Sequence[str] = ("coordinator",)) -> None:
        """Every role, and wait until the front-ends answer /healthz and the
        first coordinator has stored an epoch (so both shards answer it)."""
        self.start_coordinator(coordinators[0])
        for part in range(self.shards):
            self.start_shard(part)
        for index in range(self.front_ends):
            self.start_front_end(index)
        for index in range(self.front_ends):
            self.wait_healthy(self.front_end_host(index), FRONT_END_PORT, f"front-end{index}")
        first = coordinators[0]
        self.wait_healthy("127.0.0.1", self.coordinator_ports[first], first)
        for name in coordinators[1:]:  # standbys
            self.start_coordinator(name)
        for name in coordinators[1:]:
            self.wait_listening(name)

    def wait_listening(self, name: str) -> None:
        """Wait until coordinator ``name`` answers HTTP (healthy or not)."""
        process, port = self.processes[name], self.coordinator_ports[name]

        def listening() -> bool:
            if not process.alive():
                raise AssertionError(
                    f"{name} exited ({process.proc.returncode}):\n{process.text()}"
                )
            return http_get("127.0.0.1", port, "/healthz")[0] != 0

        wait_until(listening, f"{name} listening", START_DEADLINE)

    def wait_healthy(self, host: str, port: int, name: str) -> None:
        process = self.processes[name]

        def healthy() -> bool:
            if not process.alive():
                raise AssertionError(
                    f"{name} exited ({process.proc.returncode}):\n{process.text()}"
                )
            return http_get(host, port, "/healthz")[0] == 200

        try:
            wait_until(healthy, f"{name} healthy", START_DEADLINE)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{name}'s log:\n{process.text()[-4000:]}") from None

    # addresses

    def front_end_host(self, index: int) -> str:
        return self.net.address(self.shards + index)

    def front_end_urls(self) -> list[str]:
        return [f"ws://{self.front_end_host(j)}:{FRONT_END_PORT}" for j in range(self.front_ends)]

    def coordinator_url(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.coordinator_ports[name]}"

    def coordinator_health(self, name: str) -> tuple[int, str]:
        return http_get("127.0.0.1", self.coordinator_ports[name], "/healthz")

    # the log, as stored

    def _store(self) -> Store:
        if self._opened is None:
            self._opened = Store.open(self.pg_url, migrate=False)
        return self._opened

    def epochs(self, after: int = -1) -> list[EpochRow]:
        """The stored epochs numbered above ``after``, in order."""
        store = self._store()
        latest = store.latest_epoch()
        rows = []
        for number in range(after + 1, -1 if latest is None else latest.number + 1):
            epoch = store.epoch(number)
            cut = store.epoch_marks(number).get(("stream", self.stream), 0)
            record = EpochRecord.decode(epoch.record)
            total = sum(a.liabilities for a in record.assets if a.asset == ASSET)
            rows.append(EpochRow(number, epoch.created_ms, cut, total))
        return rows

    def latest_epoch(self) -> int:
        """The latest stored epoch's number (-1: none)."""
        latest = self._store().latest_epoch()
        return -1 if latest is None else latest.number

    def wait_covered(self, seq: int, timeout: float) -> EpochRow:
        """An epoch cut at or after stream sequence ``seq``: the latest, or
        the one before it, when one first is."""
        found: list[EpochRow] = []

        def covered() -> bool:
            found[:] = [e for e in self.epochs(max(-1, self.latest_epoch() - 1)) if e.cut >= seq]
            return bool(found)

        wait_until(covered, f"an epoch cut at stream sequence {seq} or later", timeout, 0.1)
        return found[0]

    def stream_leader(self) -> int:
        """The NATS node leading the ledger stream."""
        for i in self.nats.running():
            jsz = self.nats.monitor(i, "jsz?accounts=true&streams=true") or {}
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == self.stream:
                        leader = (detail.get("cluster") or {}).get("leader")
                        if leader:
                            return self.nats.index(str(leader))
        raise AssertionError(f"no node names a leader of stream {self.stream}")

    def stop(self) -> dict[str, int | None]:
        """SIGTERM to every process still running; their exit statuses."""
        for auditor in self.auditors:
            auditor.stop()
        if self._opened is not None:
            self._opened.close()
            self._opened = None
        return {name: p.stop() for name, p in self.processes.items()}

    def audit(self, url: str) -> Auditor:
        """An auditor on ``url`` (a coordinator's, or a relay to one)."""
        auditor = Auditor(url, self.verifier_key, self.directory)
        self.auditors.append(auditor)
        return auditor


# Producers


@dataclass
class Producer:
    """Source ``source`` sending batches of ``per_batch`` updates to its
    users ``<source>-u<k>`` (``k`` the update's seq modulo ``users``), each
    waiting for its ack; on a failure it goes on to the next front-end of
    ``urls`` and sends again from the batch after its last ack."""

    source: str
    urls: list[str]
    token: str
    at: int = 0  # the front-end it sends to, an index of urls
    users: int = 40
    per_batch: int = 4
    rate: float = 20.0  # batches a second at most: the machine is left time to catch up
    acked: int = -1  # the last acknowledged batch
    stream_seq: int = 0  # the highest stream sequence of an ack
    acks: list[float] = field(default_factory=list)  # time.monotonic() of each
    duplicates: int = 0  # acks saying the stream held the commit already
    failovers: list[tuple[float, str]] = field(default_factory=list)  # when, why

    def message(self, number: int, batches: int = 1) -> str:
        """Batch ``number`` (id ``b<number>``), or ``batches`` batches from it
        as one message (id ``r<number>``)."""
        first = number * self.per_batch
        updates = [
            {
                "seq": seq,
                "user": f"{self.source}-u{seq % self.users}",
                "asset": ASSET,
                "amount": str(seq + 1),
            }
            for seq in range(first, first + batches * self.per_batch)
        ]
        batch_id = f"b{number}" if batches == 1 else f"r{number}"
        batch = {"type": "balances", "id": batch_id, "source": self.source}
        return json.dumps({**batch, "updates": updates})

    def expected(self) -> dict[str, int]:
        """Each user's balance once every batch up to the last acked one is applied once."""
        last = (self.acked + 1) * self.per_batch - 1
        return {
            f"{self.source}-u{k}": max(seq for seq in range(k, last + 1, self.users)) + 1
            for k in range(min(self.users, last + 1))
        }

    async def _connect(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"}
        return await connect(
            f"{self.urls[self.at]}/ingest", additional_headers=headers, open_timeout=5
        )

    async def _send(self, ws: ClientConnection, number: int, batches: int = 1) -> None:
        await ws.send(self.message(number, batches))
        reply = json.loads(await asyncio.wait_for(ws.recv(), ACK_TIMEOUT))
        if reply.get("type") != "ack":
            raise _Refused(f"{reply.get('code')}: {reply.get('message')}")
        self.stream_seq = max(self.stream_seq, int(reply["stream_seq"]))
        self.duplicates += bool(reply.get("duplicate"))
        self.acks.append(time.monotonic())

    def _failed(self, exc: BaseException) -> None:
        self.failovers.append(
            (time.monotonic(), f"{self.urls[self.at]}: {type(exc).__name__} {exc}")
        )
        self.at = (self.at + 1) % len(self.urls)

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set, the last batch sent acknowledged."""
        while not stop.is_set():
            try:
                async with await self._connect() as ws:
                    while not stop.is_set():
                        due = time.monotonic() + 1 / self.rate
                        await self._send(ws, self.acked + 1)
                        self.acked += 1
                        await asyncio.sleep(due - time.monotonic())  # pacing
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError, _Refused) as exc:
                self._failed(exc)
                await asyncio.sleep(0.05)  # a pause before the next front-end, not a wait for one

    async def replay(self, count: int) -> None:
        """Send again the ``count`` acknowledged batches that end ``count``
        batches before the last, each of whose users has a later update
        acknowledged that they would undo if applied again: first as they
        were (the stream stores each once), then as one message (new to the
        stream: its readers must skip it as a replay)."""
        assert self.users % self.per_batch == 0 and count * self.per_batch == self.users
        assert self.acked >= 2 * count, "too few batches acknowledged to replay"
        first = self.acked - 2 * count + 1
        while True:
            try:
                async with await self._connect() as ws:
                    for number in range(first, first + count):
                        await self._send(ws, number)
                    await self._send(ws, first, count)
                    return
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError, _Refused) as exc:
                self._failed(exc)
                await asyncio.sleep(0.05)

    def longest_pause(self, start: float, end: float) -> float:
        """The longest time without an ack between ``start`` and ``end``
        (``time.monotonic()``)."""
        times = [start, *(t for t in self.acks if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))


class _Refused(Exception):
    """A front-end answered a batch with an error."""


async def send_reserves(url: str, token: str) -> None:
    """Reserves of ``RESERVE`` for the asset, from source ``cold``."""
    now = int(time.time() * 1000)
    update = {"seq": 0, "asset": ASSET, "amount": str(RESERVE), "as_of_ms": now}
    message = {"type": "reserves", "source": "cold", "updates": [update]}
    async with connect(
        f"{url}/ingest", additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await ws.send(json.dumps(message))
        reply = json.loads(await ws.recv())
        assert reply["type"] == "ack", reply


# The auditor


class Auditor:
    """``solvency-verify watch URL --json --keep-going``, its events in a file."""

    def __init__(self, url: str, key: str, directory: Path, max_silence: float = 60.0) -> None:
        self.out = directory / "auditor.jsonl"
        args = [
            *(sys.executable, "-m", "verifier.cli", "watch", url),
            *("--key", key, "--state", str(directory / "auditor"), "--json", "--keep-going"),
            *("--max-silence", str(max_silence)),
        ]
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.out.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def verified(self) -> list[int]:
        return [e["epoch"] for e in self.events() if e.get("event") == "epoch"]

    def alarms(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == "violation"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# A relay whose target changes


class Relay:
    """A TCP relay on 127.0.0.1 (``port``) to ``target``; ``switch`` points it
    elsewhere and closes what it relayed so far, so that clients reconnect
    (an auditor following whichever coordinator is active)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    def switch(self, target: tuple[str, int]) -> None:
        def point() -> None:
            self.target = target
            for writer in list(self._writers):
                writer.close()

        self._loop.call_soon_threadsafe(point)

    def __enter__(self) -> Relay:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# The coordinator's requests to the shards, and their replies, as NATS carries them


@dataclass(frozen=True, slots=True)
class Exchange:
    """A control request (``reply`` None until its reply is seen)."""

    at: float  # time.monotonic() when the request was seen
    shard: int
    request: control.Request
    reply: control.Reply | None = None


class ControlTap:
    """Every ``Stage``, ``Close`` and ``Prove`` on ``<prefix>.shard.*.control``
    and the shards' replies, seen from the host. ``freeze_on(test, process)``
    sends ``process`` SIGSTOP as soon as a request passes ``test``.

    A requester's replies come to its inbox prefix, subscribed once its first
    request is seen: the reply to that first one is missed."""

    def __init__(self, urls: list[str], prefix: str = wire.DEFAULT_PREFIX) -> None:
        self.urls, self.prefix = urls, prefix
        self.exchanges: list[Exchange] = []
        self.frozen: Exchange | None = None
        self._freeze: tuple[Callable[[control.Request], bool], RoleProcess] | None = None
        self._pending: dict[str, int] = {}  # reply subject: index in exchanges
        self._inboxes: set[str] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._nc: Client | None = None

    def freeze_on(self, test: Callable[[control.Request], bool], process: RoleProcess) -> None:
        with self._lock:
            self.frozen, self._freeze = None, (test, process)

    def seen(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    async def _on_request(self, msg: Msg) -> None:
        try:
            request = control.decode_request(msg.data)
        except ProverError:
            return
        exchange = Exchange(time.monotonic(), int(msg.subject.split(".")[-2]), request)
        with self._lock:
            if self._freeze is not None and self._freeze[0](request):
                os.kill(self._freeze[1].pid, signal.SIGSTOP)
                self.frozen, self._freeze = exchange, None
            self.exchanges.append(exchange)
            if msg.reply:
                self._pending[msg.reply] = len(self.exchanges) - 1
        inbox = msg.reply.rpartition(".")[0]
        if inbox and inbox not in self._inboxes:
            self._inboxes.add(inbox)
            assert self._nc is not None
            await self._nc.subscribe(f"{inbox}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        with self._lock:
            index = self._pending.pop(msg.subject, None)
            if index is not None:
                with contextlib.suppress(ProverError):
                    reply = control.decode_reply(msg.data)
                    self.exchanges[index] = dataclasses.replace(self.exchanges[index], reply=reply)

    async def _start(self) -> None:
        self._nc = await nats.connect(servers=self.urls, max_reconnect_attempts=-1)
        await self._nc.subscribe(f"{self.prefix}.shard.*.control", cb=self._on_request)
        await self._nc.flush()

    def __enter__(self) -> ControlTap:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def producing(producers: Sequence[Producer]) -> Iterator[Callable[[], None]]:
    """The producers running in a thread of their own; the callable stops
    them, each after its batch under way is acknowledged, and waits."""
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    async def main() -> None:
        await asyncio.gather(*(p.run(stop) for p in producers))

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by the callable
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def finish() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not thread.is_alive(), "the producers did not stop"
        if failure:
            raise failure[0]

    try:
        yield finish
    finally:
        if thread.is_alive():  # the test failed first: its error is the one to see
            loop.call_soon_threadsafe(stop.set)
            thread.join(60)
        if not thread.is_alive():
            loop.close()


@contextlib.contextmanager
def deployment(
    directory: Path, coordinators: Sequence[str] = ("coordinator",), **options: Any
) -> Iterator[Deployment]:
    """A started ``Deployment`` (``options`` its keyword arguments) on
    namespaces, a NATS cluster and a PostgreSQL schema of its own, all
    removed after."""
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(Network(4, net=NET))
        nats = stack.enter_context(NatsCluster(directory / "nats", host=net.host))
        server = make_url(POSTGRES_URL)
        pg_address = (server.host or "127.0.0.1", server.port or 5432)
        pg_port = stack.enter_context(forward(net.host, pg_address))
        pg_url = stack.enter_context(postgres_schema_url())
        deployed = Deployment(directory, net, nats, pg_url, pg_port, **options)
        stack.callback(deployed.stop)
        deployed.start(coordinators)
        yield deployed
