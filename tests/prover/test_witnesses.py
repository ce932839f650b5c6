"""The engine with real witnesses (``verifier.witness_server``, in this process
on 127.0.0.1): epochs published with the quorum's cosignatures, live, replayed,
in proofs and exports; witnesses down, slow, refusing; and the split-view
attack that witnesses exist to catch."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.config import AssetConfig, Config, WitnessConfig
from prover.engine import Engine
from prover.messages import parse_ingest
from prover.metrics import render_metrics
from prover.witness_protocol import request_body
from tests.prover.engines import Scenario, run_engine
from verifier.checkpoint import VerifierKey, verifier_key_for
from verifier.cosignature import WitnessKey, verify_cosignatures, witness_key_for
from verifier.errors import VerificationError
from verifier.proof import ProofFile, verify_proof
from verifier.stream import EpochMessage, parse_message
from verifier.witness import LogState, Witness
from verifier.witness_server import Response, StateStore, WitnessHTTPServer, WitnessService

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ORIGIN = "test.example/solvency"
LOG = verifier_key_for(ORIGIN, KEY.public_key())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveWitness:
    """A witness server of verifier/witness_server.py on 127.0.0.1, its state
    in ``directory``; ``delay`` seconds before each answer; submissions counted."""

    def __init__(
        self, directory: Path, name: str, logs: tuple[VerifierKey, ...] = (LOG,), delay: float = 0
    ) -> None:
        self.name, self.directory, self.logs, self.delay = name, directory / name, logs, delay
        self.private = Ed25519PrivateKey.generate()
        self.key: WitnessKey = witness_key_for(name, self.private.public_key())
        self.port = free_port()
        self.submissions = 0
        self._server: WitnessHTTPServer | None = None
        self._store: StateStore | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveWitness:
        witness = Witness(self.name, self.private, self.logs)
        self._store = StateStore(self.directory)
        self._store.open()
        outer = self

        class Service(WitnessService):
            def add_checkpoint(self, body: bytes) -> Response:
                outer.submissions += 1
                time.sleep(outer.delay)
                return super().add_checkpoint(body)

        self._server = WitnessHTTPServer(("127.0.0.1", self.port), Service(witness, self._store))
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._store is not None:
            self._store.close()

    def state(self) -> LogState | None:
        assert self._store is not None
        return self._store.states.get(ORIGIN)


@pytest.fixture
def witnesses(tmp_path: Path) -> Iterator[Callable[..., LiveWitness]]:
    made: list[LiveWitness] = []

    def make(name: str, *, up: bool = True, **options: object) -> LiveWitness:
        witness = LiveWitness(tmp_path / "witnesses", name, **options)  # type: ignore[arg-type]
        made.append(witness.start() if up else witness)
        return witness

    yield make
    for witness in made:
        witness.stop()


def run(
    tmp_path: Path, ws: list[LiveWitness], scenario: Scenario, db: str = "p", **changes: object
) -> None:
    config = Config(
        data_dir=tmp_path,
        origin=ORIGIN,
        database_url=f"sqlite:///{tmp_path / db}.db",
        assets=(AssetConfig("BTC", 8),),
        proof_secret="00" * 32,
        epoch_interval=0.05,
        max_interval=0.5,
        witnesses=tuple(WitnessConfig(str(w.key), w.url) for w in ws),
        **changes,  # type: ignore[arg-type]
    )
    run_engine(config, KEY, scenario)


async def deposit(engine: Engine, user: str, amount: int) -> None:
    seq = engine.metrics.updates + 1
    message = {
        "type": "balances",
        "source": "core",
        "updates": [{"seq": seq, "user": user, "asset": "BTC", "amount": str(amount)}],
    }
    await engine.ingest(parse_ingest(json.dumps(message)))


async def frames(engine: Engine, since: int | None, count: int) -> list[EpochMessage]:
    out: list[EpochMessage] = []
    async with contextlib.aclosing(engine.subscribe(since)) as stream:  # type: ignore[type-var]
        async for frame in stream:
            out.append(parse_message(frame))
            if len(out) == count:
                break
    return out


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def post(witness: LiveWitness, body: bytes) -> int:
    """Submit ``body`` to ``witness`` as a log would; the answer's status."""
    conn = http.client.HTTPConnection("127.0.0.1", witness.port, timeout=5)
    try:
        conn.request("POST", "/add-checkpoint", body)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def cosigners(note: bytes, *ws: LiveWitness) -> set[str]:
    return {c.witness.name for c in verify_cosignatures(note, [w.key for w in ws], 0)}


