"""The daemon's life: start, serve, and stop without losing an acknowledged update.

``run_daemon`` loads the signing keys, starts the engine and the server, and
on SIGTERM or SIGINT stops in this order: refuse new ingest batches
(``shutting-down``), let those being stored finish, publish every
acknowledged update in a last epoch, close the subscribers (1001) and the
server. Exit status 0 once that last epoch is published, 1 if it could not
be (its updates are stored: the first epoch after a restart has them).
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

from prover.config import Config
from prover.engine import Engine
from prover.errors import IngestError, ProverError
from prover.keys import load_key
from prover.limits import raise_descriptor_limit
from prover.messages import parse_ingest
from prover.server import start_server
from storage.store import Store

__all__ = ["JsonFormatter", "run_daemon", "setup_logging"]

log = logging.getLogger("solvency.prover")


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


async def _follow(engine: Engine, stream: TextIO) -> None:
    """Feed ingest messages from a file or standard input, one JSON per line."""
    try:
        while line := await asyncio.to_thread(stream.readline):
            if not line.strip():
                continue
            try:
                await engine.ingest(parse_ingest(line))
            except IngestError as exc:
                if exc.code == "shutting-down":  # this line and the rest: after a restart
                    return
                log.warning("follow: refused a message: %s: %s", exc.code, exc.message)
        log.info("follow: end of %s", stream.name)
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8
        log.error("follow: cannot read %s any more: %s", stream.name, exc)
    finally:
        if stream is not sys.stdin:
            stream.close()


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
        "prover listening on ws://%s:%d (epoch %d next), verifier key %s",
        config.host,
        port,
        engine.metrics.epoch + 1,
        engine.verifier_key,
    )
    epochs = asyncio.create_task(engine.run(stop))
    feeder = asyncio.create_task(_follow(engine, follow)) if follow else None
    await stop.wait()
    log.info("stopping: refusing new batches, publishing every acknowledged one")
    # engine.run refuses ingest ("shutting-down", /ingest closes with 1001),
    # waits for the batches being stored and publishes them in a last epoch
    published = await epochs
    if feeder:
        feeder.cancel()
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
