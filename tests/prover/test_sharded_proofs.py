"""Proofs of earlier epochs and exports of the sharded prover
(prover/shards/proofs.py, core.py): byte for byte the single process's,
for the same ledger cut at the same places.

In one process first (shards' cores asked through the bytes of their
control messages, ``ShardedProofs`` on top): a proof of each of the last
``proof_epochs`` epochs equals what one ``Ledger`` holding every part
gives for that epoch, trees growing in between, and is refused
``NotRetained`` exactly when that ledger refuses it; export pages stay at
their epoch while epochs close, whatever the shards retain, stay under
their byte budget, and the files equal the tree worker's export; an
export begun while a shard is an epoch ahead of the log, or during which
a shard restarts or another export begins, fails; a restored shard keeps
no earlier epoch and says so. Then end to end on the real NATS server at
127.0.0.1:4222 (skipped if absent), as tests/prover/test_sharded.py runs
it, every proof file and exported file compared with the single process's
and verified, and the refusals through ``/proof``."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import prover.shards.core as core_module
import prover.shards.proofs as proofs_module
from prover.config import AssetConfig, Config
from prover.epoch import build_record
from prover.errors import NotRetained, ProverError
from prover.ledger import AssetRoot, Ledger
from prover.mapped import MappedRecord
from prover.routing import Router
from prover.shards.control import (
    ExportedPage,
    ExportPage,
    NoProof,
    PartProof,
    Prove,
    Refused,
    Reply,
    Request,
    decode_reply,
    encode,
    expect,
)
from prover.shards.coordinator import Coordinator
from prover.shards.core import ShardCore
from prover.shards.proofs import ShardedProofs
from prover.stored import stored_epoch
from prover.top import TopTree
from prover.worker import export_proofs
from storage.store import Store
from tests.prover.epoch_rows import rows_by_epoch
from tests.prover.test_frontend import NATS, TOKEN, Names, names  # noqa: F401 (fixture)
from tests.prover.test_shard_role import (
    ASSETS,
    KEY,
    PERIOD,
    USERS,
    Batch,
    close_cores,
    committed_rows,
    feed,
    numbered,
    publish,
    single_ledger,
)
from tests.prover.test_shard_role import Coordinator as PartCoordinator
from tests.prover.test_sharded import ASSETS as E2E_ASSETS
from tests.prover.test_sharded import KEY as SIGNING_KEY
from tests.prover.test_sharded import PERIOD as E2E_PERIOD
from tests.prover.test_sharded import ROUTER as E2E_ROUTER
from tests.prover.test_sharded import batches as e2e_batches
from tests.prover.test_sharded import sharded
from verifier.checkpoint import verifier_key_for
from verifier.cli import main as verify_main
from verifier.proof import ProofFile, verify_proof
from verifier.stream import EpochMessage

RETAIN = 3
Json = dict[str, Any]  # a message to the front-end

# In one process


def random_batches(rnd: random.Random, count: int = 40) -> list[Batch]:
    """Users come, change and leave (0) over both assets: enough holders
    that trees grow."""
    raw = [
        [
            (rnd.choice(USERS), rnd.choice(ASSETS), rnd.choice([0, *range(1, 60)]))
            for _ in range(rnd.randint(1, 12))
        ]
        for _ in range(count)
    ]
    return numbered(raw, 2)


class Deployment:
    """Shards' cores of ``router``'s parts (each keeping ``retain`` epochs,
    saving its closes to ``store`` if given), closed at cuts of one stream
    by test_shard_role's coordinator; ``proofs``, the ``ShardedProofs``
    over them, keeping ``proof_epochs`` epochs; ``single``, one ledger of
    every part fed the same, closed at the same cuts. ``before_ask`` runs
    before each request a shard gets (to close epochs between pages, or
    restart a shard)."""

    def __init__(
        self,
        tmp_path: Path,
        rnd: random.Random,
        bits: int = 1,
        retain: int = RETAIN,
        store: Store | None = None,
    ) -> None:
        self.router = Router(KEY, bits)
        self.batches = random_batches(rnd)
        self.stream, self.commits = publish(self.batches, self.router, rnd)
        self.store, self.retain = store, retain
        self.cores = [self.started(part) for part in range(self.router.parts)]
        self.parts = PartCoordinator(self.router)
        self.single = single_ledger(self.router)
        self.single.retain = retain
        self.config = Config(
            data_dir=tmp_path,
            assets=tuple(AssetConfig(a, 8) for a in ASSETS),
            proof_epochs=retain,
        )
        self.epochs: dict[int, tuple[EpochMessage, MappedRecord]] = {}
        self.proofs = ShardedProofs(self.config, self.router, self.ask, self.stored, lambda: None)
        self.before_ask: Callable[[Request], None] = lambda request: None
        self.unappended: list[tuple[EpochMessage, MappedRecord, dict[str, TopTree]]] = []
        self._marks: dict[str, int] = {}
        self._after = 0

    def started(self, part: int) -> ShardCore:
        """Part ``part`` as a shard process starts it: restored from the
        store if it saved a close, else empty."""
        if self.store is None:
            return ShardCore.empty(PERIOD, self.router, part, self.retain)
        save = functools.partial(self.store.save_shard, "proofs", part)
        state = self.store.shard_state("proofs", part)
        if state is None:
            return ShardCore.empty(PERIOD, self.router, part, self.retain, save=save)
        holdings = self.store.shard_holdings("proofs", part, state.epoch)
        return ShardCore.restore(state, holdings, PERIOD, self.router, part, self.retain, save=save)

    async def ask(self, part: int, request: Request) -> Reply:
        self.before_ask(request)
        return decode_reply(self.cores[part].handle(encode(request)))

    async def stored(self, epoch: int, record: MappedRecord) -> tuple[EpochMessage, MappedRecord]:
        return self.epochs[epoch][0], record

    @property
    def latest(self) -> int:
        return self.parts.epoch

    def close(self, cut: int, append: bool = True) -> None:
        """One epoch at ``cut`` (at most the stream's end) in the shards and
        the single ledger; its record appended (a made-up checkpoint: these
        proofs are compared, not verified), or with ``append`` False left
        for ``append`` (the coordinator's append failed)."""
        cut = min(cut, len(self.stream))
        for core in self.cores:
            feed(core, self.stream, cut)
        roots = close_cores(self.parts, self.cores, cut)
        self.single.stage_rows(
            committed_rows(self.batches, self.commits, self._after, cut, self._marks)
        )
        self.single.close_epoch()
        self._after = cut
        number = self.parts.epoch
        record = build_record(
            epoch=number,
            timestamp_ms=number,
            max_reserve_age_ms=1000,
            decimals=dict.fromkeys(ASSETS, 8),
            roots=[AssetRoot(a, *roots[a]) for a in ASSETS],
            reserves={},
        )
        message = EpochMessage(record.encode(), f"checkpoint {number}\n".encode(), (bytes(32),))
        mapped = MappedRecord(record)
        self.epochs[number] = (message, mapped)
        self.unappended.append((message, mapped, dict(self.parts.tops)))
        if append:
            self.append()

    def append(self) -> None:
        for epoch in self.unappended:
            self.proofs.committed(*epoch)
        self.unappended.clear()

    def expected(self, user: str, epoch: int) -> bytes | None:
        """The single ledger's proof file of ``user`` for ``epoch``.

        Raises:
            NotRetained: the single ledger no longer keeps ``epoch``.
        """
        found = self.single.proof(user, self.latest - epoch)
        if found is None:
            return None
        message, record = self.epochs[epoch]
        return record.basis(message).proof(found).to_json().encode()

    def reference_export(self, out: Path) -> None:
        """What the tree worker's export writes of the single ledger's latest epoch."""
        out.mkdir()
        message, record = self.epochs[self.latest]
        basis = record.basis(message)
        export_proofs(self.single, out, 0, len(self.single.users), basis)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(("bits", "seed"), [(1, 0), (1, 1), (2, 2), (2, 3)])
def test_proofs_of_earlier_epochs_equal_the_single_ledger(
    tmp_path: Path, bits: int, seed: int
) -> None:
    """After every close, each of the last epochs' proof files equals the
    single ledger's; an epoch it no longer keeps (or never had: trees grew)
    is refused NotRetained by the sharded prover too. A shard answers by
    epoch number: asked for epoch n after it closed later ones (as when
    the coordinator has closed an epoch it has not appended yet), it
    answers epoch n."""
    rnd = random.Random(seed)
    d = Deployment(tmp_path, rnd, bits)
    cuts = sorted(rnd.sample(range(1, len(d.stream)), 9))
    served = refused = 0
    for cut in [*cuts, len(d.stream)]:
        d.close(cut)
        for epoch in range(max(1, d.latest - RETAIN - 1), d.latest + 2):
            for user in rnd.sample(USERS, 6):
                if epoch > d.latest:
                    with pytest.raises(NotRetained, match="not published yet"):
                        asyncio.run(d.proofs.proof(user, epoch))
                    continue
                try:
                    expected = d.expected(user, epoch)
                except NotRetained:  # so is it by the sharded prover
                    with pytest.raises(NotRetained):
                        asyncio.run(d.proofs.proof(user, epoch))
                    refused += 1
                    continue
                found = asyncio.run(d.proofs.proof(user, epoch))
                assert (None if found is None else found.to_json().encode()) == expected
                served += expected is not None
        assert asyncio.run(d.proofs.proof(USERS[0])) == asyncio.run(
            d.proofs.proof(USERS[0], d.latest)
        )
    assert served > 50 and refused > 0


def test_export_pages_keep_their_epoch_while_epochs_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of epoch n asked while epochs n+1 to n+4 close, in shards that
    keep no earlier epoch, hold, together, each user's proof of epoch n,
    once; a page stops at ``PAGE_BYTES``. After the last page the frozen
    trees are gone: a next page is refused, and so is a first page of an
    epoch but the last closed."""
    budget = 1500
    monkeypatch.setattr(core_module, "PAGE_BYTES", budget)
    rnd = random.Random(7)
    d = Deployment(tmp_path, rnd, retain=0)
    for cut in (30, 60, 90):
        d.close(cut)
    epoch, core, tops = d.latest, d.cores[0], dict(d.parts.tops)
    part_users = [u for u in d.single.users if d.router.shard(u) == 0]
    expected = {u: p for u in part_users if (p := d.single.proof(u)) is not None}
    got: dict[str, list[Any]] = {}
    start, end, short, cut = 0, None, 0, 90
    while end is None or start < end:
        page = expect(decode_reply(core.handle(encode(ExportPage(epoch, start, 9)))), ExportedPage)
        assert (page.epoch, page.instance) == (epoch, core.instance)
        end = page.users if end is None else end
        sizes = [len(u.encode()) + len(encode(p)) for u, p in page.proofs]
        assert sum(sizes[:-1]) < budget and start < page.next <= start + 9
        short += page.next < min(start + 9, end)
        for user, lower in page.proofs:
            assert user not in got
            got[user] = [
                (a, s, m, [(p.hash, p.sum) for p in path] + tops[a].path(0))
                for a, s, m, path in lower.value(user).entries
            ]
        start = page.next
        if d.latest < epoch + 4:  # epochs close between the pages
            cut += 25
            d.close(cut)
    assert short > 0 and d.latest == epoch + 4
    assert isinstance(decode_reply(core.handle(encode(Prove(part_users[0], epoch)))), Refused)
    assert got == {
        u: [(a, s, m, [(p.hash, p.sum) for p in path]) for a, s, m, path in found.entries]
        for u, found in expected.items()
    }
    reply = decode_reply(core.handle(encode(ExportPage(epoch, 9, 9))))
    assert isinstance(reply, Refused) and reply.code == "not-retained", reply
    assert f"no export of epoch {epoch} under way" in reply.message
    reply = decode_reply(core.handle(encode(ExportPage(epoch, 0, 9))))
    assert isinstance(reply, Refused) and reply.code == "not-retained", reply
    assert f"closed epoch {epoch + 4} last, not {epoch}" in reply.message


def test_export_writes_the_single_process_files_while_epochs_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ShardedProofs.export`` in pages of 4 users, an epoch closing after
    each round (shards keeping no earlier epoch): the tree worker's files
    of the single ledger, byte for byte, and the daemon's answer (epoch,
    directory, files)."""
    monkeypatch.setattr(proofs_module, "PAGE_USERS", 4)
    rnd = random.Random(11)
    d = Deployment(tmp_path, rnd, bits=2, retain=0)
    for cut in (40, 80, 120):
        d.close(cut)
    d.reference_export(tmp_path / "single")
    epoch, rounds, cut, users = d.latest, [], 120, len(d.single.users)

    async def progress(done: int, users: int) -> None:
        nonlocal cut
        rounds.append((done, users))
        cut += 10
        d.close(cut)

    number, out, written = asyncio.run(d.proofs.export(progress))
    assert (number, out) == (epoch, d.config.export_path / f"epoch-{epoch}")
    assert files(out) == files(tmp_path / "single") and written == len(files(out)) > 20
    assert len(rounds) > 3 and rounds[-1] == (users, users)
    assert [done for done, _ in rounds] == sorted(done for done, _ in rounds)
    assert d.latest == epoch + len(rounds)


def test_an_export_fails_while_a_shard_is_ahead_or_another_begins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards that closed an epoch the log has not appended yet (the
    coordinator's append failing) refuse an export of the log's latest,
    as the daemon's export is refused while an epoch fails; a second
    export beginning in a shard takes its frozen trees from the first;
    pages of another ledger (``instance``) do not continue the pages
    before. Each fails the export with a ``ProverError`` that is no
    ``NotRetained`` (an export failure, not a 404)."""
    monkeypatch.setattr(proofs_module, "PAGE_USERS", 3)
    d = Deployment(tmp_path, random.Random(3))

    async def progress(done: int, users: int) -> None:
        pass

    with pytest.raises(ProverError, match="no epoch has been published yet"):
        asyncio.run(d.proofs.export(progress))
    d.close(40)
    d.close(80, append=False)
    with pytest.raises(ProverError, match="closed epoch 2 last, not 1") as caught:
        asyncio.run(d.proofs.export(progress))
    assert not isinstance(caught.value, NotRetained)
    assert not d.config.export_path.exists()  # refused before any directory is made
    d.append()

    async def another_export(done: int, users: int) -> None:
        if d.latest == 2:  # an epoch closes, and an export of it begins in shard 1
            d.close(120)
            await d.ask(1, ExportPage(d.latest, 0, 3))

    with pytest.raises(ProverError, match="shard 1 has no export of epoch 2 under way"):
        asyncio.run(d.proofs.export(another_export))

    ask = d.ask

    async def other_instance(part: int, request: Request) -> Reply:
        reply = await ask(part, request)
        if isinstance(request, ExportPage) and request.start and isinstance(reply, ExportedPage):
            return ExportedPage(reply.epoch, reply.instance ^ 1, reply.users, reply.next, ())
        return reply

    d.proofs._ask = other_instance
    with pytest.raises(ProverError, match="shard 0 restarted during the export of epoch 3"):
        asyncio.run(d.proofs.export(progress))


def test_a_restored_shard_keeps_no_earlier_epoch_and_breaks_an_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard restored from its saves answers the epoch it saved last as
    before while it is its last, refuses earlier ones (and that one, once
    it closed another) saying it was restored, keeps those it closes after;
    and orders its
    users anew, its frozen trees gone: an export under way when it restarts
    fails rather than skip or repeat users."""
    monkeypatch.setattr(proofs_module, "PAGE_USERS", 3)
    store = Store.open(f"sqlite:///{tmp_path / 'shards.db'}")
    try:
        d = Deployment(tmp_path, random.Random(5), store=store)
        for cut in (30, 60, 90):
            d.close(cut)
        latest = d.latest
        before = {(u, e): d.expected(u, e) for u in USERS for e in (latest - 1, latest)}
        old = d.cores[0]
        d.cores[0] = d.started(0)  # killed and started again
        assert d.cores[0].instance != old.instance and d.cores[0].epoch == latest
        mine = [u for u in USERS if d.router.shard(u) == 0 and before[(u, latest)] is not None]
        for user in mine:
            found = asyncio.run(d.proofs.proof(user, latest))
            assert found is not None and found.to_json().encode() == before[(user, latest)]
        with pytest.raises(NotRetained, match=f"restored as of epoch {latest}"):
            asyncio.run(d.proofs.proof(mine[0], latest - 1))
        d.close(120)  # the epoch restored is no longer the last: not kept either
        with pytest.raises(NotRetained, match=f"restored as of epoch {latest}"):
            asyncio.run(d.proofs.proof(mine[0], latest))
        d.close(150)  # epochs closed after the restore are kept
        found = asyncio.run(d.proofs.proof(mine[0], latest + 1))
        expected = d.expected(mine[0], latest + 1)
        assert found is not None and found.to_json().encode() == expected

        asked: list[int] = []

        def restart_after_two_pages(request: Request) -> None:
            if isinstance(request, ExportPage):
                asked.append(request.start)
                if len(asked) == 4:  # two rounds of both shards
                    d.cores[0] = d.started(0)

        d.before_ask = restart_after_two_pages

        async def progress(done: int, users: int) -> None:
            pass

        with pytest.raises(ProverError, match=r"shard 0 has no export of epoch \d+ under way"):
            asyncio.run(d.proofs.export(progress))
    finally:
        store.close()


def test_prove_names_an_epoch_the_shard_has_not_closed(tmp_path: Path) -> None:
    d = Deployment(tmp_path, random.Random(1))
    core = d.cores[0]
    user = next(u for u in USERS if d.router.shard(u) == 0)
    reply = decode_reply(core.handle(encode(Prove(user, 0))))
    assert isinstance(reply, Refused) and reply.code == "not-retained"
    assert "has not closed epoch 0 (last: none)" in reply.message
    d.close(40)
    assert isinstance(decode_reply(core.handle(encode(Prove(user, 1)))), PartProof | NoProof)
    reply = decode_reply(core.handle(encode(Prove(user, 2))))
    assert isinstance(reply, Refused) and "has not closed epoch 2 (last: 1)" in reply.message


# End to end, on NATS


def e2e_config(tmp_path: Path) -> Config:
    """Epochs close 0.2 s after a commit, and otherwise not for 20 s: none
    closes while the test compares."""
    return Config(
        data_dir=tmp_path,
        assets=tuple(AssetConfig(a, 8) for a in E2E_ASSETS),
        ingest_token=TOKEN,
        epoch_interval=0.2,
        max_interval=20.0,
        lease_ttl=60.0,
        proof_secret="ab" * 16,
        proof_epochs=RETAIN,
    )


@asynccontextmanager
async def deployed(
    tmp_path: Path,
    names: Names,  # noqa: F811
) -> AsyncIterator[tuple[ClientConnection, Coordinator, int]]:
    """A front-end, two shards (shard 0 keeping ``RETAIN`` epochs, shard 1
    one) and a coordinator keeping ``RETAIN`` on SQLite with its server;
    yields a producer's connection to the front-end, the coordinator and
    the server's port."""
    config = e2e_config(tmp_path)
    async with sharded(tmp_path, names, config, retains=(RETAIN, 1)) as (
        frontend,
        coordinator,
        port,
    ):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(
            f"ws://127.0.0.1:{frontend.port}/ingest", additional_headers=headers
        ) as ws:
            yield ws, coordinator, port


class Producer:
    """Sends balance batches to the front-end and waits for the epoch that covers them."""

    def __init__(self, ws: ClientConnection, coordinator: Coordinator, stream: str) -> None:
        self.ws, self.coordinator, self.stream = ws, coordinator, stream
        self.acks: list[tuple[int, Json]] = []

    async def send(self, messages: list[Json]) -> None:
        for message in messages:
            await self.ws.send(json.dumps(message))
            reply = json.loads(await self.ws.recv())
            assert reply["type"] == "ack", reply
            self.acks.append((reply["stream_seq"], message))
        last = max(seq for seq, _ in self.acks)
        store = self.coordinator.store
        for _ in range(200):
            number = self.coordinator.metrics.epoch
            if number >= 0 and store.epoch_marks(number).get(("stream", self.stream), 0) >= last:
                return
            await asyncio.sleep(0.05)
        pytest.fail("no epoch covered the batches")


class Changes:
    """Batches of producer ``p2`` that change what users hold, never adding
    a holder: after them no tree grows, so the single ledger keeps every
    epoch they close (a tree that grows forgets the epochs before)."""

    def __init__(self, sent: list[Json], seed: int = 0) -> None:
        self.held: dict[tuple[str, str], int] = {}
        for message in sent:  # acknowledged one at a time: commit order
            for u in message["updates"]:
                self.held[(u["user"], u["asset"])] = u["amount"]
        self.rnd, self.seq, self.id = random.Random(seed), 0, 10_000

    def batch(self, size: int = 20) -> Json:
        pairs = sorted(pair for pair, amount in self.held.items() if amount)
        updates = []
        for user, asset in self.rnd.sample(pairs, size):
            amount = self.rnd.choice([0, self.rnd.randint(1, 10**6)])
            self.held[(user, asset)] = amount
            updates.append({"seq": self.seq, "user": user, "asset": asset, "amount": amount})
            self.seq += 1
        self.id += 1
        return {"type": "balances", "id": self.id, "source": "p2", "updates": updates}


def replay(store: Store, stream: str, acks: list[tuple[int, Json]], upto: int) -> Ledger:
    """One ``Ledger`` of every part, keeping ``RETAIN`` epochs, fed the
    acknowledged batches in commit order and closed at each stored epoch's
    cut, up to epoch ``upto``: the single process's trees."""
    single = Ledger.build(E2E_PERIOD, E2E_ASSETS, [], router=E2E_ROUTER)
    single.retain = RETAIN
    for number, rows in rows_by_epoch(store, stream, acks):
        if number > upto:
            break
        single.stage_rows(rows)
        single.close_epoch()
    return single


def http_proof(port: int, coordinator: Coordinator, user: str, epoch: int) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}/proof?user={user}&epoch={epoch}"
    headers = {"Authorization": f"Bearer {coordinator.user_token(user)}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_sharded_proofs_and_export_equal_the_single_process(
    tmp_path: Path,
    names: Names,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Proofs of the last four epochs (shard 1's users: two) are the single
    process's files, byte for byte, and verify; older epochs are refused
    404 ``not-retained`` by ``/proof``, by the coordinator's history or by
    shard 1's. An export, epochs closing after its first two rounds of
    pages, writes the single process's export of its epoch, every file
    verifying."""
    monkeypatch.setattr(proofs_module, "PAGE_USERS", 40)
    key = verifier_key_for(e2e_config(tmp_path).origin, SIGNING_KEY.public_key())
    messages = e2e_batches(24, 30)

    async def scenario() -> None:
        async with deployed(tmp_path, names) as (ws, coordinator, port):
            producer = Producer(ws, coordinator, names.stream)
            now_ms = int(time.time() * 1000)
            reserves = [
                {"seq": i, "asset": a, "amount": 10**12, "as_of_ms": now_ms}
                for i, a in enumerate(E2E_ASSETS)
            ]
            await ws.send(json.dumps({"type": "reserves", "source": "cold", "updates": reserves}))
            assert json.loads(await ws.recv())["type"] == "ack"
            for start in range(0, 24, 6):  # users arrive, trees grow
                await producer.send(messages[start : start + 6])
            changes = Changes(messages)
            for _ in range(RETAIN + 2):  # then epochs with no growth
                await producer.send([changes.batch(), changes.batch()])
            store, latest = coordinator.store, coordinator.metrics.epoch
            assert latest >= 8
            single = replay(store, names.stream, producer.acks, latest)
            users = sorted(single.users)
            served = 0
            for epoch in range(latest - RETAIN - 1, latest + 1):
                message, record = stored_epoch(store, epoch)
                for user in users[::7]:
                    shard, age = E2E_ROUTER.shard(user), latest - epoch
                    if age > (RETAIN if shard == 0 else 1):
                        kept = "shard 1 keeps" if age <= RETAIN else "not retained"
                        with pytest.raises(NotRetained, match=kept):
                            await coordinator.proof(user, epoch)
                        status, body = await asyncio.to_thread(
                            http_proof, port, coordinator, user, epoch
                        )
                        assert (status, json.loads(body)["code"]) == (404, "not-retained")
                        continue
                    found = single.proof(user, age)
                    proof = await coordinator.proof(user, epoch)
                    if found is None:
                        assert proof is None
                        continue
                    assert proof is not None
                    assert proof.to_json() == record.basis(message).proof(found).to_json()
                    assert verify_proof(proof, key, user=user).epoch == epoch
                    served += 1
            assert served > 40
            earlier = latest - 1
            status, body = await asyncio.to_thread(http_proof, port, coordinator, users[0], earlier)
            expected = await coordinator.proof(users[0], earlier)
            assert status == 200 and expected is not None and body == expected.to_json().encode()

            rounds: list[tuple[int, int]] = []

            async def progress(done: int, total: int) -> None:
                if len(rounds) < 2:  # epochs close while the export goes on
                    await producer.send([changes.batch()])
                rounds.append((done, total))

            epoch, out, written = await coordinator.export_proofs(progress)
            assert epoch == latest and coordinator.metrics.epoch >= latest + 2 and len(rounds) > 3
            message, record = stored_epoch(store, epoch)
            reference = tmp_path / "single"
            reference.mkdir()
            single = replay(store, names.stream, producer.acks, epoch)
            export_proofs(single, reference, 0, len(single.users), record.basis(message))
            exported = files(out)
            assert exported == files(reference) and written == len(exported) > 100
            for name, data in exported.items():
                proof = ProofFile.parse(data)
                assert verify_proof(proof, key, user=proof.user).epoch == epoch, name
            first = next(iter(sorted(out.iterdir())))
            user = ProofFile.parse(first.read_bytes()).user
            assert verify_main(["proof", str(first), "--key", str(key), "--user", user]) == 0

    asyncio.run(scenario())
