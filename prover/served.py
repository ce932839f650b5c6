"""What the network face (prover/server.py, prover/roots.py) serves: the
daemon's ``Engine``, or a sharded prover's ``Coordinator``
(prover/shards/coordinator.py), each behind this one interface."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

from prover.config import Config
from prover.frames import Encoding, Frame
from prover.ingest import IngestResult
from prover.messages import Batch
from prover.metrics import Metrics
from prover.witnesses import WitnessStats
from verifier.proof import ProofFile
from verifier.subscription import Subscription

__all__ = ["Served"]


class Served(Protocol):
    """The prover behind one port (the routes of docs/PROTOCOL.md §11)."""

    config: Config
    metrics: Metrics

    def health(self) -> str | None: ...

    def witness_stats(self) -> list[WitnessStats]: ...

    def check_user_token(self, user: str, token: str) -> bool: ...

    async def proof(self, user: str, epoch: int | None = None) -> ProofFile | None: ...

    async def export_proofs(
        self, progress: Callable[[int, int], Awaitable[None]]
    ) -> tuple[int, Path, int]: ...

    async def ingest(self, batch: Batch) -> IngestResult: ...

    def subscribe(
        self,
        since: int | None,
        offer: Callable[[Frame], bool] | None = ...,
        subscription: Subscription = ...,
        encoding: Encoding = ...,
    ) -> AsyncIterator[Frame]: ...

    def shed(self, offer: Callable[[Frame], bool]) -> None: ...
