"""Signed reserve reports at ingest (PROTOCOL §11.1, §13.2), in the record
(§4) and on the root stream (§11.2), on the engine without sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.config import AttesterConfig, Config, load_config
from prover.engine import Engine
from prover.errors import ConfigError, IngestError
from prover.messages import ReserveReportBatch, parse_ingest
from storage.store import Store
from tests.prover.test_engine import KEY, Clock, config, ingest, reserves, run, take
from verifier.attestation import check_attestations
from verifier.checkpoint import verifier_key_for
from verifier.record import UNATTESTED, EpochRecord
from verifier.report import ReserveReport, SignedReport, sign_report

COLD = Ed25519PrivateKey.from_private_bytes(bytes(range(129, 161)))
THIEF = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))
COLD_VKEY = verifier_key_for("cold", COLD.public_key())
ATTESTED = {"attesters": (AttesterConfig("cold", str(COLD_VKEY)),)}


def note(amount: int, as_of_ms: int, key: Ed25519PrivateKey = COLD, **fields: object) -> str:
    report = ReserveReport(
        **{"source": "cold", "asset": "BTC", "amount": amount, "as_of_ms": as_of_ms, **fields}
    )  # type: ignore[arg-type]
    return sign_report(report, key).decode()


def reports(source: str, *items: tuple[int, str], id: object = None) -> str:
    return json.dumps(
        {
            "type": "reserve-reports",
            "id": id,
            "source": source,
            "reports": [{"seq": s, "report": r} for s, r in items],
        }
    )


def now_ms(clock: Clock) -> int:
    return int(clock.now * 1000)


# parsing (stateless)


def test_parse_reserve_reports() -> None:
    text = note(5, 7, chain="bitcoin", block=9)
    batch = parse_ingest(reports("cold", (3, text), (4, note(6, 8)), id="r-1"))
    assert isinstance(batch, ReserveReportBatch)
    assert (batch.id, batch.source, [u.seq for u in batch.updates]) == ("r-1", "cold", [3, 4])
    first = batch.updates[0]
    assert (first.asset, first.amount, first.as_of_ms, first.note) == ("BTC", 5, 7, text.encode())
    assert first.key_id == COLD_VKEY.key_id
    assert first.report_hash == SignedReport.parse(text.encode()).hash


@pytest.mark.parametrize(
    ("message", "code", "index"),
    [
        (
            reports("cold", (1, note(5, 7)), (2, note(5, 7).replace("amount 5", "amount 05"))),
            "bad-update",
            1,
        ),
        (reports("hot", (1, note(5, 7))), "bad-update", 0),  # a report of another source
        (reports("cold", (2, note(5, 7)), (1, note(6, 7))), "bad-seq", 1),
        (reports("cold", (1, "x" * 5000)), "bad-update", 0),
        (reports("cold", (-1, note(5, 7))), "bad-update", 0),
        (
            json.dumps({"type": "reserve-reports", "source": "cold", "reports": []}),
            "bad-message",
            None,
        ),
        (
            json.dumps({"type": "reserve-reports", "source": "cold", "reports": [{"seq": 1}]}),
            "bad-update",
            0,
        ),
    ],
)
def test_malformed_reports_are_refused(message: str, code: str, index: int | None) -> None:
    with pytest.raises(IngestError) as info:
        parse_ingest(message)
    assert (info.value.code, info.value.index) == (code, index)


# the engine


def test_a_signed_report_is_bound_in_the_record_and_carried_by_the_frame(tmp_path: Path) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        text = note(500, now_ms(clock) - 10, chain="bitcoin", block=917_000)
        ack = await ingest(engine, reports("cold", (1, text)))
        assert (ack["type"], ack["applied"]) == ("ack", 1)
        message = await engine.close_epoch()
        signed = SignedReport.parse(text.encode())
        [source] = EpochRecord.decode(message.record).asset("BTC").sources
        assert (source.name, source.amount, source.as_of_ms) == ("cold", 500, now_ms(clock) - 10)
        assert (source.key_id, source.report_hash) == (COLD_VKEY.key_id, signed.hash)
        assert message.reports == (text.encode(),)
        record = EpochRecord.decode(message.record)
        assert check_attestations(record, message.reports, [COLD_VKEY]) == []
        # the replayed frame carries the same reports, from storage
        [stored] = await take(engine.subscribe(0), 1)
        assert stored == message
        assert engine.store.reserve_reports([signed.hash]) == {signed.hash: text.encode()}

    run(tmp_path, scenario, **ATTESTED)


def test_reports_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    text = note(500, now_ms(clock) - 10)

    async def main() -> None:
        for round_ in range(2):
            cfg = config(tmp_path, **ATTESTED)
            store = Store.open(cfg.url)
            engine = Engine(cfg, store, KEY, clock=clock)
            await engine.start()
            try:
                if round_ == 0:
                    await ingest(engine, reports("cold", (1, text)))
                clock.now += 1
                message = await engine.close_epoch()
                assert message.reports == (text.encode(),)
            finally:
                await engine.close()
                store.close()

    asyncio.run(main())


def test_refusals(tmp_path: Path) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        t = now_ms(clock)
        refused = [
            # attack: a producer holding the ingest token, but not the cold
            # wallet's key, pushes a reserve figure for the attested source
            (reserves("cold", (1, "BTC", 10**9, t)), "unattested", None),
            # a report signed by another key named "cold"
            (reports("cold", (1, note(5, t)), (2, note(10**9, t, THIEF))), "unattested", 1),
            # a source that has no attester key cannot send signed reports
            (reports("hot", (1, note(5, t, source="hot"))), "unattested", None),
            (reports("cold", (1, note(5, t + 60_000))), "bad-update", 0),  # beyond the skew
            (reports("cold", (1, note(5, t, asset="DOGE"))), "unknown-asset", None),
        ]
        for message, code, index in refused:
            with pytest.raises(IngestError) as info:
                await ingest(engine, message)
            assert (info.value.code, info.value.index) == (code, index), info.value.message
        # an unconfigured source may still send plain reserves: marked unattested
        await ingest(engine, reserves("hot", (1, "BTC", 7, t)))
        message = await engine.close_epoch()
        [hot] = EpochRecord.decode(message.record).asset("BTC").sources
        assert (hot.name, hot.amount, hot.key_id, hot.report_hash) == ("hot", 7, 0, UNATTESTED)
        assert message.reports == ()

    run(tmp_path, scenario, **ATTESTED)


def test_replays_by_seq_are_idempotent(tmp_path: Path) -> None:
    async def scenario(engine: Engine, clock: Clock) -> None:
        t = now_ms(clock)
        first, second = note(5, t - 2), note(6, t - 1)
        await ingest(engine, reports("cold", (1, first), (2, second)))
        again = await ingest(engine, reports("cold", (1, first), (2, second)))
        assert (again["applied"], again["duplicates"], again["last_seq"]) == (0, 2, 2)
        # a replayed seq with another (validly signed) report is ignored too
        other = await ingest(engine, reports("cold", (2, note(9, t))))
        assert (other["applied"], other["duplicates"]) == (0, 1)
        [source] = EpochRecord.decode((await engine.close_epoch()).record).asset("BTC").sources
        assert (source.amount, source.report_hash) == (6, SignedReport.parse(second.encode()).hash)

    run(tmp_path, scenario, **ATTESTED)


def test_two_keys_for_one_source_while_it_is_replaced(tmp_path: Path) -> None:
    new = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
    keys = (
        AttesterConfig("cold", str(COLD_VKEY)),
        AttesterConfig("cold", str(verifier_key_for("cold", new.public_key()))),
    )

    async def scenario(engine: Engine, clock: Clock) -> None:
        t = now_ms(clock)
        await ingest(engine, reports("cold", (1, note(5, t - 1)), (2, note(6, t, new))))
        [source] = EpochRecord.decode((await engine.close_epoch()).record).asset("BTC").sources
        assert source.key_id == verifier_key_for("cold", new.public_key()).key_id

    run(tmp_path, scenario, attesters=keys)


# configuration


def test_attester_configuration(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(f'[[attesters]]\nsource = "cold"\nkey = "{COLD_VKEY}"\n')
    assert load_config(tmp_path).attester_keys() == {"cold": (COLD_VKEY,)}
    env = {"SOLVENCY_ATTESTERS": f"{COLD_VKEY},{verifier_key_for('hot', THIEF.public_key())}"}
    assert set(load_config(tmp_path, environ=env).attester_keys()) == {"cold", "hot"}
    with pytest.raises(ConfigError, match="named 'cold'"):
        Config(tmp_path, attesters=(AttesterConfig("hot", str(COLD_VKEY)),))
    with pytest.raises(ConfigError, match="attester cold"):
        Config(tmp_path, attesters=(AttesterConfig("cold", "cold+00000000+AAAA"),))
