"""``solvency-verify relay``: follow a root stream, verify every frame as
``watch`` does, and serve the verified frames on a ``/roots`` of its own
(docs/PROTOCOL.md §11.7). I/O only: the policy is the ``Auditor``'s,
``verifier.relay_history``'s and ``verifier.relay_frames``'s.

A relay holds no key and is not trusted. It follows every asset upstream
(in MessagePack with ``--binary``) and forwards each frame byte for byte as
it came (text or binary, the payload untouched) to subscribers of every
asset in the same encoding, except each connection's first frame, which
carries every report its record binds (PROTOCOL §11.2). Every other frame
it builds from the verified full frame (``verifier.relay_frames``): a
subscriber's first, a frame of chosen assets (``?assets=A,B``) or of
checkpoints only (``?only=checkpoints``), or one in the other encoding (a
subscriber that offers the ``solvency-msgpack`` subprotocol gets it, and
binary frames). Either way a subscriber verifies the custodian's signatures
and the log's proofs itself, and a relay that alters, drops, reorders or
replays a frame is caught by the auditor behind it.

Policy:

- A frame is forwarded once its chain of custody verified (PROTOCOL §7: the
  signature, the record's inclusion, the newest record, consistency with the
  last verified checkpoint, time) and the state it leads to is saved in
  ``--state``. A solvency finding or a witness failure is an alarm the relay
  reports with its evidence, and the frame is still forwarded: each
  subscriber judges it with its own options.
- Any other alarm (a fork, a gap, a replay, a bad signature or proof, a
  malformed frame, a log that no longer reaches what was verified) halts the
  relay: it reports the alarm with its evidence, stops following upstream and
  forwards nothing more, keeps serving the frames it verified, and
  ``/healthz`` answers 503 ``halted`` until it is restarted. Restarted with
  the same ``--state``, it resumes from the last checkpoint it verified, so a
  restart does not accept a fork.
- A live frame is framed once per kind of subscriber (choice of
  subscription, encoding, first frame or not) and the same bytes are written
  to every subscriber of that kind that has at most ``buffer_bytes`` unsent.
  One that has more
  (slow, or a burst after upstream was away) is fed from the history at its
  own pace, a frame at a time once its backlog drained, and joins the live
  frames again when it has caught up; it is shed (closed with 1013) when the
  epoch it needs next has left the history, or when it leaves a ping
  unanswered for ``ping_timeout``. So a subscriber holds at most about
  ``buffer_bytes`` and a frame, whatever the rate. A subscriber that sends a
  data frame is closed with 1008 (one above 4 KiB with 1009).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from verifier.auditor import Alarm, Decision, Frame, Refused, Verified
from verifier.exits import EXIT_INVALID
from verifier.hashing import printable_id
from verifier.record import EpochRecord
from verifier.relay_frames import Builder
from verifier.relay_history import History, Refusal, Relayed, admit, parse_since
from verifier.subscription import Subscription, parse_subscription
from verifier.watch import Follower, run_until_signalled
from verifier.witness_cli import listen_address

__all__ = ["Limits", "Relay", "relay"]

CLOSE_POLICY = 1008
CLOSE_SHED = 1013  # try again later
MAX_INBOUND = 4 << 10  # what a subscriber may send before it is closed (1009)
SOCKET_BUFFER = 16 << 10  # bytes the kernel may hold for a subscriber
SHED_GRACE = 2.0  # seconds a shed subscriber's close gets before its socket is cut


@dataclass(frozen=True, slots=True)
class Limits:
    """What the relay's subscribers may make it hold and do."""

    max_subscribers: int = 1000
    buffer_bytes: int = 256 << 10  # unsent bytes past which a subscriber is fed at its pace
    ping_interval: float = 10.0
    ping_timeout: float = 10.0


@dataclass(slots=True)
class _Slot:
    """A subscriber served: what it chose, whether it gets MessagePack, and
    whether any frame went to it yet (the next is its first, else)."""

    choice: Subscription
    msgpack: bool
    started: bool = False


