"""The prover over real sockets on 127.0.0.1: ingest, root stream, proofs, operations."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.protocol import State
from websockets.server import ServerProtocol

from prover.engine import Engine
from prover.roots import _wire_frame
from prover.server import start_server
from storage.store import Store
from tests.prover.test_engine import KEY, ORIGIN, balances, config, reserves
from verifier.audit import audit_epoch
from verifier.checkpoint import verifier_key_for
from verifier.cli import main as verify_main
from verifier.proof import ProofFile, verify_proof
from verifier.record import EpochRecord
from verifier.stream import EpochMessage, parse_message

Scenario = Callable[[Engine, str], Awaitable[None]]


def serve(tmp_path: Path, scenario: Scenario, **changes: object) -> None:
    async def main() -> None:
        cfg = config(tmp_path, **changes)
        store = Store.open(cfg.url)
        engine = Engine(cfg, store, KEY)
        await engine.start()
        server = await start_server(engine, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.create_task(engine.run(stop))
        try:
            await asyncio.wait_for(scenario(engine, f"127.0.0.1:{port}"), 30)
        finally:
            stop.set()
            await loop
            server.close()
            await server.wait_closed()
            await engine.close()
            store.close()

    asyncio.run(main())


AUTH = {"Authorization": "Bearer secret-token"}


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_ingest_stream_and_proof(tmp_path: Path, db_url: str) -> None:
    async def scenario(engine: Engine, host: str) -> None:
        async with connect(f"ws://{host}/roots") as roots:
            async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
                await producer.send(balances("core", (1, "alice", "BTC", 150), id="b1"))
                assert json.loads(await producer.recv())["type"] == "ack"
                await producer.send("{not json")
                reply = json.loads(await producer.recv())
                assert (reply["type"], reply["code"]) == ("error", "bad-json")
                await producer.send(balances("core", (2, "bob", "DOGE", 1), id="b2"))
                reply = json.loads(await producer.recv())
                assert (reply["code"], reply["id"]) == ("unknown-asset", "b2")
                await producer.send(reserves("cold", (1, "BTC", 1000, 0)))  # still usable
                assert json.loads(await producer.recv())["type"] == "ack"
            state = None
            while True:  # follow epochs until alice's balance is in one
                message = parse_message(await roots.recv())
                assert isinstance(message, EpochMessage)
                state, record, _ = audit_epoch(state, message, engine.verifier_key, ORIGIN)
                if record.asset("BTC").liabilities == 150:
                    break
        token = engine.user_token("alice")
        await asyncio.sleep(0.01)
        status, body = await asyncio.to_thread(http_get, f"http://{host}/proof?user=alice", token)
        assert status == 200
        report = verify_proof(ProofFile.parse(body), engine.verifier_key, user="alice")
        assert report.assets[0].balance == 150
        key = str(engine.verifier_key)
        args = ["proof", "--url", f"ws://{host}", "--user", "alice", "--token", token, "--key", key]
        assert await asyncio.to_thread(verify_main, args) == 4  # included; no reserves: insolvent
        status, _ = await asyncio.to_thread(http_get, f"http://{host}/proof?user=alice", "0" * 64)
        assert status == 401
        status, _ = await asyncio.to_thread(http_get, f"http://{host}/proof?user=alice")
        assert status == 401
        status, _ = await asyncio.to_thread(
            http_get, f"http://{host}/proof?user=nobody", engine.user_token("nobody")
        )
        assert status == 404
        for query, code in [("epoch=99999", 404), ("epoch=x", 400), ("epoch=1&epoch=2", 400)]:
            status, body = await asyncio.to_thread(
                http_get, f"http://{host}/proof?user=alice&{query}", token
            )
            assert status == code, body

    serve(tmp_path, scenario, database_url=db_url)


def test_refusals_at_the_door(tmp_path: Path) -> None:
    async def scenario(engine: Engine, host: str) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"ws://{host}/ingest", additional_headers=headers):
                    pass
            assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://{host}/roots?since=999"):
                pass
        assert info.value.response.status_code == 400
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://{host}/nowhere"):
                pass
        assert info.value.response.status_code == 404
        async with connect(f"ws://{host}/roots"), connect(f"ws://{host}/roots"):
            await asyncio.sleep(0.05)
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"ws://{host}/roots"):
                    pass
            assert info.value.response.status_code == 503
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH, max_size=None) as ws:
            await ws.send("x" * 5000)  # over the 4 KiB limit of this test
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    serve(tmp_path, scenario, max_subscribers=2, max_message_bytes=4096)


def test_health_and_metrics(tmp_path: Path) -> None:
    async def scenario(engine: Engine, host: str) -> None:
        while engine.metrics.epoch < 0:
            await asyncio.sleep(0.05)
        status, body = await asyncio.to_thread(http_get, f"http://{host}/healthz")
        assert (status, body) == (200, b"ok\n")
        status, body = await asyncio.to_thread(http_get, f"http://{host}/metrics")
        assert status == 200 and b"solvency_epoch " in body and b"# TYPE" in body

    serve(tmp_path, scenario)


def watch_raises_alarms(state: Path) -> Scenario:
    """A scenario: ``solvency-verify watch --json`` from the auditor state in
    ``state`` exits 1, having raised alarms (printed to stdout)."""

    async def watch(engine: Engine, host: str) -> None:
        args = ["watch", f"ws://{host}", "--key", str(engine.verifier_key)]
        args += ["--state", str(state), "--json"]
        assert await asyncio.to_thread(verify_main, args) == 1

    return watch


def test_auditor_catches_a_rolled_back_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An auditor that already verified 5 epochs meets a prover whose log is shorter."""
    from tests.verifier.fakelog import FakeLog

    log = FakeLog(KEY, ORIGIN)
    state = None
    for _ in range(5):
        state, _, _ = audit_epoch(
            state, log.append(), verifier_key_for(ORIGIN, KEY.public_key()), ORIGIN
        )
    assert state is not None
    (tmp_path / "auditor").mkdir()
    (tmp_path / "auditor" / "state.json").write_text(state.to_json())

    serve(tmp_path, watch_raises_alarms(tmp_path / "auditor"))
    alarms = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert alarms[0]["check"] == "log-rolled-back"


