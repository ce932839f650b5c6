"""The root stream's first and later frames and its MessagePack encoding,
over real sockets on 127.0.0.1 (PROTOCOL §11.2): a connection's first frame
(replayed or live) carries every report its entries bind, each later one only
the new ones, and an auditor verifies the whole stream holding the reports
bound; a subscriber offering ``solvency-msgpack`` gets it and binary frames;
frames are built once per (subscription, encoding, variant) an epoch is asked
for; checkpoint frames prove consistency."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from prover.config import AttesterConfig
from prover.engine import Engine
from prover.frames import Encoding, EpochFrames, Frame
from storage.store import Store
from tests.prover.test_chosen_assets import ASSETS, CHECKPOINTS, chosen, roots_url
from tests.prover.test_engine import KEY, ORIGIN, Clock, balances, config, ingest
from tests.prover.test_reserve_reports import COLD_VKEY, note, now_ms, reports
from tests.prover.test_server import AUTH, serve
from verifier import rfc9162
from verifier.auditor import Alarm, Auditor, AuditorConfig, Verified
from verifier.record import EpochRecord
from verifier.report import report_hash
from verifier.stream import CheckpointMessage, StreamMessage, parse_message
from verifier.stream_binary import SUBPROTOCOL, parse_msgpack, to_msgpack
from verifier.subscription import ALL_ASSETS, Subscription

ATTESTED = {
    "attesters": (AttesterConfig("cold", str(COLD_VKEY)),),
    "max_interval": 0.2,
    "max_anonymous_per_address": 64,
}
Received = list[tuple[int, StreamMessage, Frame]]  # epoch, message, frame as received


async def collect(
    host: str,
    since: int | None,
    subscription: Subscription,
    done: Callable[[int], bool],
    binary: bool = False,
) -> Received:
    """A connection's frames until ``done(epoch)``; ``binary``: offering the
    MessagePack subprotocol."""
    offered = [Subprotocol(SUBPROTOCOL)] if binary else None
    out: Received = []
    url = roots_url(host, since, subscription)
    async with connect(url, subprotocols=offered, max_size=1 << 20) as ws:
        assert ws.subprotocol == (SUBPROTOCOL if binary else None)
        async for frame in ws:
            if binary:
                assert isinstance(frame, bytes)  # a binary frame
                message = parse_msgpack(frame)
            else:
                assert isinstance(frame, str)  # a text frame
                message = parse_message(frame)
            epoch = int(message.checkpoint.split(b"\n")[1]) - 1
            out.append((epoch, message, frame))
            if done(epoch):
                return out
    raise AssertionError("the stream ended")


async def send(host: str, *batches: str) -> None:
    async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
        for batch in batches:
            await producer.send(batch)
            assert json.loads(await producer.recv())["type"] == "ack"


def record(engine: Engine, epoch: int) -> EpochRecord:
    return EpochRecord.decode(engine.store.epoch(epoch).record)


async def bound_at(engine: Engine, *notes: str) -> int:
    """The first epoch published from now on whose record binds every note."""
    hashes = {report_hash(n.encode()) for n in notes}
    epoch = engine.metrics.published_epoch
    while True:
        while engine.metrics.published_epoch <= epoch:
            await asyncio.sleep(0.02)
        epoch += 1
        rec = record(engine, epoch)
        if hashes <= {s.report_hash for a in rec.assets for s in a.sources}:
            return epoch


async def after(engine: Engine, epochs: int) -> None:
    target = engine.metrics.published_epoch + epochs
    while engine.metrics.published_epoch < target:
        await asyncio.sleep(0.02)


def bindings(rec: EpochRecord, subscription: Subscription) -> dict[tuple[str, str], bytes]:
    """The report hash ``rec`` binds for each attested source of the
    subscription's assets, in record order (PROTOCOL §11.2, from the text)."""
    if subscription.checkpoints:
        return {}
    wanted = subscription.assets
    return {
        (a.asset, s.name): s.report_hash
        for a in rec.assets
        if wanted is None or a.asset in wanted
        for s in a.sources
        if s.attested
    }