class Relay(Follower):
    """Follow ``--upstream`` (a ``Follower`` that keeps going past findings),
    keep what verified in ``history`` and serve it (module docstring)."""

    def __init__(self, args: argparse.Namespace, limits: Limits | None = None) -> None:
        super().__init__(args, args.upstream, keep_going=True, max_epochs=0)  # every asset
        self.address = listen_address(args.listen)
        self.limits = limits or Limits(max_subscribers=args.max_subscribers)
        state = self.auditor.state
        self.history = History(args.history, state.size if state else 0)
        self.frames = Builder(self.history)  # the frames of chosen assets or checkpoints
        self.halted: Alarm | None = None
        self.port: int | None = None  # where it listens, once it does
        self.shed = 0  # subscribers shed so far
        self._slots: dict[ServerConnection, _Slot] = {}  # subscribers served
        # those caught up, each live frame written to them; the future, set to
        # the epoch it was not written, hands one back to its pump
        self._live: dict[ServerConnection, asyncio.Future[int]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def subscribers(self) -> int:
        """The subscribers served now, replaying or live."""
        return len(self._slots)

    # upstream

    def on_frame(self, frame: str | bytes, msgpack: bool = False) -> int | None:
        decisions = self.auditor.handle(Frame(frame, time.monotonic(), msgpack))
        self.carry_out(decisions)
        for d in decisions:
            if isinstance(d, Verified):  # saved by carry_out: forward it
                record = d.audit.record
                assert isinstance(record, EpochRecord)  # it follows every asset
                payload = frame.encode() if isinstance(frame, str) else frame
                text = isinstance(frame, str)
                received = Relayed(d.audit.epoch, payload, text, msgpack, d.reports)
                self._publish(self.frames.append(received, record).epoch)
                return None
        return self._halt(decisions)

    def on_refused(self, refused: Refused) -> int | None:
        decisions = self.auditor.handle(refused)
        self.carry_out(decisions)
        return self._halt(decisions)

    def _halt(self, decisions: Sequence[Decision]) -> int | None:
        """Stop forwarding on the alarm among ``decisions`` (none: carry on)."""
        alarm = next((d for d in decisions if isinstance(d, Alarm)), None)
        if alarm is None:
            return None
        self.halted = alarm
        kept = f"epochs {self.history.first} to {self.history.next - 1}"
        self._say(
            {"event": "halted", "check": alarm.check, "first": self.history.first,
             "next": self.history.next},
            f"HALTED on {alarm.check}: forwarding nothing more; serving {kept}",
        )  # fmt: skip
        return EXIT_INVALID

    def health(self) -> str | None:
        """Why ``/healthz`` answers 503, or None for 200."""
        if self.halted is not None:
            return f"halted: {self.halted.check}: {printable_id(self.halted.reason)}"
        if not self.auditor.seen:
            return "no frame verified yet"
        silent = time.monotonic() - self.auditor.silence.since
        if silent > self.auditor.config.max_silence:
            return f"late: no frame verified for {silent:.0f} s"
        return None

    # downstream

    def _publish(self, epoch: int) -> None:
        """Write ``epoch``, just kept in the history, to every live subscriber,
        framed once per kind (choice, encoding, first or not); one with more
        than ``buffer_bytes`` unsent goes back to its pump."""
        wire: dict[tuple[Subscription, bool, bool], bytes] = {}
        for conn, behind in list(self._live.items()):
            slot = self._slots.get(conn)
            if slot is None:  # dropped, and its pump not yet back
                continue
            first = not slot.started
            kind = (slot.choice, slot.msgpack, first)
            data = wire.get(kind)
            if data is None:
                frame = self.frames.frame(epoch, slot.choice, msgpack=slot.msgpack, first=first)
                assert frame is not None  # the newest epoch is in the history
                opcode = Opcode.TEXT if frame.text else Opcode.BINARY
                # What send() would write: no extension is negotiated and a server does not mask.
                data = wire[kind] = WireFrame(opcode, frame.payload).serialize(
                    mask=False, extensions=[]
                )
            buffered = conn.transport.get_write_buffer_size()
            if buffered and buffered + len(data) > self.limits.buffer_bytes:
                del self._live[conn]
                behind.set_result(epoch)
            elif conn.state is State.OPEN:
                conn.transport.write(data)
                slot.started = True

    def _shed(self, conn: ServerConnection, reason: str) -> None:
        """Free ``conn``'s slot now; close it with 1013, cut it if that stalls."""
        self.shed += 1
        self._drop(conn, CLOSE_SHED, reason)

    def _drop(self, conn: ServerConnection, code: int, reason: str) -> None:
        self._slots.pop(conn, None)
        self._live.pop(conn, None)

        async def close() -> None:
            try:
                await asyncio.wait_for(conn.close(code, reason[:120]), SHED_GRACE)
            except TimeoutError:
                conn.transport.abort()

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.method != "GET":
            response = _error(405, "method-not-allowed", f"{request.method}: only GET is served")
            response.headers["Allow"] = "GET"
            return response
        url = urlsplit(request.path)
        if url.path == "/healthz":
            problem = self.health()
            return _response(503 if problem else 200, f"{problem or 'ok'}\n", "text/plain")
        if url.path != "/roots":
            return _error(404, "not-found", f"no route {url.path}")
        answer = admit(self.history, url.query, len(self._slots), self.limits.max_subscribers)
        if isinstance(answer, Refusal):
            return _response(answer.status, answer.body())
        return None

    async def _handler(self, conn: ServerConnection) -> None:
        """One ``/roots`` subscriber, admitted by ``_process_request``."""
        assert conn.request is not None
        query = urlsplit(conn.request.path).query
        since, choice = parse_since(query), parse_subscription(query)  # admitted: they parse
        # websockets answers the handshake and starts this handler without a
        # task switch after _process_request: no other subscriber came in between.
        slot = self._slots[conn] = _Slot(choice, conn.subprotocol is not None)  # the one we select
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:  # keep the kernel's share of a backlog small: ours is seen
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        tasks = [
            asyncio.create_task(c)
            for c in (
                self._pump(conn, since, slot),
                self._refuse_messages(conn),
                self._keepalive(conn),
            )
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._slots.pop(conn, None)
            self._live.pop(conn, None)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump(self, conn: ServerConnection, since: int | None, slot: _Slot) -> None:
        """Send the history from ``since`` at the subscriber's pace, each
        epoch's frame of its ``slot``'s kind, then join the live subscribers
        until ``_publish`` hands it back, behind."""
        epoch = self.history.next if since is None else since
        while True:
            while epoch < self.history.next:
                first = not slot.started
                frame = self.frames.frame(epoch, slot.choice, msgpack=slot.msgpack, first=first)
                if frame is None:
                    self._shed(conn, f"more than {self.history.capacity} epochs behind")
                    await conn.wait_closed()
                    return
                slot.started = True
                await conn.send(frame.payload, text=frame.text)  # waits while it has not drained
                epoch += 1
            # No await since the check above: an epoch published meanwhile is not missed.
            behind = self._live[conn] = asyncio.get_running_loop().create_future()
            epoch = await behind

    async def _refuse_messages(self, conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.recv()
            self._drop(conn, CLOSE_POLICY, "this route takes no messages")
        await conn.wait_closed()

    async def _keepalive(self, conn: ServerConnection) -> None:
        """Ping every ``ping_interval``; shed the subscriber that does not answer."""
        while True:
            await asyncio.sleep(self.limits.ping_interval)
            try:
                async with asyncio.timeout(self.limits.ping_timeout):
                    await (await conn.ping())
            except TimeoutError:
                self._shed(conn, f"no pong within {self.limits.ping_timeout:g} s")
                await conn.wait_closed()
                return

    async def run(self) -> int:
        """Serve while following upstream; once halted, serve what verified until cancelled."""
        host, port = self.address
        async with serve(
            self._handler,
            host,
            port,
            process_request=self._process_request,
            select_subprotocol=_select_subprotocol,
            compression=None,  # frames are framed once for all: no per-connection deflate
            max_size=MAX_INBOUND,
            max_queue=1,
            ping_interval=None,  # _keepalive pings, and sheds a silent subscriber
            close_timeout=SHED_GRACE,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            url = f"ws://{f'[{host}]' if ':' in host else host}:{self.port}/roots"
            self._say(
                {"event": "listening", "url": url, "upstream": self.url, "next": self.history.next},
                f"relaying {printable_id(self.url)} on {url} from epoch {self.history.next}",
            )
            await super().run()
            await asyncio.Future()  # halted: serve until cancelled
        raise AssertionError("unreachable: serving ends when cancelled")


def relay(args: argparse.Namespace) -> int:
    """Relay until SIGINT/SIGTERM: 1 once any alarm was raised, else 0."""
    return run_until_signalled(Relay(args))


def _select_subprotocol(
    conn: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """``solvency-msgpack`` for a ``/roots`` subscriber that offers it, if
    msgspec is installed; else none, whatever was offered (JSON)."""
    assert conn.request is not None  # _process_request admitted it
    if not offered or urlsplit(conn.request.path).path != "/roots":
        return None
    binary = _binary_subprotocol()
    return binary if binary in offered else None


@cache
def _binary_subprotocol() -> Subprotocol | None:
    """The MessagePack subprotocol, or None without msgspec (the ``binary``
    extra): imported when a subscriber first offers a subprotocol."""
    try:
        from verifier.stream_binary import SUBPROTOCOL
    except ImportError:
        return None
    return Subprotocol(SUBPROTOCOL)


def _response(status: int, body: str | bytes, content_type: str = "application/json") -> Response:
    data = body.encode() if isinstance(body, str) else body
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


def _error(status: int, code: str, message: str) -> Response:
    return _response(status, Refusal(status, code, message).body())
