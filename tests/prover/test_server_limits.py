"""Hostile clients against a real daemon on 127.0.0.1: memory per connection,
connection and descriptor limits, subscriber slots, Authorization, ingest
framing, and the shedding of stalled subscribers (issue 15, items 1, 4-7, 11)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from prover.engine import Engine
from prover.limits import connection_bound
from tests.prover.test_engine import balances
from tests.prover.test_server import AUTH, serve
from verifier.cli import main as verify_main

UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
AUDITOR = "acme:" + "a" * 32


def request(path: str, headers: str = "", method: str = "GET", upgrade: bool = True) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + (UPGRADE if upgrade else "")
        + headers
        + "\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes, length: int | None = None) -> bytes:
    """A masked client frame (zero mask); ``length`` may announce more than sent."""
    n = len(payload) if length is None else length
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def raw(
    host: str, data: bytes, upgrade_first: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address, port = host.split(":")
    reader, writer = await asyncio.open_connection(address, int(port))
    if upgrade_first:
        writer.write(upgrade_first)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
    writer.write(data)
    await writer.drain()
    return reader, writer


async def http(host: str, data: bytes) -> tuple[int, bytes]:
    reader, writer = await raw(host, data)
    response = await reader.read()
    writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[1]


async def metric(host: str, name: str) -> int:
    status, body = await http(host, request("/metrics", upgrade=False))
    assert status == 200
    found = re.search(rf"^solvency_{name} (\d+)(?:\.0)?$", body.decode(), re.M)
    assert found is not None, name
    return int(found.group(1))


def test_a_thousand_hostile_clients_hold_a_bounded_amount(tmp_path: Path) -> None:
    """1,000 clients, 250 of each: a 1 MiB frame begun (128 KiB sent) on /roots;
    200 small messages on /roots; a handshake of 40 header lines of 8 KB never
    finished; 2,000 pings never reading the pongs. Before the limits, the
    daemon held ~250 MB for them (16 MiB frames, 16 queued messages, 1 MiB
    handshakes, unbounded pongs); now what it holds stays far below the bound
    of limits.py, and /healthz and /ingest are served meanwhile."""
    buffer_bytes = 16 << 10

    async def scenario(engine: Engine, host: str) -> None:
        roots = request("/roots")
        big = client_frame(0x2, b"x" * (128 << 10), length=1 << 20)
        small = client_frame(0x1, b"y" * 1024) * 200
        slow = b"GET /roots HTTP/1.1\r\n" + b"".join(
            f"X-Pad-{i}: {'a' * 7990}\r\n".encode() for i in range(40)
        )
        pings = client_frame(0x9, b"p" * 125) * 2000
        hostile = [(big, roots), (small, roots), (slow, b""), (pings, roots)]
        writers: list[asyncio.StreamWriter] = []

        async def attack(kind: int) -> None:
            data, first = hostile[kind % 4]
            try:
                _, writer = await raw(host, data, first)
                writers.append(writer)
            except (OSError, asyncio.IncompleteReadError):
                pass  # closed on us: fine

        await asyncio.gather(*(attack(i) for i in range(1000)))
        await asyncio.sleep(0.5)  # the daemon reads what was sent
        held = await metric(host, "connection_bytes")
        assert held <= 1000 * connection_bound(buffer_bytes)  # the stated bound
        assert held < 8 << 20, held  # in fact: what is queued, not what was sent
        status, body = await http(host, request("/healthz", upgrade=False))
        assert status == 200, body
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            await producer.send(balances("core", (1, "alice", "BTC", 5)))
            assert json.loads(await producer.recv())["type"] == "ack"
        for writer in writers:
            writer.close()

    serve(
        tmp_path,
        scenario,
        max_subscribers=1000,
        max_anonymous_per_address=1000,
        subscriber_buffer_bytes=buffer_bytes,
    )


def test_roots_closes_a_sender_with_1008(tmp_path: Path) -> None:
    async def scenario(engine: Engine, host: str) -> None:
        async with connect(f"ws://{host}/roots") as ws:
            await ws.send("hello")
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        async with connect(f"ws://{host}/roots", max_size=None) as ws:
            await ws.send("x" * 5000)  # above the 4 KiB of every unauthenticated route
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009

    serve(tmp_path, scenario)


def test_idle_sockets_cannot_lock_out_the_operator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Subscribers fill their slots and 300 idle sockets the rest of
    max_connections (71 here): /healthz, /metrics and /ingest still get in
    (the oldest idle socket makes room), and refusals are logged once per
    interval, not once per connection."""

    async def scenario(engine: Engine, host: str) -> None:
        subs = [await connect(f"ws://{host}/roots") for _ in range(5)]
        address, port = host.split(":")
        idle = [await asyncio.open_connection(address, int(port)) for _ in range(300)]
        await asyncio.sleep(1.1)  # past IDLE_GRACE
        for _ in range(3):
            status, _ = await http(host, request("/healthz", upgrade=False))
            assert status == 200
        assert await metric(host, "connections") <= 71
        assert await metric(host, "refused_connections_total") >= 229
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            await producer.send(balances("core", (1, "alice", "BTC", 5)))
            assert json.loads(await producer.recv())["type"] == "ack"
        for ws in subs:
            await ws.close()
        for _, writer in idle:
            writer.close()

    with caplog.at_level(logging.WARNING, logger="solvency.server"):
        serve(tmp_path, scenario, max_subscribers=5, auditor_slots=2, max_anonymous_per_address=5)
    refusals = [r for r in caplog.records if "connections" in r.getMessage()]
    assert 1 <= len(refusals) <= 4  # one line per kind and interval, for 229+ refusals


