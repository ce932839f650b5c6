"""The data directory: creating it whole or not at all, and checking who may read it.

``initialise`` checks every argument first, builds the directory in a
temporary one beside it (or inside it, if it exists and is empty) and moves
it into place at the end; on any failure it removes what it made. The
directory is 0700; config.toml, the signing key, the routing key (a sharded
prover's, docs/SCALING.md: 32 random bytes in hex, never replaced) and the
SQLite files 0600.

``check_private`` refuses a data directory whose secrets others can read.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

import tomlkit
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from prover.config import CONFIG_FILE, Config, check_origin, load_config
from prover.errors import ConfigError
from prover.keys import generate_key
from storage.store import Store
from verifier.checkpoint import VerifierKey, verifier_key_for
from verifier.errors import FormatError
from verifier.hashing import check_asset_id

__all__ = [
    "check_private",
    "initialise",
    "parse_assets",
    "private_files",
    "redact_url",
    "require_initialised",
    "write_routing_key",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: the form to print or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(a database URL that cannot be parsed)"


def _sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else Path(database)


def parse_assets(text: str) -> tuple[tuple[str, int], ...]:
    """``BTC:8,ETH:18`` as ``(("BTC", 8), ("ETH", 18))``."""
    assets: dict[str, int] = {}
    for item in text.split(","):
        asset, _, decimals = item.partition(":")
        try:
            check_asset_id(asset)
            if not decimals.isascii() or not decimals.isdigit() or not 0 <= int(decimals) <= 36:
                raise ValueError
        except (FormatError, ValueError):
            raise ConfigError(f"--assets: {item!r} is not ASSET:DECIMALS (0..36)") from None
        if asset in assets:
            raise ConfigError(f"--assets: {asset} is listed twice")
        assets[asset] = int(decimals)
    return tuple(assets.items())


def require_initialised(data_dir: Path) -> None:
    """Raise ConfigError unless ``data_dir`` holds a config.toml."""
    if not (data_dir / CONFIG_FILE).is_file():
        raise ConfigError(
            f"{data_dir} is not initialised (no {CONFIG_FILE}): "
            f"run solvency-prover --data-dir {data_dir} init"
        )


def private_files(config: Config) -> list[Path]:
    """The files of ``config`` that hold secrets and exist: config.toml, the
    signing keys, the routing key, and the SQLite database with its -wal and
    -shm files."""
    candidates = [config.data_dir / CONFIG_FILE, config.key_path, config.routing_key_path]
    if config.previous_key_file:
        candidates.append(config.data_dir / config.previous_key_file)
    database = _sqlite_file(config.url)
    if database is not None:
        candidates += [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    return [path for path in candidates if path.exists()]


def check_private(config: Config) -> list[str]:
    """Refuse (ConfigError) a secret file that group or others may access;
    return warnings, about the data directory if they may enter it."""
    for path in private_files(config):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path} is open to group or others (mode {mode:04o}): "
                f"it holds secrets; chmod 600 {path}"
            )
    mode = stat.S_IMODE(config.data_dir.stat().st_mode)
    if mode & 0o077:
        return [
            f"{config.data_dir} is open to group or others (mode {mode:04o}): "
            f"chmod 700 {config.data_dir}"
        ]
    return []


def _config_text(
    origin: str, assets: tuple[tuple[str, int], ...], database_url: str, export_dir: Path
) -> str:
    doc = tomlkit.document()
    doc["origin"] = origin
    doc["ingest_token"] = secrets.token_urlsafe(24)
    doc["admin_token"] = secrets.token_urlsafe(24)
    doc["proof_secret"] = secrets.token_hex(32)
    doc["export_dir"] = str(export_dir)
    if database_url:  # kept, so that no later command opens a fresh SQLite file by mistake
        doc["database_url"] = database_url
    table = tomlkit.aot()
    for asset, decimals in assets:
        table.append(tomlkit.table().add("id", asset).add("decimals", decimals))
    doc["assets"] = table
    return tomlkit.dumps(doc)


def write_routing_key(path: Path) -> None:
    """Make the routing key file ``path``: 32 random bytes in hex, mode 0600.

    Raises:
        ConfigError: ``path`` exists: a deployment's routing key is never
            replaced (it would move users to other shards).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        raise ConfigError(f"{path} exists: a routing key is never replaced") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")


def _build(work: Path, text: str, passphrase: str) -> VerifierKey:
    """Write config.toml, the keys and the database schema into ``work``."""
    fd = os.open(work / CONFIG_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    # read back what was written: a config.toml init cannot read is a bug, found now
    config = load_config(work, {"key_passphrase": passphrase or None}, environ={})
    write_routing_key(config.routing_key_path)
    key = generate_key(config.key_path, passphrase.encode() or None)
    vkey = verifier_key_for(config.origin, key.public_key())
    store = Store.open(config.url)
    try:
        for asset in config.assets:
            store.ensure_asset(asset.id, asset.decimals)
        now = int(time.time() * 1000)
        store.add_signing_key(f"{vkey.key_id:08x}", vkey.name, vkey.public_key, now)
    finally:
        store.close()
    return vkey


def initialise(
    data_dir: Path,
    origin: str,
    assets: tuple[tuple[str, int], ...],
    database_url: str = "",
    passphrase: str = "",
) -> tuple[Config, VerifierKey]:
    """Create ``data_dir`` whole, or leave nothing behind (module docstring).

    Returns the configuration as read back from the new directory, and the
    verifier key to publish.

    Raises:
        ConfigError: an argument is invalid, or ``data_dir`` is not new or empty.
        KeyFileError, StorageError, OSError: making it failed (nothing is left).
    """
    check_origin(origin)
    if not assets:
        raise ConfigError("--assets: give at least one ASSET:DECIMALS")
    if database_url:
        try:
            make_url(database_url)
        except (ArgumentError, ValueError):
            raise ConfigError("--database-url: not a database URL") from None
    data_dir = data_dir.absolute()
    exists = data_dir.exists() or data_dir.is_symlink()
    if exists:
        if (data_dir / CONFIG_FILE).exists():
            raise ConfigError(f"{data_dir} is already initialised")
        if not data_dir.is_dir():
            raise ConfigError(f"{data_dir} exists and is not a directory")
        if any(data_dir.iterdir()):
            raise ConfigError(f"{data_dir} is not empty: init wants a new or empty directory")
    elif not data_dir.parent.is_dir():
        raise ConfigError(f"{data_dir.parent} does not exist: create it first")
    text = _config_text(origin, assets, database_url, data_dir / "exports")
    # beside the final directory (renamed into place) or inside an empty one
    work = Path(tempfile.mkdtemp(prefix=".init-", dir=data_dir if exists else data_dir.parent))
    moved: list[Path] = []
    try:
        vkey = _build(work, text, passphrase)
        if exists:
            names = sorted(os.listdir(work), key=lambda name: name == CONFIG_FILE)
            for name in names:  # config.toml last: until then, not "initialised"
                os.rename(work / name, data_dir / name)
                moved.append(data_dir / name)
            work.rmdir()
            if data_dir.stat().st_uid == os.geteuid():
                data_dir.chmod(DIR_MODE)
        else:
            os.rename(work, data_dir)
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        raise
    return load_config(data_dir, environ={}), vkey
