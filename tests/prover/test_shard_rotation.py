"""Salt rotation across shards (docs/SCALING.md, "Salt rotation across
shards"; prover/shards/rotation.py, nextperiod.py).

Through the control messages, shard cores (prover/shards/core.py) and the
coordinator's ``Rotations`` rotate while updates flow: every epoch's roots
and users' proofs equal a single ``Ledger`` of every part, which a switch
replaces by one of the next period built from its holders (in slot order)
as of the epoch the shards' build began, fed every update since. A shard
restored from its store in the middle of a build makes every shard begin
again, one restored after the switch is on the new period, and a switch
that reached some shards only is sent again and completed by the others,
building in the close. A tree filling up makes the coordinator start a
period early, before any part runs out of slots, its trees with room for
the rate slots are taken; with no slots taken, no early rotation.

End to end on the real NATS server at 127.0.0.1:4222 and PostgreSQL
(SOLVENCY_TEST_POSTGRES_URL): a front-end, two shards saving to the store
and the coordinator with a salt period of 2 s rotate while batches flow,
one shard's core breaking in the middle of a build; every record equals
the single ledger's, an auditor verifies every epoch, proofs verify.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect

from prover.config import Config
from prover.errors import ProverError
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.rotation import ROOM_LEADS, TRIGGER
from prover.routing import Router
from prover.server import start_server
from prover.shards import control
from prover.shards.control import (
    Close,
    NoProof,
    PartProof,
    Prove,
    Request,
    ShardStatus,
    Stage,
    Staged,
    Status,
    decode_reply,
    encode,
    expect,
)
from prover.shards.coordinator import Coordinator
from prover.shards.core import ShardCore
from prover.shards.frontend import Frontend
from prover.shards.links import ShardLinks
from prover.shards.rotation import ROOM_SHARE, Rotations
from prover.shards.shard import Shard
from prover.sizing import height_for_parts
from prover.top import TopTree
from storage.rows import PeriodRow
from storage.store import Store
from tests.databases import POSTGRES_URL, SKIP_PG, postgres_schema_url
from tests.prover.epoch_rows import rows_by_epoch
from tests.prover.test_frontend import NATS, TOKEN, Names, names  # noqa: F401 (fixture)
from tests.prover.test_shard_role import (
    ASSETS,
    KEY,
    Batch,
    committed_rows,
    feed,
    numbered,
    publish,
    single_proof,
    single_roots,
)
from tests.prover.test_sharded import ASSETS as SHARDED_ASSETS
from tests.prover.test_sharded import KEY as KEY_E2E
from tests.prover.test_sharded import ROUTER as SHARDED
from tests.prover.test_sharded import batches as sharded_batches
from tests.prover.test_sharded import config as sharded_config
from verifier.checkpoint import verifier_key_for
from verifier.cli import main as verify_main
from verifier.hashing import HASHER
from verifier.proof import verify_proof
from verifier.record import EpochRecord
from verifier.sumtree import PathStep, root_from_path

ROUTER = Router(KEY, 2)  # 4 shards
USERS = [f"r{i}" for i in range(160)]
STREAM = "rotation-test"
Row = tuple[str, str, int]


def secret(number: int) -> bytes:
    return bytes((number * 7 + i) % 256 for i in range(32))


def batches(seed: int, count: int = 60) -> list[Batch]:
    rnd = random.Random(seed)
    raw = [
        [(rnd.choice(USERS), rnd.choice(ASSETS), rnd.choice([0, 1, 3, 9, 20])) for _ in range(10)]
        for _ in range(count)
    ]
    return numbered(raw, 2)


class Links(ShardLinks):
    """The coordinator's links, answered by cores in this process through
    the bytes; ``lose`` drops one request to a shard (it never arrives)."""

    def __init__(self, cores: list[ShardCore]) -> None:
        super().__init__(None, "test", len(cores), 1.0, time.time)  # type: ignore[arg-type]
        self.cores = cores
        self.lose: Callable[[int, Request], bool] = lambda part, request: False

    async def ask(self, part: int, request: Request) -> control.Reply:
        if self.lose(part, request):
            raise ProverError(f"shard {part} does not answer (lost)")
        return decode_reply(self.cores[part].handle(encode(request)))


@dataclass
class Deployment:
    """Shard cores saving into ``store``, the coordinator's ``Rotations``
    (a salt period of ``salt_period`` s, 1 by default, on a clock of
    ``seconds`` per epoch, 0.4), and a single ledger of every part fed the
    same batches, cut at the same places (``slices`` epochs to the end of
    the stream), each tree added at ``start_height``."""

    store: Store
    batches: list[Batch]
    stream: list[Any] = field(default_factory=list)
    commits: list[tuple[int, int]] = field(default_factory=list)
    periods: dict[int, SaltPeriod] = field(default_factory=dict)
    cores: list[ShardCore] = field(default_factory=list)
    number: int = -1
    after: int = 0
    marks: dict[str, int] = field(default_factory=dict)
    closes: list[Close] = field(default_factory=list)
    snapshots: dict[int, list[Row]] = field(default_factory=dict)  # single's holders, per epoch
    fed: dict[int, list[tuple[str, str, int]]] = field(default_factory=dict)  # rows, per epoch
    heights: dict[str, int] = field(default_factory=dict)
    tops: dict[str, TopTree] = field(default_factory=dict)
    hold: int = 2  # epochs a build waits for its salt period (updates flowing meanwhile)
    gate: threading.Event = field(default_factory=threading.Event)
    began: int = 1 << 30  # the epoch of the last begin
    room: dict[str, int] = field(default_factory=dict)  # the last begin's (``Rotations.rooms``)
    salt_period: float = 1.0
    seconds: float = 0.4
    slices: int = 12
    start_height: int = height_for_parts(0, ROUTER.bits)
    users: list[str] = field(default_factory=lambda: USERS)  # whose proofs are compared

    def __post_init__(self) -> None:
        self.stream, self.commits = publish(self.batches, ROUTER, random.Random(1), 0.1)
        self.periods[1] = SaltPeriod(1, 0, secret(1))
        self.cores = [self.started(part) for part in range(ROUTER.parts)]
        self.links = Links(self.cores)
        self.rotations = self.coordinator()
        self.single = Ledger(self.periods[1], router=ROUTER)
        for asset in ASSETS:
            self.single.add_asset(asset, self.start_height)
        self.heights = dict.fromkeys(ASSETS, self.start_height)

    def coordinator(self) -> Rotations:
        """A coordinator's ``Rotations`` as it starts: the store's latest
        period its target; each ``Close`` it decides kept in ``closes``."""
        rotations = Rotations(self.salt_period, ROUTER.bits, self.start_period, self.seconds)
        latest = max(self.periods)
        rotations.target = PeriodRow(latest, self.periods[latest].started_ms, secret(latest))
        decide = rotations.decide

        def recorded(*args: Any) -> Close:
            self.closes.append(decide(*args))
            return self.closes[-1]

        rotations.decide = recorded  # type: ignore[method-assign, assignment]
        return rotations

    async def start_period(self, now_ms: int) -> PeriodRow:
        number = max(self.periods) + 1
        self.periods[number] = SaltPeriod(number, now_ms, secret(number))
        return PeriodRow(number, now_ms, secret(number))

    def started(self, part: int) -> ShardCore:
        """Part ``part`` as a restarted shard process starts: from its save,
        under the salt period it saved."""
        save = functools.partial(self.store.save_shard, STREAM, part)
        state = self.store.shard_state(STREAM, part)
        if state is None:
            core = ShardCore.empty(self.periods[1], ROUTER, part, save=save)
        else:
            holdings = self.store.shard_holdings(STREAM, part, state.epoch)
            period = self.periods[state.period]
            core = ShardCore.restore(state, holdings, period, ROUTER, part, save=save)
        core.rotation.periods = self.period
        return core

    def period(self, number: int) -> SaltPeriod:
        """Salt period ``number``, read (by a build) once ``gate`` is open."""
        assert self.gate.wait(10), "the test never let the build go on"
        return self.periods[number]

    def restart(self, part: int) -> None:
        self.cores[part].rotation.stop()
        self.cores[part] = self.links.cores[part] = self.started(part)

    async def epoch(self, exact: bool = True) -> None:
        """Close the next epoch at the next twelfth of the stream, on the
        clock of 0.4 s an epoch; compare with the single ledger (not
        ``exact``: the totals, and every user's proof verifies to the roots
        with the single ledger's balance)."""
        self.number += 1
        cut = min(len(self.stream), (self.number + 1) * len(self.stream) // self.slices or 1)
        for core in self.cores:
            feed(core, self.stream, cut)
        now = self.number * self.seconds
        await self.rotations.start_if_due(now)
        assets = dict.fromkeys(ASSETS, self.start_height)
        try:
            roots, self.tops = await self.rotations.close(
                self.links, self.number, cut, assets, self.heights.__getitem__, now
            )
        except BaseException:
            self.number -= 1
            raise
        self.heights = {r.asset: r.height for r in roots}
        rows = committed_rows(self.batches, self.commits, self.after, cut, self.marks)
        self.after, self.fed[self.number] = cut, rows
        close = self.closes[-1]
        if close.begin is not None:
            self.began = self.number
            self.room = dict(self.rotations.rooms.get(close.begin.period, {}))
        if close.switch:
            self.gate.clear()
        if self.number >= self.began + self.hold:
            self.gate.set()
        if close.switch and exact:
            self.single = self.next_single(close.switch)
        else:
            self.single.stage_rows(rows)
        self.single.close_epoch()
        self.snapshots[self.number] = in_slot_order(self.single)
        if exact:
            got = {r.asset: (r.height, r.root, r.total) for r in roots}
            assert got == single_roots(self.single), f"epoch {self.number}"
            for user in self.users[::7]:
                assert self.proof(user) == single_proof(self.single, user), (self.number, user)
            return
        totals = {r.asset: r.total for r in roots}
        assert totals == {r.asset: r.total for r in self.single.roots()}, f"epoch {self.number}"
        for user in self.users:
            self.verify(user, {r.asset: (r.height, r.root, r.total) for r in roots})

    def verify(self, user: str, roots: dict[str, tuple[int, bytes, int]]) -> None:
        """``user``'s proof leads to ``roots`` with the single ledger's balances."""
        part = ROUTER.shard(user)
        reply = decode_reply(self.cores[part].handle(encode(Prove(user))))
        held = {a: self.single.balance(user, a) for a in ASSETS}
        if isinstance(reply, NoProof):
            assert not any(held.values()), user
            return
        found = control.expect(reply, PartProof).value(user)
        commitment = HASHER.commitment(user, found.salt)
        for asset, slot, amount, path in found.entries:
            height, root, total = roots[asset]
            whole = list(path) + [PathStep(h, s) for h, s in self.tops[asset].path(part)]
            leaf = HASHER.leaf_hash(asset, commitment, amount)
            assert root_from_path(height, slot, leaf, amount, whole) == (root, total), user
            assert held.pop(asset) == amount, (user, asset)
        assert not any(held.values()), user

    def next_single(self, number: int) -> Ledger:
        """The single ledger of period ``number`` at a switch: built from its
        holders as of the epoch every shard's build began, with the room the
        coordinator began it with, fed every epoch since."""
        began = {core.rotation.switches[-1] for core in self.cores}
        assert len(began) == 1, began
        period, since, at = began.pop()
        assert (period, at) == (number, self.number)
        ledger = Ledger.build(
            self.periods[number],
            ASSETS,
            self.snapshots[since],
            router=ROUTER,
            room=self.room,
            room_share=ROOM_SHARE,
        )
        for epoch in range(since + 1, self.number + 1):
            ledger.stage_rows(self.fed[epoch])
        return ledger

    def proof(self, user: str) -> list[Any] | None:
        part = ROUTER.shard(user)
        reply = decode_reply(self.cores[part].handle(encode(Prove(user))))
        if isinstance(reply, NoProof):
            return None
        return [
            (asset, slot, amount, [(p.hash, p.sum) for p in path] + self.tops[asset].path(part))
            for asset, slot, amount, path in control.expect(reply, PartProof).value(user).entries
        ]


def in_slot_order(ledger: Ledger) -> list[Row]:
    """Every holding of ``ledger``, each asset's in the order of its slots."""
    rows = []
    for asset in ASSETS:
        held = []
        for user in ledger.users:
            proof = ledger.proof(user)
            for held_asset, slot, amount, _ in proof.entries if proof else ():
                if held_asset == asset:
                    held.append((slot, user, amount))
        rows += [(user, asset, amount) for _, user, amount in sorted(held)]
    return rows


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'prover.db'}")
    yield store
    store.close()


def growing(seed: int, count: int, new: int) -> tuple[list[Batch], list[str]]:
    """``count`` batches, each holding ``new`` new holders of each asset and
    3 updates of earlier holders; and the users."""
    rnd = random.Random(seed)
    users: list[str] = []
    raw = []
    for _ in range(count):
        rows = []
        for asset in ASSETS:
            for _ in range(new):
                users.append(f"g{len(users)}")
                rows.append((users[-1], asset, rnd.randint(1, 50)))
        rows += [(rnd.choice(users), rnd.choice(ASSETS), rnd.randint(1, 50)) for _ in range(3)]
        raw.append(rows)
    return numbered(raw, 2), users


def least_room(run: Deployment) -> dict[str, int]:
    """Each tree's room as ``Ledger.room`` counts it: its least part's, times the parts."""
    rooms = [core.ledger.room() for core in run.cores]
    return {asset: min(r[asset] for r in rooms) * len(rooms) for asset in ASSETS}


async def steady_heights(run: Deployment, epochs: int) -> None:
    """Close ``epochs`` epochs; no close grows a tree: heights change at a switch only."""
    for _ in range(epochs):
        before = dict(run.heights)
        await run.epoch()
        close = run.closes[-1]
        assert close.switch or (close.heights == {} and run.heights == before), run.number


def test_a_tree_filling_up_rotates_early(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """About 18 new holders of each asset an epoch (of 1 s) into trees of
    64 slots a part, a salt period of an hour: the coordinator starts a
    period early while every part has room left, and the trees switched to
    leave room for ``ROOM_LEADS`` rotation times at that rate; no close
    grows a tree, and every epoch equals the single ledger's."""

    caplog.set_level(logging.INFO, logger="solvency.coordinator")

    async def scenario() -> None:
        found, users = growing(13, 72, 4)
        run = Deployment(
            store, found, hold=0, salt_period=3600.0, seconds=1.0, slices=18, start_height=8
        )
        run.users = users
        rotations = run.rotations
        while not any(c.begin for c in run.closes):
            assert run.number < 14, "no early rotation before the trees filled"
            await steady_heights(run, 1)
            assert min(least_room(run).values()) > 0
        assert rotations.early_rotations == 1 and run.rotations.target is not None
        assert run.closes[-1].begin is not None and run.closes[-1].begin.period == 2
        assert "early: " in caplog.text and "'s tree fills in ~" in caplog.text
        room, lead = rotations.rooms[2], rotations.lead
        growth = rotations._growth
        for asset in ASSETS:  # room for ROOM_LEADS rotation times of growth
            assert room[asset] >= min(growth[asset].rate * ROOM_LEADS * lead, 1 << 7) > 0
        before = dict(run.heights)
        while not run.closes[-1].switch:
            await steady_heights(run, 1)
            assert run.number < 16, "the early rotation never switched"
        assert all(run.heights[a] > before[a] for a in ASSETS)
        rates = {a: growth[a].rate for a in ASSETS}
        for asset, free in least_room(run).items():  # no early rotation soon again
            assert free >= rates[asset] * TRIGGER * rotations.lead, asset
        await steady_heights(run, 4)  # the room lasts: no early rotation meanwhile
        assert {core.ledger.period.number for core in run.cores} == {2}
        assert rotations.early_rotations == 1 and rotations.grown_in_close == 0

    asyncio.run(scenario())


def test_trees_nearly_full_but_not_filling_do_not_rotate_early(store: Store) -> None:
    """Every part of each tree a few slots short of full, no slot taken
    after the first epoch (updates of the same holders only): no early
    rotation, however little room is left."""

    async def scenario() -> None:
        rnd = random.Random(17)
        holders = [f"h{i}" for i in range(80)]
        first = [[(u, a, 5) for u in holders for a in ASSETS]]
        later = [[(rnd.choice(holders), rnd.choice(ASSETS), rnd.randint(1, 9))] for _ in range(40)]
        run = Deployment(
            store,
            numbered(first + later, 1),
            salt_period=3600.0,
            seconds=1.0,
            slices=10,
            start_height=7,
            users=holders,
        )
        await steady_heights(run, 1)
        assert 0 < min(least_room(run).values()) <= 4 * 10  # a few slots a part
        await steady_heights(run, 9)
        assert run.rotations.early_rotations == 0 and not any(c.begin for c in run.closes)
        assert run.rotations.lead > 0 and all(g.rate == 0 for g in run.rotations._growth.values())

    asyncio.run(scenario())


def test_a_staged_reply_saved_before_rooms_decodes_and_is_not_taken_in() -> None:
    """A ``Staged`` encoded without ``room`` (saved before it was reported)
    decodes with none; a close on such replies takes no room in."""
    old = msgspec.msgpack.encode([11, 4, 9, 2, {"BTC": 3}, None])
    staged = control.decode_reply(old)
    assert staged == control.Staged(4, 9, 2, {"BTC": 3}) and staged.room == {}
    rotations = Rotations(3600.0, 1, lambda now_ms: None)  # type: ignore[arg-type, return-value]
    close = Close(4, {})
    rotations._watch(
        4, [staged, control.Staged(4, 9, 2, {}, room={"BTC": 1})], close, lambda a: 6, 1.0
    )
    assert rotations._growth == {}
    fresh = [control.Staged(5, 9, 2, {}, room={"BTC": n}) for n in (7, 3)]
    rotations._watch(5, fresh, Close(5, {}), lambda a: 6, 2.0)
    assert rotations._growth["BTC"].room == 3 * 2


def test_shards_rotate_as_one_ledger_would(store: Store) -> None:
    """Two rotations and more while updates flow: every epoch equal."""

    async def scenario() -> None:
        run = Deployment(store, batches(3))
        while run.number < 13:
            await run.epoch()
        switched = [c.switch for c in run.closes if c.switch]
        begun = [c.begin.period for c in run.closes if c.begin is not None]
        assert len(switched) >= 2 and switched == sorted(set(begun))[: len(switched)]
        target = run.rotations.target
        assert target is not None and target.number == max(run.periods)
        assert {core.ledger.period.number for core in run.cores} == {switched[-1]}

    asyncio.run(scenario())


def test_a_shard_restored_mid_build_makes_every_shard_begin_again(store: Store) -> None:
    """Shard 1 restored from its store while the build waits: the next
    close begins the build again in every shard, and the switch equals a
    single ledger built as of that later epoch; shard 2 restored after the
    switch is on the new period."""

    async def scenario() -> None:
        run = Deployment(store, batches(5))
        while not any(c.begin for c in run.closes):
            await run.epoch()
        first = run.number
        assert run.cores[1].rotation.trees is not None
        run.restart(1)
        await run.epoch()
        again = run.closes[-1].begin
        assert again is not None and again.period == 2 and run.began == first + 1
        while not run.closes[-1].switch:
            await run.epoch()
        assert {c.rotation.switches[-1][1] for c in run.cores} == {first + 1}
        before = decode_reply(run.cores[2].handle(encode(Status())))
        run.restart(2)
        assert run.cores[2].ledger.period.number == 2
        status = decode_reply(run.cores[2].handle(encode(Status())))
        assert isinstance(status, ShardStatus) and status == before
        assert (status.closed, status.switched, status.heights) == (run.number, 2, run.heights)
        for _ in range(2):
            await run.epoch()

    asyncio.run(scenario())


def test_a_switch_that_reached_some_shards_is_sent_again(store: Store) -> None:
    """The switch's Close lost on its way to shard 1, which is then restored
    (its ready build gone): after a failed epoch the coordinator finds the
    others on the new period (Status), sends the switch again, and shard 1
    builds its trees inside the close. The records are then valid (every
    proof leads to the roots, the totals are the ledger's), not byte-equal."""

    async def scenario() -> None:
        run = Deployment(store, batches(7), hold=0)
        run.links.lose = lambda part, request: (
            part == 1 and isinstance(request, Close) and bool(request.switch)
        )
        while True:
            try:
                await run.epoch()
            except ProverError as exc:
                assert "lost" in str(exc)
                break
        number = run.number + 1
        assert {c.ledger.period.number for c in run.cores} == {1, 2}
        run.restart(1)
        run.links.lose = lambda part, request: False
        await run.rotations.pending_cut(run.links, number)
        await run.epoch(exact=False)
        close = run.closes[-1]
        assert close.switch == 2 and run.number == number
        assert run.cores[1].rotation.switches == [(2, -1, number)]
        assert {c.ledger.period.number for c in run.cores} == {2}
        for _ in range(2):
            await run.epoch(exact=False)

    asyncio.run(scenario())


def test_shards_staged_at_different_cuts_close_at_the_latest(store: Store) -> None:
    """A Stage one shard held while the coordinator gave the epoch up and
    chose a later cut: Status finds the shards staged at two cuts, the
    coordinator closes at the later, and the shard staged at the earlier
    stages on to it; the epoch equals the single ledger's."""

    async def scenario() -> None:
        run = Deployment(store, batches(5))
        for _ in range(2):
            await run.epoch()
        number = run.number + 1
        cut = min(len(run.stream), (number + 1) * len(run.stream) // run.slices)
        for core in run.cores:
            feed(core, run.stream, cut)
        target = 0 if run.rotations.target is None else run.rotations.target.number
        assets = dict.fromkeys(ASSETS, run.start_height)
        early = run.after  # the last epoch's cut: shard 1 stages nothing new yet
        late = expect(await run.links.ask(0, Stage(number, cut, assets, target)), Staged)
        held = expect(await run.links.ask(1, Stage(number, early, assets, target)), Staged)
        assert (held.cut, late.cut) == (early, cut) and early < cut
        assert await run.links.pending_cut(number) == cut
        await run.epoch()  # exact: equal to the single ledger cut once at ``cut``
        assert run.number == number

    asyncio.run(scenario())


def test_a_period_started_between_two_tries_of_an_epoch(store: Store) -> None:
    """An epoch whose Stage shard 1 never got is tried again after the
    period came due: the others answer the Stage they staged under the old
    target, shard 1 stages it under the new one; the epoch closes without
    a rotation step, and the next begins one, every epoch equal."""

    async def scenario() -> None:
        run = Deployment(store, batches(11))
        for _ in range(2):
            await run.epoch()
        run.links.lose = lambda part, request: part == 1 and isinstance(request, Stage)
        with pytest.raises(ProverError, match="lost"):
            await run.epoch()
        run.links.lose = lambda part, request: False
        target = run.rotations.target
        assert target is not None and not run.rotations.rotating
        run.rotations.target = PeriodRow(target.number, -10_000, target.secret)  # due now
        assert await run.rotations.pending_cut(run.links, run.number + 1) is not None
        await run.epoch()
        assert run.closes[-1] == Close(run.number, run.closes[-1].heights)
        assert run.rotations.target.number == 2 and run.rotations.rotating
        await run.epoch()
        assert run.closes[-1].begin is not None
        while not run.closes[-1].switch:
            await run.epoch()

    asyncio.run(scenario())


# End to end: NATS, PostgreSQL, the roles in this process


def e2e_config(tmp_path: Path) -> Config:
    return msgspec.structs.replace(sharded_config(tmp_path), salt_period=2.0)


@pytest.mark.skipif(not POSTGRES_URL, reason=SKIP_PG)
def test_sharded_prover_rotates_while_batches_flow(tmp_path: Path, names: Names) -> None:  # noqa: F811
    """Two rotations or more while batches flow, shard 1's core failing in
    the middle of the first build (restored from the store, it makes the
    build begin again); every record equals the single ledger's, an auditor
    verifies every epoch, and users' proofs verify."""
    results: dict[str, int] = {}

    def auditor(port: int) -> None:
        key = str(verifier_key_for(e2e_config(tmp_path).origin, KEY_E2E.public_key()))
        state = str(tmp_path / "auditor.json")
        argv = ["watch", f"ws://127.0.0.1:{port}", "--key", key, "--state", state]
        results["watch"] = verify_main([*argv, "--max-epochs", "20"])

    async def scenario(url: str) -> None:
        config = e2e_config(tmp_path)
        store = Store.open(url)
        first = store.start_salt_period(int(time.time() * 1000))
        period = SaltPeriod(first.number, first.started_ms, first.secret)
        frontend = Frontend(config, SHARDED, NATS, names.spec)
        await frontend.start("127.0.0.1", 0)
        stores = [Store.open(url) for _ in (0, 1)]
        shards = [
            Shard(NATS, names.stream, period, SHARDED, part, names.prefix, store=stores[part])
            for part in (0, 1)
        ]
        stop, quiet = asyncio.Event(), asyncio.Event()
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(s.run(stop)) for s in shards]
        coordinator = Coordinator(
            config, store, KEY_E2E, SHARDED, [NATS], names.stream, names.prefix
        )
        server = None
        try:
            for shard in shards:
                await asyncio.wait_for(shard.serving.wait(), 10)
            await coordinator.start()
            server = await start_server(coordinator, "127.0.0.1", 0)
            closing = asyncio.create_task(coordinator.run(quiet))  # epochs until ``quiet``
            tasks.append(closing)
            watcher = threading.Thread(target=auditor, args=(server.sockets[0].getsockname()[1],))
            watcher.start()
            broke = asyncio.create_task(break_mid_build(shards[1]))
            acks = await produce(frontend.port, sharded_batches(70, 30))
            began = await asyncio.wait_for(broke, 10)
            await wait_for(lambda: len(shards[0].core.rotation.switches) >= 2, "two switches", 20)
            last = max(seq for seq, _ in acks)
            await wait_for(
                lambda: covered(store, names.stream, coordinator.metrics.epoch) >= last,
                "an epoch covering every batch",
                10,
            )
            await asyncio.to_thread(watcher.join, 30)
            quiet.set()  # the log stands still: the shards closed its last epoch
            assert await closing
            switches = shards[0].core.rotation.switches
            assert (
                shards[1].core.rotation.switches
                == switches[-len(shards[1].core.rotation.switches) :]
            )
            assert switches[0][1] > began  # the build begun again after the restore
            rooms = coordinator._rotations.rooms  # the room each period's trees were begun with
            single = compare_rotated(
                store, names.stream, acks, {s[2]: s[:2] for s in switches}, rooms
            )
            for user in ("user0", "user11", "user123", "user250"):
                proof = await coordinator.proof(user)
                assert (proof is None) == (not any(single.balance(user, a) for a in SHARDED_ASSETS))
                if proof is not None:
                    verify_proof(proof, coordinator.verifier_key, user=user)
        finally:
            stop.set()
            quiet.set()
            if server is not None:
                server.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            await coordinator.close()
            await frontend.stop(grace=5)
            for opened in (store, *stores):
                opened.close()

    with postgres_schema_url() as url:
        asyncio.run(scenario(url))
    assert results["watch"] == 0


async def break_mid_build(shard: Shard) -> int:
    """Break ``shard``'s core (restored from the store after a backoff) once
    it builds the next period's trees, and again once it switched to them
    (restored, it is then on the new period); the epoch the first build
    began after."""
    while (trees := shard.core.rotation.trees) is None:
        await asyncio.sleep(0.005)
    shard.core.fail("the test restarts the core in the middle of a build")
    await wait_for(lambda: shard.stats.restores == 1, "the first restore", 10)
    await wait_for(lambda: shard.core.ledger.period.number == 2, "the switch", 10)
    shard.core.fail("the test restarts the core after the switch")
    await wait_for(lambda: shard.stats.restores == 2, "the second restore", 10)
    assert shard.core.ledger.period.number == 2
    return trees.since


async def produce(port: int, messages: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Reserves, then ``messages`` sent to the front-end 0.08 s apart; each
    acknowledged batch with its stream sequence."""
    acks = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with connect(f"ws://127.0.0.1:{port}/ingest", additional_headers=headers) as ws:
        now = int(time.time() * 1000)
        reserves = [
            {"seq": i, "asset": a, "amount": 10**12, "as_of_ms": now}
            for i, a in enumerate(SHARDED_ASSETS)
        ]
        await ws.send(json.dumps({"type": "reserves", "source": "cold", "updates": reserves}))
        assert json.loads(await ws.recv())["type"] == "ack"
        for message in messages:
            await ws.send(json.dumps(message))
            reply = json.loads(await ws.recv())
            assert reply["type"] == "ack", reply
            acks.append((reply["stream_seq"], message))
            await asyncio.sleep(0.08)
    return acks


async def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


def covered(store: Store, stream: str, epoch: int) -> int:
    return -1 if epoch < 0 else store.epoch_marks(epoch).get(("stream", stream), 0)


def compare_rotated(
    store: Store,
    stream: str,
    acks: list[tuple[int, dict[str, Any]]],
    switches: dict[int, tuple[int, int]],
    rooms: dict[int, dict[str, int]],
) -> Ledger:
    """Each epoch's record equals a single ``Ledger`` fed the same batches
    in commit order, cut at the same places, replaced at each switch (epoch:
    period, epoch built after) by one of that period built from its holders
    in slot order as of that epoch, with the period's ``rooms``, and fed
    every batch since. The last one."""
    first = store.salt_period(1)
    single = Ledger.build(
        SaltPeriod(1, first.started_ms, first.secret), SHARDED_ASSETS, [], router=SHARDED
    )
    snapshots: dict[int, list[Row]] = {}
    fed: dict[int, list[Row]] = {}
    for number, rows in rows_by_epoch(store, stream, acks):
        fed[number] = rows
        if number in switches:
            period, since = switches[number]
            row = store.salt_period(period)
            single = Ledger.build(
                SaltPeriod(period, row.started_ms, row.secret),
                SHARDED_ASSETS,
                snapshots[since],
                router=SHARDED,
                room=rooms.get(period, {}),
                room_share=ROOM_SHARE,
            )
            for epoch in range(since + 1, number + 1):
                single.stage_rows(fed[epoch])
        else:
            single.stage_rows(rows)
        single.close_epoch()
        snapshots[number] = in_slot_order(single)
        record = EpochRecord.decode(store.epoch(number).record)
        assert [(a.asset, a.height, a.root, a.liabilities) for a in record.assets] == [
            (r.asset, r.height, r.root, r.total) for r in single.roots()
        ], f"epoch {number}"
    return single


def test_a_coordinator_taking_over_mid_rotation_goes_on_with_it(store: Store) -> None:
    """A new coordinator (its target the store's latest period) in the
    middle of a build: after asking the shards where they stand, it lets
    the build go on and switches as the first would have."""

    async def scenario() -> None:
        run = Deployment(store, batches(9))
        while not any(c.begin for c in run.closes):
            await run.epoch()
        first = run.number
        run.rotations = run.coordinator()
        assert await run.rotations.pending_cut(run.links, run.number + 1) is None
        while not run.closes[-1].switch:
            await run.epoch()
            assert run.closes[-1].begin is None
        assert {c.rotation.switches[-1][1] for c in run.cores} == {first}
        await run.epoch()

    asyncio.run(scenario())