def audit(engine: Engine, subscription: Subscription, got: Received) -> None:
    """One auditor over one connection's frames: each verifies, no alarm
    (every asset attested), the reports each carries are those of the rule
    (all bound on the first, the new ones after), and the auditor holds
    every report each record binds; checkpoint frames' consistency proofs
    verify from the log one shorter."""
    config = AuditorConfig(
        engine.verifier_key, ORIGIN, attesters=(COLD_VKEY,), subscription=subscription
    )
    auditor = Auditor(config, None, 0.0)
    for i, (epoch, message, _) in enumerate(got):
        assert epoch == got[0][0] + i  # no gap, no duplicate
        old_root = auditor.state.root if auditor.state else engine.store.log_root(epoch)
        decisions = auditor.on_message(message, float(i))
        assert not [d for d in decisions if isinstance(d, Alarm)], decisions
        [verified] = [d for d in decisions if isinstance(d, Verified)]
        assert verified.statuses == {}
        now = bindings(record(engine, epoch), subscription)
        before = bindings(record(engine, epoch - 1), subscription) if i else {}
        if isinstance(message, CheckpointMessage):
            assert auditor.state is not None
            rfc9162.verify_consistency(
                epoch, epoch + 1, old_root, auditor.state.root, message.consistency
            )
            continue
        new = [h for key, h in now.items() if before.get(key) != h]
        assert [report_hash(r) for r in message.reports] == new, (subscription, i)
        assert [report_hash(r) for r in verified.reports] == list(now.values())


def test_first_frames_carry_every_report_later_ones_the_new(tmp_path: Path) -> None:
    """Connections of every kind and both encodings, live and replayed (from
    epoch 0, and from after the reports are bound), while a new BTC report
    arrives mid-stream: each connection's first frame carries every report
    its entries bind, the epoch binding the new report carries it alone, the
    other later frames none; every connection audits clean. MessagePack
    frames hold what the JSON frames of the same choice and variant hold."""
    kinds = [
        (ALL_ASSETS, False),
        (ALL_ASSETS, True),
        (chosen("BTC"), False),
        (chosen("ETH", "SOL"), True),
        (chosen("DOGE"), False),  # BTC and ETH as its neighbours, without their reports
        (CHECKPOINTS, False),
        (CHECKPOINTS, True),
    ]

    async def scenario(engine: Engine, host: str) -> None:
        now = int(time.time() * 1000)
        btc, eth = note(500, now, asset="BTC"), note(70, now, asset="ETH")
        users = balances("core", (1, "alice", "BTC", 5), (2, "bob", "ETH", 7))
        await send(host, reports("cold", (1, btc), (2, eth)), users)  # never insolvent
        first_bound = await bound_at(engine, btc, eth)
        await after(engine, 2)
        target: dict[str, int] = {}

        def done(epoch: int) -> bool:
            return epoch >= target.get("until", 1 << 62)

        readers = [collect(host, None, s, done, b) for s, b in kinds]
        readers.append(collect(host, 0, ALL_ASSETS, done))  # from storage, then live
        readers.append(collect(host, first_bound + 1, chosen("BTC", "ETH"), done, True))
        tasks = [asyncio.create_task(r) for r in readers]
        await after(engine, 2)
        btc2 = note(600, int(time.time() * 1000), asset="BTC")
        await send(host, reports("cold", (3, btc2)))
        changed = await bound_at(engine, btc2)
        target["until"] = changed + 2
        received = await asyncio.gather(*tasks)

        subscriptions = [s for s, _ in kinds] + [ALL_ASSETS, chosen("BTC", "ETH")]
        for subscription, got in zip(subscriptions, received, strict=True):
            audit(engine, subscription, got)
            assert got[-1][0] == changed + 2
            if subscription.checkpoints:
                continue
            (epoch, message, _), *later = got
            wanted = {"BTC", "ETH"} & (subscription.assets or {"BTC", "ETH"})
            assert not isinstance(message, CheckpointMessage)
            if epoch >= first_bound:
                assert len(message.reports) == len(wanted)
            for epoch, message, _ in later:
                assert not isinstance(message, CheckpointMessage)
                carried = [r.decode() for r in message.reports]
                new = {first_bound: [btc, eth], changed: [btc2]}.get(epoch, [])
                assert carried == [r for r in new if any(f"asset {a}\n" in r for a in wanted)]
        stored, replayed = received[-2], received[-1]
        assert stored[0][0] == 0 and replayed[0][0] == first_bound + 1
        # MessagePack frames hold what JSON frames of that choice and variant hold
        texts = {e: (m, f) for e, m, f in received[0][1:]}  # JSON, all assets, later frames
        both = [(e, m, f) for e, m, f in received[1][1:] if e in texts]
        assert both
        for epoch, message, frame in both:
            assert message == texts[epoch][0]
            assert frame == to_msgpack(parse_message(texts[epoch][1]))

    serve(tmp_path, scenario, assets=ASSETS, **ATTESTED)


