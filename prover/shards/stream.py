"""The ledger stream on NATS JetStream, as front-ends write it
(docs/SCALING.md, "The stream"): the stream made or checked, and batches
published to it.

Invariants:

- The stream holds exactly the subjects ``<prefix>.part.*`` and
  ``<prefix>.commit``, in file storage with limits retention (readers ack
  nothing away); ``ensure_stream`` refuses one that exists otherwise.
- ``Publisher.publish`` publishes a batch's parts, each with ``Nats-Msg-Id``
  the digest of its bytes (``wire.message_id``), waits for every part's
  acknowledgement, then publishes the commit naming the stream sequences
  acknowledged (a part the stream held already is acknowledged as a
  duplicate with its first copy's sequence, which is the one to name) and
  waits for the commit's. A publish that fails or times out is sent again,
  the same bytes under the same id, so the stream stores it once.
- A batch is published within ``deadline`` seconds or not at all as far as
  the caller knows (``PublishFailed``): a third of the duplicate window by
  default, so that a commit always comes within the window of its parts and
  a retry elsewhere finds them. Parts published without their commit are
  never applied by any reader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from prover.backoff import Backoff
from prover.errors import ProverError
from prover.limits import RateLimitedLog
from prover.shards.split import Split
from prover.shards.wire import commit_subject, encode, message_id, part_subject

__all__ = [
    "HEADER_ROOM",
    "MessageTooLarge",
    "PublishFailed",
    "Publisher",
    "Stored",
    "ensure_stream",
    "stream_subjects",
]

log = logging.getLogger("solvency.frontend")
HEADER_ROOM: Final = 512  # bytes of a NATS message's limit left for its headers
ATTEMPT: Final = 2.0  # seconds one publish waits for its acknowledgement
RETRY: Final = Backoff(first=0.05, cap=1.0)  # before a publish is sent again


class MessageTooLarge(ProverError):
    """A part or commit would pass the server's message size limit."""


class PublishFailed(ProverError):
    """A batch was not committed within the deadline (it may be, later, if a
    publish was under way: then as a duplicate or a replay, never twice)."""


def stream_subjects(prefix: str) -> list[str]:
    """The ledger stream's subjects: every shard's parts, and the commits."""
    return [f"{prefix}.part.*", commit_subject(prefix)]  # wire.part_subject's, any shard


async def ensure_stream(
    js: JetStreamContext, name: str, prefix: str, replicas: int, duplicate_window_s: float
) -> StreamConfig:
    """The configuration of the ledger stream ``name``, made if missing.

    A stream that exists is kept as it is if its subjects, storage and
    retention are the ledger's (its replicas and duplicate window may differ
    from those asked: logged; the caller uses the stream's own window).

    Raises:
        ProverError: the stream exists with other subjects, memory storage
            or another retention (it is left untouched), or could not be
            made (e.g. more replicas than servers).
    """
    wanted = StreamConfig(
        name=name,
        description="solvency-prover ledger: parts and commits of accepted batches",
        subjects=stream_subjects(prefix),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=duplicate_window_s,
    )
    try:
        found = (await js.stream_info(name)).config
    except NotFoundError:
        try:
            return (await js.add_stream(wanted)).config
        except nats.js.errors.APIError as exc:  # made meanwhile by another front-end?
            try:
                found = (await js.stream_info(name)).config
            except NotFoundError:
                raise ProverError(f"stream {name} could not be made: {exc}") from None
    _check_stream(found, wanted)
    return found


def _check_stream(found: StreamConfig, wanted: StreamConfig) -> None:
    name = wanted.name
    if sorted(found.subjects or []) != sorted(wanted.subjects or []):
        raise ProverError(
            f"stream {name} exists with subjects {found.subjects}, not the ledger's"
            f" {wanted.subjects}: give another stream name or prefix, or delete it"
        )
    if found.storage != StorageType.FILE or found.retention != RetentionPolicy.LIMITS:
        raise ProverError(
            f"stream {name} has {found.storage} storage and {found.retention} retention:"
            " the ledger needs file storage and limits retention"
        )
    if (found.num_replicas or 1, found.duplicate_window) != (
        wanted.num_replicas,
        wanted.duplicate_window,
    ):
        log.warning(
            "stream %s has %s replicas and a %.0f s duplicate window (asked: %s, %.0f s);"
            " kept as it is",
            name,
            found.num_replicas,
            found.duplicate_window,
            wanted.num_replicas,
            wanted.duplicate_window,
        )


@dataclass(frozen=True, slots=True)
class Stored:
    """A message's place in the stream; ``duplicate``: the stream held it already."""

    seq: int
    duplicate: bool


class Publisher:
    """Publishes batches to the ledger stream ``stream`` (module docstring)."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        prefix: str,
        deadline: float,
        attempt: float = ATTEMPT,
        backoff: Backoff = RETRY,
    ) -> None:
        if deadline <= 0:
            raise ValueError("the deadline must be positive")
        self._nc, self._js = nc, nc.jetstream()
        self.stream, self.prefix, self.deadline = stream, prefix, deadline
        self._attempt, self._backoff = attempt, backoff
        self._retried = RateLimitedLog(log)

    @property
    def max_part_bytes(self) -> int:
        """The largest encoded part or commit the server takes, headers aside."""
        return self._nc.max_payload - HEADER_ROOM

    async def publish(
        self, split: Split, after: Callable[[], Awaitable[object]] | None = None
    ) -> Stored:
        """Publish ``split``'s parts, then, once ``after()`` (if given: e.g. the
        publication of an earlier batch) is done, its commit; the commit's
        place. ``after()`` raising stops the batch before its commit.

        Raises:
            MessageTooLarge: a part is above ``max_part_bytes`` (nothing sent).
            PublishFailed: not committed within ``deadline`` seconds.
        """
        limit = self.max_part_bytes
        for data in split.data:
            if len(data) > limit:
                raise MessageTooLarge(f"a part of {len(data)} bytes, above {limit}")
        try:
            async with asyncio.timeout(self.deadline):
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._publish(part_subject(self.prefix, shard), data))
                        for (shard, _), data in zip(split.parts, split.data, strict=True)
                    ]
                if after is not None:
                    await after()
                commit = encode(split.commit([task.result().seq for task in tasks]))
                if len(commit) > limit:
                    raise MessageTooLarge(f"a commit of {len(commit)} bytes, above {limit}")
                return await self._publish(commit_subject(self.prefix), commit)
        except TimeoutError:
            raise PublishFailed(
                f"batch of {split.source} (seqs {split.first_seq}..{split.last_seq}) not"
                f" committed within {self.deadline:.1f} s"
            ) from None

    async def _publish(self, subject: str, data: bytes) -> Stored:
        """Publish ``data`` until the stream acknowledges it (cancelled at the deadline)."""
        headers = {"Nats-Msg-Id": message_id(data), "Nats-Expected-Stream": self.stream}
        failures = 0
        while True:
            try:
                ack = await self._js.publish(
                    subject, data, timeout=self._attempt, headers=dict(headers)
                )
                return Stored(ack.seq, bool(ack.duplicate))
            except (nats.errors.Error, OSError) as exc:  # TimeoutError is an OSError
                failures += 1
                self._retried(f"nats: publishing to {subject} again: {type(exc).__name__}")
                await asyncio.sleep(self._backoff.delay(failures))
