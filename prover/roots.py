"""The root stream, ``/roots`` (docs/PROTOCOL.md §11.2): send-only, shed when stalled.

Each subscriber gets the frames of its subscription (every asset, chosen
assets, or checkpoints only) in its encoding (JSON text frames, or binary
MessagePack frames if it negotiated the ``solvency-msgpack`` subprotocol),
built once per epoch for all who chose the same (prover/fanout.py,
prover/frames.py), and framed for the wire once too (``_wire_frame``).

A subscriber is shed (closed with 1013, counted in ``shed_subscribers``) when
the bytes written to it and not yet sent would pass ``subscriber_buffer_bytes``
(the kernel holds at most ``ROOTS_SOCKET_BUFFER`` more), or when it leaves a
ping unanswered for ``PING_TIMEOUT``: a client that stops reading, at any
epoch rate. Its slot is freed at once; its socket is cut ``SHED_GRACE``
seconds later if the close has not gone through by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket

from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode
from websockets.protocol import State

from prover.errors import SubscriberShed
from prover.frames import Encoding, Frame
from prover.gate import GatedConnection
from prover.served import Served
from verifier.subscription import Subscription

__all__ = ["serve_roots"]

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_SHED = 1013  # try again later
ROOTS_SOCKET_BUFFER = 16 << 10  # bytes the kernel may hold for a root stream subscriber
PING_INTERVAL = 10.0  # seconds between two pings to a subscriber
PING_TIMEOUT = 10.0  # seconds it has to answer before it is shed
SHED_GRACE = 2.0  # seconds a shed subscriber's close frame gets before the socket is cut


@functools.lru_cache(maxsize=8)
def _wire_frame(message: str | bytes) -> bytes:
    """``message`` as the bytes of one WebSocket frame from this server (text
    for a str, binary for bytes), serialized once for all the subscribers of
    an epoch that get it: what ``send`` would write, as no extension is
    negotiated (``compression=None``) and a server does not mask (RFC 6455
    §5.1). Writing it straight to each transport skips ``broadcast``'s
    framing per connection: handing a frame to 1,000 connections on loopback
    took 17-26 ms instead of 30-35. The fan-out hands each frame to its
    subscribers in a row, so the cache holds the few frames of an epoch in
    use (each variant and encoding is another entry). The frame is whole and
    only the loop's thread writes, so it cannot interleave with websockets'
    own frames (pings, close)."""
    if isinstance(message, str):
        return WireFrame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])
    return WireFrame(Opcode.BINARY, message).serialize(mask=False, extensions=[])


async def serve_roots(
    engine: Served,
    conn: GatedConnection,
    since: int | None,
    subscription: Subscription,
    encoding: Encoding = Encoding.JSON,
) -> None:
    """Send the epochs of ``subscription`` in ``encoding`` until the subscriber
    leaves, is shed, or the prover stops."""
    if conn.early_data:  # it sent a message before the handshake completed
        await conn.close(CLOSE_POLICY, "this route takes no messages")
        return
    # Keep the kernel's share of a stalled subscriber's backlog small, so the
    # write buffer below, which is what we can see, tells how far behind it is.
    sock = conn.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, ROOTS_SOCKET_BUFFER)
    limit = conn.gate.limits.buffer_bytes

    def shed(reason: str) -> None:
        """Free the slot now, close with 1013 after what is queued, cut later."""
        conn.gate.unsubscribe(conn)
        if conn.protocol.state is State.OPEN:
            conn.protocol.fail(CLOSE_SHED, reason[:120])
            conn.send_data()
        asyncio.get_running_loop().call_later(SHED_GRACE, conn.transport.abort)

    def offer(frame: Frame) -> bool:
        """Send a live epoch now, unless it would put more than ``limit`` bytes
        in wait for this subscriber: then shed it (False)."""
        data, transport = _wire_frame(frame), conn.transport
        buffered = transport.get_write_buffer_size()
        if buffered and buffered + len(data) > limit:
            shed(f"{buffered} bytes unsent: more than subscriber_buffer_bytes behind")
            return False
        if conn.protocol.state is State.OPEN:  # else closing: nothing more to send
            transport.write(data)
        return True

    async def pump() -> None:
        try:
            async for frame in engine.subscribe(since, offer, subscription, encoding):
                await conn.send(frame)
            await conn.close(CLOSE_GOING_AWAY, "prover shutting down")
        except SubscriberShed:
            await conn.wait_closed()  # shed() is closing it

    async def keepalive() -> None:
        """Ping every PING_INTERVAL; shed the subscriber that does not answer."""
        while True:
            await asyncio.sleep(PING_INTERVAL)
            pong = await conn.ping()
            try:
                await asyncio.wait_for(pong, PING_TIMEOUT)
            except TimeoutError:
                engine.shed(offer)
                shed(f"no pong within {PING_TIMEOUT:.0f} s")
                return

    tasks = [asyncio.create_task(c) for c in (pump(), keepalive(), conn.wait_closed())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
