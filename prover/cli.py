"""``solvency-prover``: the custodian's command line.

Commands (all take ``--data-dir DIR``, default ./prover-data):
    init [--origin NAME] [--assets BTC:8,ETH:18] [--passphrase-env VAR]
    import FILE [--source NAME]        bulk balances from CSV (user,asset,amount) or JSONL
    run [--follow FILE|-]              the daemon; --follow also reads ingest messages as JSON lines
    proof USER [--epoch N] [--out FILE]  fetch a user's proof from the running daemon
    export-proofs --out DIR            every user's proof, written by the running daemon
    rotate-key                         new signing key; the old one co-signs until removed
    status                             the last epoch, from the database

Configuration comes from DIR/config.toml, then SOLVENCY_* environment
variables, then flags (--database-url, --host, --port).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tqdm import tqdm

from prover.config import CONFIG_FILE, Config, load_config
from prover.engine import Engine
from prover.errors import ConfigError, IngestError, KeyFileError, ProverError
from prover.keys import generate_key, load_key
from prover.messages import parse_ingest
from prover.server import start_server
from prover.tokens import user_token
from storage.errors import StorageError
from storage.store import Store
from verifier.checkpoint import verifier_key_for
from verifier.cli import format_amount
from verifier.errors import FormatError
from verifier.hashing import MAX_BALANCE, check_asset_id, check_user_id
from verifier.record import EpochRecord

__all__ = ["main"]

log = logging.getLogger("solvency.prover")
IMPORT_BATCH = 10_000


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


def _setup_logging(as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("websockets", "alembic"):  # per-connection and migration chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _passphrase(config: Config) -> bytes | None:
    return config.key_passphrase.encode() if config.key_passphrase else None


def _config(args: argparse.Namespace) -> Config:
    overrides = {
        "database_url": getattr(args, "database_url", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    }
    return load_config(Path(args.data_dir), overrides)


# init


def cmd_init(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    if (data_dir / CONFIG_FILE).exists():
        raise ConfigError(f"{data_dir} is already initialised")
    data_dir.mkdir(parents=True, exist_ok=True)
    passphrase = os.environ.get(args.passphrase_env, "") if args.passphrase_env else ""
    assets = []
    for item in args.assets.split(","):
        asset, _, decimals = item.partition(":")
        try:
            check_asset_id(asset)
            assets.append((asset, int(decimals)))
        except (FormatError, ValueError):
            raise ConfigError(f"--assets: {item!r} is not ASSET:DECIMALS") from None
    lines = [
        f"origin = {json.dumps(args.origin)}",
        f"ingest_token = {json.dumps(secrets.token_urlsafe(24))}",
        f"proof_secret = {json.dumps(secrets.token_hex(32))}",
        # kept, so that no later command opens a fresh SQLite file by mistake
        *([f"database_url = {json.dumps(args.database_url)}"] if args.database_url else []),
        "",
        *[f'[[assets]]\nid = "{a}"\ndecimals = {d}\n' for a, d in assets],
    ]
    fd = os.open(data_dir / CONFIG_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:  # it holds secrets: owner only
        f.write("\n".join(lines))
    config = load_config(data_dir, {"key_passphrase": passphrase or None})
    key = generate_key(config.key_path, _passphrase(config))
    vkey = verifier_key_for(config.origin, key.public_key())
    store = Store.open(config.url)
    for asset, decimals in config.assets:
        store.ensure_asset(asset, decimals)
    store.add_signing_key(f"{vkey.key_id:08x}", vkey.name, vkey.public_key, int(time.time() * 1000))
    store.close()
    print(f"initialised {data_dir} ({config.url})")
    print(f"verifier key (give it to users and auditors):\n{vkey}")
    return 0


# import


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    user: str
    asset: str
    amount: int


def _read_rows(path: Path) -> Iterator[tuple[int, str, str, int]]:
    """``(line, user, asset, amount)`` from a CSV or JSONL file, validated."""
    with open(path, newline="") as f:
        if path.suffix in (".jsonl", ".ndjson"):
            source: Iterator[Any] = (json.loads(line) for line in f if line.strip())
            rows = ((r["user"], r["asset"], r["amount"]) for r in source)
        else:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != ["user", "asset", "amount"]:
                raise ConfigError(f"{path}: the CSV header must be user,asset,amount")
            rows = ((r[0], r[1], r[2]) for r in reader)
        for line, (user, asset, amount) in enumerate(rows, start=2):
            try:
                check_user_id(user)
                check_asset_id(asset)
                value = int(amount) if isinstance(amount, int) or str(amount).isdigit() else -1
            except (FormatError, ValueError) as exc:
                raise ConfigError(f"{path}:{line}: {exc}") from None
            if not 0 <= value <= MAX_BALANCE:
                raise ConfigError(f"{path}:{line}: amount {amount!r} is not in 0..2**64-1")
            yield line, user, asset, value


def cmd_import(args: argparse.Namespace) -> int:
    config = _config(args)
    path = Path(args.file)
    store = Store.open(config.url)
    seq = store.source_marks().get(("balances", args.source), -1)
    total = 0
    batch: list[_Row] = []
    with tqdm(unit=" rows", desc=f"importing {path.name}", file=sys.stderr) as bar:
        for _, user, asset, amount in _read_rows(path):
            seq += 1
            batch.append(_Row(seq, user, asset, amount))
            if len(batch) == IMPORT_BATCH:
                store.apply_balances(args.source, batch)
                bar.update(len(batch))
                total += len(batch)
                batch = []
        if batch:
            store.apply_balances(args.source, batch)
            bar.update(len(batch))
            total += len(batch)
    store.close()
    print(f"imported {total:,} balances as source {args.source!r} (last seq {seq})")
    return 0


# run


async def _follow(engine: Engine, path: str) -> None:
    """Feed ingest messages from a file or standard input, one JSON per line."""
    stream = sys.stdin if path == "-" else open(path)  # noqa: SIM115 - closed below
    try:
        while line := await asyncio.to_thread(stream.readline):
            if not line.strip():
                continue
            try:
                await engine.ingest(parse_ingest(line))
            except IngestError as exc:
                log.warning("follow: refused a message: %s: %s", exc.code, exc.message)
    finally:
        if stream is not sys.stdin:
            stream.close()


async def _run(config: Config, follow: str | None) -> int:
    key = load_key(config.key_path, _passphrase(config))
    previous: tuple[Ed25519PrivateKey, ...] = ()
    if config.previous_key_file:
        previous = (load_key(config.data_dir / config.previous_key_file, _passphrase(config)),)
    store = Store.open(config.url)
    engine = Engine(config, store, key, previous_keys=previous)
    await engine.start()
    server = await start_server(engine, config.host, config.port)
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
    log.info("stopping: finishing the current epoch")
    if feeder:
        feeder.cancel()
    await epochs
    await engine.close()  # subscribers get 1001
    server.close()
    await server.wait_closed()
    store.close()
    log.info("stopped at epoch %d", engine.metrics.epoch)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    _setup_logging(args.json_logs)
    return asyncio.run(_run(config, args.follow))


# proof and status


def cmd_proof(args: argparse.Namespace) -> int:
    config = _config(args)
    if not config.proof_secret:
        raise ConfigError("proof_secret is not configured")
    token = user_token(config.proof_secret, args.user)
    query = {"user": args.user} | ({} if args.epoch is None else {"epoch": args.epoch})
    url = f"http://{config.host}:{config.port}/proof?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise ProverError(f"the daemon answered {exc.code}: {exc.read(500).decode()}") from None
    except OSError as exc:
        raise ProverError(f"cannot reach the daemon at {url}: {exc}") from None
    if args.out:
        Path(args.out).write_bytes(body)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(body.decode() + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Ask the running daemon to write every user's proof into a directory."""
    from websockets.asyncio.client import connect

    config = _config(args)
    out = Path(args.out).resolve()

    async def run() -> dict[str, Any]:
        url = f"ws://{config.host}:{config.port}/admin/export"
        headers = {"Authorization": f"Bearer {config.ingest_token}"}
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(json.dumps({"out": str(out)}))
            with tqdm(unit=" users", desc="exporting proofs", file=sys.stderr) as bar:
                async for frame in ws:
                    reply: dict[str, Any] = json.loads(frame)
                    if reply["type"] != "progress":
                        return reply
                    bar.total = reply["total"]
                    bar.update(reply["done"] - bar.n)
        raise ProverError("the daemon closed the connection during the export")

    try:
        reply = asyncio.run(run())
    except OSError as exc:
        raise ProverError(f"cannot reach the daemon: {exc}") from None
    if reply["type"] == "error":
        raise ProverError(reply["message"])
    print(f"wrote {reply['files']:,} proofs of epoch {reply['epoch']} to {out}")
    return 0


