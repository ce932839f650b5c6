"""The source interface: each outcome's disposition and its formatting (the
WebSocket reply, a log line), and the ``--follow`` source on an engine:
refused lines skipped, a line not stored tried again, ``shutting-down``
stopping it. No network."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.config import AssetConfig, Config
from prover.engine import Engine
from prover.errors import IngestError
from prover.ingest import IngestResult
from prover.messages import Batch
from prover.sources import Disposition, Outcome, ingest_message
from prover.sources.follow import FollowSource
from tests.prover.engines import Scenario, run_engine
from verifier.record import EpochRecord

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def line(first: int, *rows: tuple[str, int]) -> str:
    updates = [
        {"seq": first + i, "user": u, "asset": "BTC", "amount": str(a)}
        for i, (u, a) in enumerate(rows)
    ]
    return json.dumps({"type": "balances", "id": first, "source": "core", "updates": updates})


@pytest.mark.parametrize(
    ("code", "disposition"),
    [
        ("bad-update", Disposition.REFUSED),
        ("bad-json", Disposition.REFUSED),
        ("unknown-asset", Disposition.REFUSED),
        ("internal", Disposition.RETRY),
        ("shutting-down", Disposition.STOPPING),
    ],
)
def test_a_refusal_s_disposition(code: str, disposition: Disposition) -> None:
    outcome = Outcome(7, error=IngestError(code, "why", 2))
    assert outcome.disposition is disposition
    assert json.loads(outcome.reply()) == {
        "type": "error",
        "id": 7,
        "code": code,
        "message": "why",
        "index": 2,
    }
    assert outcome.summary() == f"id 7: {code}: why"


def test_a_stored_outcome_is_acknowledged() -> None:
    outcome = Outcome("b", result=IngestResult("b", "core", 2, 1, 17))
    assert outcome.disposition is Disposition.STORED
    assert json.loads(outcome.reply()) == {
        "type": "ack",
        "id": "b",
        "source": "core",
        "applied": 2,
        "duplicates": 1,
        "last_seq": 17,
    }
    assert outcome.summary() == "source core id 'b': 2 applied, 1 replayed, last seq 17"


def run(tmp_path: Path, scenario: Scenario) -> None:
    config = Config(tmp_path, origin="sources.test/log", assets=(AssetConfig("BTC", 8),))
    run_engine(config, KEY, scenario)


def test_ingest_message_counts_refusals_and_keeps_the_id(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        stored = await ingest_message(engine, line(1, ("alice", 5)))
        assert stored.result is not None and stored.result.applied == 1
        refused = await ingest_message(engine, line(2, ("alice", 5)).replace("BTC", "DOGE"))
        assert (refused.id, refused.disposition) == (2, Disposition.REFUSED)
        assert engine.metrics.ingest_errors == 1

    run(tmp_path, scenario)


def test_follow_skips_refused_lines_and_retries_those_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "\n".join(
        [line(1, ("alice", 5)), "{broken", "", line(2, ("bob", 6)), line(3, ("alice", 7))]
    )

    async def scenario(engine: Engine) -> None:
        store = engine.ingest
        seen: list[int] = []

        async def flaky(batch: Batch) -> IngestResult:  # the database fails once, on seq 2
            seen.append(batch.updates[0].seq)
            if seen == [1, 2]:
                raise IngestError("internal", "could not be stored")
            return await store(batch)

        monkeypatch.setattr(engine, "ingest", flaky)
        path = tmp_path / "in.jsonl"
        path.write_text(text)
        stream = path.open(encoding="utf-8")
        await asyncio.wait_for(FollowSource(stream).run(engine, asyncio.Event()), 10)
        assert stream.closed
        assert seen == [1, 2, 2, 3]
        record = EpochRecord.decode((await engine.close_epoch()).record)
        assert record.asset("BTC").liabilities == 7 + 6

    run(tmp_path, scenario)


def test_follow_stops_at_shutting_down_leaving_the_rest(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        stop = asyncio.Event()
        stop.set()
        await engine.run(stop)  # refuses from now on
        path = tmp_path / "in.jsonl"
        path.write_text(line(1, ("alice", 5)) + "\n" + line(2, ("bob", 6)) + "\n")
        stream = path.open(encoding="utf-8")
        await asyncio.wait_for(FollowSource(stream).run(engine, asyncio.Event()), 10)
        assert stream.closed
        assert engine.store.source_marks() == {}

    run(tmp_path, scenario)