def test_auditor_catches_a_forked_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The custodian restores an old copy of its database, so as to drop a liability,
    and goes on signing with the same key. An auditor that verified the first
    history meets the second: "fork", with the two checkpoints as evidence."""
    db = tmp_path / "prover.db"

    def run_until(epochs: int, amount: int | None) -> Scenario:
        async def scenario(engine: Engine, host: str) -> None:
            if amount is not None:
                async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as ws:
                    await ws.send(balances("core", (amount, "alice", "BTC", amount)))
                    assert json.loads(await ws.recv())["type"] == "ack"
            while engine.metrics.epoch < epochs:
                await asyncio.sleep(0.05)

        return scenario

    serve(tmp_path, run_until(2, 5))
    db.with_name("backup.db").write_bytes(db.read_bytes())  # closed: no WAL left beside it
    serve(tmp_path, run_until(5, 1_000_000))

    async def audit(engine: Engine, host: str) -> None:
        state = None
        async with connect(f"ws://{host}/roots?since=0") as ws:
            while state is None or state.size <= engine.metrics.epoch:
                message = parse_message(await ws.recv())
                state, _, _ = audit_epoch(state, message, engine.verifier_key, ORIGIN)
        (tmp_path / "auditor").mkdir()
        (tmp_path / "auditor" / "state.json").write_text(state.to_json())

    serve(tmp_path, audit)
    size = json.loads((tmp_path / "auditor" / "state.json").read_text())["size"]
    assert size >= 6

    db.write_bytes(db.with_name("backup.db").read_bytes())  # the restore
    serve(tmp_path, run_until(size, 6))  # alice's 1,000,000 is gone; the log grew back

    serve(tmp_path, watch_raises_alarms(tmp_path / "auditor"))
    alarms = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["check"] for a in alarms if a["event"] == "violation"] == ["fork"]
    evidence = json.loads(Path(alarms[-1]["evidence"]).read_text())
    assert evidence["message"]["checkpoint"] != evidence["last_verified_checkpoint"]


def test_garbage_is_collected_between_epochs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the daemon runs, Python's cyclic collector runs right after each
    epoch, and fully every FULL_COLLECTION_EVERY epochs: never during a close."""
    monkeypatch.setattr("prover.runtime.FULL_COLLECTION_EVERY", 2)
    collections: list[tuple[int, bool]] = []  # (generation, during a close)
    engines: list[Engine] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and engines and not gc.isenabled():  # run()'s own
            collections.append((info["generation"], engines[0]._epoch_lock.locked()))

    async def scenario(engine: Engine, host: str) -> None:
        engines.append(engine)
        assert not gc.isenabled()
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            first, seq = engine.metrics.epoch, 0
            while engine.metrics.epoch < first + 5:
                seq += 1
                await producer.send(balances("core", (seq, f"user{seq}", "BTC", seq)))
                assert json.loads(await producer.recv())["type"] == "ack"
                await asyncio.sleep(0.01)

    gc.callbacks.append(note)
    try:
        serve(tmp_path, scenario)
    finally:
        gc.callbacks.remove(note)
    assert gc.isenabled()
    assert len(collections) >= 5
    assert {generation for generation, _ in collections} == {1, 2}
    assert not any(during_close for _, during_close in collections)


