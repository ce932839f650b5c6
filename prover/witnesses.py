"""Each epoch's checkpoint cosigned by the configured witnesses, and the epochs
published in order with the cosignatures collected (docs/PROTOCOL.md §12.4).

One thread per witness (prover/witness_client.py), holding one keep-alive
HTTP/1.1 connection, submits checkpoints one at a time (C2SP tlog-witness
``add-checkpoint``; the pure part is prover/witness_protocol.py): always the
newest it was offered, so a witness that is behind is sent only the newest
checkpoint, with the consistency proof from the size it last cosigned (the
epoch's own proof when it is one epoch behind, else one the store computes on
the database thread). After a failure it waits ``RETRY`` (a warning each
time) and submits whatever is newest then. Its answers go to the event loop.

On the event loop, ``Witnesses.submit`` (once an epoch committed) offers the
checkpoint to every client and queues the epoch; one task publishes the
queued epochs in commit order, each once it has ``quorum`` cosignatures, or
once every witness that has not cosigned it is failing or past it, or
``timeout`` seconds after its commit, whichever comes first:
a witness that is down or slow delays an epoch by ``timeout`` at most and
never holds up the next one's commit. An epoch's cosignatures are stored when
it is published, each later one when it arrives, so the root stream's
replays and the proofs served later carry them all.

Invariants: every epoch committed is published once, in order (``close``
publishes those still queued); a cosignature is attached or stored only once
``read_answer`` has verified it, at most one per epoch and witness.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from prover.dbthread import DbThread
from prover.witness_client import Job, Report, WitnessClient
from prover.witness_protocol import WitnessEndpoint, WitnessState
from storage.cosignatures import CosignatureRow
from storage.store import Store
from verifier.checkpoint import split_note
from verifier.stream import EpochMessage

__all__ = ["KEEP_EPOCHS", "WitnessStats", "Witnesses"]

log = logging.getLogger("solvency.witnesses")
KEEP_EPOCHS = 256  # cosignatures kept in memory for at least this many recent epochs
STOP_WAIT = 2.0  # seconds ``close`` waits for the clients' threads


@dataclass(frozen=True, slots=True)
class WitnessStats:
    """One witness as /metrics shows it."""

    endpoint: WitnessEndpoint
    cosigned_epoch: int  # the last epoch it cosigned; -1: none known
    lag: int  # epochs from that one to the last committed
    failures: int  # failed submissions since start
    failing: int  # in a row; 0: its last answer was a cosignature
    latency: float  # seconds the last submission took


@dataclass
class _Tally:
    cosigned_epoch: int = -1
    failures: int = 0
    failing: int = 0
    latency: float = 0.0


# an epoch waiting for publication: number, message, deadline (monotonic), its ``hurry``
_Queued = tuple[int, EpochMessage, float, contextlib.ExitStack]


class Witnesses:
    """The witnesses of one engine (module docstring). ``publish`` is called
    on the event loop with each epoch, in order, its checkpoint carrying the
    cosignatures collected."""

    def __init__(
        self,
        endpoints: Sequence[WitnessEndpoint],
        quorum: int,
        timeout: float,
        *,
        db: DbThread,
        store: Store,
        publish: Callable[[int, EpochMessage], None],
        keep: int = KEEP_EPOCHS,
        hurry: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.endpoints, self.quorum, self.timeout = tuple(endpoints), quorum, timeout
        self.quorum_epoch: int | None = None  # the last epoch cosigned by a quorum (> 0)
        self._db, self._store, self._publish, self._keep = db, store, publish, keep
        self._hurry = hurry  # entered from an epoch's submission to its publication
        self._observe = observe  # each submission's witness name and seconds, for /metrics
        self._lines: dict[int, dict[int, bytes]] = {}  # epoch -> witness index -> line
        self._tally = [_Tally() for _ in self.endpoints]
        self._clients: list[WitnessClient] = []
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._committed = self._published = -1
        self._closed = False

    def _call(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._db.submit(fn, *args)

    async def start(self, committed: int) -> None:
        """Load what the store knows (the last epoch ``committed``), then start
        the clients and the publisher."""
        keys = [(e.key.name, e.key.key_id) for e in self.endpoints]
        index = {key: i for i, key in enumerate(keys)}
        last = await asyncio.wrap_future(self._call(self._store.last_cosigned, keys))
        if committed >= 0:
            first = max(0, committed - self._keep + 1)
            rows = await asyncio.wrap_future(self._call(self._store.cosignatures, first, committed))
            for row in rows:
                if (i := index.get((row.witness, row.key_id))) is not None:
                    self._lines.setdefault(row.epoch, {})[i] = row.line.encode()
        self._committed = self._published = committed
        if self.quorum > 0:
            self.quorum_epoch = max(
                (e for e, lines in self._lines.items() if len(lines) >= self.quorum), default=None
            )
        loop = asyncio.get_running_loop()

        def report(item: Report) -> None:  # in a client's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
                loop.call_soon_threadsafe(self._on_report, item)

        for i, endpoint in enumerate(self.endpoints):
            cosigned = last.get(keys[i], -1)
            self._tally[i].cosigned_epoch = cosigned
            state = WitnessState(cosigned + 1 if cosigned >= 0 else None)
            self._clients.append(WitnessClient(i, endpoint, state, self._proof, report))
        for client in self._clients:
            client.start()
        self._publisher = asyncio.create_task(self._publish_in_order())

    def _proof(self, old: int, new: int) -> Sequence[bytes]:
        """In a client's thread: the consistency proof, from the database thread."""
        return self._call(self._store.consistency_proof, old, new).result()  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Publish the epochs still queued (``timeout`` at most), then stop."""
        if self._publisher is not None:
            self._queue.put_nowait(None)
            await self._publisher
        self._closed = True
        for client in self._clients:
            client.stop()

        def join() -> None:
            deadline = time.monotonic() + STOP_WAIT
            for client in self._clients:
                client.join(max(0.0, deadline - time.monotonic()))

        await asyncio.to_thread(join)

    def submit(self, epoch: int, message: EpochMessage, consistency: Sequence[bytes]) -> None:
        """Epoch ``epoch`` committed: offer its checkpoint to every witness
        (``consistency``: the proof from the log one epoch shorter) and queue
        its publication."""
        self._committed = epoch
        body, _ = split_note(message.checkpoint)
        job = Job(epoch, message.checkpoint, body, tuple(consistency))
        for client in self._clients:
            client.offer(job)
        hurry = contextlib.ExitStack()
        hurry.enter_context(self._hurry())  # from now, not from when the publisher wakes
        self._queue.put_nowait((epoch, message, time.monotonic() + self.timeout, hurry))
        for old in [e for e in self._lines if e <= epoch - self._keep]:
            del self._lines[old]

    def attach(self, epoch: int, message: EpochMessage) -> EpochMessage:
        """``message`` of ``epoch`` with the cosignatures known that it lacks."""
        lines = self._lines.get(epoch, {})
        extra = [lines[i] for i in sorted(lines) if lines[i] not in message.checkpoint]
        if not extra:
            return message
        return dataclasses.replace(message, checkpoint=message.checkpoint + b"".join(extra))

    def stats(self) -> list[WitnessStats]:
        return [
            WitnessStats(
                e,
                t.cosigned_epoch,
                self._committed - t.cosigned_epoch,
                t.failures,
                t.failing,
                t.latency,
            )
            for e, t in zip(self.endpoints, self._tally, strict=True)
        ]

    def _on_report(self, report: Report) -> None:
        if self._closed:
            return
        tally, name = self._tally[report.index], self.endpoints[report.index].name
        tally.latency = report.latency
        if self._observe is not None:
            self._observe(name, report.latency)
        if report.line is not None:
            if tally.failing:
                log.info("witness %s cosigns again (epoch %d)", name, report.epoch)
            tally.failing, tally.cosigned_epoch = 0, report.epoch
            self._add(report.index, report.epoch, report.line)
        elif report.reason:
            tally.failures += 1
            tally.failing = report.failing
            log.warning(
                "witness %s did not cosign epoch %d (%d failures in a row): %s; next try in %.1f s",
                name,
                report.epoch,
                report.failing,
                report.reason,
                report.retry,
            )
        self._changed.set()

    def _add(self, index: int, epoch: int, line: bytes) -> None:
        if epoch > self._committed - self._keep:
            lines = self._lines.setdefault(epoch, {})
            if index in lines:
                return
            lines[index] = line
            if 0 < self.quorum <= len(lines) and (self.quorum_epoch or -1) < epoch:
                self.quorum_epoch = epoch
        if epoch <= self._published:  # late: stored now; else with its publication
            self._save(epoch, {index: line})

    def _save(self, epoch: int, lines: dict[int, bytes]) -> None:
        rows = [
            CosignatureRow(
                epoch, self.endpoints[i].key.name, self.endpoints[i].key.key_id, line.decode()
            )
            for i, line in sorted(lines.items())
        ]
        future = self._call(self._store.add_cosignatures, rows)

        def done(f: Future[None]) -> None:
            if (exc := f.exception()) is not None:
                log.error("could not store the cosignatures of epoch %d: %s", epoch, exc)

        future.add_done_callback(done)

    def _settled(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` has its quorum, or no witness that could
        still cosign it is left to wait for: each of the others has, or is
        failing, or has cosigned a later epoch (it will not go back)."""
        have = self._lines.get(epoch, {})
        if len(have) >= self.quorum:
            return True
        return not any(
            i not in have and not t.failing and t.cosigned_epoch < epoch
            for i, t in enumerate(self._tally)
        )

    async def _publish_in_order(self) -> None:
        while (item := await self._queue.get()) is not None:
            epoch, message, deadline, hurry = item
            with hurry:
                while True:
                    self._changed.clear()
                    left = deadline - time.monotonic()
                    if left <= 0 or self._settled(epoch):
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), left)
            waited = time.monotonic() - (deadline - self.timeout)
            self._published = epoch
            lines = dict(self._lines.get(epoch, {}))
            try:
                self._publish(epoch, self.attach(epoch, message))
            except Exception:
                log.exception("publishing epoch %d failed", epoch)
            if lines:
                self._save(epoch, lines)
            log.info(
                "epoch %d: cosigned by %d of %d witnesses, published %.1f ms after its commit",
                epoch,
                len(lines),
                len(self.endpoints),
                waited * 1000,
            )