def test_epochs_carry_the_quorum_live_replayed_in_proofs_and_in_metrics(
    tmp_path: Path, witnesses: Callable[..., LiveWitness]
) -> None:
    w1, w2 = witnesses("w1"), witnesses("w2")

    async def scenario(engine: Engine) -> None:
        live = asyncio.create_task(frames(engine, None, 3))
        await asyncio.sleep(0)  # subscribed
        for amount in (100, 200, 300):
            await deposit(engine, "alice", amount)
            await engine.close_epoch()
        published = await asyncio.wait_for(live, 10)
        assert [cosigners(m.checkpoint, w1, w2) for m in published] == [{"w1", "w2"}] * 3
        replayed = await frames(engine, 0, 3)
        assert [cosigners(m.checkpoint, w1, w2) for m in replayed] == [{"w1", "w2"}] * 3
        proof = await engine.proof("alice")
        assert proof is not None
        report = verify_proof(
            ProofFile.parse(proof.to_json()), LOG, witnesses=(w1.key, w2.key), quorum=2
        )
        assert report.assets[0].balance == 300
        stats = {s.endpoint.key.name: s for s in engine.witness_stats()}
        assert {n: (s.cosigned_epoch, s.lag, s.failures) for n, s in stats.items()} == {
            "w1": (2, 0, 0),
            "w2": (2, 0, 0),
        }
        assert engine.metrics.published_epoch == 2
        text = render_metrics(engine.metrics, engine.witness_stats())
        assert f'solvency_witness_cosigned_epoch{{witness="w1+{w1.key.key_id:08x}"}} 2.0\n' in text
        assert f'solvency_witness_failures_total{{witness="w2+{w2.key.key_id:08x}"}} 0.0\n' in text
        assert "solvency_published_epoch 2.0\n" in text

    run(tmp_path, [w1, w2], scenario)
    assert (w1.submissions, w2.submissions) == (3, 3)


def test_a_witness_down_at_start_never_stalls_epochs_and_catches_up_with_the_newest(
    tmp_path: Path, witnesses: Callable[..., LiveWitness]
) -> None:
    w1, w2 = witnesses("w1"), witnesses("w2", up=False)

    async def scenario(engine: Engine) -> None:
        live = asyncio.create_task(frames(engine, None, 6))
        await asyncio.sleep(0)
        started = time.monotonic()
        for amount in range(1, 6):
            await deposit(engine, "alice", amount)
            await engine.close_epoch()
            # w2 refuses connections: known failing, it is not waited for (timeout: 30 s)
            await until(lambda: engine.metrics.published_epoch == engine.metrics.epoch, 5)
        assert time.monotonic() - started < 5
        (w2_stats,) = [s for s in engine.witness_stats() if s.endpoint.key == w2.key]
        assert w2_stats.failures >= 1 and w2_stats.failing >= 1 and w2_stats.cosigned_epoch == -1
        w2.start()
        await until(lambda: w2.state() is not None, 20)  # at its next retry
        assert w2.submissions == 1  # the newest checkpoint only, not the five it missed
        state = w2.state()
        assert state is not None and state.size == 5
        await deposit(engine, "alice", 6)
        await engine.close_epoch()
        published = await asyncio.wait_for(live, 10)
        expected = [{"w1"}] * 5 + [{"w1", "w2"}]
        assert [cosigners(m.checkpoint, w1, w2) for m in published] == expected
        # epoch 4's cosignature by w2 came after its publication: stored, replayed
        (replayed,) = await frames(engine, 4, 1)
        assert cosigners(replayed.checkpoint, w1, w2) == {"w1", "w2"}

    run(tmp_path, [w1, w2], scenario, witness_timeout=30.0)