def test_export_every_proof(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    admin = {"Authorization": "Bearer admin-token"}

    async def scenario(engine: Engine, host: str) -> None:
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            rows = [(i + 1, f"user/{i}", "BTC", i + 1) for i in range(30)]
            await producer.send(balances("core", *rows, (31, "user/0", "ETH", 5)))
            assert json.loads(await producer.recv())["type"] == "ack"
        while engine.metrics.updates < 31 or engine._intake.pending:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let the epoch holding them close
        for headers in ({}, AUTH):  # no token, or the producers' token: refused
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://{host}/admin/export", additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 401
        async with connect(f"ws://{host}/admin/export", additional_headers=admin) as ws:
            await ws.send(json.dumps({"type": "export"}))
            replies = [json.loads(m) async for m in ws]
        assert replies[-1]["type"] == "done" and replies[-1]["files"] == 30
        assert replies[-1]["dir"] == str(exports / f"epoch-{replies[-1]['epoch']}")
        assert replies[0]["type"] == "progress"

    serve(tmp_path, scenario, admin_token="admin-token")
    (out,) = exports.iterdir()
    files = sorted(out.iterdir())
    assert len(files) == 30 and files[0].name == "user%2F0.json"
    for path in files:
        report = verify_proof(
            ProofFile.parse(path.read_bytes()), verifier_key_for(ORIGIN, KEY.public_key())
        )
        assert report.assets[0].balance >= 1


def test_malformed_ingest_never_changes_state(tmp_path: Path) -> None:
    """2,000 hypothesis-made messages over one real connection, from garbage to
    nearly valid batches with one defect: each gets an ack or an error reply, the
    daemon survives, and the store ends up holding exactly what the acknowledged
    messages say (absolute amounts, replays skipped): nothing of a refused
    message, not even its valid updates, is applied."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=12,
    )
    garbage_update = st.fixed_dictionaries(
        {
            "seq": values,
            "user": values,
            "asset": st.sampled_from(["BTC", "DOGE", 5]),
            "amount": values,
        }
    )
    amount = st.integers(-3, 2**64 + 3) | st.integers(0, 10**6).map(str) | st.just("01")
    near_update = st.fixed_dictionaries(
        {
            "seq": st.integers(-1, 60),
            "user": st.sampled_from(["alice", "bob", "carol", "", "x" * 300]),
            "asset": st.sampled_from(["BTC", "ETH", "ETH", "DOGE"]),
            "amount": amount,
        }
    )
    frames = st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda t, s, u: json.dumps({"type": t, "source": s, "updates": u}),
            st.sampled_from(["balances", "reserves", "other"]),
            st.sampled_from(["core", "", "bad source", 7]),
            st.lists(garbage_update, max_size=3),
        ),
        st.builds(
            lambda s, u: json.dumps({"type": "balances", "source": s, "updates": u}),
            st.sampled_from(["core", "desk"]),
            st.lists(near_update, min_size=1, max_size=4),
        ),
    )
    samples: list[str] = []

    @given(frames)
    @settings(max_examples=2000, suppress_health_check=list(HealthCheck), database=None)
    def collect(frame: str) -> None:
        samples.append(frame)

    collect()

    async def scenario(engine: Engine, host: str) -> None:
        model: dict[tuple[str, str], int] = {}
        marks: dict[str, int] = {}
        replies = {"ack": 0, "error": 0}
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as ws:
            for frame in samples:
                await ws.send(frame)
                reply = json.loads(await ws.recv())
                replies[reply["type"]] += 1
                if reply["type"] == "ack":
                    doc = json.loads(frame)
                    for u in doc["updates"]:
                        if u["seq"] > marks.get(doc["source"], -1):
                            model[u["user"], u["asset"]] = int(u["amount"])
                            marks[doc["source"]] = u["seq"]
            await ws.send(balances("probe", (1, "probe-user", "BTC", 1)))
            assert json.loads(await ws.recv())["type"] == "ack"  # still serving
        model["probe-user", "BTC"] = 1
        assert replies["ack"] >= 20 and replies["error"] >= 1000  # both kinds were exercised
        stored = await asyncio.to_thread(
            lambda: {(u, a): m for chunk in engine.store.iter_balances() for u, a, m in chunk}
        )
        assert stored == {k: m for k, m in model.items() if m}

    serve(tmp_path, scenario)


def test_connection_flood_is_refused_and_service_goes_on(tmp_path: Path) -> None:
    """300 connection attempts against a cap of 20 subscribers (100 connections):
    the excess get 503, or are closed at accept past max_connections; epochs
    keep coming, and a producer is still served."""

    async def scenario(engine: Engine, host: str) -> None:
        async def attempt() -> int:
            try:
                ws = await connect(f"ws://{host}/roots")
            except InvalidStatus as exc:
                return exc.response.status_code
            except (OSError, InvalidMessage):  # closed at accept
                return 0
            held.append(ws)
            return 101

        held: list = []
        codes = await asyncio.gather(*(attempt() for _ in range(300)))
        assert codes.count(101) <= 20 and codes.count(503) + codes.count(0) >= 280
        assert codes.count(503) >= 50
        epoch = engine.metrics.epoch
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            await producer.send(balances("core", (1, "a", "BTC", 5)))
            assert json.loads(await producer.recv())["type"] == "ack"
        while engine.metrics.epoch <= epoch:  # epochs go on under the flood
            await asyncio.sleep(0.05)
        for ws in held:
            await ws.close()

    serve(tmp_path, scenario, max_subscribers=20)


def test_a_slow_subscriber_is_shed_without_delaying_others(tmp_path: Path) -> None:
    """A subscriber that stops reading is closed with 1013 once more than
    ``subscriber_buffer_bytes`` wait for it; another one meanwhile gets every
    epoch on time, and epochs keep their cadence."""

    async def scenario(engine: Engine, host: str) -> None:
        address, port = host.split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # fills after a few frames
        sock.connect((address, int(port)))
        fast_times: list[tuple[int, float]] = []

        async def follow(ws: ClientConnection) -> None:
            async for frame in ws:
                record = EpochRecord.decode(parse_message(frame).record)
                fast_times.append((record.epoch, time.time() - record.timestamp_ms / 1000))

        async with (
            connect(f"ws://{host}/roots", sock=sock, max_queue=1) as slow,
            connect(f"ws://{host}/roots") as fast,
            connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer,
        ):
            follower = asyncio.create_task(follow(fast))
            seq = 0
            while engine.metrics.shed_subscribers == 0:  # slow never reads meanwhile
                seq += 1
                await producer.send(balances("core", (seq, "alice", "BTC", seq)))
                assert json.loads(await producer.recv())["type"] == "ack"
                await asyncio.sleep(0.02)
            for _ in range(5):  # the others carry on
                seq += 1
                await producer.send(balances("core", (seq, "alice", "BTC", seq)))
                await producer.recv()
                await asyncio.sleep(0.06)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await slow.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1013
            follower.cancel()
        epochs = [n for n, _ in fast_times]
        assert epochs == list(range(epochs[0], epochs[0] + len(epochs)))  # no gap
        assert epochs[-1] >= engine.metrics.epoch - 1 and len(epochs) > 5
        assert max(lag for _, lag in fast_times) < 1.0  # nobody waited on the slow one

    serve(tmp_path, scenario, subscriber_buffer_bytes=4096)


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536, 300_000])
def test_a_live_frame_is_what_websockets_would_send(size: int) -> None:
    """Live epochs are written as bytes framed once per epoch: the same bytes
    as websockets' own server protocol sends for that text (JSON) or those
    bytes (MessagePack, a binary frame), with every length encoding of RFC
    6455 §5.2 (7-bit, 16-bit, 64-bit)."""
    message = "é" * (size // 2) + "x" * (size % 2)
    protocol = ServerProtocol(state=State.OPEN)
    protocol.send_text(message.encode())
    assert b"".join(protocol.data_to_send()) == _wire_frame(message)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    protocol.send_binary(data)
    assert b"".join(protocol.data_to_send()) == _wire_frame(data)
