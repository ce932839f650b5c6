"""Servers and clients for the relay's tests (no test here), all on one event loop in a
thread of its own (tests only): a prover-like upstream serving a fake log (in
MessagePack to a subscriber that negotiates it), relays that record what they
report, a relay that lies, and subscribers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tests.verifier.fakelog import VKEY
from verifier.cli import _parser, main
from verifier.relay import Limits, Relay
from verifier.stream import EpochMessage, parse_message
from verifier.stream_binary import SUBPROTOCOL, to_msgpack

MSGPACK = Subprotocol(SUBPROTOCOL)


def offers_msgpack(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """A server's ``select_subprotocol``: MessagePack if offered, as the prover's."""
    return MSGPACK if MSGPACK in offered else None


def until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``predicate()`` holds, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.01)


class Background:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return self.spawn(coro).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Upstream:
    """A prover's ``/roots`` on 127.0.0.1: ``frames[since:]``, then each frame
    published later (to a subscriber that negotiated MessagePack, each
    re-encoded so); stopped and started again on the same port."""

    def __init__(self, bg: Background, messages: list[EpochMessage]) -> None:
        self.bg = bg
        self.frames: list[str | bytes] = [m.to_json() for m in messages]
        self.sinces: list[int] = []
        self.queries: list[str] = []  # each subscription's query string
        self.closes: list[int | None] = []  # the close code of each subscriber gone
        self.subprotocols: list[str | None] = []  # what each subscription negotiated
        self.port = 0
        self._server: Server | None = None
        self._grew: asyncio.Condition | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None and self._grew is not None
        query = urlsplit(ws.request.path).query
        since = int(parse_qs(query).get("since", ["0"])[0])
        self.sinces.append(since)
        self.queries.append(query)
        self.subprotocols.append(ws.subprotocol)
        grew = self._grew

        async def pump() -> None:
            sent = since
            while True:
                async with grew:
                    await grew.wait_for(lambda: sent < len(self.frames))  # noqa: B023
                while sent < len(self.frames):
                    frame = self.frames[sent]
                    await ws.send(frame if ws.subprotocol is None else msgpack_of(frame))
                    sent += 1

        task = asyncio.create_task(pump())
        try:
            await ws.wait_closed()
            self.closes.append(ws.close_code)
        finally:
            task.cancel()

    def _refuse(self, ws: ServerConnection, request: Request) -> Response | None:
        """400 bad-since for a since beyond the log, as the prover answers it."""
        since = int(parse_qs(urlsplit(request.path).query).get("since", ["0"])[0])
        if since <= len(self.frames):
            return None
        return ws.respond(400, '{"type": "error", "code": "bad-since", "message": "beyond"}')

    async def _start(self) -> None:
        self._grew = asyncio.Condition()
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            self.port,
            process_request=self._refuse,
            select_subprotocol=offers_msgpack,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _publish(self, frames: list[str]) -> None:
        assert self._grew is not None
        async with self._grew:
            self.frames += frames
            self._grew.notify_all()

    def start(self) -> Upstream:
        self.bg.run(self._start())
        return self

    def stop(self) -> None:
        self.bg.run(self._stop())

    def publish(self, *messages: EpochMessage) -> None:
        self.bg.run(self._publish([m.to_json() for m in messages]))


def msgpack_of(frame: str | bytes) -> bytes:
    """A JSON frame's message in MessagePack."""
    return to_msgpack(parse_message(frame))


