"""The prover's network face: one port, routes of docs/PROTOCOL.md §11.

Plain HTTP routes (``/healthz``, ``/metrics``, ``/proof``) and refusals (401,
404, 503) are answered in ``process_request`` during the opening handshake;
``/ingest`` and ``/roots`` continue as WebSockets. All the work is the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import http
import json
import logging
import socket
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from prover.engine import Engine
from prover.errors import IngestError, NotRetained, ProverError, SubscriberShed
from prover.messages import error_reply, parse_ingest
from prover.metrics import render_metrics

__all__ = ["start_server"]

log = logging.getLogger("solvency.server")
CLOSE_SHED = 1013  # try again later
ROOTS_SOCKET_BUFFER = 16 << 10  # bytes the kernel may hold for a root stream subscriber
CLOSE_GOING_AWAY = 1001


def _response(status: int, body: str | bytes, content_type: str = "application/json") -> Response:
    data = body.encode() if isinstance(body, str) else body
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


def _error(status: int, code: str, message: str) -> Response:
    return _response(status, json.dumps({"type": "error", "code": code, "message": message}))


def _bearer(request: Request) -> str:
    value = request.headers.get("Authorization", "")
    return value[7:] if value.startswith("Bearer ") else ""


async def start_server(engine: Engine, host: str, port: int) -> Server:
    """Listen on ``host:port`` (0 picks a free port: see ``server.sockets``)."""
    config = engine.config
    # /roots connections, counted from the handshake on: a burst of handshakes
    # cannot pass the cap before the first of them subscribes.
    subscribers: weakref.WeakSet[ServerConnection] = weakref.WeakSet()

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        if url.path == "/healthz":
            ok = engine.healthy()
            return _response(200 if ok else 503, "ok\n" if ok else "late\n", "text/plain")
        if url.path == "/metrics":
            return _response(200, render_metrics(engine.metrics), "text/plain; version=0.0.4")
        if url.path == "/proof":
            return await _proof(engine, request, query)
        if url.path in ("/ingest", "/admin/export"):  # the operator's side
            if not config.ingest_token or not _token_ok(_bearer(request), config.ingest_token):
                return _error(
                    401, "unauthorized", f"{url.path} needs Authorization: Bearer <token>"
                )
            return None
        if url.path == "/roots":
            if len(subscribers) >= config.max_subscribers:
                return _error(503, "busy", "too many subscribers")
            try:
                since = _since(query)
            except ValueError as exc:
                return _error(400, "bad-request", str(exc))
            if since is not None and since > engine.metrics.epoch + 1:
                return _error(400, "bad-since", f"since={since} is beyond the log")
            subscribers.add(conn)
            return None
        return _error(404, "not-found", f"no route {url.path}")

    async def handler(conn: ServerConnection) -> None:
        assert conn.request is not None
        url = urlsplit(conn.request.path)
        if url.path == "/ingest":
            await _ingest(engine, conn)
        elif url.path == "/admin/export":
            await _export(engine, conn)
        else:
            try:
                await _roots(engine, conn, _since(parse_qs(url.query)))
            finally:
                subscribers.discard(conn)

    return await serve(
        handler,
        host,
        port,
        process_request=process_request,
        max_size=config.max_message_bytes,
        compression=None,  # deflate costs CPU per subscriber per epoch; _text_frame needs none
        ping_interval=20,
        ping_timeout=20,
        close_timeout=5,
    )


def _token_ok(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _since(query: dict[str, list[str]]) -> int | None:
    values = query.get("since")
    if not values:
        return None
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 19:
        raise ValueError("since must be one epoch number")
    return int(values[0])


async def _proof(engine: Engine, request: Request, query: dict[str, list[str]]) -> Response:
    users = query.get("user", [])
    if len(users) != 1:
        return _error(400, "bad-request", "give exactly one user=ID")
    user = users[0]
    if not engine.check_user_token(user, _bearer(request)):
        return _error(401, "unauthorized", "wrong or missing token for this user")
    epoch = None
    if "epoch" in query:
        wanted = query["epoch"]
        if len(wanted) != 1 or not wanted[0].isdigit() or len(wanted[0]) > 19:
            return _error(400, "bad-request", "epoch must be one epoch number")
        epoch = int(wanted[0])
    try:
        proof = await engine.proof(user, epoch)
    except NotRetained as exc:
        return _error(404, "not-retained", str(exc))
    if proof is None:
        return _error(404, "no-leaf", "this user holds nothing in that epoch")
    return _response(200, proof.to_json())


async def _ingest(engine: Engine, conn: ServerConnection) -> None:
    """One message in, one reply out, in order; errors leave the connection usable."""
    try:
        async for message in conn:
            request_id: Any = None
            try:
                batch = parse_ingest(message)
                request_id = batch.id
                reply = await engine.ingest(batch)
            except IngestError as exc:
                engine.metrics.ingest_errors += 1
                reply = error_reply(request_id, exc)
            except Exception:
                log.exception("ingest failed")
                engine.metrics.ingest_errors += 1
                reply = error_reply(request_id, IngestError("internal", "internal error"))
            await conn.send(reply)
    except ConnectionClosed:
        pass


async def _export(engine: Engine, conn: ServerConnection) -> None:
    """Write every user's proof into the directory the operator names; report progress."""

    async def progress(done: int, total: int) -> None:
        await conn.send(json.dumps({"type": "progress", "done": done, "total": total}))

    try:
        request = json.loads(await conn.recv())
        out = Path(request["out"])
        if not out.is_absolute():
            raise ProverError("out must be an absolute path on the prover's host")
        epoch, files = await engine.export_proofs(out, progress)
        await conn.send(json.dumps({"type": "done", "epoch": epoch, "files": files}))
    except (ProverError, OSError, ValueError, KeyError, TypeError) as exc:
        reply = {"type": "error", "code": "export-failed", "message": str(exc)}
        await conn.send(json.dumps(reply))
    except ConnectionClosed:
        pass


