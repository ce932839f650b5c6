"""``import``: a balance file (prover/balancefile.py) applied to the database
in batches, as one producer whose sequence numbers continue from its last."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from prover.balancefile import read_rows
from prover.config import Config
from prover.errors import ProverError
from storage.store import Store

__all__ = ["IMPORT_BATCH", "import_balances"]

IMPORT_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    user: str
    asset: str
    amount: int


def import_balances(config: Config, path: Path, source: str) -> tuple[int, int]:
    """Apply the balances of ``path`` as producer ``source``, showing progress
    on stderr; the number of rows and the last sequence number.

    Raises:
        ConfigError: a malformed line or an unconfigured asset.
        ProverError: the file cannot be read.
        StorageError: the database failed (the batches before stay applied).
    """
    try:
        open(path, encoding="utf-8").close()  # before the database is touched
    except OSError as exc:
        raise ProverError(f"cannot read {path}: {exc.strerror or exc}") from None
    store = Store.open(config.url)
    try:
        seq = store.source_marks().get(("balances", source), -1)
        total = 0
        batch: list[_Row] = []
        assets = {asset.id for asset in config.assets}
        bar = tqdm(unit=" rows", desc=f"importing {path.name}", file=sys.stderr, disable=None)
        with bar:
            for _, user, asset, amount in read_rows(path, assets):
                seq += 1
                batch.append(_Row(seq, user, asset, amount))
                if len(batch) == IMPORT_BATCH:
                    store.apply_balances(source, batch)
                    bar.update(len(batch))
                    total += len(batch)
                    batch = []
            if batch:
                store.apply_balances(source, batch)
                bar.update(len(batch))
                total += len(batch)
    finally:
        store.close()
    return total, seq
