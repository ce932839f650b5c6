"""``solvency-prover``: the custodian's command line.

Commands (all take ``--data-dir DIR``, default ./prover-data):
    init [--origin NAME] [--assets BTC:8,ETH:18] [--passphrase-env VAR]
    import FILE [--source NAME]        bulk balances from CSV (user,asset,amount) or JSONL
    run [--follow FILE|-]              the daemon; --follow also reads ingest messages as JSON lines
    proof USER [--epoch N] [--out FILE]  fetch a user's proof from the running daemon
    export-proofs                      every user's proof, written by the running daemon
                                       into a new directory under export_dir
    rotate-key                         new signing key; the old one co-signs until removed
    status                             the last epoch and the witnesses' last cosignatures,
                                       from the database
    attester-key --source NAME --out FILE   a reserve source's signing key (prover/attest.py)
    sign-reports --key FILE [--ingest]      sign reserve reports: JSON lines in, out

Configuration comes from DIR/config.toml, then SOLVENCY_* environment
variables, then flags (--database-url, --host, --port).

Exit status: 0 done; 2 usage or configuration (not initialised, secrets
readable by others, a wrong token, bad input); 3 operational (the daemon or
the database cannot be reached, a file cannot be read or written).
Every failure is one line ``error: ...`` on standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from prover import attest
from prover.balancefile import read_rows
from prover.config import CONFIG_FILE, Config, load_config
from prover.daemon import run_daemon, setup_logging
from prover.errors import ConfigError, KeyFileError, ProverError
from prover.initdir import check_private, initialise, parse_assets, redact_url, require_initialised
from prover.keys import generate_key, load_key
from prover.tokens import user_token
from storage.errors import InvalidInputError, StorageError
from storage.store import Store
from verifier.checkpoint import verifier_key_for
from verifier.cli import format_amount
from verifier.record import EpochRecord
from verifier.version import VersionAction

__all__ = ["main"]

EXIT_USAGE = 2  # usage or configuration: the operator must change something
EXIT_FAILED = 3  # operational: the daemon, the database or a file failed
IMPORT_BATCH = 10_000


def _config(args: argparse.Namespace) -> Config:
    """The configuration of an initialised data directory whose secrets only
    its owner can read (ConfigError otherwise); warnings go to stderr."""
    overrides = {
        "database_url": getattr(args, "database_url", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    }
    data_dir = Path(args.data_dir)
    require_initialised(data_dir)
    config = load_config(data_dir, overrides)
    for warning in check_private(config):
        print(f"warning: {warning}", file=sys.stderr)
    return config


# init


def cmd_init(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    passphrase = ""
    if args.passphrase_env:
        if args.passphrase_env not in os.environ:
            raise ConfigError(f"--passphrase-env: {args.passphrase_env} is not set")
        passphrase = os.environ[args.passphrase_env]
    database_url = args.database_url or os.environ.get("SOLVENCY_DATABASE_URL", "")
    config, vkey = initialise(
        data_dir, args.origin, parse_assets(args.assets), database_url, passphrase
    )
    print(f"initialised {data_dir} ({redact_url(config.url)})")
    print(f"verifier key (give it to users and auditors):\n{vkey}")
    return 0


# import


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    user: str
    asset: str
    amount: int


def _open_input(path: Path) -> TextIO:
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise ProverError(f"cannot read {path}: {exc.strerror or exc}") from None


def cmd_import(args: argparse.Namespace) -> int:
    config = _config(args)
    path = Path(args.file)
    _open_input(path).close()  # before the database is touched
    store = Store.open(config.url)
    try:
        seq = store.source_marks().get(("balances", args.source), -1)
        total = 0
        batch: list[_Row] = []
        assets = {asset for asset, _ in config.assets}
        bar = tqdm(unit=" rows", desc=f"importing {path.name}", file=sys.stderr, disable=None)
        with bar:
            for _, user, asset, amount in read_rows(path, assets):
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
    finally:
        store.close()
    print(f"imported {total:,} balances as source {args.source!r} (last seq {seq})")
    return 0


# run


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    follow = None
    if args.follow:
        follow = sys.stdin if args.follow == "-" else _open_input(Path(args.follow))
    setup_logging(args.json_logs)
    return asyncio.run(run_daemon(config, follow))


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
        message = _error_message(exc.read(500))
        if exc.code in (400, 401, 404):  # the request, the token or the user: ours to fix
            raise ConfigError(f"the daemon answered {exc.code}: {message}") from None
        raise ProverError(f"the daemon answered {exc.code}: {message}") from None
    except OSError as exc:
        raise ProverError(f"cannot reach the daemon at {url}: {exc}") from None
    if args.out:
        try:
            Path(args.out).write_bytes(body)
        except OSError as exc:
            raise ProverError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(body.decode() + "\n")
    return 0


def _error_message(body: bytes) -> str:
    """The ``message`` of a structured error reply, else the body as text."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()
    return str(doc.get("message", text)) if isinstance(doc, dict) else text.strip()


