"""The processes of a sharded prover (docs/SCALING.md, "Roles"):
``solvency-prover run --role R`` with ``R`` one of ``front-end``, ``shard``
and ``coordinator``, each configured as the daemon is (prover/config.py).

What each process finds, and where:

- every role: the routing key (``routing_key_file``, made by ``init``, the
  same file for every process of a deployment) and ``shard_bits``, which
  make the ``Router``; the ledger stream (``ledger_stream``,
  ``ledger_prefix``) on the NATS servers of ``nats_url``, made if missing
  (``ledger_replicas``, ``ledger_duplicate_window``) or checked, waiting
  for NATS to answer;
- ``front-end``: a ``Frontend`` on ``host:port``; no database;
- ``shard``: part ``shard`` of the trees, under the store's latest salt
  period, waiting up to ``PERIOD_WAIT`` seconds for the coordinator to
  start the first one (a shard restored from its save takes the period it
  saved instead, prover/shards/shard.py: a rotation may be under way);
  ``/healthz`` and ``/metrics`` on ``host:shard_port`` if ``shard_port`` is
  set (prover/shards/shard_http.py), from before it restores;
- ``coordinator``: the store, the signing key (``key_file``), the lease
  holder's name (``coordinator_name``, else ``<hostname>:<pid>``) and its
  ``lease_ttl``; the ``Coordinator``, served by ``prover.server`` on
  ``host:port``. On a store with no salt period yet it starts the first one,
  once it holds the log's lease, so that two coordinators starting at once
  cannot start two.

The coordinator's requests to the shards, and the shards' NATS requests,
wait ``shard_timeout`` seconds for an answer.

Each logs one line at start saying what it is and where it listens or
reads. SIGTERM or SIGINT stops it, before it has started too.

Exit status (``run_role``'s): 0 stopped by a signal; 1 the coordinator lost
its lease to another (it stopped, appending nothing more). Configuration
problems raise ``ConfigError`` (the command line's status 2), operational
ones (NATS refuses the stream, the database, the port, no salt period in
time) ``ProverError``, ``StorageError`` or ``OSError`` (status 3). Nothing
acknowledged is lost on any of these: front-ends acknowledge a batch once
its commit is in the stream, which every shard and coordinator reads again
after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final

import nats
import nats.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from websockets.asyncio.server import Server

from prover.backoff import Backoff
from prover.config import Config
from prover.errors import ConfigError, ProverError
from prover.initdir import redact_url
from prover.keys import load_key
from prover.limits import raise_descriptor_limit
from prover.periods import SaltPeriod
from prover.routing import Router
from prover.server import start_server
from prover.shards import wire
from prover.shards.control import control_subject
from prover.shards.coordinator import Coordinator
from prover.shards.frontend import Frontend, StreamSpec
from prover.shards.shard import Shard
from prover.shards.shard_http import ShardListener
from prover.shards.stream import ensure_stream
from prover.sources.nats import redact
from storage.store import Store

__all__ = ["PERIOD_WAIT", "coordinator_name", "load_router", "run_role", "stream_spec"]

log = logging.getLogger("solvency.prover")
PERIOD_WAIT: Final = 120.0  # seconds a shard waits for the first salt period
PERIOD_POLL: Final = 0.25  # seconds between its looks at the store
NATS_RETRY = Backoff(first=0.5, cap=5.0)  # while NATS does not answer at start
EXIT_STOPPED: Final = 0
EXIT_FAILED: Final = 1


def load_router(config: Config) -> Router:
    """The deployment's ``Router``: the routing key file and ``shard_bits``.

    Raises:
        ConfigError: the file cannot be read or is not 32 bytes in hex.
    """
    path = config.routing_key_path
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no routing key {path}: init makes one; every process of a sharded prover"
            " needs the same file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read routing key {path}: {exc}") from None
    try:
        key = bytes.fromhex(text)
        return Router(key, config.shard_bits)
    except ValueError:
        raise ConfigError(f"routing key {path}: want 32 bytes in hex (64 digits)") from None


def stream_spec(config: Config) -> StreamSpec:
    """The ledger stream as the configuration names it."""
    return StreamSpec(
        replicas=config.ledger_replicas,
        name=config.ledger_stream,
        prefix=config.ledger_prefix,
        duplicate_window=config.ledger_duplicate_window,
    )


def coordinator_name(config: Config) -> str:
    """The coordinator's name as the lease's holder."""
    return config.coordinator_name or f"{socket.gethostname()}:{os.getpid()}"[:128]


def _urls(config: Config) -> list[str]:
    return [url.strip() for url in config.nats_url.split(",") if url.strip()]


async def run_role(config: Config) -> int:
    """Run ``config.role`` (not ``single``: that is prover/daemon.py) until
    SIGTERM or SIGINT; the exit status (module docstring)."""
    runs: dict[str, Callable[[Config, Router, asyncio.Event], Awaitable[int]]] = {
        "front-end": _front_end,
        "shard": _shard,
        "coordinator": _coordinator,
    }
    if config.role not in runs:
        raise ConfigError(f"role {config.role} is not a sharded prover's process")
    router = load_router(config)
    raise_descriptor_limit()  # soft RLIMIT_NOFILE up to the hard limit, as the daemon's
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await runs[config.role](config, router, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _unless_stopped(step: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``step``: True once done, False if ``stop`` was set first (then
    ``step`` is cancelled)."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()  # its exception, if any
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def _ensure_ledger(config: Config, stop: asyncio.Event) -> bool:
    """Make or check the ledger stream, retrying while NATS does not answer;
    False if stopped first.

    Raises:
        ProverError: the stream exists and is not the ledger's, or cannot be made.
    """
    spec, failures = stream_spec(config), 0
    while not stop.is_set():
        nc: Client | None = None
        try:
            nc = await nats.connect(_urls(config), connect_timeout=2, max_reconnect_attempts=0)
            await ensure_stream(
                nc.jetstream(timeout=5),
                spec.name,
                spec.prefix,
                spec.replicas,
                spec.duplicate_window,
            )
            return True
        except (nats.errors.Error, OSError) as exc:  # TimeoutError is an OSError
            failures += 1
            delay = NATS_RETRY.delay(failures)
            log.warning(
                "NATS at %s: %s; trying again in %.1f s",
                redact(config.nats_url),
                str(exc) or type(exc).__name__,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        finally:
            if nc is not None:
                with contextlib.suppress(nats.errors.Error, OSError):
                    await nc.close()
    return False


# front-end


async def _front_end(config: Config, router: Router, stop: asyncio.Event) -> int:
    if not await _ensure_ledger(config, stop):
        return EXIT_STOPPED
    frontend = Frontend(config, router, config.nats_url, stream_spec(config))
    try:
        started = await _unless_stopped(frontend.start(config.host, config.port), stop)
    except OSError as exc:
        raise ProverError(
            f"front-end: cannot start on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    if not started:  # stopped before it listened: nothing was acknowledged
        return EXIT_STOPPED
    # Frontend.start logs what it is and where it listens and publishes
    await stop.wait()
    log.info("front-end stopping: answering the batches under way, refusing new ones")
    await frontend.stop()
    log.info("front-end stopped")
    return EXIT_STOPPED


# shard


def _latest_period(store: Store) -> SaltPeriod | None:
    row = store.latest_salt_period()
    return None if row is None else SaltPeriod(row.number, row.started_ms, row.secret)


async def _salt_period(config: Config, stop: asyncio.Event) -> SaltPeriod | None:
    """The store's latest salt period, waited for up to ``PERIOD_WAIT``
    seconds; None if stopped first.

    Raises:
        ProverError: none came in time.
    """
    store = await asyncio.to_thread(Store.open, config.url)
    try:
        deadline = time.monotonic() + PERIOD_WAIT
        period = await asyncio.to_thread(_latest_period, store)
        if period is None:
            log.info(
                "shard %d: no salt period in the store yet; waiting up to %.0f s for the"
                " coordinator to start one",
                config.shard,
                PERIOD_WAIT,
            )
        while period is None:
            if time.monotonic() >= deadline:
                raise ProverError(
                    f"shard {config.shard}: no salt period in the store after {PERIOD_WAIT:.0f} s:"
                    " is a coordinator running on the same database?"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PERIOD_POLL)
            if stop.is_set():
                return None
            period = await asyncio.to_thread(_latest_period, store)
        return period
    finally:
        await asyncio.to_thread(store.close)


async def _shard(config: Config, router: Router, stop: asyncio.Event) -> int:
    period = await _salt_period(config, stop)
    if period is None or not await _ensure_ledger(config, stop):
        return EXIT_STOPPED
    part = config.shard
    store = await asyncio.to_thread(Store.open, config.url)  # each close saved there
    shard = Shard(
        config.nats_url,
        config.ledger_stream,
        period,
        router,
        part,
        config.ledger_prefix,
        retain=config.proof_epochs,
        retain_bytes=config.proof_memory_mb << 20,
        store=store,
        timeout=config.shard_timeout,
    )
    log.info(
        "shard %d of %d (salt period %d): reading stream %s (%s, %s) at %s,"
        " answering the coordinator on %s",
        part,
        router.parts,
        period.number,
        config.ledger_stream,
        wire.part_subject(config.ledger_prefix, part),
        wire.commit_subject(config.ledger_prefix),
        redact(config.nats_url),
        control_subject(config.ledger_prefix, part),
    )
    listener: ShardListener | None = None
    try:
        if config.shard_port:
            listener = ShardListener(shard, config)
            try:
                await listener.start(config.host, config.shard_port)
            except OSError as exc:
                raise ProverError(
                    f"shard {part}: cannot listen on {config.host}:{config.shard_port}:"
                    f" {exc.strerror or exc}"
                ) from None
            log.info(
                "shard %d: /healthz and /metrics on http://%s:%d",
                part,
                config.host,
                listener.port,
            )
        await shard.run(stop)
    finally:
        if listener is not None:
            await listener.stop()
        await asyncio.to_thread(store.close)
    log.info("shard %d stopped", part)
    return EXIT_STOPPED


# coordinator


async def _first_period(config: Config, store: Store, holder: str, stop: asyncio.Event) -> bool:
    """On a store with no salt period, take the log's lease (waiting as a
    standby while another holds it) and start the first period if there is
    still none; the lease is kept, for ``Coordinator.run`` to extend. False
    if stopped first."""
    if await asyncio.to_thread(store.latest_salt_period) is not None:
        return True
    ttl_ms = int(config.lease_ttl * 1000)
    while True:
        now_ms = int(time.time() * 1000)
        fence = await asyncio.to_thread(
            store.acquire_lease, config.ledger_stream, holder, now_ms, ttl_ms
        )
        if fence is not None:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.lease_ttl / 3)
        if stop.is_set():
            return False
    if await asyncio.to_thread(store.latest_salt_period) is None:
        row = await asyncio.to_thread(store.start_salt_period, int(time.time() * 1000))
        log.info("coordinator %s: started salt period %d", holder, row.number)
    return True


async def _coordinator(config: Config, router: Router, stop: asyncio.Event) -> int:
    key = load_key(config.key_path, config.passphrase)
    previous: tuple[Ed25519PrivateKey, ...] = ()
    if config.previous_key_file:
        previous = (load_key(config.data_dir / config.previous_key_file, config.passphrase),)
    holder = coordinator_name(config)
    store = await asyncio.to_thread(Store.open, config.url)
    try:
        if not await _first_period(config, store, holder, stop):
            return EXIT_STOPPED
        if not await _ensure_ledger(config, stop):
            return EXIT_STOPPED
        coordinator = Coordinator(
            config,
            store,
            key,
            router,
            _urls(config),
            config.ledger_stream,
            config.ledger_prefix,
            previous_keys=previous,
            holder=holder,
            lease_ttl=config.lease_ttl,
            shard_timeout=config.shard_timeout,
        )
        server: Server | None = None
        try:
            if not await _unless_stopped(coordinator.start(), stop):
                return EXIT_STOPPED
            try:
                server = await start_server(coordinator, config.host, config.port)
            except OSError as exc:
                raise ProverError(
                    f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
                ) from None
            log.info(
                "coordinator %s of %d shards listening on ws://%s:%d:"
                " stream %s (%s) at %s, database %s, verifier key %s",
                holder,
                router.parts,
                config.host,
                server.sockets[0].getsockname()[1],
                config.ledger_stream,
                wire.commit_subject(config.ledger_prefix),
                redact(config.nats_url),
                redact_url(config.url),
                coordinator.verifier_key,
            )
            kept = await coordinator.run(stop)
        finally:
            await coordinator.close()  # subscribers get 1001; the lease is let go
            if server is not None:
                server.close()
                await server.wait_closed()
    finally:
        await asyncio.to_thread(store.close)
    epoch = coordinator.metrics.epoch
    if not kept:
        log.error("coordinator %s stopped at epoch %d: another holds the log", holder, epoch)
        return EXIT_FAILED
    log.info("coordinator %s stopped at epoch %d", holder, epoch)
    return EXIT_STOPPED
