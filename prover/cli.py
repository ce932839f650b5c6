"""``solvency-prover``: the custodian's command line.

Commands (all take ``--data-dir DIR``, default ./prover-data):
    init [--origin NAME] [--assets BTC:8,ETH:18] [--passphrase-env VAR]
    import FILE [--source NAME]        bulk balances from CSV (user,asset,amount) or JSONL
    run [--follow FILE|-] [--role R]   the daemon (role single; --follow also reads ingest
                                       messages as JSON lines), or a sharded prover's
                                       front-end, shard or coordinator (prover/shards/roles.py)
    proof USER [--epoch N] [--out FILE]  fetch a user's proof from the running daemon
    export-proofs                      every user's proof, written by the running daemon
                                       into a new directory under export_dir
    rotate-key                         new signing key; the old one co-signs until removed
    status                             the last epoch and the witnesses' last cosignatures,
                                       from the database
    attester-key --source NAME --out FILE   a reserve source's signing key (prover/attest.py)
    sign-reports --key FILE [--ingest]      sign reserve reports: JSON lines in, out

Configuration comes from DIR/config.toml, then SOLVENCY_* environment
variables, then flags (--database-url, --host, --port, --role).

Exit status: 0 done; 2 usage or configuration (not initialised, secrets
readable by others, a wrong token, bad input); 3 operational (the daemon or
the database cannot be reached, a file cannot be read or written); ``run``
1 as prover/daemon.py and prover/shards/roles.py say.
Every failure is one line ``error: ...`` on standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path
from typing import TextIO

from prover import attest
from prover.config import CONFIG_FILE, ROLES, Config, load_config
from prover.errors import ConfigError, KeyFileError, ProverError
from storage.errors import InvalidInputError, StorageError
from verifier.version import VersionAction

# Each command imports what it runs (the daemon, storage: SQLAlchemy and
# alembic, about a second of CPU) when it runs: the tree worker, a spawned
# process that imports this module again, starts without them.

__all__ = ["main"]

EXIT_USAGE = 2  # usage or configuration: the operator must change something
EXIT_FAILED = 3  # operational: the daemon, the database or a file failed


def _config(args: argparse.Namespace) -> Config:
    """The configuration of an initialised data directory whose secrets only
    its owner can read (ConfigError otherwise); warnings go to stderr."""
    overrides = {
        "database_url": getattr(args, "database_url", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "role": getattr(args, "role", None),
    }
    from prover.initdir import check_private, require_initialised

    data_dir = Path(args.data_dir)
    require_initialised(data_dir)
    config = load_config(data_dir, overrides)
    for warning in check_private(config):
        print(f"warning: {warning}", file=sys.stderr)
    return config


# init


def cmd_init(args: argparse.Namespace) -> int:
    from prover.initdir import initialise, parse_assets, redact_url

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


# import, run


def cmd_import(args: argparse.Namespace) -> int:
    from prover.importer import import_balances

    config = _config(args)
    total, seq = import_balances(config, Path(args.file), args.source)
    print(f"imported {total:,} balances as source {args.source!r} (last seq {seq})")
    return 0


def _open_follow(path: str) -> TextIO:
    """The file of ``run --follow``, opened before the daemon starts."""
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise ProverError(f"cannot read {path}: {exc.strerror or exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from prover.daemon import setup_logging

    config = _config(args)
    if config.role != "single":
        if args.follow:
            raise ConfigError(f"--follow: role {config.role} reads no file; send to a front-end")
        from prover.shards.roles import run_role

        setup_logging(args.json_logs)
        return asyncio.run(run_role(config))
    from prover.daemon import run_daemon

    follow = None
    if args.follow:
        follow = sys.stdin if args.follow == "-" else _open_follow(args.follow)
    setup_logging(args.json_logs)
    return asyncio.run(run_daemon(config, follow))


# clients of the running daemon (prover/admin.py)


def cmd_proof(args: argparse.Namespace) -> int:
    from prover.admin import fetch_proof

    body = fetch_proof(_config(args), args.user, args.epoch)
    if args.out:
        try:
            Path(args.out).write_bytes(body)
        except OSError as exc:
            raise ProverError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(body.decode() + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from prover.admin import export_proofs

    result = export_proofs(_config(args))
    print(f"wrote {result.files:,} proofs of epoch {result.epoch} to {result.dir}")
    return 0


# rotate-key, status


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from prover.keyrotation import rotate_key

    config = _config(args)
    name, vkey = rotate_key(config)
    print(f"new signing key {name}; restart the daemon to use it.")
    print("Checkpoints are signed by both keys until you remove previous_key_file from")
    print(f"{config.data_dir / CONFIG_FILE}. New verifier key:\n{vkey}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from prover.status import write_status

    write_status(_config(args), sys.stdout)
    return 0


# entry point


def role_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--role``, overriding the ``role`` setting; on ``run``'s parser with
    no default, so that one given before ``run`` is kept."""
    parser.add_argument(
        "--role",
        choices=ROLES,
        default=default,
        help="what run runs: single (the daemon) or a sharded prover's process",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solvency-prover", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=VersionAction, distribution="solvency-stream-prover")
    parser.add_argument("--data-dir", default="prover-data", help="the prover's directory")
    parser.add_argument("--database-url", help="e.g. postgresql+psycopg://user@host/db")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8765)")
    role_option(parser, None)
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
    role_option(p, argparse.SUPPRESS)  # after run as well as before it
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
