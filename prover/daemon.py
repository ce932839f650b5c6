"""The daemon's life: start, serve, and stop without losing an acknowledged update.

``run_daemon`` loads the signing keys, starts the engine and the server, and
on SIGTERM or SIGINT stops in this order: refuse new ingest batches
(``shutting-down``), let those being stored finish, publish every
acknowledged update in a last epoch, close the subscribers (1001) and the
server. Exit status 0 once that last epoch is published, 1 if it could not
be (its updates are stored: the first epoch after a restart has them).
The ingest sources besides ``/ingest`` (``--follow``, NATS JetStream:
prover/sources/) run beside it and get a few seconds after that last epoch
to settle their last messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover import speedups
from prover.config import Config
from prover.engine import Engine
from prover.errors import ProverError
from prover.keys import load_key
from prover.limits import raise_descriptor_limit
from prover.server import start_server
from prover.sources import Source
from prover.sources.follow import FollowSource
from storage.store import Store

__all__ = ["JsonFormatter", "run_daemon", "setup_logging", "sources_for"]

log = logging.getLogger("solvency.prover")
SOURCE_GRACE = 3.0  # seconds the sources get after the last epoch to settle their messages


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message and extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("websockets", "alembic"):  # per-connection and migration chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)


def sources_for(config: Config, follow: TextIO | None) -> list[Source]:
    """The ingest sources besides ``/ingest``: ``--follow``, NATS JetStream if configured."""
    found: list[Source] = []
    if follow is not None:
        found.append(FollowSource(follow))
    if config.nats_url:
        from prover.sources.nats import NatsSource  # nats-py only when configured

        found.append(NatsSource.from_config(config))
    return found


def _start_source(engine: Engine, source: Source, stop: asyncio.Event) -> asyncio.Task[None]:
    """Run ``source`` in a task of its own; should it fail, that is logged at once."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("the %s source failed", source.name, exc_info=exc)

    task = asyncio.create_task(source.run(engine, stop), name=f"source {source.name}")
    task.add_done_callback(done)
    return task


async def _stop_sources(tasks: list[asyncio.Task[None]]) -> None:
    """Let the sources settle their last messages (acks), then cancel those
    still running (a ``--follow`` waiting for a line)."""
    if not tasks:
        return
    _, running = await asyncio.wait(tasks, timeout=SOURCE_GRACE)
    for task in running:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # failures: logged when they happened


async def run_daemon(config: Config, follow: TextIO | None) -> int:
    """Run the daemon until SIGTERM or SIGINT; the exit status (module docstring)."""
    raise_descriptor_limit()  # soft RLIMIT_NOFILE up to the hard limit (prover/limits.py)
    key = load_key(config.key_path, config.passphrase)
    previous: tuple[Ed25519PrivateKey, ...] = ()
    if config.previous_key_file:
        previous = (load_key(config.data_dir / config.previous_key_file, config.passphrase),)
    store = Store.open(config.url)
    engine = Engine(config, store, key, previous_keys=previous)
    await engine.start()
    try:
        server = await start_server(engine, config.host, config.port)
    except OSError as exc:
        await engine.close()
        store.close()
        raise ProverError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "prover listening on ws://%s:%d (epoch %d next), verifier key %s; C extensions: %s",
        config.host,
        port,
        engine.metrics.epoch + 1,
        engine.verifier_key,
        speedups.describe(),
    )
    epochs = asyncio.create_task(engine.run(stop))
    feeders = [_start_source(engine, s, stop) for s in sources_for(config, follow)]
    await stop.wait()
    log.info("stopping: refusing new batches, publishing every acknowledged one")
    # engine.run refuses ingest ("shutting-down", /ingest closes with 1001),
    # waits for the batches being stored and publishes them in a last epoch
    published = await epochs
    await _stop_sources(feeders)  # stored batches acked to their sources, the rest not
    await engine.close()  # subscribers get 1001
    server.close()
    await server.wait_closed()
    store.close()
    if not published:
        log.error(
            "stopped at epoch %d: the last epoch failed; its updates are stored and"
            " go into the first epoch after a restart",
            engine.metrics.epoch,
        )
        return 1
    log.info("stopped at epoch %d", engine.metrics.epoch)
    return 0
