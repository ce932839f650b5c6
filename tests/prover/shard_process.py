"""A shard in a process of its own, saving its closes to a store, for the
crash tests (tests/prover/test_shard_kill.py)::

    python -m tests.prover.shard_process NATS STREAM PREFIX PART DB_URL [DIE_AFTER]

runs part ``PART`` of ``ROUTER``'s parts under ``PERIOD`` until SIGTERM,
restored from the store (already migrated) if it saved a close. Once it
serves its control subject it prints one line, ``serving <seconds the
restore took> <epoch restored or -1>``. With ``DIE_AFTER``, it kills
itself (SIGKILL) as soon as it has saved the close of that epoch, before
answering it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from prover.periods import SaltPeriod
from prover.routing import Router
from prover.shards.shard import Shard
from storage.shards import HoldingChanges, ShardState
from storage.store import Store

PERIOD = SaltPeriod(4, 0, bytes(range(64, 96)))
ROUTER = Router(bytes(range(96, 128)), 1)


async def main(argv: list[str]) -> None:
    url, stream, prefix, part, db_url = argv[:5]
    die_after = int(argv[5]) if len(argv) > 5 else None
    store = Store.open(db_url, migrate=False)
    if die_after is not None:
        save = store.save_shard

        def save_then_die(
            name: str, part: int, after: int | None, state: ShardState, changes: HoldingChanges
        ) -> None:
            save(name, part, after, state, changes)
            if state.epoch == die_after:
                os.kill(os.getpid(), signal.SIGKILL)

        store.save_shard = save_then_die  # type: ignore[method-assign]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    shard = Shard(url, stream, PERIOD, ROUTER, int(part), prefix, store=store, idle=0.02)
    task = asyncio.create_task(shard.run(stop))
    await shard.serving.wait()
    epoch = shard.core.epoch
    print(f"serving {shard.stats.restore_seconds:.3f} {-1 if epoch is None else epoch}", flush=True)
    await task
    store.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    asyncio.run(main(sys.argv[1:]))