def _set_top_level(path: Path, values: dict[str, str]) -> None:
    """Set top-level string keys of a TOML file, keeping the rest of it as it is."""
    lines = path.read_text().splitlines()
    first_table = next((i for i, line in enumerate(lines) if line.startswith("[")), len(lines))
    head = [line for line in lines[:first_table] if line.split("=", 1)[0].strip() not in values]
    head += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join([*head, *lines[first_table:]]) + "\n")


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """A new signing key; the old one keeps co-signing until previous_key_file is removed."""
    config = _config(args)
    passphrase = _passphrase(config)
    load_key(config.key_path, passphrase)  # the current key must be usable
    name = f"signing-{int(time.time())}.key"
    key = generate_key(config.data_dir / name, passphrase)
    vkey = verifier_key_for(config.origin, key.public_key())
    store = Store.open(config.url)
    store.add_signing_key(f"{vkey.key_id:08x}", vkey.name, vkey.public_key, int(time.time() * 1000))
    store.close()
    _set_top_level(
        config.data_dir / CONFIG_FILE, {"key_file": name, "previous_key_file": config.key_file}
    )
    print(f"new signing key {name}; restart the daemon to use it.")
    print("Checkpoints are signed by both keys until you remove previous_key_file from")
    print(f"{config.data_dir / CONFIG_FILE}. New verifier key:\n{vkey}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    store = Store.open(config.url)
    latest = store.latest_epoch()
    store.close()
    if latest is None:
        print("no epoch yet")
        return 0
    record = EpochRecord.decode(latest.record)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.timestamp_ms / 1000))
    print(f"epoch {record.epoch} at {when} UTC, log of {record.epoch + 1} epochs")
    for a in record.assets:
        print(
            f"  {a.asset:<8} liabilities {format_amount(a.liabilities, a.decimals):>24}  "
            f"reserves {format_amount(a.reserves, a.decimals):>24}  {a.status.name.lower()}"
        )
    return 0


# entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solvency-prover", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="prover-data", help="the prover's directory")
    parser.add_argument("--database-url", help="e.g. postgresql+psycopg://user@host/db")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8765)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a data directory, database and signing key")
    p.add_argument("--origin", default="localhost/solvency", help="the log's name")
    p.add_argument("--assets", default="BTC:8,ETH:9,USDT:6,SOL:9", help="ASSET:DECIMALS,...")
    p.add_argument("--passphrase-env", help="environment variable holding a key passphrase")
    p.set_defaults(run=cmd_init)

    p = sub.add_parser("import", help="bulk-load balances from CSV or JSONL")
    p.add_argument("file")
    p.add_argument("--source", default="import", help="producer name for the sequence numbers")
    p.set_defaults(run=cmd_import)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--follow", help="also read ingest messages, one JSON per line (- for stdin)")
    p.add_argument("--json-logs", action="store_true", help="structured logs, one JSON per line")
    p.set_defaults(run=cmd_run)

    p = sub.add_parser("proof", help="fetch a user's proof from the running daemon")
    p.add_argument("user")
    p.add_argument("--epoch", type=int, help="an earlier, retained epoch (default: the latest)")
    p.add_argument("--out", help="file to write (default: standard output)")
    p.set_defaults(run=cmd_proof)

    p = sub.add_parser("export-proofs", help="write every user's proof (daemon must run)")
    p.add_argument("--out", required=True, help="directory for the proof files")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("rotate-key", help="make a new signing key (old one co-signs)")
    p.set_defaults(run=cmd_rotate_key)

    p = sub.add_parser("status", help="show the last epoch")
    p.set_defaults(run=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        result: int = args.run(args)
        return result
    except (ProverError, StorageError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
