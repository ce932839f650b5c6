"""Where ``/admin/export`` writes: file names from user ids, fresh directories, new files.

Every export goes into a directory it creates itself under ``export_dir``
(config.toml; nothing from the network names a path): ``epoch-<N>``, or
``epoch-<N>-<k>`` when that exists already. Files are created, never opened
if they exist, mode 0640; directories 0750.

A user's file name is ``proof_file_name(user)``:

* bytes of ``A-Z a-z 0-9 _`` are kept, and ``- . @`` except as the first
  character; every other byte of the id's UTF-8 is written ``%XX`` (upper
  case hex). This is injective (``%`` itself is escaped) and can produce
  neither ``/`` nor NUL, nor a name that starts with ``.`` or ``-`` (so never
  ``.``, ``..``, a hidden file or something a shell tool reads as an option).
* when that is longer than ``MAX_ESCAPED`` bytes, the name is ``+sha256-``
  followed by the hex SHA-256 of the id's UTF-8: ``+`` never appears in the
  first form, so the two forms cannot meet.

Then ``.json``. Names are at most 205 bytes, under every file system's 255.
On a case-insensitive file system two ids that differ only in case would
meet: the export then fails on the second one rather than overwrite.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prover.errors import ProverError

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "MAX_ESCAPED",
    "create_export_dir",
    "proof_file_name",
    "write_new_file",
]

FILE_MODE = 0o640
DIR_MODE = 0o750
MAX_ESCAPED = 200
_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_KEPT_INSIDE = _KEPT | frozenset(b"-.@")
_MAX_ATTEMPTS = 1000


def proof_file_name(user: str) -> str:
    """The name of ``user``'s proof file in an export (rule in the module docstring)."""
    raw = user.encode("utf-8")
    name = "".join(
        chr(b) if b in (_KEPT_INSIDE if i else _KEPT) else f"%{b:02X}" for i, b in enumerate(raw)
    )
    if len(name) > MAX_ESCAPED:
        name = "+sha256-" + hashlib.sha256(raw).hexdigest()
    return name + ".json"


def create_export_dir(root: Path, epoch: int) -> Path:
    """Create and return a new directory for the export of ``epoch`` under ``root``
    (``root`` itself is created if missing). Never returns one that existed."""
    try:
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ProverError(f"cannot create export_dir {root}: {exc.strerror}") from None
    for attempt in range(1, _MAX_ATTEMPTS + 1):
        path = root / (f"epoch-{epoch}" if attempt == 1 else f"epoch-{epoch}-{attempt}")
        try:
            os.mkdir(path, DIR_MODE)  # fails if anything, even a dangling link, is there
        except FileExistsError:
            continue
        except OSError as exc:
            raise ProverError(f"cannot create {path}: {exc.strerror}") from None
        return path
    raise ProverError(f"{root} holds {_MAX_ATTEMPTS} exports of epoch {epoch}: clean it up")


def write_new_file(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path``, which must not exist (nor be a link).

    Raises:
        ProverError: it exists, or the write failed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise ProverError(f"{path} exists: an export never overwrites a file") from None
    except OSError as exc:
        raise ProverError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise ProverError(f"cannot write {path}: {exc.strerror}") from None
