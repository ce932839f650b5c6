"""``rotate-key``: a new signing key, registered in the database and named
in config.toml, while the old one keeps co-signing until the operator
removes ``previous_key_file``.

config.toml is edited with tomlkit, so the operator's comments, order and
tables stay as they were; the new text replaces the old atomically.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from prover.config import CONFIG_FILE, Config
from prover.errors import ConfigError
from prover.keys import generate_key, load_key
from storage.store import Store
from verifier.checkpoint import VerifierKey, verifier_key_for

__all__ = ["rotate_key", "set_top_level"]


def set_top_level(path: Path, values: dict[str, str]) -> None:
    """Set top-level string keys of the TOML file ``path``, keeping the rest
    of it as it is; the file keeps its mode and is replaced atomically."""
    text = path.read_text(encoding="utf-8")
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key, value in values.items():
        doc[key] = value
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tomlkit.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rotate_key(config: Config) -> tuple[str, VerifierKey]:
    """Make, register and configure a new signing key; its file name and verifier key.

    Raises:
        KeyFileError: the current key cannot be loaded.
        StorageError, OSError: the database or config.toml cannot be written.
    """
    passphrase = config.passphrase
    load_key(config.key_path, passphrase)  # the current key must be usable
    name = f"signing-{int(time.time())}.key"
    key = generate_key(config.data_dir / name, passphrase)
    vkey = verifier_key_for(config.origin, key.public_key())
    store = Store.open(config.url)
    try:
        store.add_signing_key(
            f"{vkey.key_id:08x}", vkey.name, vkey.public_key, int(time.time() * 1000)
        )
    finally:
        store.close()
    set_top_level(
        config.data_dir / CONFIG_FILE, {"key_file": name, "previous_key_file": config.key_file}
    )
    return name, vkey