@functools.lru_cache(maxsize=4)
def _text_frame(message: str) -> bytes:
    """``message`` as the bytes of one WebSocket text frame from this server,
    serialized once for all the subscribers of an epoch: what ``send`` would
    write, as no extension is negotiated (``compression=None``) and a server
    does not mask (RFC 6455 §5.1). Writing it straight to each transport skips
    ``broadcast``'s framing per connection: handing a frame to 1,000
    connections on loopback took 17-26 ms instead of 30-35. The frame is whole
    and only the loop's thread writes, so it cannot interleave with
    websockets' own frames (pings, close)."""
    return Frame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])


async def _roots(engine: Engine, conn: ServerConnection, since: int | None) -> None:
    """Send epochs until the subscriber leaves, is shed, or the prover stops."""

    # Keep the kernel's share of a stalled subscriber's backlog small, so the
    # write buffer below, which is what we can see, tells how far behind it is.
    sock = conn.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, ROOTS_SOCKET_BUFFER)

    def offer(frame: str) -> bool:
        """Send a live epoch now, unless the client is this many epochs behind."""
        transport = conn.transport
        if transport.get_write_buffer_size() > engine.config.subscriber_queue * len(frame):
            return False
        if conn.protocol.state is State.OPEN:  # else closing: nothing more to send
            transport.write(_text_frame(frame))
        return True

    async def pump() -> None:
        try:
            async for frame in engine.subscribe(since, offer):
                await conn.send(frame)
            await conn.close(CLOSE_GOING_AWAY, "prover shutting down")
        except SubscriberShed as exc:
            await conn.close(CLOSE_SHED, str(exc)[:120])

    sending = asyncio.create_task(pump())
    closed = asyncio.create_task(conn.wait_closed())
    try:
        await asyncio.wait({sending, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, closed):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await sending
