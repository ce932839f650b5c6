"""Several "machines" on one: network namespaces on a bridge of their own,
for tests of what crosses a network (root only).

``Network(count)`` makes a bridge with address ``10.<net>.0.1/24`` on the
host and ``count`` namespaces, namespace ``k`` at ``10.<net>.0.<k + 1>``
joined to the bridge by a veth pair: every namespace reaches the host's
bridge address and every other namespace, and nothing else (no route out,
no forwarding to other interfaces). A host service listening on loopback
only is reached through ``forward`` (a TCP relay on the bridge address).
``cut(k)`` and ``mend(k)`` take a namespace's link down and up: its
network cut, its processes alive. Everything is removed on exit, and
``remove_stale`` removes what a killed test run left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["Network", "forward", "netns_available", "requires_netns"]

PREFIX = "solvt"  # namespace names: solvt-<pid>-<k>
LINK_UP_WAIT = 5.0  # seconds ``mend`` waits for a link to carry traffic again


def netns_available() -> str | None:
    """None if this process can make namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


requires_netns = pytest.mark.skipif(netns_available() is not None, reason=f"{netns_available()}")


def _ip(*argv: str, check: bool = True) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Remove the namespaces, links and bridges of earlier runs whose
    process is gone, killing what they left running in them."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name, pid_text in re.findall(rf"^({PREFIX}-(\d+)-\d+)", listed, re.M):
        if _alive(int(pid_text)):
            continue
        left = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for child in map(int, left.stdout.split()):
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        _ip("netns", "del", name, check=False)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for link, pid_text in re.findall(r"^\d+: (st[bh]\d*-(\d+))[@:]", links, re.M):
        if not _alive(int(pid_text)):
            _ip("link", "del", link, check=False)


@dataclass
class Network:
    """A bridge and ``count`` namespaces on it (module docstring)."""

    count: int
    net: int = 201  # the second octet of 10.<net>.0.0/24
    names: list[str] = field(default_factory=list)
    bridge: str = ""

    @property
    def host(self) -> str:
        """The host's address on the bridge."""
        return f"10.{self.net}.0.1"

    def address(self, k: int) -> str:
        return f"10.{self.net}.0.{k + 2}"

    def exec(self, k: int) -> list[str]:
        """The command prefix that runs a program in namespace ``k``."""
        return ["ip", "netns", "exec", self.names[k]]

    def _veth(self, k: int) -> str:
        return f"sth{k}-{os.getpid()}"

    def __enter__(self) -> Network:
        remove_stale()
        pid = os.getpid()
        self.bridge = f"stb-{pid}"
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.host}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for k in range(self.count):
                name, peer = f"{PREFIX}-{pid}-{k}", f"stn{k}-{pid}"
                _ip("netns", "add", name)
                self.names.append(name)
                _ip("link", "add", self._veth(k), "type", "veth", "peer", "name", peer)
                _ip("link", "set", self._veth(k), "master", self.bridge)
                _ip("link", "set", self._veth(k), "up")
                _ip("link", "set", peer, "netns", name)
                _ip("-n", name, "addr", "add", f"{self.address(k)}/24", "dev", peer)
                _ip("-n", name, "link", "set", peer, "up")
                _ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def cut(self, k: int) -> None:
        """Namespace ``k`` loses the network (its processes keep running)."""
        _ip("link", "set", self._veth(k), "down")

    def mend(self, k: int) -> None:
        """Namespace ``k`` has the network again, once its link is up (a
        link set up takes a moment to carry traffic on a loaded machine)."""
        _ip("link", "set", self._veth(k), "up")
        state = Path(f"/sys/class/net/{self._veth(k)}/operstate")
        deadline = time.monotonic() + LINK_UP_WAIT
        while state.read_text().strip() != "up" and time.monotonic() < deadline:
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            left = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for child in map(int, left.stdout.split()):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
            _ip("netns", "del", name, check=False)
        for k in range(len(self.names)):
            _ip("link", "del", self._veth(k), check=False)
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)
        self.names.clear()


@contextlib.contextmanager
def forward(listen: str, target: tuple[str, int]) -> Iterator[int]:
    """A TCP relay from ``listen`` (a free port picked) to ``target``, in a
    thread of its own, for a service on loopback that the namespaces must
    reach; yields the port."""
    probe = socket.socket()
    probe.bind((listen, 0))
    port = probe.getsockname()[1]
    probe.close()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def serve() -> asyncio.Server:
        server = await asyncio.start_server(relay, listen, port)
        ready.set()
        return server

    server: list[asyncio.Server] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        server.append(loop.run_until_complete(serve()))
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
