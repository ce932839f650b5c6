"""Signing key files: created 0600, never overwritten, passphrase enforced."""

import stat
from pathlib import Path

import pytest

from prover.errors import KeyFileError
from prover.keys import generate_key, load_key


def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    key = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).public_key() == key.public_key()


def test_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    key = generate_key(path, b"correct horse")
    assert load_key(path, b"correct horse").public_key() == key.public_key()
    with pytest.raises(KeyFileError, match="passphrase"):
        load_key(path)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_key(path, b"wrong")


def test_refuses_overwrite_and_loose_modes(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    generate_key(path)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_key(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_key(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_bytes(b"junk")
    (tmp_path / "junk.key").chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM"):
        load_key(tmp_path / "junk.key")