def test_a_409_teaches_the_prover_a_size_it_did_not_know(
    tmp_path: Path, witnesses: Callable[..., LiveWitness]
) -> None:
    """w2 cosigned epoch 1 for someone else (or for a prover that lost its
    rows): asked with ``old 0``, it answers 409 and its size, and the next
    submission proves consistency from there."""
    w1, w2 = witnesses("w1"), witnesses("w2")

    async def first(engine: Engine) -> None:
        for amount in (1, 2, 3):
            await deposit(engine, "bob", amount)
            await engine.close_epoch()
        await until(lambda: engine.metrics.published_epoch == 2)
        assert post(w2, request_body(0, (), engine.store.epoch(1).checkpoint)) == 200

    run(tmp_path, [w1], first)

    async def second(engine: Engine) -> None:
        await deposit(engine, "bob", 4)
        await engine.close_epoch()
        (message,) = await frames(engine, 3, 1)
        assert cosigners(message.checkpoint, w1, w2) == {"w1", "w2"}

    run(tmp_path, [w1, w2], second)
    assert w2.submissions == 3  # the direct one, the 409, the cosigned one
    assert w1.submissions == 4  # from epoch 2 (learned from the database) to 3 at once


def test_witnesses_that_refuse_are_failures_and_epochs_go_on(
    tmp_path: Path, witnesses: Callable[..., LiveWitness]
) -> None:
    other = verifier_key_for(ORIGIN, Ed25519PrivateKey.generate().public_key())
    elsewhere = verifier_key_for("elsewhere.example/log", KEY.public_key())
    good = witnesses("good")
    untrusting = witnesses("untrusting", logs=(other,))  # 403: not the log's key
    unaware = witnesses("unaware", logs=(elsewhere,))  # 404: unknown origin

    async def scenario(engine: Engine) -> None:
        for amount in (1, 2):
            await deposit(engine, "carol", amount)
            await engine.close_epoch()
        replayed = await frames(engine, 0, 2)
        assert [cosigners(m.checkpoint, good) for m in replayed] == [{"good"}] * 2
        stats = {s.endpoint.key.name: s for s in engine.witness_stats()}
        assert stats["good"].failures == 0
        assert stats["untrusting"].failures >= 1 and stats["unaware"].failures >= 1

    run(tmp_path, [good, untrusting, unaware], scenario, witness_quorum=1)
    assert untrusting.state() is None and unaware.state() is None


def test_late_cosignatures_are_stored_and_served_everywhere(
    tmp_path: Path, witnesses: Callable[..., LiveWitness]
) -> None:
    fast, slow = witnesses("fast"), witnesses("slow", delay=0.5)

    async def scenario(engine: Engine) -> None:
        await deposit(engine, "dave", 10)
        live = asyncio.create_task(frames(engine, None, 1))
        await engine.close_epoch()
        (message,) = await asyncio.wait_for(live, 5)
        assert cosigners(message.checkpoint, fast, slow) == {"fast"}  # timed out on slow
        proof = await engine.proof("dave")  # no epoch has the quorum yet: the latest
        assert proof is not None and cosigners(proof.checkpoint, fast, slow) == {"fast"}
        await until(lambda: len(engine.store.cosignatures(0, 0)) == 2)
        (replayed,) = await frames(engine, 0, 1)
        assert cosigners(replayed.checkpoint, fast, slow) == {"fast", "slow"}
        # epoch 1 lacks slow's cosignature for a while: /proof serves epoch 0 meanwhile
        await deposit(engine, "dave", 11)
        await engine.close_epoch()
        proof = await engine.proof("dave")
        assert proof is not None and proof.assets[0].balance == 10
        verify_proof(
            ProofFile.parse(proof.to_json()), LOG, witnesses=(fast.key, slow.key), quorum=2
        )
        await until(lambda: len(engine.store.cosignatures(1, 1)) == 2)
        proof = await engine.proof("dave")
        assert proof is not None and proof.assets[0].balance == 11
        assert cosigners(proof.checkpoint, fast, slow) == {"fast", "slow"}
        older = await engine.proof("dave", 0)
        assert older is not None and cosigners(older.checkpoint, fast, slow) == {"fast", "slow"}

        async def progress(done: int, total: int) -> None:
            pass

        _, out, written = await engine.export_proofs(progress)
        (exported,) = [ProofFile.parse(p.read_bytes()) for p in out.iterdir()]
        assert written == 1 and cosigners(exported.checkpoint, fast, slow) == {"fast", "slow"}

    run(tmp_path, [fast, slow], scenario, witness_timeout=0.2)


