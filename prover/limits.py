"""The daemon's resource limits: descriptors, connections, memory per connection.

Bounds (docs/OPERATIONS.md, "Security"; docs/PROTOCOL.md §11):

- descriptors: the soft RLIMIT_NOFILE is raised to the hard limit at start;
  connections stay ``FD_RESERVE`` below it (the process's own files and two
  accept backlogs), so accept() never meets EMFILE;
- connections: at most ``max_connections``; of those, anonymous root stream
  subscribers are ``max_subscribers`` at most (``max_anonymous_per_address``
  per source address), auditors have ``auditor_slots`` of their own, and
  ``CONNECTION_RESERVE`` are left for ``/ingest``, ``/healthz``, ``/metrics``
  and handshakes under way (prover/gate.py evicts the oldest idle handshake);
- memory per connection before authentication, and on ``/roots``: the request
  (``MAX_HEADERS`` lines of at most ``MAX_LINE`` bytes), one inbound frame of
  at most ``ANONYMOUS_MAX_SIZE`` bytes (none is queued), and at most
  ``subscriber_buffer_bytes`` written but not yet sent: ``connection_bound``.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import websockets.http11

from prover.config import Config

__all__ = [
    "ACCEPT_BACKLOG",
    "ANONYMOUS_MAX_SIZE",
    "CONNECTION_RESERVE",
    "FD_RESERVE",
    "Limits",
    "RateLimitedLog",
    "connection_bound",
    "descriptor_limit",
    "plan_limits",
    "raise_descriptor_limit",
]

ANONYMOUS_MAX_SIZE = 4 << 10  # inbound message bytes before authentication, and on /roots
MAX_LINE = 4096  # bytes of the request line and of each header line
MAX_HEADERS = 24
ACCEPT_BACKLOG = 64  # listen() backlog, also what asyncio accepts in one loop iteration
FD_RESERVE = 64 + 2 * ACCEPT_BACKLOG  # own files; sockets accepted before being refused
CONNECTION_RESERVE = 64  # connections left for /ingest, /healthz, /metrics, handshakes
CONNECTION_OVERHEAD = 32 << 10  # objects of one connection: transport, protocol, tasks
LOG_INTERVAL = 10.0  # seconds between two log lines about refused connections

# websockets reads these module limits on each request (its documented
# WEBSOCKETS_MAX_LINE_LENGTH and WEBSOCKETS_MAX_NUM_HEADERS, set at import):
# 8 KiB x 128 headers would let a handshake hold 1 MiB.
websockets.http11.MAX_LINE_LENGTH = min(websockets.http11.MAX_LINE_LENGTH, MAX_LINE)
websockets.http11.MAX_NUM_HEADERS = min(websockets.http11.MAX_NUM_HEADERS, MAX_HEADERS)


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (capped at 2**20); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return descriptor_limit()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:  # e.g. above fs.nr_open: keep what we have
        logging.getLogger("solvency.limits").warning("could not raise RLIMIT_NOFILE: %s", exc)
    return descriptor_limit()


def descriptor_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class Limits:
    """What the server admits; every connection class has its own ceiling."""

    max_connections: int
    subscribers: int  # anonymous /roots
    per_address: int  # anonymous /roots per source address
    auditor_slots: int  # /roots with an auditor token
    buffer_bytes: int  # written to one /roots connection, not yet sent

    @property
    def memory_bound(self) -> int:
        """Bytes all connections together can make the daemon hold, authenticated
        ingest and export aside (their messages are up to ``max_message_bytes``)."""
        return self.max_connections * connection_bound(self.buffer_bytes)


def connection_bound(buffer_bytes: int) -> int:
    """Bytes one unauthenticated (or /roots) connection can make the daemon hold."""
    request = (MAX_HEADERS + 1) * MAX_LINE
    return request + ANONYMOUS_MAX_SIZE + buffer_bytes + CONNECTION_OVERHEAD


def plan_limits(config: Config, descriptors: int) -> tuple[Limits, str | None]:
    """The limits under ``descriptors`` open files, and a warning if the
    configuration had to be lowered to fit."""
    ceiling = max(descriptors - FD_RESERVE, CONNECTION_RESERVE)
    wanted = config.max_subscribers + config.auditor_slots + CONNECTION_RESERVE
    total = min(config.max_connections or wanted, ceiling)
    auditors = min(config.auditor_slots, total - CONNECTION_RESERVE)
    subscribers = max(0, min(config.max_subscribers, total - CONNECTION_RESERVE - auditors))
    warning = None
    if (subscribers, auditors) != (config.max_subscribers, config.auditor_slots):
        warning = (
            f"{descriptors} descriptors and max_connections {total} leave room for"
            f" {subscribers} anonymous subscribers and {auditors} auditor slots"
            f" (configured: {config.max_subscribers}, {config.auditor_slots});"
            " raise LimitNOFILE or max_connections"
        )
    limits = Limits(
        max_connections=total,
        subscribers=subscribers,
        per_address=config.max_anonymous_per_address,
        auditor_slots=auditors,
        buffer_bytes=config.subscriber_buffer_bytes,
    )
    return limits, warning


class RateLimitedLog:
    """A warning logged at most once per ``interval``, with how many times the
    condition occurred since the last line: never one line per connection."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger, self._interval, self._clock = logger, interval, clock
        self._counts: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def __call__(self, what: str) -> None:
        self._counts[what] = self._counts.get(what, 0) + 1
        now = self._clock()
        if now - self._last.get(what, -self._interval) >= self._interval:
            count, self._counts[what], self._last[what] = self._counts[what], 0, now
            self._logger.warning("%s (%d in the last %.0f s)", what, count, self._interval)
