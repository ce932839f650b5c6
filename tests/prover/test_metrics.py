"""/metrics: Prometheus exposition of every counter and gauge, and latency
histograms whose counts follow the batches and epochs, over a real socket;
per witness with witnesses; one registry per engine."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from prover.engine import Engine
from prover.metrics import _HELP, _WITNESS_HELP, LATENCY_BUCKETS, Metrics, render_metrics
from tests.prover.test_engine import balances
from tests.prover.test_server import AUTH, serve
from tests.prover.test_witnesses import LiveWitness, deposit, until
from tests.prover.test_witnesses import run as run_with_witnesses

HISTOGRAMS = ["ingest_batch", "epoch_close", "publication_delay", "fanout"]


def samples(text: str) -> dict[str, float]:
    """Each sample, parsed by prometheus_client's own parser: ``name`` or
    ``name{label="value",...}`` (labels sorted) to its value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def scrape(host: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{host}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"] == CONTENT_TYPE_LATEST
        return samples(reply.read().decode())


def test_histograms_count_the_batches_and_epochs_over_a_socket(tmp_path: Path) -> None:
    async def scenario(engine: Engine, host: str) -> None:
        while engine.metrics.epoch < 0:
            await asyncio.sleep(0.02)
        before = await asyncio.to_thread(scrape, host)
        assert before["solvency_ingest_batch_seconds_count"] == 0
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            for seq in (1, 2, 3):
                await producer.send(balances("core", (seq, f"u{seq}", "BTC", 10)))
                assert json.loads(await producer.recv())["type"] == "ack"
            await producer.send(balances("core", (4, "bob", "DOGE", 1)))  # refused: not counted
            assert json.loads(await producer.recv())["code"] == "unknown-asset"
        target = engine.metrics.epoch + 2
        while engine.metrics.published_epoch < target:
            await asyncio.sleep(0.02)
        after = await asyncio.to_thread(scrape, host)

        assert after["solvency_ingest_batch_seconds_count"] == 3
        assert after["solvency_updates_total"] == 3
        assert after["solvency_ingest_errors_total"] == 1
        assert 0 < after["solvency_ingest_batch_seconds_sum"] < 3 * 10
        epochs = after["solvency_epoch"] + 1  # every epoch of this fresh log closed in this run
        assert epochs >= target + 1 > before["solvency_epoch"] + 1
        for name in ["epoch_close", "publication_delay", "fanout"]:  # once per epoch each
            assert before[f"solvency_{name}_seconds_count"] == before["solvency_epoch"] + 1
            assert after[f"solvency_{name}_seconds_count"] == epochs, name
        for name in HISTOGRAMS:
            buckets = [
                after[f'solvency_{name}_seconds_bucket{{le="{le}"}}'] for le in LATENCY_BUCKETS
            ]
            assert buckets == sorted(buckets)  # cumulative
            inf = after[f'solvency_{name}_seconds_bucket{{le="+Inf"}}']
            assert inf == after[f"solvency_{name}_seconds_count"]
        # the counters and gauges are all still there, named as before
        for name, (kind, _) in _HELP.items():
            assert f"solvency_{name}" + ("_total" if kind == "counter" else "") in after
        assert after["solvency_published_epoch"] == after["solvency_epoch"]

    serve(tmp_path, scenario)


def test_witness_submissions_and_the_quorum_wait_are_histograms(tmp_path: Path) -> None:
    witness = LiveWitness(tmp_path / "witnesses", "w1", delay=0.02).start()
    label = f'witness="w1+{witness.key.key_id:08x}"'

    async def scenario(engine: Engine) -> None:
        fresh = samples(render_metrics(engine.metrics, engine.witness_stats()))
        assert fresh[f"solvency_witness_submission_seconds_count{{{label}}}"] == 0  # before any
        for number in (0, 1, 2):  # each published once w1 cosigned it, before the next
            await deposit(engine, "alice", 100 * (number + 1))
            await engine.close_epoch()
            await until(lambda: engine.metrics.published_epoch == engine.metrics.epoch)
        text = render_metrics(engine.metrics, engine.witness_stats())
        found = samples(text)
        assert "# TYPE solvency_witness_submission_seconds histogram" in text
        assert found[f"solvency_witness_submission_seconds_count{{{label}}}"] == 3
        # each submission waits 0.02 s at the witness, so does each publication for it
        assert found[f'solvency_witness_submission_seconds_bucket{{le="0.015",{label}}}'] == 0
        published = found["solvency_publication_delay_seconds_count"]
        assert published == found["solvency_published_epoch"] + 1 == 3
        assert found['solvency_publication_delay_seconds_bucket{le="0.015"}'] == 0
        assert found["solvency_publication_delay_seconds_sum"] >= 0.02 * published
        assert found["solvency_epoch_close_seconds_count"] == found["solvency_epoch"] + 1
        # the gauges of before keep their names and meaning
        for name, (kind, _) in _WITNESS_HELP.items():
            full = f"solvency_witness_{name}" + ("_total" if kind == "counter" else "")
            assert f"{full}{{{label}}}" in found

    try:
        run_with_witnesses(tmp_path, [witness], scenario)
    finally:
        witness.stop()


def test_each_engine_has_a_registry_of_its_own() -> None:
    one, two = Metrics(), Metrics()
    one.epoch_close.observe(0.003)
    one.observe_witness('w"1', 0.2)
    one.updates = 5
    first, second = samples(render_metrics(one)), samples(render_metrics(two))
    assert first["solvency_epoch_close_seconds_count"] == 1
    assert first['solvency_epoch_close_seconds_bucket{le="0.002"}'] == 0
    assert first['solvency_epoch_close_seconds_bucket{le="0.005"}'] == 1
    assert first['solvency_witness_submission_seconds_count{witness="w"1"}'] == 1  # unescaped
    assert first["solvency_updates_total"] == 5
    assert second["solvency_epoch_close_seconds_count"] == 0
    assert second["solvency_updates_total"] == 0
    assert not any(name.startswith("solvency_witness_") for name in second)
