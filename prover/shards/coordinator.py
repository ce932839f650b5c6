"""The coordinator role of the sharded prover (docs/SCALING.md, "Roles"):
the log's single writer. It closes epochs at consistent cuts of the ledger
stream, combines the shards' subtree roots into each asset's root, builds
and appends the record, signs, and publishes on ``/roots``; ``/proof``
and exports ask the shards for the lower paths and add the top ones
(prover/shards/proofs.py), for the last ``proof_epochs`` epochs.

One epoch, under the epoch lock:

1. the cut ``C``: the last commit read from ``<prefix>.commit``, or, on
   the first epoch after a start or a failure, the cut at which shards
   staged or closed this epoch already (``Status``: a coordinator before
   may have got that far without appending it); the reserves and reserve
   reports committed up to ``C`` are stored (the store skips replays, as
   the daemon's ingest does);
2. ``Stage(n, C)`` to every shard; the trees that must grow, and how high
   (``grown_height`` of the fullest part of each);
3. ``Close(n, heights)`` to every shard: each asset's parts, combined by
   ``TopTree``; both steps carry the salt rotation's requests, a new
   period started first if one is due (prover/shards/rotation.py);
4. the record, appended to the log under the lease's fencing token
   (storage/lease.py) with the cut as the epoch's ``("stream", name)``
   mark, signed; only then published.

Invariants:

- Nothing is appended without the lease: a coordinator acquires it before
  its first epoch and renews it at each append, and every third of its
  time to live whether epochs succeed or not; an append with a stale
  token writes nothing. A coordinator that lost its lease stops.
- A failed epoch keeps what the shards closed (``_Closed``) and retries
  the append only: shards close each epoch once.
- Epochs pause while a shard does not answer: the record would omit
  accepted updates; ``health`` says which shard and since when.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from prover.backoff import Backoff
from prover.config import Config
from prover.dbthread import DbThread
from prover.epoch import Reserve, build_record, record_reports
from prover.errors import IngestError, ProverError
from prover.frames import Encoding, Frame
from prover.ingest import IngestResult, Intake
from prover.ledger import AssetRoot
from prover.mapped import MappedRecord
from prover.messages import Batch, parse_ingest
from prover.metrics import Metrics, epoch_health
from prover.publication import Publication
from prover.routing import Router
from prover.shards import control, wire
from prover.shards.intake import Intake as StreamReader
from prover.shards.intake import NotYet, ReaderState
from prover.shards.links import NOT_YET_WAIT, ShardLinks
from prover.shards.proofs import ShardedProofs
from prover.shards.rotation import Rotations
from prover.sizing import height_for_parts
from prover.stored import stored_epoch, stored_record
from prover.tokens import check_user_token, user_token
from prover.top import TopTree
from prover.witnesses import WitnessStats
from storage.lease import Fence
from storage.rows import PeriodRow
from storage.store import ReserveRow, Store
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.proof import ProofFile
from verifier.stream import EpochMessage
from verifier.subscription import ALL_ASSETS, Subscription

__all__ = ["Coordinator"]

log = logging.getLogger("solvency.coordinator")
T = TypeVar("T")
RETRY = Backoff(first=0.1, cap=5.0)
COMMITS_HEARTBEAT = 1.0  # s: the commits' consumer, silent 2 of these, is made anew


@dataclass(frozen=True, slots=True)
class _Closed:
    """An epoch the shards closed, not yet appended: what a retry appends."""

    number: int
    cut: int
    roots: tuple[AssetRoot, ...]
    tops: dict[str, TopTree]
    marks: dict[tuple[str, str], int]
    reserves: dict[str, dict[str, Reserve]]
    timestamp_ms: int


class Coordinator:
    """The coordinator (module docstring): what ``prover.server`` serves, as
    it serves the daemon's engine, on a store, the signing key, the ledger
    stream's NATS servers and ``2**router.bits`` shards."""

    def __init__(
        self,
        config: Config,
        store: Store,
        key: Ed25519PrivateKey,
        router: Router,
        nats_urls: list[str],
        stream: str,
        prefix: str = wire.DEFAULT_PREFIX,
        *,
        previous_keys: tuple[Ed25519PrivateKey, ...] = (),  # still co-signing after a rotation
        holder: str = "coordinator",
        lease_ttl: float = 10.0,
        shard_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.config, self.store, self.key, self.router = config, store, key, router
        self.previous_keys = previous_keys
        self.clock = clock
        self.metrics = Metrics() if metrics is None else metrics
        self.verifier_key = verifier_key_for(config.origin, key.public_key())
        self._urls, self._stream, self._prefix = nats_urls, stream, prefix
        self._holder, self._lease_ttl, self._shard_timeout = holder, lease_ttl, shard_timeout
        self._db = DbThread()
        self._lock = asyncio.Lock()
        self._intake = Intake(config, store, self._db, self.metrics, clock, lambda rows: None)
        self._publication = Publication(config, store, self._db, self.metrics, clock)
        self._reader = StreamReader(None)
        self._nc: Client | None = None
        self._links: ShardLinks | None = None
        self._fence: Fence | None = None
        self._closed: _Closed | None = None
        self._latest: tuple[EpochMessage, MappedRecord, dict[str, TopTree]] | None = None
        self._retry_at = 0.0
        self._commits = asyncio.Event()  # set when a commit is read
        self._unsure = True  # where the shards stand: asked before the next epoch
        self._rotations = Rotations(
            config.salt_period, router.bits, self._new_period, config.epoch_interval
        )
        self._loaded = False  # the log's state, once the lease is held
        self._proofs = ShardedProofs(
            config, router, self._ask, self._stored, lambda: self._publication.witnesses
        )

    # Start, run, stop

    async def start(self) -> None:
        """Start the database thread and connect to NATS. The log's state is
        loaded once the lease is held (``run``): a standby started long
        before it takes over must begin where the log is then."""
        self._db.start()
        self._nc = await nats.connect(servers=self._urls, max_reconnect_attempts=-1)
        self._links = ShardLinks(
            self._nc,
            self._prefix,
            self.router.parts,
            self._shard_timeout,
            self.clock,
        )

    async def _load(self) -> None:
        """Under the lease: the store's state, the commits read after the last
        epoch's cut, the publication started from the last epoch."""
        assert self._nc is not None
        await self._intake.load()
        self._rotations.target = await self._call(self.store.latest_salt_period)
        latest = await self._call(self.store.latest_epoch)
        last: MappedRecord | None = None
        cut = 0
        if latest is not None:
            self.metrics.epoch = self.metrics.published_epoch = latest.number
            last = MappedRecord(stored_record(latest))
            self.metrics.last_epoch_time = last.record.timestamp_ms / 1000
            marks = await self._call(self.store.epoch_marks, latest.number)
            cut = marks.get(("stream", self._stream), 0)
        self._reader = StreamReader(None, start=ReaderState(cut, {}, cut + 1))
        await self._nc.jetstream().subscribe(
            wire.commit_subject(self._prefix),
            cb=self._on_commit,
            ordered_consumer=True,
            # R1 on any peer of the stream, a stopped one too (NATS 2.9.10, see
            # pull.py ``open_puller``): nats-py makes it anew once 2 heartbeats miss
            idle_heartbeat=COMMITS_HEARTBEAT,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=cut + 1
            ),
        )
        await self._publication.start(self.metrics.epoch, last)
        self._loaded = True

    async def _on_commit(self, msg: Msg) -> None:
        meta = msg.metadata
        message = wire.decode(msg.data)
        self._reader.add(meta.sequence.stream, int(meta.timestamp.timestamp() * 1000), message)
        self._commits.set()  # an epoch may be due sooner than the heartbeat

    async def run(self, stop: asyncio.Event) -> bool:
        """Take the lease (waiting as a standby while another holds it), then
        close epochs on schedule until ``stop`` is set or the lease is lost.
        True if stopped, False if the lease was lost."""
        while self._fence is None:
            self._fence = await self._call(
                self.store.acquire_lease,
                self._stream,
                self._holder,
                int(self.clock() * 1000),
                int(self._lease_ttl * 1000),
            )
            if self._fence is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._lease_ttl / 3)
                if stop.is_set():
                    return True
        await self._load()
        log.info(
            "coordinator %s holds the log (token %d), epoch %d next",
            self._holder,
            self._fence.token,
            self.metrics.epoch + 1,
        )
        renewed = time.monotonic()
        while not stop.is_set():
            renew_in = renewed + self._lease_ttl / 3 - time.monotonic()
            self._commits.clear()
            wake = [asyncio.ensure_future(stop.wait())]
            if self._reader.read <= self._reader.state().cut:  # idle: a commit brings it closer
                wake.append(asyncio.ensure_future(self._commits.wait()))
            await asyncio.wait(
                wake,
                timeout=max(0.0, min(self._until_due(), renew_in)),
                return_when="FIRST_COMPLETED",
            )
            for waiting in wake:
                waiting.cancel()
            if stop.is_set():
                break
            try:
                if time.monotonic() >= renewed + self._lease_ttl / 3:  # epochs may be failing
                    await self._call(self._renew)
                    renewed = time.monotonic()
                if self._until_due() <= 0:
                    await self.close_epoch()
                    renewed = time.monotonic()  # the append renewed it
            except LeaseLost:
                log.error("coordinator %s lost the lease: stopping", self._holder)
                return False
            except (ProverError, OSError, nats.errors.Error, TimeoutError) as exc:
                self._failed(exc)
        return True

    def _until_due(self) -> float:
        if self.metrics.epoch_failing:
            return max(0.0, self._retry_at - time.monotonic())
        waiting = self._reader.read > self._reader.state().cut
        limit = self.config.epoch_interval if waiting else self.config.max_interval
        return max(0.0, self.metrics.last_epoch_time + limit - self.clock())

    def _failed(self, exc: BaseException) -> None:
        self.metrics.epoch_failing += 1
        self.metrics.last_epoch_error = type(exc).__name__
        self.metrics.last_epoch_error_time = self.clock()
        self._retry_at = time.monotonic() + RETRY.delay(self.metrics.epoch_failing)
        log.error("epoch %d failed: %s", self.metrics.epoch + 1, exc)

    async def close(self) -> None:
        """Stop publishing, let the lease go, close NATS and the database thread."""
        if self._loaded:
            await self._publication.close()
        if self._fence is not None:
            with contextlib.suppress(Exception):
                await self._call(self.store.release_lease, self._fence, self._holder)
        if self._nc is not None:
            await self._nc.close()
        self._db.shutdown()

    # The epoch

    async def close_epoch(self) -> EpochMessage:
        """Close, append and publish one epoch (module docstring).

        Raises:
            LeaseLost: another coordinator holds the lease.
            NotYet: a shard did not read as far as the cut in time.
            ProverError: a shard refused or failed.
        """
        async with self._lock:
            if self._closed is None:
                try:
                    self._closed = await self._close_shards(self.metrics.epoch + 1)
                except BaseException:
                    self._unsure = True  # some shards may have staged or closed it
                    raise
            closed = self._closed
            record = build_record(
                epoch=closed.number,
                timestamp_ms=closed.timestamp_ms,
                max_reserve_age_ms=int(self.config.max_reserve_age * 1000),
                decimals=self._intake.decimals,
                roots=closed.roots,
                reserves=closed.reserves,
            )
            used = [
                ReserveRow(asset, source, r.amount, r.as_of_ms)
                for asset, by_source in closed.reserves.items()
                for source, r in by_source.items()
            ]
            message = await self._call(
                self._append, closed, record.header.encode(), record.encode(), used
            )
            mapped = MappedRecord(record)
            reports = record_reports(record, closed.reserves)
            message = dataclasses.replace(message, reports=reports)
            self._closed = None
            self.metrics.epoch = closed.number
            self.metrics.epoch_failing = 0
            self.metrics.last_epoch_time = closed.timestamp_ms / 1000
            self._latest = (message, mapped, closed.tops)
            self._proofs.committed(message, mapped, closed.tops)
            self._publication.committed(closed.number, message, mapped, time.perf_counter())
        log.info("epoch %d: cut %d, %d assets", closed.number, closed.cut, len(closed.roots))
        return message

    async def _close_shards(self, number: int) -> _Closed:
        """Steps 1-3 of the module docstring, for epoch ``number``."""
        assert self._links is not None
        now = self.clock()  # the epoch closes here: its batches are cut
        cut = self._reader.read
        if self._unsure:
            cut = await self._pending_cut(number)
        taken = self._reader.through(cut)
        for data in taken.messages:
            await self._store_reserves(data)
        assets = {a: height_for_parts(0, self.router.bits) for a in self._intake.decimals}
        await self._rotations.start_if_due(now)
        roots, tops = await self._rotations.close(
            self._links, number, cut, assets, self._height, now
        )
        _, marks, reserves = self._intake.cut()
        marks[("stream", self._stream)] = cut
        timestamp_ms = int(now * 1000)
        if self._latest is not None:
            timestamp_ms = max(timestamp_ms, self._latest[1].record.timestamp_ms)
        return _Closed(number, cut, tuple(roots), tops, marks, reserves, timestamp_ms)

    async def _pending_cut(self, number: int) -> int:
        """The cut where shards staged or closed epoch ``number`` already
        (``ShardLinks.pending_cut``), once the commits are read as far;
        else the last commit read.

        Raises:
            NotYet: the commits are not read as far as that cut in time.
        """
        assert self._links is not None
        cut = await self._rotations.pending_cut(self._links, number)
        self._unsure = False
        if cut is None:
            return self._reader.read
        deadline = time.monotonic() + NOT_YET_WAIT
        while self._reader.read < cut:
            if time.monotonic() > deadline:
                raise NotYet(f"commits read as far as {self._reader.read}, not {cut}")
            await asyncio.sleep(0.02)
        log.info("epoch %d: finished at cut %d, where the shards stand", number, cut)
        return cut

    def _height(self, asset: str) -> int:
        """``asset``'s tree height in the last record (a new asset's: the least)."""
        if self._latest is not None:
            with contextlib.suppress(KeyError):
                return self._latest[1].record.asset(asset).height
        return height_for_parts(0, self.router.bits)

    async def _store_reserves(self, data: bytes) -> None:
        """Store a reserves or reserve reports message the front-ends accepted;
        one the store refuses now (it was checked there) is logged, not lost
        silently."""
        try:
            await self._intake.ingest(parse_ingest(data))
        except IngestError as exc:
            log.error("a committed reserves message was refused: %s (%s)", exc.code, exc)

    def _append(
        self, closed: _Closed, leaf: bytes, record: bytes, used: list[ReserveRow]
    ) -> EpochMessage:
        """In the db thread: renew the lease, then append under its token."""
        self._renew()

        def sign(size: int, root: bytes) -> bytes:
            body = Checkpoint(self.config.origin, size, root).to_note_body()
            return sign_note(body, self.config.origin, self.key, *self.previous_keys)

        stored = self.store.latest_epoch()
        if stored is not None and stored.number == closed.number and stored.record == record:
            checkpoint = stored.checkpoint  # a retry after a commit that did not answer
        else:
            checkpoint = self.store.append_epoch(
                closed.number,
                leaf,
                record,
                sign,
                created_ms=closed.timestamp_ms,
                marks=closed.marks,
                reserves=used,
                fence=self._fence,
            )
        return EpochMessage(
            record=record,
            checkpoint=checkpoint,
            inclusion=tuple(self.store.inclusion_proof(closed.number, closed.number + 1)),
        )

    async def _new_period(self, now_ms: int) -> PeriodRow:
        """Start the next salt period in the store, the lease renewed first."""

        def start() -> PeriodRow:
            self._renew()
            return self.store.start_salt_period(now_ms)

        return await self._call(start)

    def _renew(self) -> None:
        """In the db thread: extend the lease, or raise ``LeaseLost``."""
        assert self._fence is not None
        now_ms, ttl_ms = int(self.clock() * 1000), int(self._lease_ttl * 1000)
        if not self.store.renew_lease(self._fence, self._holder, now_ms, ttl_ms):
            raise LeaseLost(f"lease of {self._stream} taken over")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._db.submit(fn, *args))

    # What the server asks of it

    def health(self) -> str | None:
        if not self._loaded:
            return "standby: another coordinator holds the log's lease"
        if self._links is not None and self._links.down:
            part, since = min(self._links.down.items(), key=lambda kv: kv[1])
            return f"shard {part} down since {time.strftime('%H:%M:%S', time.gmtime(since))} UTC"
        return epoch_health(self.metrics, self.clock(), self.config.max_interval)

    def witness_stats(self) -> list[WitnessStats]:
        return self._publication.witness_stats()

    def user_token(self, user: str) -> str:
        return user_token(self.config.proof_secret, user)

    def check_user_token(self, user: str, token: str) -> bool:
        return check_user_token(self.config.proof_secret, user, token)

    async def ingest(self, batch: Batch) -> IngestResult:
        raise IngestError("bad-message", "this prover is sharded: send batches to a front-end")

    def subscribe(
        self,
        since: int | None,
        offer: Callable[[Frame], bool] | None = None,
        subscription: Subscription = ALL_ASSETS,
        encoding: Encoding = Encoding.JSON,
    ) -> AsyncIterator[Frame]:
        if not self._loaded:  # a standby: the stream ends, the subscriber tries again later
            return _nothing()
        return self._publication.fanout.subscribe(since, offer, subscription, encoding)

    def shed(self, offer: Callable[[Frame], bool]) -> None:
        self._publication.fanout.shed(offer)

    async def proof(self, user: str, epoch: int | None = None) -> ProofFile | None:
        """``user``'s proof of the latest epoch, or of ``epoch`` if it is one
        of the last ``proof_epochs`` before it (``ShardedProofs.proof``).

        Raises:
            NotRetained: ``epoch`` is not kept, here or by the user's shard.
        """
        return await self._proofs.proof(user, epoch)

    async def export_proofs(
        self, progress: Callable[[int, int], Awaitable[None]]
    ) -> tuple[int, Path, int]:
        """Every user's proof of the latest epoch, written into a new
        directory under ``export_dir``; (epoch, directory, files written)
        (``ShardedProofs.export``)."""
        return await self._proofs.export(progress)

    async def _ask(self, part: int, request: control.Request) -> control.Reply:
        if self._links is None:
            raise ProverError("the coordinator is not started")
        return await self._links.ask(part, request)

    async def _stored(self, epoch: int, record: MappedRecord) -> tuple[EpochMessage, MappedRecord]:
        return await self._call(stored_epoch, self.store, epoch, record)


async def _nothing() -> AsyncIterator[Frame]:
    return
    yield  # an async generator that ends at once


class LeaseLost(ProverError):
    """Another coordinator took the log's lease over."""
