"""Admission of connections, and what an unauthenticated one may make us hold.

``Gate`` counts every connection from accept to close (prover/limits.py
states the bounds). Invariants:

- at most ``max_connections`` are open: past it, a new connection evicts the
  oldest one that has sent no request in ``IDLE_GRACE`` seconds (an idle
  socket), or, if there is none, is closed at once; so a flood of idle sockets
  cannot lock out ``/ingest``, ``/healthz`` or ``/metrics``, and a client that
  sends its request within ``IDLE_GRACE`` is never evicted. Refusals are
  logged once per interval;
- anonymous ``/roots`` subscribers are at most ``subscribers`` in all and
  ``per_address`` per source address; auditors have ``auditor_slots`` apart;
  a subscriber's slot is freed the moment it is shed or leaves;
- a connection reads messages only once the server opened it for them (an
  authenticated ``/ingest`` or ``/admin/export``); elsewhere a data frame is
  dropped unread and the connection failed with 1008, so nothing is queued,
  and the inbound limit stays ``ANONYMOUS_MAX_SIZE`` until then;
- a connection's unsent output past ``buffer_bytes`` plus a margin (e.g. pongs
  to a ping flood that never reads) aborts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, CloseCode, Frame
from websockets.protocol import State

from prover.limits import Limits, RateLimitedLog
from prover.metrics import Metrics

__all__ = ["Gate", "GatedConnection"]

log = logging.getLogger("solvency.server")
WRITE_MARGIN = 64 << 10  # output beyond buffer_bytes that aborts a connection
IDLE_GRACE = 1.0  # seconds a new connection has to send its request before it may be evicted


class GatedConnection(ServerConnection):
    """A server connection counted by its server's ``Gate`` (``gate``, set on
    the subclass made per server), that drops messages it was not opened for."""

    gate: ClassVar[Gate]
    reads = False  # opened for messages: set by open_for_messages
    early_data = False  # a data frame came before the handshake completed

    def open_for_messages(self, max_size: int) -> None:
        """Let this (authenticated) connection receive messages of ``max_size``."""
        self.reads = True
        self.protocol.max_message_size = max_size

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.gate.admit(self):
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.lost(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.get_write_buffer_size() > self.gate.limits.buffer_bytes + WRITE_MARGIN:
            self.gate.refused("aborted connections that would not read what they asked for")
            self.transport.abort()

    def process_event(self, event: Any) -> None:
        if self.request is None:
            super().process_event(event)  # the request: no longer an idle socket
            self.gate.routed(self)
        elif isinstance(event, Frame) and event.opcode in DATA_OPCODES and not self.reads:
            if self.protocol.state is State.OPEN:
                self.protocol.fail(CloseCode.POLICY_VIOLATION, "this route takes no messages")
                self.send_data()
            else:  # during the handshake: the handler closes it with 1008
                self.early_data = True
        else:
            super().process_event(event)

    def held_bytes(self) -> int:
        """Bytes this connection makes the daemon hold: its request, what it
        sent and we did not parse yet, messages queued, output not yet sent."""
        held = len(self.protocol.reader.buffer)
        if self.request is not None:
            held += sum(len(k) + len(v) + 4 for k, v in self.request.headers.raw_items())
        if hasattr(self, "recv_messages"):
            held += sum(len(f.data) for f in list(self.recv_messages.frames.queue))
        if hasattr(self, "transport"):
            held += self.transport.get_write_buffer_size()
        return held


class Gate:
    """The connections of one server, by class (module docstring)."""

    def __init__(self, limits: Limits, auditors: dict[str, str], metrics: Metrics) -> None:
        self.limits, self.auditors, self.metrics = limits, auditors, metrics
        self.refused = RateLimitedLog(log)
        self._open: set[GatedConnection] = set()
        self._idle: dict[GatedConnection, float] = {}  # accepted, no request yet: oldest first
        self._anonymous: dict[GatedConnection, str] = {}  # subscriber -> source address
        self._per_address: Counter[str] = Counter()
        self._auditing: dict[GatedConnection, str] = {}  # subscriber -> auditor name
        gate = self
        self.connection_class = type("Connection", (GatedConnection,), {"gate": gate})

    @property
    def subscribers(self) -> int:
        return len(self._anonymous) + len(self._auditing)

    def admit(self, conn: GatedConnection) -> bool:
        """At accept: room for ``conn``? Makes room by evicting the oldest idle one."""
        now = conn.loop.time()
        if len(self._open) >= self.limits.max_connections:
            oldest = next(iter(self._idle), None)
            self.metrics.refused_connections += 1
            if oldest is None or now - self._idle[oldest] < IDLE_GRACE:
                self.refused(f"refused connections: {len(self._open)} open (max_connections)")
                return False
            self.lost(oldest)
            oldest.transport.abort()
            self.refused("closed idle connections that sent no request, to admit new ones")
        self._open.add(conn)
        self._idle[conn] = now
        self.metrics.connections = len(self._open)
        return True

    def routed(self, conn: GatedConnection) -> None:
        self._idle.pop(conn, None)

    def subscribe(self, conn: GatedConnection, auditor: str | None) -> str | None:
        """Take a ``/roots`` slot for ``conn``; None, or why there is none (503)."""
        if auditor is not None:
            if len(self._auditing) >= self.limits.auditor_slots:
                return "every auditor slot is taken"
            self._auditing[conn] = auditor
        else:
            address = _address(conn)
            if len(self._anonymous) >= self.limits.subscribers:
                return "too many subscribers"
            if self._per_address[address] >= self.limits.per_address:
                return "too many subscribers from this address"
            self._anonymous[conn] = address
            self._per_address[address] += 1
        return None

    def unsubscribe(self, conn: GatedConnection) -> None:
        """Free ``conn``'s slot, if it holds one (idempotent)."""
        self._auditing.pop(conn, None)
        address = self._anonymous.pop(conn, None)
        if address is not None:
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    def lost(self, conn: GatedConnection) -> None:
        self.unsubscribe(conn)
        self._idle.pop(conn, None)
        self._open.discard(conn)
        self.metrics.connections = len(self._open)

    def held_bytes(self) -> int:
        """What every open connection makes the daemon hold (``held_bytes``)."""
        return sum(conn.held_bytes() for conn in list(self._open))


def _address(conn: ServerConnection) -> str:
    peer = conn.transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)
