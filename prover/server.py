"""The prover's network face: one port, routes of docs/PROTOCOL.md §11.

Plain HTTP routes (``/healthz``, ``/metrics``, ``/proof``, the browser pages
of prover/web.py) and refusals (400,
401, 404, 405, 503) are answered in ``process_request`` during the opening
handshake; ``/ingest`` and ``/roots`` (prover/roots.py) continue as
WebSockets. All the work is the engine's. Every connection is admitted and
bounded by prover/gate.py, within the limits of prover/limits.py.

A ``/roots`` subscriber that offers the ``solvency-msgpack`` subprotocol
gets it selected, and its frames in MessagePack (PROTOCOL §11.2); any
other offer, and every other route, continue without a subprotocol (JSON).
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from prover.auth import BadAuthorization, auditor_table, bearer_token, token_ok
from prover.cors import allow_headers, origin_allowed, preflight_headers
from prover.errors import IngestError, NotRetained, ProverError
from prover.frames import Encoding
from prover.gate import Gate, GatedConnection
from prover.limits import ACCEPT_BACKLOG, ANONYMOUS_MAX_SIZE, descriptor_limit, plan_limits
from prover.metrics import render_metrics
from prover.roots import serve_roots
from prover.served import Served
from prover.sources import Disposition, ingest_message, refusal
from prover.web import WebFiles
from verifier.stream_binary import SUBPROTOCOL
from verifier.subscription import parse_subscription

__all__ = ["start_server"]

log = logging.getLogger("solvency.server")
CLOSE_GOING_AWAY = 1001


def http_response(
    status: int, body: str | bytes, content_type: str = "application/json"
) -> Response:
    """An HTTP answer to a WebSocket handshake: ``body`` with its length and type."""
    data = body.encode() if isinstance(body, str) else body
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


def http_error(status: int, code: str, message: str) -> Response:
    """A structured error answer: ``{"type": "error", "code", "message"}``."""
    return http_response(status, json.dumps({"type": "error", "code": code, "message": message}))


def not_get(request: Request) -> Response | None:
    """405 for any method but GET (the only one served), else None."""
    if request.method == "GET":
        return None
    response = http_error(405, "method-not-allowed", f"{request.method}: only GET is served")
    response.headers["Allow"] = "GET"
    return response


async def start_server(engine: Served, host: str, port: int) -> Server:
    """Listen on ``host:port`` (0 picks a free port: see ``server.sockets``)."""
    config = engine.config
    limits, warning = plan_limits(config, descriptor_limit())
    if warning:
        log.warning("%s", warning)
    # /roots slots are taken from the handshake on: a burst of handshakes
    # cannot pass the cap before the first of them subscribes.
    gate = Gate(limits, auditor_table(config.auditor_tokens), engine.metrics)
    web = WebFiles()

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        assert isinstance(conn, GatedConnection)
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and urlsplit(request.path).path == "/proof":
            allowed = preflight_headers(origin, config.cors_origins)
            if not allowed:
                return http_error(
                    403, "forbidden-origin", f"origin {origin} is not in cors_origins"
                )
            response = http_response(204, b"", "text/plain")
            response.headers.update(allowed)
            return response
        if (refused := not_get(request)) is not None:
            return refused
        try:
            presented = bearer_token(request.headers)
        except BadAuthorization as exc:
            return http_error(400, "bad-request", str(exc))
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        if url.path == "/healthz":
            problem = engine.health()
            return http_response(503 if problem else 200, f"{problem or 'ok'}\n", "text/plain")
        if url.path == "/metrics":
            engine.metrics.connection_bytes = gate.held_bytes()
            text = render_metrics(engine.metrics, engine.witness_stats())
            return http_response(200, text, CONTENT_TYPE_LATEST)
        if url.path == "/proof":
            response = await _proof(engine, presented, query)
            response.headers.update(allow_headers(origin, config.cors_origins))
            return response
        if url.path in ("/ingest", "/admin/export"):  # the operator's side: a token each
            token = config.ingest_token if url.path == "/ingest" else config.admin_token
            if not token or not token_ok(presented, token):
                return http_error(
                    401, "unauthorized", f"{url.path} needs Authorization: Bearer <token>"
                )
            conn.open_for_messages(config.max_message_bytes)  # authenticated: may send
            return None
        if url.path == "/roots":
            if not origin_allowed(origin, request.headers.get("Host"), config.cors_origins):
                return http_error(
                    403, "forbidden-origin", f"origin {origin} is not in cors_origins"
                )
            try:
                since = _since(query)
                parse_subscription(url.query)
            except ValueError as exc:
                return http_error(400, "bad-request", str(exc))
            if since is not None and since > engine.metrics.published_epoch + 1:
                return http_error(400, "bad-since", f"since={since} is beyond the log")
            auditor = next((n for t, n in gate.auditors.items() if token_ok(presented, t)), None)
            if presented and auditor is None:
                return http_error(401, "unauthorized", "unknown auditor token")
            refusal = gate.subscribe(conn, auditor)
            if refusal is not None:
                gate.refused(f"refused subscribers: {refusal}")
                return http_error(503, "busy", refusal)
            conn.ping_interval = None  # serve_roots pings, and sheds a silent subscriber
            return None
        page = web.lookup(url.path)
        if page is not None:
            return Response(200, "OK", Headers(page.headers()), page.body)
        return http_error(404, "not-found", f"no route {url.path}")

    async def handler(conn: ServerConnection) -> None:
        assert conn.request is not None and isinstance(conn, GatedConnection)
        url = urlsplit(conn.request.path)
        if conn.early_data:  # a message before the handshake completed
            await conn.close(1008, "message sent before the handshake completed")
        elif url.path == "/ingest":
            await _ingest(engine, conn)
        elif url.path == "/admin/export":
            await _export(engine, conn)
        else:
            try:  # the query was checked in process_request
                subscription = parse_subscription(url.query)
                since, encoding = _since(parse_qs(url.query)), Encoding.of(conn.subprotocol)
                await serve_roots(engine, conn, since, subscription, encoding)
            finally:
                gate.unsubscribe(conn)

    server = await serve(
        handler,
        host,
        port,
        process_request=process_request,
        select_subprotocol=_select_subprotocol,
        create_connection=gate.connection_class,
        # what anyone may send; raised for authenticated /ingest and /admin/export
        max_size=ANONYMOUS_MAX_SIZE,
        max_queue=8,  # messages read ahead of the handler (authenticated routes only)
        compression=None,  # deflate costs CPU per subscriber per epoch; roots.py frames once
        ping_interval=20,
        ping_timeout=20,
        close_timeout=5,
        open_timeout=10,
        backlog=ACCEPT_BACKLOG,
    )
    log.info(
        "at most %d connections (%d anonymous subscribers, %d auditor slots); unauthenticated"
        " ones hold at most %d MiB in all",
        limits.max_connections,
        limits.subscribers,
        limits.auditor_slots,
        limits.memory_bound >> 20,
    )
    return server


def _select_subprotocol(
    conn: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """``solvency-msgpack`` for a ``/roots`` subscriber that offers it; else
    none, whatever was offered (JSON, the default)."""
    assert conn.request is not None  # process_request admitted it
    if SUBPROTOCOL in offered and urlsplit(conn.request.path).path == "/roots":
        return Subprotocol(SUBPROTOCOL)
    return None


def _since(query: dict[str, list[str]]) -> int | None:
    values = query.get("since")
    if not values:
        return None
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 19:
        raise ValueError("since must be one epoch number")
    return int(values[0])


async def _proof(engine: Served, token: str, query: dict[str, list[str]]) -> Response:
    users = query.get("user", [])
    if len(users) != 1:
        return http_error(400, "bad-request", "give exactly one user=ID")
    user = users[0]
    if not engine.check_user_token(user, token):
        return http_error(401, "unauthorized", "wrong or missing token for this user")
    epoch = None
    if "epoch" in query:
        wanted = query["epoch"]
        if len(wanted) != 1 or not wanted[0].isdigit() or len(wanted[0]) > 19:
            return http_error(400, "bad-request", "epoch must be one epoch number")
        epoch = int(wanted[0])
    try:
        proof = await engine.proof(user, epoch)
    except NotRetained as exc:
        return http_error(404, "not-retained", str(exc))
    if proof is None:
        return http_error(404, "no-leaf", "this user holds nothing in that epoch")
    return http_response(200, proof.to_json())


async def _ingest(engine: Served, conn: ServerConnection) -> None:
    """One message in, one reply out, in order; errors leave the connection usable."""
    try:
        async for message in conn:
            if isinstance(message, bytes):  # §11.1: a message is one text frame
                binary = IngestError("bad-message", "binary frame: send JSON in a text frame")
                outcome = refusal(engine, binary)
            else:
                outcome = await ingest_message(engine, message)
            await conn.send(outcome.reply())
            if outcome.disposition is Disposition.STOPPING:  # nothing more is stored
                await conn.close(CLOSE_GOING_AWAY, "prover shutting down")  # replay after restart
                return
    except ConnectionClosed:
        pass


async def _export(engine: Served, conn: ServerConnection) -> None:
    """On ``{"type": "export"}``, write every user's proof into a new directory
    under ``export_dir`` (no path comes from the network); report progress, then
    the directory written."""

    async def progress(done: int, total: int) -> None:
        await conn.send(json.dumps({"type": "progress", "done": done, "total": total}))

    try:
        try:
            request = json.loads(await conn.recv())
        except (ValueError, TypeError):
            request = None
        if request != {"type": "export"}:
            reply = {
                "type": "error",
                "code": "bad-request",
                "message": 'send {"type": "export"}: files go to export_dir, named by the prover',
            }
            await conn.send(json.dumps(reply))
            return
        try:
            epoch, out, files = await engine.export_proofs(progress)
        except ProverError as exc:
            log.warning("export failed: %s", exc)
            reply = {"type": "error", "code": "export-failed", "message": str(exc)}
            await conn.send(json.dumps(reply))
            return
        log.info("exported %d proofs of epoch %d to %s", files, epoch, out)
        done = {"type": "done", "epoch": epoch, "files": files, "dir": str(out)}
        await conn.send(json.dumps(done))
    except ConnectionClosed:
        pass