def test_auditors_keep_their_slots(tmp_path: Path) -> None:
    """Anonymous subscribers are capped per address and in all; an auditor with
    its token (scheme in any case) gets a reserved slot even then."""

    async def scenario(engine: Engine, host: str) -> None:
        anonymous = [await connect(f"ws://{host}/roots") for _ in range(2)]
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://{host}/roots")
        assert info.value.response.status_code == 503
        assert b"this address" in info.value.response.body
        token = AUDITOR.split(":")[1]
        auditor = await connect(
            f"ws://{host}/roots", additional_headers={"Authorization": f"bEaReR {token}"}
        )
        for headers, code in [
            ({"Authorization": f"Bearer {token}"}, 503),  # its one slot is taken
            ({"Authorization": "Bearer " + "b" * 32}, 401),
        ]:
            with pytest.raises(InvalidStatus) as info:
                await connect(f"ws://{host}/roots", additional_headers=headers)
            assert info.value.response.status_code == code
        await auditor.close()
        async with connect(
            f"ws://{host}/roots", additional_headers={"Authorization": f"Bearer {token}"}
        ):
            pass  # the slot was freed
        for ws in anonymous:
            await ws.close()

    serve(
        tmp_path,
        scenario,
        max_subscribers=10,
        max_anonymous_per_address=2,
        auditor_tokens=AUDITOR,
        auditor_slots=1,
    )


def test_watch_presents_its_auditor_token(tmp_path: Path) -> None:
    """With every anonymous slot taken, `solvency-verify watch --token` still
    streams; a wrong token is a configuration error (exit 2), not a retry loop."""

    async def scenario(engine: Engine, host: str) -> None:
        async with connect(f"ws://{host}/roots"):  # the one anonymous slot
            key, token = str(engine.verifier_key), AUDITOR.split(":")[1]
            watch = ["watch", f"ws://{host}", "--key", key, "--max-epochs", "2"]
            good = [*watch, "--state", str(tmp_path / "a"), "--token", token]
            assert await asyncio.to_thread(verify_main, good) == 0
            wrong = [*watch, "--state", str(tmp_path / "b"), "--token", "b" * 32]
            assert await asyncio.to_thread(verify_main, wrong) == 2

    serve(tmp_path, scenario, max_subscribers=1, auditor_tokens=AUDITOR, auditor_slots=1)