class RecordingRelay(Relay):
    """A relay that records what it reports instead of printing it."""

    events: list[dict[str, Any]]
    future: concurrent.futures.Future[Any]

    def _say(self, doc: dict[str, Any], line: str) -> None:
        self.events.append(doc)

    @property
    def downstream(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def checks(self) -> list[str]:
        return [e["check"] for e in self.events if e["event"] == "violation"]


def start_relay(
    bg: Background,
    upstream: str,
    state: Path,
    *options: str,
    limits: Limits | None = None,
    key: str = str(VKEY),
) -> RecordingRelay:
    argv = ["relay", "--upstream", upstream, "--listen", "127.0.0.1:0"]
    args = _parser().parse_args([*argv, "--key", key, "--state", str(state), *options])
    relay = RecordingRelay(args, limits)
    relay.events = []
    relay.future = bg.spawn(relay.run())
    until(lambda: relay.port is not None or relay.future.done(), what="the relay to listen")
    return relay


def stop_relay(bg: Background, relay: RecordingRelay) -> None:
    relay.future.cancel()
    until(lambda: relay.future.done())


class Subscriber:
    """A ``/roots`` subscriber that keeps every frame it gets, on one connection;
    ``choice``: more of the query, e.g. ``assets=BTC`` or ``only=checkpoints``;
    ``msgpack``: it offers the MessagePack subprotocol."""

    def __init__(
        self,
        bg: Background,
        url: str,
        since: int | None = None,
        choice: str = "",
        msgpack: bool = False,
    ) -> None:
        self.frames: list[str | bytes] = []
        self.close_code: int | None = None
        self.extensions: str | None = None  # what the handshake negotiated
        self.subprotocol: str | None = None
        self.connected = threading.Event()
        params = ([] if since is None else [f"since={since}"]) + ([choice] if choice else [])
        query = f"?{'&'.join(params)}" if params else ""
        self.future = bg.spawn(self._run(f"{url}/roots{query}", [MSGPACK] if msgpack else None))
        assert self.connected.wait(5), "the subscriber did not connect"

    async def _run(self, url: str, subprotocols: list[Subprotocol] | None) -> None:
        async with connect(url, subprotocols=subprotocols) as ws:
            assert ws.response is not None
            self.extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            self.subprotocol = ws.subprotocol
            self.connected.set()
            try:
                async for frame in ws:
                    self.frames.append(frame)
            except ConnectionClosed:
                pass
            self.close_code = ws.close_code

    def wait_for(self, count: int) -> list[str | bytes]:
        until(lambda: len(self.frames) >= count, what=f"{count} frames")
        return self.frames


class Evil:
    """A relay that lies: it serves ``/roots?since=N`` with what ``tamper``
    makes of each frame ``source`` (a real relay) serves from N. ``tamper``
    takes the epoch and the frame and returns the frames to send instead."""

    def __init__(
        self, bg: Background, source: str, tamper: Callable[[int, str], list[str]]
    ) -> None:
        self.bg, self.source, self.tamper = bg, source, tamper
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = urlsplit(ws.request.path).query
        epoch = int(parse_qs(query).get("since", ["0"])[0])

        async def pump() -> None:
            nonlocal epoch
            async with connect(f"{self.source}/roots?{query}") as honest:
                async for frame in honest:
                    assert isinstance(frame, str)
                    for lie in self.tamper(epoch, frame):
                        await ws.send(lie)
                    epoch += 1

        task = asyncio.create_task(pump())
        try:
            await ws.wait_closed()
        finally:
            task.cancel()

    def start(self) -> Evil:
        async def start() -> None:
            server = await serve(self._handler, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]

        self.bg.run(start())
        return self


def http_get(port: int | None, path: str, method: str = "GET") -> tuple[int, bytes]:
    assert port is not None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class RawSubscriber:
    """A subscriber on a bare socket: it opens the WebSocket, then reads only
    when told to (and never answers a ping), with a small receive buffer."""

    def __init__(self, port: int | None, receive_buffer: int = 4096) -> None:
        assert port is not None
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(5)
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/roots"))
        self.protocol.send_request(self.protocol.connect())
        for data in self.protocol.data_to_send():
            self.sock.sendall(data)
        while self.protocol.handshake_exc is None and not self.protocol.events_received():
            self.protocol.receive_data(self.sock.recv(4096))
        assert self.protocol.handshake_exc is None

    def read_until_closed(self) -> Close | None:
        """Read everything until the server's close frame: its code and reason."""
        while self.protocol.close_rcvd is None:
            data = self.sock.recv(1 << 16)
            if not data:
                break
            self.protocol.receive_data(data)
            self.protocol.events_received()
        return self.protocol.close_rcvd

    def close(self) -> None:
        self.sock.close()


def watch(url: str, state: Path, *extra: str) -> int:
    """``solvency-verify watch URL`` with the fake log's key and JSON output."""
    return main(["watch", url, "--key", str(VKEY), "--state", str(state), "--json", *extra])


def events(capsys: Any) -> list[dict[str, Any]]:
    """The JSON events a command printed since the last read of ``capsys``."""
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]
