"""Records with an asset map, over real sockets on 127.0.0.1: root stream
subscribers of chosen assets or of checkpoints only (PROTOCOL §11.2), each
epoch's frames built once per distinct subscription, replays of every kind,
proof files of format solvency-proof/2 from /proof and the export, and a
database of the earlier layout refused with a clear error."""

from __future__ import annotations

import asyncio
import io
import json
import struct
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from prover.config import AssetConfig, AttesterConfig
from prover.engine import Engine
from prover.errors import UnreadableEpoch
from prover.frames import Encoding, EpochFrames, Frame
from prover.mapped import MappedRecord
from prover.status import write_status
from storage.store import Store
from tests.prover.test_engine import KEY, ORIGIN, balances, config
from tests.prover.test_reserve_reports import COLD_VKEY, note
from tests.prover.test_server import AUTH, http_get, serve
from tests.storage.conftest import sign
from verifier.attestation import attested_findings
from verifier.audit import AuditState, check_epoch
from verifier.checkpoint import verifier_key_for
from verifier.proof import ProofFile, verify_proof
from verifier.record import MAGIC, AssetState, EpochRecord, RecordHeader, Status, decode_entry
from verifier.selection import PartialRecord
from verifier.stream import AssetsMessage, CheckpointMessage, EpochMessage, parse_message
from verifier.subscription import ALL_ASSETS, MAX_CHOSEN, Subscription

CHECKPOINTS = Subscription(checkpoints=True)

# 5 assets: entries 0..4 of every record, in this order
ASSETS = tuple(AssetConfig(a, 8) for a in ("ADA", "BTC", "ETH", "SOL", "XRP"))


def chosen(*assets: str) -> Subscription:
    return Subscription(assets=frozenset(assets))


def roots_url(host: str, since: int | None, subscription: Subscription) -> str:
    query = subscription.query().lstrip("&")
    if since is not None:
        query = f"since={since}" + subscription.query()
    return f"ws://{host}/roots?{query}"


async def frames(
    host: str, since: int | None, subscription: Subscription, until: int
) -> list[tuple[int, str]]:
    """The frames of ``subscription`` from ``since`` up to epoch ``until``, with
    their epochs (the checkpoint's size - 1)."""
    out: list[tuple[int, str]] = []
    async with connect(roots_url(host, since, subscription), max_size=1 << 20) as ws:
        async for frame in ws:
            assert isinstance(frame, str)  # text frames only
            size = int(parse_message(frame).checkpoint.split(b"\n")[1])
            out.append((size - 1, frame))
            if size - 1 >= until:
                return out
    raise AssertionError("the stream ended")


def audited(
    subscription: Subscription, received: list[tuple[int, str]], engine: Engine
) -> dict[int, PartialRecord | EpochRecord | None]:
    """Check every frame after the one before (from no state), as a subscriber
    of ``subscription`` does; the record each proves, by epoch."""
    state: AuditState | None = None
    out: dict[int, PartialRecord | EpochRecord | None] = {}
    for epoch, frame in received:
        audit = check_epoch(
            state, parse_message(frame), engine.verifier_key, ORIGIN, subscription=subscription
        )
        state, out[epoch] = audit.state, audit.record
    return out


async def drive(engine: Engine, host: str, epochs: int, seq: int = 0) -> int:
    """Send balances until ``epochs`` more epochs are published; the last seq sent."""
    target = engine.metrics.published_epoch + epochs
    async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
        while engine.metrics.published_epoch < target:
            seq += 1
            asset = ("BTC", "ETH", "XRP")[seq % 3]
            await producer.send(balances("core", (seq, f"u{seq % 7}", asset, seq)))
            assert json.loads(await producer.recv())["type"] == "ack"
            await asyncio.sleep(0.02)
    return seq


# Which entries a subscriber of each choice gets: its asset's, or the neighbours
# of where an absent one would sort ("DOGE" between BTC and ETH, "AAA" before
# every entry, "ZZZ" after), and nothing else.
CHOICES = [
    (chosen("ETH"), [2], ()),
    (chosen("DOGE"), [1, 2], ("DOGE",)),
    (chosen("AAA"), [0], ("AAA",)),
    (chosen("ZZZ"), [4], ("ZZZ",)),
    (chosen("XRP", "ETH"), [2, 4], ()),
]


