"""``status``: the last epoch and the witnesses' last cosignatures, read
from the database (the daemon need not run)."""

from __future__ import annotations

import time
from typing import TextIO

from prover.config import Config
from prover.initdir import redact_url
from prover.stored import stored_record
from storage.store import Store
from verifier.display import format_amount

__all__ = ["write_status"]


def write_status(config: Config, out: TextIO) -> None:
    """Write the status report of ``config``'s database to ``out``.

    Raises:
        StorageError: the database cannot be read.
        UnreadableEpoch: its last epoch is of another layout.
    """
    print(f"database {redact_url(config.url)}", file=out)
    store = Store.open(config.url)
    witnesses = config.witness_endpoints()
    try:
        latest = store.latest_epoch()
        cosigned = store.last_cosigned((w.key.name, w.key.key_id) for w in witnesses)
    finally:
        store.close()
    if witnesses:
        print(f"witnesses: {len(witnesses)}, quorum {config.quorum}", file=out)
    for w in witnesses:
        last = cosigned.get((w.key.name, w.key.key_id))
        never = last is None
        print(
            f"  {w.key} at {w.url}: " + ("never cosigned" if never else f"epoch {last}"), file=out
        )
    if latest is None:
        print("no epoch yet", file=out)
        return
    record = stored_record(latest)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.timestamp_ms / 1000))
    print(f"epoch {record.epoch} at {when} UTC, log of {record.epoch + 1} epochs", file=out)
    for a in record.assets:
        print(
            f"  {a.asset:<8} liabilities {format_amount(a.liabilities, a.decimals):>24}  "
            f"reserves {format_amount(a.reserves, a.decimals):>24}  {a.status.name.lower()}",
            file=out,
        )
