"""Servers for the page tests, on 127.0.0.1: a real prover daemon with a few
users, and a scripted root stream that serves the pages as the prover does
(prover.web's files and headers) and whatever frames a test gives it."""

from __future__ import annotations

import asyncio
import http
import http.server
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.client import connect

from prover.cli import main as prover_main
from prover.config import load_config
from prover.keys import load_key
from prover.tokens import user_token
from prover.web import CONTENT_SECURITY_POLICY, WebFiles
from tests.prover.daemon import start_daemon
from verifier.checkpoint import verifier_key_for

__all__ = [
    "MAX_RESERVE_AGE",
    "PAGES_ELSEWHERE",
    "Daemon",
    "StaticPages",
    "StreamServer",
    "free_port",
    "running_daemon",
]

MAX_RESERVE_AGE = 3  # seconds: a source reported once goes stale within the test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    """A running ``solvency-prover run`` and what a test needs to talk to it."""

    port: int
    key: str  # the log's verifier key
    ingest_token: str
    proof_secret: str
    seq: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, user: str) -> str:
        return user_token(self.proof_secret, user)

    def send(self, kind: str, source: str, updates: list[dict[str, object]]) -> None:
        """One ingest message of ``kind`` from ``source``, acknowledged; its
        updates' ``seq`` numbered here, per source."""
        first = self.seq.get(source, 0) + 1
        self.seq[source] = first + len(updates) - 1
        numbered = [{**u, "seq": seq} for seq, u in enumerate(updates, first)]
        message = {"type": kind, "source": source, "updates": numbered}
        headers = {"Authorization": f"Bearer {self.ingest_token}"}
        # the sync client: Playwright's sync API holds this thread's event loop
        with connect(f"ws://127.0.0.1:{self.port}/ingest", additional_headers=headers) as ws:
            ws.send(json.dumps(message))
            reply = json.loads(ws.recv(timeout=30))
        assert reply["type"] == "ack", reply

    def balances(self, **amounts: dict[str, int]) -> None:
        """Set each named user's balances: ``alice={"BTC": 150_000_000}``."""
        updates: list[dict[str, object]] = [
            {"user": user, "asset": asset, "amount": str(amount)}
            for user, held in amounts.items()
            for asset, amount in held.items()
        ]
        self.send("balances", "core", updates)

    def reserves(self, source: str, **amounts: int) -> None:
        """``source`` reports its holdings now, unattested: ``BTC=10**11``."""
        now = int(time.time() * 1000)
        updates: list[dict[str, object]] = [
            {"asset": asset, "amount": str(amount), "as_of_ms": now}
            for asset, amount in amounts.items()
        ]
        self.send("reserves", source, updates)


@contextmanager
def running_daemon(data: Path, cors_origins: tuple[str, ...] = ()) -> Iterator[Daemon]:
    """A prover with BTC (8 decimals) and ETH (18), an epoch every second,
    reserves stale after ``MAX_RESERVE_AGE`` s, three users, and pages of
    ``cors_origins`` allowed to call it."""
    init = ["init", "--origin", "browser.test/solvency", "--assets", "BTC:8,ETH:18"]
    assert prover_main(["--data-dir", str(data), *init]) == 0
    config = load_config(data)
    key = str(verifier_key_for(config.origin, load_key(config.key_path).public_key()))
    port = free_port()
    env = {
        "SOLVENCY_MAX_INTERVAL": "1",
        "SOLVENCY_MAX_RESERVE_AGE": str(MAX_RESERVE_AGE),
        "SOLVENCY_CORS_ORIGINS": ",".join(cors_origins),
    }
    proc = start_daemon(data, port, data.parent / "daemon.log", env=env)
    try:
        daemon = Daemon(port, key, config.ingest_token, config.proof_secret)
        daemon.balances(
            alice={"BTC": 150_000_000, "ETH": 3 * 10**18},
            bob={"BTC": 2_500_000_000},
            carol={"ETH": 10**17},
        )
        yield daemon
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


class StreamServer:
    """The pages (prover.web's files, with its security headers) and a scripted
    ``/roots``: a subscriber from ``since=N`` (none: 0) gets ``frames[N:]``,
    its first frame ``opening[N]`` instead if set (a connection's first frame
    carries every signed report its entries bind, PROTOCOL §11.2), then the
    connection stays open; the first connection is closed after ``drop_after``
    frames, if set. ``subscriptions`` lists each one's ``since``, ``queries``
    each one's query string."""

    def __init__(self) -> None:
        self.web = WebFiles()
        self.frames: list[str] = []
        self.opening: dict[int, str] = {}
        self.drop_after: int | None = None
        self.subscriptions: list[int | None] = []
        self.queries: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Future[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _page(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/roots":
            return None
        page = self.web.lookup(path)
        if page is None:
            body = b'{"type": "error", "code": "not-found", "message": "no route"}'
            return Response(404, "Not Found", Headers([("Content-Length", str(len(body)))]), body)
        return Response(200, "OK", Headers(page.headers()), page.body)

    async def _roots(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        query = urlsplit(conn.request.path).query
        self.queries.append(query)
        since = parse_qs(query).get("since")
        start = int(since[0]) if since else None
        self.subscriptions.append(start)
        drop, self.drop_after = self.drop_after, None
        frames = self.frames[start or 0 :]
        if frames and (start or 0) in self.opening:
            frames[0] = self.opening[start or 0]
        try:
            for i, frame in enumerate(frames):
                if drop is not None and i == drop:
                    await conn.close(1001, "going away")
                    return
                await conn.send(frame)
            await conn.wait_closed()
        except ConnectionClosed:
            pass

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = self._loop.create_future()
            async with serve(
                self._roots, "127.0.0.1", 0, process_request=self._page, max_size=4096
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                self._ready.set()
                await self._stop

        self._loop.run_until_complete(main())

    def __enter__(self) -> StreamServer:
        self._thread.start()
        assert self._ready.wait(10), "the stream server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        stop = self._stop
        assert stop is not None
        self._loop.call_soon_threadsafe(stop.set_result, None)
        self._thread.join(10)


class StaticPages:
    """The pages hosted on another origin than the prover's, as a custodian
    may host them: prover.web's files with a CSP that lets them connect to
    ``connect_to`` (the prover's origin), on a port fixed at creation."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connect_to = ""
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> StaticPages:
        web, pages = WebFiles(), self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = web.lookup(urlsplit(self.path).path)
                if found is None:
                    self.send_error(404)
                    return
                ws = pages.connect_to.replace("http://", "ws://")
                policy = CONTENT_SECURITY_POLICY.replace(
                    "connect-src 'self'", f"connect-src 'self' {pages.connect_to} {ws}"
                )
                self.send_response(200)
                for name, value in found.headers(policy):
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(found.body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


PAGES_ELSEWHERE = StaticPages()  # the origin the session's daemon lists in cors_origins