def cmd_export(args: argparse.Namespace) -> int:
    """Ask the running daemon to write every user's proof into a new directory
    under its export_dir; print that directory."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    config = _config(args)
    if not config.admin_token:
        raise ConfigError(
            f"admin_token is not set in {config.data_dir / CONFIG_FILE}: add a random one "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))') "
            "and restart the daemon"
        )
    url = f"ws://{config.host}:{config.port}/admin/export"

    async def run() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {config.admin_token}"}
        async with connect(url, additional_headers=headers, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "export"}))
            bar = tqdm(unit=" users", desc="exporting proofs", file=sys.stderr, disable=None)
            with bar:
                async for frame in ws:
                    reply: dict[str, Any] = json.loads(frame)
                    if reply["type"] != "progress":
                        return reply
                    bar.total = reply["total"]
                    bar.update(reply["done"] - bar.n)
        raise ProverError("the daemon closed the connection during the export")

    try:
        reply = asyncio.run(run())
    except InvalidStatus as exc:
        status = exc.response.status_code
        message = _error_message(bytes(exc.response.body or b""))
        if status == 401:
            raise ConfigError(f"the daemon refused admin_token ({message})") from None
        raise ProverError(f"the daemon answered {status}: {message}") from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise ProverError(f"cannot reach the daemon at {url}: {exc}") from None
    if reply["type"] == "error":
        raise ProverError(f"the export failed: {reply['message']}")
    print(f"wrote {reply['files']:,} proofs of epoch {reply['epoch']} to {reply['dir']}")
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
    passphrase = config.passphrase
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
    print(f"database {redact_url(config.url)}")
    store = Store.open(config.url)
    witnesses = config.witness_endpoints()
    try:
        latest = store.latest_epoch()
        cosigned = store.last_cosigned((w.key.name, w.key.key_id) for w in witnesses)
    finally:
        store.close()
    if witnesses:
        print(f"witnesses: {len(witnesses)}, quorum {config.quorum}")
    for w in witnesses:
        last = cosigned.get((w.key.name, w.key.key_id))
        print(f"  {w.key} at {w.url}: " + ("never cosigned" if last is None else f"epoch {last}"))
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
    parser.add_argument("--version", action=VersionAction, distribution="solvency-stream-prover")
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

    p = sub.add_parser(
        "export-proofs",
        help="write every user's proof into a new directory under export_dir (daemon must run)",
    )
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("rotate-key", help="make a new signing key (old one co-signs)")
    p.set_defaults(run=cmd_rotate_key)

    p = sub.add_parser("status", help="show the last epoch")
    p.set_defaults(run=cmd_status)

    attest.register(sub)
    return parser


def _fail(exc: BaseException, status: int) -> int:
    """Print ``exc`` as one line ``error: ...`` (a driver's message may span several)."""
    print("error: " + re.sub(r"\s*\n\s*", " ", str(exc).strip()), file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        result: int = args.run(args)
        return result
    except (ConfigError, KeyFileError, InvalidInputError) as exc:
        return _fail(exc, EXIT_USAGE)
    except (ProverError, StorageError, OSError) as exc:  # OSError: not caught where used
        return _fail(exc, EXIT_FAILED)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
