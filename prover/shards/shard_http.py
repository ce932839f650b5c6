"""A shard's HTTP listener (docs/OPERATIONS.md, "Watching a sharded
prover"): ``/healthz`` and ``/metrics`` of one ``Shard``
(prover/shards/shard.py), on ``host:shard_port``.

Served as the daemon serves them (prover/server.py): to anyone, GET only,
every connection admitted and bounded by prover/gate.py within the limits
of prover/limits.py (``max_connections``, the request's line and header
limits, ``ANONYMOUS_MAX_SIZE``); no route continues as a WebSocket and no
connection is opened for messages.

``/healthz`` is 200 ``ok`` while the shard reads the stream and answers
control requests; else 503 and the first reason of, in order: its core is
being restored from the store (or is broken and about to be); its core is
broken (no store: it stays so); NATS or the stream cannot be reached (asked
on a NATS connection of the listener's own); the shard is not reading (a
session starting again); it is behind by more than ``max_behind`` seconds
of stream time; folding the saved deltas failed the last time it ran.

``/metrics`` is Prometheus text (``SHARD_FAMILIES``, the listener's fields
of prover/metrics.py's ``RoleMetrics``, and the process's: resident memory,
CPU, descriptors). The lag: stream sequences after the one read, up to the
stream's last; in seconds, the age of the first unread message's stream
time (0 when none is unread; not exported while unknown).

Invariants: the stream is asked about at most once per ``PROBE_EVERY``
seconds, whatever the requests; neither route waits for the shard's worker
thread (a close under way never delays an answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import nats
import nats.errors
import numpy as np
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from prover.config import Config
from prover.gate import Gate
from prover.limits import ACCEPT_BACKLOG, ANONYMOUS_MAX_SIZE, descriptor_limit, plan_limits
from prover.metrics import Family, RoleMetrics, Sample, Snapshot, render_metrics
from prover.server import http_error, http_response, not_get
from prover.shards.shard import Shard
from prover.sources.nats import redact

__all__ = ["PROBE_EVERY", "SHARD_FAMILIES", "ShardListener"]

log = logging.getLogger("solvency.prover")
PROBE_EVERY: Final = 1.0  # seconds an answer about the stream is reused
PROBE_TIMEOUT: Final = 2.0  # seconds the stream is waited for
CLOSE_POLICY: Final = 1008

SHARD_FAMILIES: Final[dict[str, Family]] = {
    "solvency_shard_epoch": ("gauge", "The last epoch the shard closed; -1: none.", ""),
    "solvency_shard_cut": ("gauge", "The stream sequence that epoch was cut at.", ""),
    "solvency_shard_read_seq": ("gauge", "The stream sequence read (and passed) so far.", ""),
    "solvency_shard_stream_last_seq": ("gauge", "The stream's last sequence, last asked.", ""),
    "solvency_shard_lag_messages": (
        "gauge",
        "Stream sequences after the one read, up to the stream's last.",
        "",
    ),
    "solvency_shard_lag_seconds": (
        "gauge",
        "Age of the first unread message, by its stream time; 0: none unread.",
        "",
    ),
    "solvency_shard_serving": (
        "gauge",
        "1 while the shard reads the stream and answers control requests, else 0.",
        "",
    ),
    "solvency_shard_healthy": ("gauge", "1 while /healthz answers 200, else 0.", ""),
    "solvency_shard_messages": ("counter", "Stream messages added: its parts and commits.", ""),
    "solvency_shard_requests": ("counter", "Control requests answered.", ""),
    "solvency_shard_sessions": ("counter", "NATS sessions started (1, plus restarts).", ""),
    "solvency_shard_restoring": ("gauge", "1 while the core is loaded from the store.", ""),
    "solvency_shard_restores": ("counter", "Cores restored from a save in the store.", ""),
    "solvency_shard_restore_seconds": ("gauge", "Time the last load from the store took.", ""),
    "solvency_shard_saves": ("counter", "Closes saved to the store.", ""),
    "solvency_shard_save_seconds": ("gauge", "Time the last save took.", ""),
    "solvency_shard_folds": ("counter", "Folds of the saved deltas that succeeded.", ""),
    "solvency_shard_fold_failures": ("counter", "Folds of the saved deltas that failed.", ""),
    "solvency_shard_fold_failing": ("gauge", "Folds failed in a row; 0: none.", ""),
    "solvency_shard_unfolded_holdings": (
        "gauge",
        "Changed holdings named by saved deltas not folded yet (a restore replays them).",
        "",
    ),
    "solvency_shard_holders": (
        "gauge",
        "Holders in the shard's part of each asset's tree, as of the last close.",
        "asset",
    ),
}


@dataclass(frozen=True, slots=True)
class _Probe:
    """What the stream said: its last sequence and the shard's lag in
    seconds (None: unknown), or why it could not be asked."""

    last_seq: int | None = None
    lag_seconds: float | None = None
    problem: str | None = None


class ShardListener:
    """``/healthz`` and ``/metrics`` of ``shard`` (module docstring):
    ``start``, then ``stop``. ``max_behind``: seconds of stream time the
    shard may be behind and be healthy (default: two heartbeats and one,
    ``2 * max_interval + 1``, when the daemon's epochs are late)."""

    def __init__(
        self,
        shard: Shard,
        config: Config,
        max_behind: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shard, self.config = shard, config
        self.max_behind = 2 * config.max_interval + 1 if max_behind is None else max_behind
        self.metrics = RoleMetrics()
        self.metrics.registry.register(Snapshot(SHARD_FAMILIES, self._values))
        ProcessCollector(registry=self.metrics.registry)  # resident memory, CPU, descriptors
        self._clock = clock
        self._nc: Client | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._server: Server | None = None
        self._gate: Gate | None = None
        self._probe = _Probe(problem="the stream was not asked about yet")
        self._probed = -PROBE_EVERY  # monotonic time of the last look
        self._probing = asyncio.Lock()
        self._healthy = False

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: a free port, see ``port``) and
        connect to NATS in the background (retried until it answers).

        Raises:
            OSError: cannot listen there.
        """
        limits, warning = plan_limits(self.config, descriptor_limit())
        if warning:
            log.warning("%s", warning)
        gate = self._gate = Gate(limits, {}, self.metrics)
        self._server = await serve(
            self._handler,
            host,
            port,
            process_request=self._process_request,
            create_connection=gate.connection_class,
            max_size=ANONYMOUS_MAX_SIZE,
            max_queue=1,
            compression=None,
            close_timeout=5,
            open_timeout=10,
            backlog=ACCEPT_BACKLOG,
        )
        self._connecting = asyncio.create_task(self._connect())

    async def stop(self) -> None:
        """Close the listener, its connections and its NATS connection."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._nc is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._nc.close()

    async def health(self) -> str | None:
        """None while the shard is healthy, else why not (module docstring)."""
        shard, stats = self.shard, self.shard.stats
        broken = shard.core.broken
        if stats.restoring:
            problem: str | None = "restoring from the store"
        elif broken is not None:
            problem = f"restoring: {broken}" if shard.store is not None else f"broken: {broken}"
        else:
            probe = await self._look()
            lag = probe.lag_seconds
            if probe.problem is not None:
                problem = probe.problem
            elif not shard.serving.is_set():
                problem = "not reading the stream: its session is starting again"
            elif lag is not None and lag > self.max_behind:
                behind = self._lag_messages(probe)
                problem = f"behind by {lag:.0f} s of stream time ({behind} messages)"
            elif stats.fold_failing:
                problem = f"folding the saved deltas failing: {stats.fold_error}"
                problem += f" ({stats.fold_failing} attempts)"
            else:
                problem = None
        self._healthy = problem is None
        return problem

    async def render(self) -> str:
        """``/metrics``: the metrics as of now (the stream asked if due)."""
        await self.health()
        if self._gate is not None:
            self.metrics.connection_bytes = self._gate.held_bytes()
        return render_metrics(self.metrics)

    async def _connect(self) -> None:
        async def error(exc: Exception) -> None:
            log.debug("shard %d listener: nats: %s", self.shard.part, exc)

        self._nc = await nats.connect(
            [u.strip() for u in self.shard.url.split(",")],
            name=f"solvency-shard-{self.shard.part}-health",
            connect_timeout=2,
            reconnect_time_wait=1,
            max_reconnect_attempts=-1,  # also retries the first connection
            error_cb=error,
        )

    async def _look(self) -> _Probe:
        """The stream's answer, asked again if ``PROBE_EVERY`` has passed."""
        async with self._probing:
            now = time.monotonic()
            if now - self._probed >= PROBE_EVERY:
                self._probe, self._probed = await self._ask(), now
            return self._probe

    async def _ask(self) -> _Probe:
        nc, stream = self._nc, self.shard.stream
        if nc is None or not nc.is_connected:
            return _Probe(problem=f"not connected to NATS at {redact(self.shard.url)}")
        js = nc.jetstream(timeout=PROBE_TIMEOUT)
        try:
            last = int((await js.stream_info(stream)).state.last_seq)
        except NotFoundError:
            return _Probe(problem=f"stream {stream} does not exist")
        except (nats.errors.Error, OSError) as exc:  # TimeoutError is an OSError
            return _Probe(
                problem=f"NATS did not answer about stream {stream}: {type(exc).__name__}"
            )
        read = self.shard.core.read
        if read >= last:
            return _Probe(last, 0.0)
        try:
            first = await js.get_msg(stream, read + 1)
        except (nats.errors.Error, OSError):  # gone (limits), or no answer: unknown
            return _Probe(last)
        if first.time is None:
            return _Probe(last)
        return _Probe(last, max(0.0, self._clock() - first.time.timestamp()))

    def _lag_messages(self, probe: _Probe) -> int | None:
        if probe.last_seq is None:
            return None
        return max(0, probe.last_seq - self.shard.core.read)

    def _values(self) -> dict[str, Sample]:
        shard, stats, probe = self.shard, self.shard.stats, self._probe
        values: dict[str, Sample] = {
            "solvency_shard_epoch": stats.epoch,
            "solvency_shard_cut": stats.cut,
            "solvency_shard_read_seq": shard.core.read,
            "solvency_shard_serving": int(shard.serving.is_set()),
            "solvency_shard_healthy": int(self._healthy),
            "solvency_shard_messages": stats.messages,
            "solvency_shard_requests": stats.requests,
            "solvency_shard_sessions": stats.sessions,
            "solvency_shard_restoring": int(stats.restoring),
            "solvency_shard_restores": stats.restores,
            "solvency_shard_restore_seconds": round(stats.restore_seconds, 6),
            "solvency_shard_saves": stats.saves,
            "solvency_shard_save_seconds": round(stats.save_seconds, 6),
            "solvency_shard_folds": stats.folds,
            "solvency_shard_fold_failures": stats.fold_failures,
            "solvency_shard_fold_failing": stats.fold_failing,
            "solvency_shard_unfolded_holdings": shard.unfolded,
            "solvency_shard_holders": self._holders(),
        }
        if probe.last_seq is not None:
            values["solvency_shard_stream_last_seq"] = probe.last_seq
            values["solvency_shard_lag_messages"] = max(0, probe.last_seq - shard.core.read)
        if probe.lag_seconds is not None:
            values["solvency_shard_lag_seconds"] = round(probe.lag_seconds, 3)
        return values

    def _holders(self) -> dict[str, float]:
        """Per asset, the users holding a slot in the shard's part of its
        tree as of the last close (a copy of the books: the worker thread
        may add an asset meanwhile)."""
        books = list(self.shard.core.ledger.books.items())
        return {asset: int(np.count_nonzero(book.slots >= 0)) for asset, book in books}

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response:
        if (refused := not_get(request)) is not None:
            return refused
        path = urlsplit(request.path).path
        if path == "/healthz":
            problem = await self.health()
            return http_response(503 if problem else 200, f"{problem or 'ok'}\n", "text/plain")
        if path == "/metrics":
            return http_response(200, await self.render(), CONTENT_TYPE_LATEST)
        return http_error(404, "not-found", f"no route {path}")

    async def _handler(self, conn: ServerConnection) -> None:
        """Never reached: every request is answered in ``_process_request``."""
        await conn.close(CLOSE_POLICY, "no WebSocket route")
