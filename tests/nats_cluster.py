"""A three-node NATS JetStream cluster on ports of its own, for tests.

``NatsCluster`` starts three ``nats-server`` processes (JetStream on, one
cluster name, each routed to the other two) listening on one ``host``: each
node has its own client, cluster and monitoring port, all picked free on that
host, and its own store directory and log file under the given directory.
Entering returns once every node reports itself healthy on ``/healthz`` (which,
clustered, also means it is in contact with a JetStream meta leader), has its
routes to the other two, and the meta leader sees every other node as current,
so an R3 stream can be created at once. ``stop``, ``kill`` and ``start`` act
on one node; a restarted node keeps its ports and store directory, and
``start`` returns once it is back in the cluster. Leaving kills every node and
reaps it.

The ``nats_cluster`` fixture yields an entered cluster under ``tmp_path`` and
skips, saying why, where no ``nats-server`` binary is installed; the mark
``requires_nats_server`` does the same for tests that build their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

NODES = 3
DEFAULT_BINARY = Path("/usr/sbin/nats-server")
# The ports of a NATS server started the usual way (the standalone one among
# them): never handed to a node, even if the kernel offered one as free.
USUAL_PORTS = frozenset({4222, 6222, 8222})
START_ATTEMPTS = 3
POLL = 0.05
TAIL_LINES = 40


def find_server() -> Path | None:
    """``/usr/sbin/nats-server`` if it is there, else ``nats-server`` on PATH."""
    if os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY
    found = shutil.which("nats-server")
    return Path(found) if found else None


NO_SERVER = "no nats-server binary (/usr/sbin/nats-server or on PATH)"
requires_nats_server = pytest.mark.skipif(find_server() is None, reason=NO_SERVER)


class ClusterStartError(RuntimeError):
    """A node did not start or did not join; the message holds its log's tail."""


