"""Publication: each committed epoch handed out, at once to the root stream's
subscribers (prover/fanout.py), or, with witnesses, once cosigned by a
quorum or at the deadline (prover/witnesses.py).

Invariants:

- An epoch reaches this module only once committed (``committed``); it is
  handed out exactly once, in commit order.
- With witnesses, their publisher hands each epoch out with the database
  thread held idle, then, while the engine's ``run`` keeps the collector off,
  collects garbage: not before, where a collection would hold the GIL from
  the witnesses' threads (prover/runtime.py).
- The delay from each epoch's commit to its hand-out is observed
  (``publication_delay``).
- Each epoch's record goes with it to the fan-out as the engine built it
  (``MappedRecord``), kept here while the witnesses hold the epoch: the
  root stream never decodes what the engine has.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from prover.config import Config
from prover.dbthread import DbThread
from prover.fanout import Fanout
from prover.mapped import MappedRecord
from prover.metrics import Metrics
from prover.runtime import collect_after, quick_gil_handoffs
from prover.witnesses import KEEP_EPOCHS, Witnesses, WitnessStats
from storage.store import Store
from verifier.stream import EpochMessage

__all__ = ["Publication"]


class Publication:
    """The root stream and the witnesses of one engine (module docstring).
    Construction does no I/O; ``start`` starts the witnesses."""

    def __init__(
        self,
        config: Config,
        store: Store,
        db: DbThread,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._db, self._metrics = db, metrics
        self.fanout = Fanout(config, store, db, metrics, clock)
        self._committed_at: dict[int, float] = {}  # perf_counter() of commits not yet published
        self._records: dict[int, MappedRecord] = {}  # the records of epochs not yet published
        self.witnesses: Witnesses | None = None  # publication waits for their cosignatures
        if config.witnesses:
            endpoints = config.witness_endpoints()
            for endpoint in endpoints:  # exported from the start, before any submission
                metrics.witness_submission.labels(witness=endpoint.name)
            self.witnesses = Witnesses(
                endpoints,
                config.quorum,
                config.witness_timeout,
                db=db,
                store=store,
                publish=self._publish_cosigned,
                keep=max(KEEP_EPOCHS, config.proof_epochs + 1),
                hurry=quick_gil_handoffs,  # its threads get the GIL back quickly too
                observe=metrics.observe_witness,
            )

    async def start(self, committed: int, record: MappedRecord | None) -> None:
        """Start the witnesses, if any; ``committed`` is the last epoch stored
        (-1: none), ``record`` its record (published before this run)."""
        self.fanout.start(committed, record)
        if self.witnesses is not None:
            await self.witnesses.start(committed)

    async def close(self) -> None:
        """Publish the epochs waiting for witnesses, then end every root stream."""
        if self.witnesses is not None:
            await self.witnesses.close()
        self.fanout.close()

    def committed(
        self, number: int, message: EpochMessage, record: MappedRecord, at: float
    ) -> None:
        """Epoch ``number`` (``message``, its ``record``) was committed at
        ``time.perf_counter()`` ``at``: hand it out now, or submit it to the
        witnesses."""
        self._committed_at[number] = at
        self._records[number] = record
        if self.witnesses is None:
            self._publish(number, message)
        else:  # published once cosigned, or at the deadline (prover/witnesses.py)
            self.witnesses.submit(number, message, record.consistency(message.inclusion))

    def _publish(self, number: int, message: EpochMessage) -> None:
        """Hand epoch ``number`` to the subscribers; observe the delay since its commit."""
        self.fanout.publish(number, message, self._records.pop(number))
        committed = self._committed_at.pop(number, None)
        if committed is not None:
            self._metrics.publication_delay.observe(time.perf_counter() - committed)

    def _publish_cosigned(self, number: int, message: EpochMessage) -> None:
        """The witnesses' publisher hands out an epoch, the database thread
        idle; then, if the collector is off, collects garbage."""
        with self._db.held():
            self._publish(number, message)
        if not gc.isenabled():
            collect_after(self._metrics.epoch)

    def witness_stats(self) -> list[WitnessStats]:
        """Each configured witness's state, for /metrics."""
        return [] if self.witnesses is None else self.witnesses.stats()