def test_chosen_assets_and_checkpoints_verify_and_carry_only_their_part(tmp_path: Path) -> None:
    async def scenario(engine: Engine, host: str) -> None:
        seq = await drive(engine, host, 1)
        since = engine.metrics.published_epoch + 1
        until = since + 3
        kinds = [ALL_ASSETS, CHECKPOINTS, *(c[0] for c in CHOICES)]
        readers = [asyncio.create_task(frames(host, since, s, until)) for s in kinds]
        await drive(engine, host, 5, seq)
        received = await asyncio.gather(*readers)
        full = audited(ALL_ASSETS, received[0], engine)
        assert sorted(full) == list(range(since, until + 1))
        checkpoints = audited(CHECKPOINTS, received[1], engine)
        assert sorted(checkpoints) == sorted(full) and set(checkpoints.values()) == {None}
        for (_, frame), (_, whole) in zip(received[1], received[0], strict=True):
            message = parse_message(frame)
            assert isinstance(message, CheckpointMessage)
            assert message.checkpoint == parse_message(whole).checkpoint
            assert set(json.loads(frame)) == {"type", "checkpoint", "consistency"}
        for (subscription, indices, absent), got in zip(CHOICES, received[2:], strict=True):
            proven = audited(subscription, got, engine)
            assert sorted(proven) == sorted(full)
            for epoch, frame in got:
                record = full[epoch]
                assert isinstance(record, EpochRecord)
                message = parse_message(frame)
                assert isinstance(message, AssetsMessage)
                assert message.header == record.header.encode()
                assert [e.index for e in message.entries] == indices
                assert [e.entry for e in message.entries] == [record.entries[i] for i in indices]
                partial = proven[epoch]
                assert isinstance(partial, PartialRecord) and partial.absent == absent
                present = sorted(subscription.assets or ()) if not absent else []
                assert partial.assets == tuple(record.asset(a) for a in present)

    serve(tmp_path, scenario, assets=ASSETS)