def test_the_subprotocol_is_negotiated_on_roots_only(tmp_path: Path) -> None:
    """Offering ``solvency-msgpack`` (alone or among others) selects it and
    brings binary frames; offering nothing or only something else brings
    JSON text frames without a subprotocol; ``/ingest`` never selects it."""

    async def scenario(engine: Engine, host: str) -> None:
        for offered, selected in [
            (None, None),
            (["chat"], None),
            (["chat", SUBPROTOCOL], SUBPROTOCOL),
            ([SUBPROTOCOL], SUBPROTOCOL),
        ]:
            protocols = None if offered is None else [Subprotocol(p) for p in offered]
            for query in ("since=0", "assets=BTC", "only=checkpoints"):
                url = f"ws://{host}/roots?{query}"
                async with connect(url, subprotocols=protocols, max_size=1 << 20) as ws:
                    assert ws.subprotocol == selected
                    frame = await ws.recv()
                    if selected:
                        assert isinstance(frame, bytes) and parse_msgpack(frame)
                    else:
                        assert isinstance(frame, str) and parse_message(frame)
        async with connect(
            f"ws://{host}/ingest", additional_headers=AUTH, subprotocols=[Subprotocol(SUBPROTOCOL)]
        ) as producer:
            assert producer.subprotocol is None
            await producer.send(balances("core", (1, "alice", "BTC", 5)))
            assert json.loads(await producer.recv())["type"] == "ack"

    serve(tmp_path, scenario, assets=ASSETS, max_interval=0.2)


def test_frames_are_built_once_per_subscription_encoding_and_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two waves of subscribers, of four choices in both encodings (several
    alike in each), the second starting an epoch after the first: an epoch
    is built once per (subscription, encoding, variant) it is asked for,
    the first and later variants once each when their reports differ, and
    once for both when they do not (checkpoints; a choice with no report)."""
    builds: list[tuple[int, Subscription, Encoding, bool]] = []
    build = EpochFrames._build

    def counted(
        self: EpochFrames, subscription: Subscription, encoding: Encoding, first: bool
    ) -> Frame:
        builds.append((self.mapped.record.epoch, subscription, encoding, first))
        return build(self, subscription, encoding, first)

    monkeypatch.setattr(EpochFrames, "_build", counted)
    choices = [ALL_ASSETS, chosen("BTC"), chosen("SOL"), CHECKPOINTS]
    shared = {chosen("SOL"), CHECKPOINTS}  # no report: both variants alike

    async def scenario(engine: Engine, host: str) -> None:
        now = int(time.time() * 1000)
        users = balances("core", (1, "alice", "BTC", 5))
        await send(host, users, reports("cold", (1, note(500, now, asset="BTC"))))
        await bound_at(engine, note(500, now, asset="BTC"))
        start = engine.metrics.published_epoch + 1
        last = start + 3
        wave = [(s, b) for s in choices for b in (False, True)] * 2

        def done(epoch: int) -> bool:
            return epoch >= last

        first = [asyncio.create_task(collect(host, start, s, done, b)) for s, b in wave]
        await after(engine, 1)
        second = [asyncio.create_task(collect(host, start + 1, s, done, b)) for s, b in wave]
        await asyncio.gather(*first, *second)
        counts = Counter(b for b in builds if start <= b[0] <= last)
        assert set(counts.values()) == {1}  # never the same frame twice
        for epoch in range(start, last + 1):
            for s in choices:
                for enc in Encoding:
                    variants = {v for e, c, n, v in counts if (e, c, n) == (epoch, s, enc)}
                    if epoch == start:  # the first wave's first frames
                        assert variants == {True}
                    elif epoch == start + 1:  # the second wave's first, the first's later
                        assert len(variants) == (1 if s in shared else 2)
                    else:
                        assert variants == {False}

    serve(tmp_path, scenario, assets=ASSETS, **ATTESTED)


def test_after_a_restart_the_first_live_frame_follows_the_last_stored_one(tmp_path: Path) -> None:
    """The engine starts knowing the last stored record: a subscriber that
    replays it (its connection's first frame: the report it binds) gets the
    next, live, epoch as a later frame, without that report again."""
    clock = Clock()
    text = note(500, now_ms(clock) - 10)

    async def main() -> None:
        for round_ in range(2):
            cfg = config(tmp_path, attesters=ATTESTED["attesters"])
            store = Store.open(cfg.url)
            engine = Engine(cfg, store, KEY, clock=clock)
            await engine.start()
            try:
                clock.now += 1
                if round_ == 0:
                    await ingest(engine, reports("cold", (1, text)))
                    await engine.close_epoch()
                    continue
                stream = engine.subscribe(engine.metrics.published_epoch)
                replayed = parse_message(await anext(stream))
                reader = asyncio.create_task(anext(stream))
                await asyncio.sleep(0.05)  # subscribed: the next epoch comes live
                assert engine.metrics.subscribers == 1
                await engine.close_epoch()
                live = parse_message(await reader)
                assert not isinstance(replayed, CheckpointMessage)
                assert not isinstance(live, CheckpointMessage)
                assert (replayed.reports, live.reports) == ((text.encode(),), ())
                await stream.aclose()
            finally:
                await engine.close()
                store.close()

    asyncio.run(main())