@dataclass(frozen=True)
class NodePorts:
    """The three ports of one node, on the cluster's host."""

    client: int
    cluster: int
    monitor: int


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports that were free on ``host`` a moment ago.

    All sockets are held open together so the kernel hands out distinct ports;
    another process may still take one before a node binds it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(family, socket.SOCK_STREAM)
            held.append(s)
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if port not in USUAL_PORTS:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (empty if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class NatsCluster:
    """Three ``nats-server`` nodes with JetStream, one cluster, under ``directory``.

    Node ``i`` is named ``names[i]``, listens on ``ports[i]`` of ``host``,
    stores under ``directory / names[i]`` and logs (stdout and stderr, appended
    across restarts) to ``directory / f"{names[i]}.log"``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        cluster_name: str = "solvtest",
        timeout: float = 30.0,
    ) -> None:
        found = binary or find_server()
        if found is None:
            raise FileNotFoundError(NO_SERVER)
        self.binary = found
        self.directory = directory
        self.host = host
        self.cluster_name = cluster_name
        self.timeout = timeout
        self.names = tuple(f"{cluster_name}-n{i}" for i in range(NODES))
        self.ports: tuple[NodePorts, ...] = ()
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * NODES
        self._log_offsets = [0] * NODES
        self._spawned_at = [0.0] * NODES

    # -- addresses -----------------------------------------------------------

    def _address(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    @property
    def urls(self) -> list[str]:
        """The client URLs, ``nats://host:port``, in node order."""
        return [f"nats://{self._address(p.client)}" for p in self.ports]

    @property
    def url(self) -> str:
        """All client URLs comma-joined, as the prover's NATS source takes them.
        (nats-py's ``servers=`` wants the list ``urls``: a string is one URL.)"""
        return ",".join(self.urls)

    def store_dir(self, i: int) -> Path:
        return self.directory / self.names[i]

    def log_path(self, i: int) -> Path:
        return self.directory / f"{self.names[i]}.log"

    def index(self, name: str) -> int:
        """The node index of a server name (as JetStream reports leaders)."""
        return self.names.index(name)

    # -- monitoring ----------------------------------------------------------

    def monitor(self, i: int, path: str) -> dict[str, Any] | None:
        """Node ``i``'s monitoring JSON at ``path`` (e.g. ``"jsz?streams=true"``);
        ``None`` if it does not answer or answers with an error status."""
        url = f"http://{self._address(self.ports[i].monitor)}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                found: dict[str, Any] = json.load(response)
                return found
        except (OSError, ValueError):  # URLError and HTTPError are OSErrors
            return None

    def healthy(self, i: int) -> bool:
        """Node ``i`` answers ``/healthz``: up, JetStream on, a meta leader known,
        and its streams and consumers current."""
        found = self.monitor(i, "healthz")
        return found is not None and found.get("status") == "ok"

    def _meta(self, i: int) -> dict[str, Any]:
        """Node ``i``'s view of the JetStream meta group (empty if it is silent)."""
        found = (self.monitor(i, "jsz") or {}).get("meta_cluster")
        return found if isinstance(found, dict) else {}

    def routed(self, i: int) -> bool:
        """Node ``i`` has a route to every other running node."""
        routez = self.monitor(i, "routez") or {}
        return int(routez.get("num_routes", 0)) >= len(self.running()) - 1

    def stored(self, i: int, stream: str) -> int | None:
        """How many messages node ``i``'s own replica of ``stream`` holds (its
        ``/jsz``); ``None`` if the node does not answer or holds no replica."""
        jsz = self.monitor(i, "jsz?accounts=true&streams=true") or {}
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return int(detail["state"]["messages"])
        return None

    def meta_leader(self) -> int | None:
        """The index of the running node that names itself JetStream meta leader;
        ``None`` while none does. (A follower may still name a dead leader.)"""
        for i in self.running():
            if self._meta(i).get("leader") == self.names[i]:
                return i
        return None

    def _meta_current(self, fresh: int | None = None) -> bool:
        """A meta leader of the full size sees every other running node as
        current, and has heard from node ``fresh`` since it was last spawned
        (the leader may still count a dead node current for a while)."""
        leader = self.meta_leader()
        if leader is None:
            return False
        meta = self._meta(leader)
        if meta.get("cluster_size") != NODES:
            return False
        replicas = {r.get("name"): r for r in meta.get("replicas") or []}
        for j in self.running():
            replica = replicas.get(self.names[j], {})
            if j != leader and not replica.get("current"):
                return False
            if j == fresh != leader:
                silent = float(replica.get("active", 0)) / 1e9  # ns since last heard
                if silent >= time.monotonic() - self._spawned_at[j]:
                    return False
        return True

    # -- processes -----------------------------------------------------------

    def running(self) -> list[int]:
        """The indices of nodes whose process is alive."""
        return [i for i, p in enumerate(self._procs) if p is not None and p.poll() is None]

    def _command(self, i: int) -> list[str]:
        routes = ",".join(
            f"nats://{self._address(p.cluster)}" for j, p in enumerate(self.ports) if j != i
        )
        ports = self.ports[i]
        return [
            str(self.binary),
            "-js",
            "-sd", str(self.store_dir(i)),
            "-n", self.names[i],
            "-a", self.host,
            "-p", str(ports.client),
            "-m", str(ports.monitor),
            "--cluster_name", self.cluster_name,
            "--cluster", f"nats://{self._address(ports.cluster)}",
            "--routes", routes,
        ]  # fmt: skip

    def _spawn(self, i: int) -> None:
        if i in self.running():
            raise RuntimeError(f"{self.names[i]} is already running")
        self.store_dir(i).mkdir(parents=True, exist_ok=True)
        with self.log_path(i).open("ab") as log:
            self._log_offsets[i] = log.tell()
            self._spawned_at[i] = time.monotonic()
            log.write(f"--- start {' '.join(self._command(i))}\n".encode())
            log.flush()
            self._procs[i] = subprocess.Popen(
                self._command(i), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def _log_since_spawn(self, i: int) -> str:
        with self.log_path(i).open("rb") as log:
            log.seek(self._log_offsets[i])
            return log.read().decode(errors="replace")

    def _wait(self, what: str, nodes: list[int], ready: Callable[[], bool]) -> None:
        """Poll ``ready`` until it holds; raise with the logs' tails if a node of
        ``nodes`` exits or the deadline passes."""
        deadline = time.monotonic() + self.timeout
        while True:
            for i in nodes:
                proc = self._procs[i]
                if proc is None or proc.poll() is not None:
                    code = None if proc is None else proc.returncode
                    raise ClusterStartError(
                        f"{self.names[i]} exited (status {code}) while waiting for {what};"
                        f" {self.log_path(i)} ends:\n{tail(self.log_path(i))}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {self.log_path(i)} ends:\n{tail(self.log_path(i))}" for i in nodes
                )
                raise ClusterStartError(f"no {what} within {self.timeout} s\n{logs}")
            time.sleep(POLL)

    def _start_all(self) -> None:
        """Start every node on fresh ports and empty stores, again on other
        ports if one was taken meanwhile, and wait until the cluster is ready."""
        for attempt in range(1, START_ATTEMPTS + 1):
            picked = free_ports(self.host, 3 * NODES)
            self.ports = tuple(NodePorts(*picked[3 * i : 3 * i + 3]) for i in range(NODES))
            for i in range(NODES):
                # A failed attempt's meta state names ports no longer used.
                shutil.rmtree(self.store_dir(i), ignore_errors=True)
                self._spawn(i)
            try:
                self._wait(
                    "healthy cluster with a meta leader",
                    list(range(NODES)),
                    lambda: (
                        all(self.healthy(i) and self.routed(i) for i in range(NODES))
                        and self._meta_current()
                    ),
                )
                return
            except ClusterStartError as error:
                self._kill_all()
                taken = any(
                    "address already in use" in self._log_since_spawn(i) for i in range(NODES)
                )
                if not taken or attempt == START_ATTEMPTS:
                    raise error

    def start(self, i: int) -> None:
        """Start node ``i`` again (same ports, same store) and wait until it is
        healthy, routed to the other running nodes, and the meta leader sees it
        as current."""
        self._spawn(i)
        self._wait(
            f"{self.names[i]} back in the cluster",
            [i],
            lambda: self.healthy(i) and self.routed(i) and self._meta_current(fresh=i),
        )

    def stop(self, i: int, timeout: float = 10.0) -> None:
        """SIGTERM node ``i`` and wait for it to exit (SIGKILL and raise if it
        does not within ``timeout``)."""
        proc = self._procs[i]
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{self.names[i]} ignored SIGTERM for {timeout} s") from None

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` and reap it."""
        proc = self._procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _kill_all(self) -> None:
        for i in range(NODES):
            self.kill(i)

    def __enter__(self) -> NatsCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._start_all()
        except BaseException:
            self._kill_all()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._kill_all()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A started three-node JetStream cluster, killed after the test."""
    binary = find_server()
    if binary is None:
        pytest.skip(NO_SERVER)
    with NatsCluster(tmp_path / "nats", binary=binary) as cluster:
        yield cluster