def test_frames_are_built_once_per_epoch_and_distinct_subscription(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nine subscribers making four distinct choices (``ETH,BTC`` is
    ``BTC,ETH``), live (or replaying what was published before they
    subscribed): each epoch's frames are built four times and its asset map
    once. Then subscribers replaying those epochs get the frames kept (none
    built again for a choice already served), and two replaying a new choice
    share its frames: one build per epoch for both, the asset map reused."""
    builds: list[tuple[int, Subscription]] = []
    maps: list[int] = []
    build, asset_map = EpochFrames._build, MappedRecord.asset_map

    def counted_build(
        self: EpochFrames, subscription: Subscription, encoding: Encoding, first: bool
    ) -> Frame:
        builds.append((self.mapped.record.epoch, subscription))
        return build(self, subscription, encoding, first)

    def counted_map(self: MappedRecord) -> object:
        if self._map is None:
            maps.append(self.record.epoch)
        return asset_map.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(EpochFrames, "_build", counted_build)
    monkeypatch.setattr(MappedRecord, "asset_map", property(counted_map))
    live = [ALL_ASSETS] * 3 + [chosen("BTC", "ETH")] * 2 + [chosen("ETH", "BTC")]
    live += [chosen("ETH")] * 2 + [CHECKPOINTS]

    async def scenario(engine: Engine, host: str) -> None:
        seq = await drive(engine, host, 1)
        first = engine.metrics.published_epoch + 1
        # from ``first``: live, or replayed if published before the subscriber is
        readers = [asyncio.create_task(frames(host, first, s, first + 2)) for s in live]
        seq = await drive(engine, host, 3, seq)
        received = await asyncio.gather(*readers)
        assert all([e for e, _ in got] == [first, first + 1, first + 2] for got in received)
        epochs = range(first, first + 3)
        per_epoch = Counter((e, s) for e, s in builds if e in epochs)
        assert per_epoch == {(e, s): 1 for e in epochs for s in set(live)}
        assert Counter(e for e in maps if e in epochs) == dict.fromkeys(epochs, 1)

        built = len(builds)
        again = [chosen("ETH"), chosen("SOL"), chosen("SOL")]
        await asyncio.gather(*(frames(host, first, s, first + 2) for s in again))
        replayed = Counter((e, s) for e, s in builds[built:] if e in epochs)
        assert replayed == {(e, chosen("SOL")): 1 for e in epochs}
        assert Counter(e for e in maps if e in epochs) == dict.fromkeys(epochs, 1)

    serve(tmp_path, scenario, assets=ASSETS)


def test_replays_of_every_kind_run_into_live_without_gap_or_duplicate(tmp_path: Path) -> None:
    async def scenario(engine: Engine, host: str) -> None:
        seq = await drive(engine, host, 4)
        stored = engine.metrics.published_epoch
        until = stored + 3
        kinds = [chosen("ETH"), chosen("DOGE", "XRP"), CHECKPOINTS, ALL_ASSETS]
        readers = [asyncio.create_task(frames(host, 0, s, until)) for s in kinds]
        await drive(engine, host, 4, seq)
        for subscription, got in zip(kinds, await asyncio.gather(*readers), strict=True):
            assert [e for e, _ in got] == list(range(until + 1))  # stored, then live
            proven = audited(subscription, got, engine)  # from epoch 0: no state
            if subscription.assets:
                assert all(isinstance(r, PartialRecord) for r in proven.values())

    serve(tmp_path, scenario, assets=ASSETS)


def test_reports_of_chosen_assets_only(tmp_path: Path) -> None:
    """A frame of chosen assets carries the signed reports of the chosen
    assets' attested sources, in record order: not those of the entries
    sent as neighbours, nor of the others; an auditor trusting the key finds
    every chosen asset attested."""

    async def scenario(engine: Engine, host: str) -> None:
        now = int(engine.clock() * 1000)
        btc, eth = note(500, now, asset="BTC"), note(70, now, asset="ETH")
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            for batch in (
                balances("core", (1, "alice", "BTC", 5), (2, "bob", "ETH", 7)),
                json.dumps(
                    {
                        "type": "reserve-reports",
                        "source": "cold",
                        "reports": [{"seq": 1, "report": btc}, {"seq": 2, "report": eth}],
                    }
                ),
            ):
                await producer.send(batch)
                assert json.loads(await producer.recv())["type"] == "ack"
        while True:
            [(epoch, first)] = await frames(host, None, ALL_ASSETS, 0)
            whole = parse_message(first)
            if isinstance(whole, EpochMessage) and len(whole.reports) == 2:
                break
        for subscription, expected in [
            (chosen("ETH"), [eth]),
            (chosen("XRP", "BTC", "ETH"), [btc, eth]),
            (chosen("DOGE"), []),  # BTC and ETH are sent, as neighbours only
            (ALL_ASSETS, [btc, eth]),
        ]:
            [(_, frame)] = await frames(host, epoch, subscription, epoch)
            message = parse_message(frame)
            assert not isinstance(message, CheckpointMessage)
            assert [r.decode() for r in message.reports] == expected
            [(_, record)] = audited(subscription, [(epoch, frame)], engine).items()
            assert record is not None
            findings = attested_findings(record, [], message.reports, [COLD_VKEY])
            assert findings == []  # every chosen asset present is attested by a trusted key

    serve(
        tmp_path,
        scenario,
        assets=ASSETS,
        attesters=(AttesterConfig("cold", str(COLD_VKEY)),),
        max_interval=0.2,
    )


def test_malformed_subscriptions_are_refused_with_400(tmp_path: Path) -> None:
    many = ",".join(f"A{i}" for i in range(MAX_CHOSEN))
    refused = [
        "assets=",
        "assets=btc",
        "assets=BTC,,ETH",
        "assets=BTC,",
        "assets=BTC,BTC",
        f"assets={many},Z",
        "assets=BTC&assets=ETH",
        "assets=BTC&only=checkpoints",
        "only=records",
        "only=",
        "only=checkpoints&only=checkpoints",
        f"since=0&assets={quote('BTC ETH')}",
        "assets=" + "X" * 17,
    ]

    async def scenario(engine: Engine, host: str) -> None:
        for query in refused:
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"ws://{host}/roots?{query}"):
                    pass
            response = info.value.response
            assert response.status_code == 400, query
            body = json.loads(response.body)
            assert (body["type"], body["code"]) == ("error", "bad-request"), query
        assert engine.metrics.subscribers == 0
        for query in (f"assets={many}", "since=0&only=checkpoints", "assets=BTC&other=1"):
            async with connect(f"ws://{host}/roots?{query}") as ws:
                assert parse_message(await ws.recv())

    serve(tmp_path, scenario, assets=ASSETS, max_interval=0.2)


# Proof files of format 2


def held(proof: ProofFile) -> dict[str, tuple[int, int]]:
    """Each asset of ``proof``: its index in the asset map and the balance."""
    header = RecordHeader.decode(proof.header)
    return {decode_entry(a.entry, header).asset: (a.index, a.balance) for a in proof.assets}


def test_proof_files_carry_the_header_and_the_held_assets_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proof (latest and earlier epochs) and the export write proofs of
    format 2 that verify, each with only its user's assets; the export builds
    the record's asset map once for all its chunks."""
    monkeypatch.setattr("prover.proofs.EXPORT_CHUNK", 4)
    maps: list[int] = []
    asset_map = MappedRecord.asset_map

    def counted_map(self: MappedRecord) -> object:
        if self._map is None:
            maps.append(self.record.epoch)
        return asset_map.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(MappedRecord, "asset_map", property(counted_map))
    exports = tmp_path / "exports"
    admin = {"Authorization": "Bearer admin-token"}
    rows = [(i + 1, f"user{i}", ("BTC", "XRP", "ADA")[i % 3], i + 1) for i in range(18)]
    rows.append((19, "alice", "BTC", 150))
    rows.append((20, "alice", "XRP", 9))

    async def scenario(engine: Engine, host: str) -> None:
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            await producer.send(balances("core", *rows))
            assert json.loads(await producer.recv())["type"] == "ack"
        while engine.metrics.updates < len(rows) or engine._intake.pending:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the epoch holding them closes
        token = engine.user_token("alice")
        status, body = await asyncio.to_thread(http_get, f"http://{host}/proof?user=alice", token)
        assert status == 200
        proof = ProofFile.parse(body)
        assert json.loads(body)["format"] == "solvency-proof/2"
        report = verify_proof(proof, engine.verifier_key, user="alice")
        assert held(proof) == {"BTC": (1, 150), "XRP": (4, 9)}
        full = EpochRecord.decode(engine.store.epoch(report.epoch).record)
        assert proof.header == full.header.encode()
        assert [a.entry for a in proof.assets] == [full.entries[1], full.entries[4]]
        earlier = report.epoch
        while engine.metrics.epoch == earlier:
            await asyncio.sleep(0.02)
        url = f"http://{host}/proof?user=alice&epoch={earlier}"
        status, body = await asyncio.to_thread(http_get, url, token)  # from storage
        assert status == 200 and body == proof.to_json().encode()

        async with connect(f"ws://{host}/admin/export", additional_headers=admin) as ws:
            before = len(maps)
            await ws.send(json.dumps({"type": "export"}))
            replies = [json.loads(m) async for m in ws]
        done = replies[-1]
        assert done["type"] == "done" and done["files"] == 19
        assert sum(r["type"] == "progress" for r in replies) == 5  # 19 users, 4 a chunk
        assert maps[before:] in ([], [done["epoch"]])  # once, or already built
        assert maps.count(done["epoch"]) == 1

    serve(tmp_path, scenario, assets=ASSETS, admin_token="admin-token")
    (out,) = exports.iterdir()
    for path in out.iterdir():
        proof = ProofFile.parse(path.read_bytes())
        verify_proof(proof, verifier_key_for(ORIGIN, KEY.public_key()), user=proof.user)
        expected = {a: m for _, u, a, m in rows if u == proof.user}
        assert {a: b for a, (_, b) in held(proof).items()} == expected


# A database of the earlier layout


def earlier_layout(record: EpochRecord) -> bytes:
    """``record`` as the unreleased layout before the asset map wrote it: a
    31-byte header without the map root, then the entries; its log leaf was
    the whole of it."""
    header = struct.pack(
        ">4sBQQQH", MAGIC, 2, record.epoch, record.timestamp_ms, 60_000, len(record.assets)
    )
    return header + b"".join(record.entries)


@pytest.mark.parametrize("layout", ["earlier", "leaf-is-the-whole-record"])
def test_a_database_of_the_earlier_layout_is_refused_clearly(tmp_path: Path, layout: str) -> None:
    """An epoch stored before the asset map (or whose log leaf is the whole
    record) is never read as a record: the daemon does not start and status
    fails, both saying why, rather than publishing or proving from it."""
    cfg = config(tmp_path)
    btc = AssetState("BTC", 8, 5, bytes(32), 0, 0, Status.SOLVENT, ())
    record = EpochRecord(0, 1_790_000_000_000, 60_000, (btc,))
    stored = earlier_layout(record) if layout == "earlier" else record.encode()
    with Store.open(cfg.url) as store:
        store.ensure_asset("BTC", 8)
        store.append_epoch(0, stored, stored, sign, created_ms=0)  # the leaf: all of it
    engine = Engine(cfg, Store.open(cfg.url), KEY)

    async def start() -> None:
        try:
            await engine.start()
        finally:
            await engine.close()
            engine.store.close()

    with pytest.raises(UnreadableEpoch, match=r"log leaf is the whole record.*asset map"):
        asyncio.run(start())
    with pytest.raises(UnreadableEpoch, match="epoch 0 in the database cannot be read"):
        write_status(cfg, io.StringIO())