def test_authorization_and_methods(tmp_path: Path) -> None:
    """A duplicated Authorization is 400 with a JSON error on every route (it
    was 500 and a traceback); the scheme is case-insensitive; POST is 405."""

    async def scenario(engine: Engine, host: str) -> None:
        twice = "Authorization: Bearer secret-token\r\nAuthorization: Bearer x\r\n"
        for path in ("/proof?user=alice", "/ingest", "/admin/export", "/roots"):
            status, body = await http(host, request(path, twice))
            assert status == 400, (path, body)
            assert json.loads(body)["code"] == "bad-request"
        status, body = await http(host, request("/proof?user=alice", method="POST"))
        assert status == 405 and json.loads(body)["code"] == "method-not-allowed"
        lower = {"Authorization": "bearer secret-token"}
        async with connect(f"ws://{host}/ingest", additional_headers=lower) as producer:
            await producer.send(balances("core", (1, "alice", "BTC", 5)))
            assert json.loads(await producer.recv())["type"] == "ack"
        token = engine.user_token("alice")
        status, _ = await http(
            host, request("/proof?user=alice", f"Authorization: BEARER  {token}\r\n", upgrade=False)
        )
        assert status in (200, 404)  # authenticated: a proof, or none yet

    serve(tmp_path, scenario)


def test_ingest_refuses_binary_and_untyped_messages(tmp_path: Path) -> None:
    """A message without "type" was applied as balances: now refused, the id
    echoed, nothing applied; a binary frame gets a structured error."""

    async def scenario(engine: Engine, host: str) -> None:
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            await producer.send(balances("core", (1, "alice", "BTC", 5), id="first"))
            assert json.loads(await producer.recv())["type"] == "ack"
            untyped = json.loads(balances("core", (2, "alice", "BTC", 999), id="u-1"))
            del untyped["type"]
            await producer.send(json.dumps(untyped))
            reply = json.loads(await producer.recv())
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "bad-message", "u-1")
            await producer.send(balances("core", (3, "alice", "BTC", 5), id=7).encode())
            reply = json.loads(await producer.recv())
            assert (reply["code"], reply["id"]) == ("bad-message", None)
            await producer.send(balances("core", (4, "bob", "XX", 1), id="bad-asset"))
            assert json.loads(await producer.recv())["id"] == "bad-asset"
        stored = await asyncio.to_thread(
            lambda: {(u, a): m for chunk in engine.store.iter_balances() for u, a, m in chunk}
        )
        assert stored == {("alice", "BTC"): 5}

    serve(tmp_path, scenario)


def stalled_subscriber(host: str) -> socket.socket:
    """A /roots client that completes the handshake and then never reads."""
    address, port = host.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect((address, int(port)))
    sock.sendall(request("/roots"))
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


def test_a_stalled_subscriber_frees_its_slot_at_once(tmp_path: Path) -> None:
    """At 20 epochs/s, a subscriber that never reads is shed on the bytes that
    wait for it; its slot (the only one) is free the moment it is counted."""

    async def scenario(engine: Engine, host: str) -> None:
        sock = await asyncio.to_thread(stalled_subscriber, host)
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            seq, started = 0, time.monotonic()
            while engine.metrics.shed_subscribers == 0:
                seq += 1
                rows = [(seq * 100 + i, f"user{seq}-{i}", "BTC", 1) for i in range(50)]
                await producer.send(balances("core", *rows))
                await producer.recv()
                await asyncio.sleep(0.05)
                assert time.monotonic() - started < 10
            assert engine.metrics.subscribers == 0
            async with connect(f"ws://{host}/roots") as again:  # not 503
                await again.recv()
        sock.close()

    serve(tmp_path, scenario, max_subscribers=1, subscriber_buffer_bytes=4096)


def test_a_silent_subscriber_is_shed_at_one_epoch_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At one epoch a second the bytes waiting grow slowly: the subscriber that
    answers no ping is shed (counted, 1013), not left to the keepalive."""
    monkeypatch.setattr("prover.roots.PING_INTERVAL", 0.2)
    monkeypatch.setattr("prover.roots.PING_TIMEOUT", 0.3)

    async def scenario(engine: Engine, host: str) -> None:
        sock = await asyncio.to_thread(stalled_subscriber, host)
        started = time.monotonic()
        while engine.metrics.shed_subscribers == 0:
            await asyncio.sleep(0.05)
            assert time.monotonic() - started < 5
        assert engine.metrics.subscribers == 0
        sock.setblocking(False)
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := sock.recv(65536):
                data += chunk
        assert b"\x88" in data and (1013).to_bytes(2, "big") in data  # the close frame
        sock.close()

    serve(tmp_path, scenario, epoch_interval=1.0, max_interval=1.0)


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_NOFILE")
def test_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from prover.limits import raise_descriptor_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        got = raise_descriptor_limit()
        assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 256 or hard <= 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