def test_a_fork_is_refused_by_the_witnesses_and_caught_by_the_customer(
    tmp_path: Path, witnesses: Callable[..., LiveWitness]
) -> None:
    """The split view: one signing key, two logs. Fork A, without erin's
    balance, goes to the auditors and to the witnesses; fork B, with it, to
    erin. The witnesses refuse every checkpoint of B and keep A's; erin,
    requiring their quorum, rejects her proof from B."""
    w1, w2 = witnesses("w1"), witnesses("w2")

    async def fork_a(engine: Engine) -> None:
        for amount in (5, 6, 7):
            await deposit(engine, "frank", amount)
            await engine.close_epoch()
        await until(lambda: all(s.cosigned_epoch == 2 for s in engine.witness_stats()))

    run(tmp_path, [w1, w2], fork_a, db="fork-a")
    kept = [w1.state(), w2.state()]
    assert all(s is not None and s.size == 3 for s in kept)
    proof_b: list[ProofFile] = []

    async def fork_b(engine: Engine) -> None:
        for amount in (5, 6, 7, 8):
            await deposit(engine, "erin", amount)
            await engine.close_epoch()
        found = await engine.proof("erin")
        assert found is not None and cosigners(found.checkpoint, w1, w2) == set()
        proof_b.append(found)
        # asked directly, with B's own proofs: 409 at A's size, 422 beyond it
        b3, b4 = engine.store.epoch(2).checkpoint, engine.store.epoch(3).checkpoint
        proof = engine.store.consistency_proof(3, 4)
        for w in (w1, w2):
            assert post(w, request_body(3, (), b3)) == 409
            assert post(w, request_body(3, proof, b4)) == 422

    run(tmp_path, [w1, w2], fork_b, db="fork-b", witness_timeout=0.2)
    assert [w1.state(), w2.state()] == kept  # nothing of fork B was cosigned
    path = tmp_path / "erin.json"
    path.write_text(proof_b[0].to_json())
    base = [sys.executable, "-m", "verifier.cli", "proof", str(path), "--key", str(LOG)]
    alone = subprocess.run(base, capture_output=True, text=True, timeout=60)
    # without witnesses, B passes: erin is included (exit 4: no reserves were reported)
    assert alone.returncode == 4 and alone.stdout.startswith("VALID"), alone.stdout + alone.stderr
    quorum = ["--witness", str(w1.key), "--witness", str(w2.key), "--quorum", "2"]
    checked = subprocess.run(base + quorum, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1 and "witness-quorum" in checked.stdout + checked.stderr
    with pytest.raises(VerificationError) as caught:
        verify_proof(proof_b[0], LOG, witnesses=(w1.key, w2.key), quorum=2)
    assert caught.value.check == "witness-quorum"


def test_status_lists_the_witnesses_and_their_last_cosigned_epochs(
    tmp_path: Path, witnesses: Callable[..., LiveWitness], capsys: pytest.CaptureFixture[str]
) -> None:
    from prover.cli import main

    w1, w2 = witnesses("w1"), witnesses("w2", up=False)
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "init", "--origin", ORIGIN, "--assets", "BTC:8"]) == 0
    with (data / "config.toml").open("a") as f:
        for w in (w1, w2):
            f.write(f'[[witnesses]]\nkey = "{w.key}"\nurl = "{w.url}"\n')

    async def scenario(engine: Engine) -> None:
        await deposit(engine, "alice", 1)
        await engine.close_epoch()
        await until(lambda: engine.witness_stats()[0].cosigned_epoch == 0)

    run(data, [w1, w2], scenario, db="prover", witness_quorum=1)
    capsys.readouterr()
    assert main(["--data-dir", str(data), "status"]) == 0
    out = capsys.readouterr().out
    assert f"witnesses: 2, quorum 2\n  {w1.key} at {w1.url}: epoch 0\n" in out
    assert f"  {w2.key} at {w2.url}: never cosigned\n" in out
