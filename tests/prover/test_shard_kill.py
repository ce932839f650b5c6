"""Shards killed with SIGKILL while batches stream in (docs/SCALING.md,
"Recovery"), with real processes: two shards, each a process of its own
(tests/prover/shard_process.py) saving its closes to PostgreSQL
(SOLVENCY_TEST_POSTGRES_URL; skipped if unset), reading a stream of the
test's own on the NATS server at 127.0.0.1:4222 (skipped if absent). A
producer publishes batches (parts, then their commit) throughout; a
coordinator loop closes an epoch at the stream's end again and again,
retrying an epoch, the same cut, until every shard answers it. Shards are
killed mid-stream, and twice one dies between saving a close and
answering it; each is started again at once. Every epoch equals one
``Ledger`` of every part fed the acknowledged batches cut at the same
places, the last one holds every acknowledged update, and epochs resume
within ``RESUME_LIMIT`` seconds of each kill."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import nats
import nats.errors
import pytest

from prover.errors import ProverError
from prover.ledger import Ledger
from prover.shards import wire
from prover.shards.control import (
    Close,
    ClosedPart,
    Request,
    Stage,
    Staged,
    control_subject,
    decode_reply,
    encode,
    expect,
)
from prover.sizing import grown_height, height_for_parts
from prover.top import TopTree
from storage.store import Store
from tests.databases import POSTGRES_URL, SKIP_PG, postgres_schema_url
from tests.prover.shard_process import PERIOD, ROUTER
from tests.prover.test_shard_role import NATS, Names, names  # noqa: F401 (fixture)

ROOT = Path(__file__).parent.parent.parent
ASSETS = ("BTC", "ETH")
USERS = [f"k{i}" for i in range(400)]
PLAN = ["kill", "kill", "die-after-save", "kill", "kill", "die-after-save"]  # parts 0, 1, 0, ...
RESUME_LIMIT = 10.0  # seconds from a shard's death to the next epoch closed
Roots = dict[str, tuple[int, bytes, int]]


@dataclass
class Epoch:
    number: int
    cut: int
    roots: Roots
    asked: float  # when its Stage was first sent (monotonic)
    done: float
    retries: int


@dataclass
class Run:
    """What the scenario saw."""

    acks: list[tuple[int, str, list[tuple[int, str, str, int]]]] = field(default_factory=list)
    epochs: list[Epoch] = field(default_factory=list)
    deaths: list[tuple[int, str, float]] = field(default_factory=list)  # part, how, when
    ready: list[tuple[float, float, int]] = field(default_factory=list)  # when, restore s, epoch


class Shards:
    """The shard processes, started and killed by the test only."""

    def __init__(self, names: Names, url: str, logs: Path) -> None:  # noqa: F811
        self.names, self.url, self.logs = names, url, logs
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.errors: list[IO[str]] = []

    async def start(self, part: int, run: Run, die_after: int | None = None) -> None:
        """Start part ``part`` and wait until it serves."""
        args = [NATS, self.names.stream, self.names.prefix, str(part), self.url]
        errors = (self.logs / f"shard{part}.{len(self.errors)}.log").open("w")
        self.errors.append(errors)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.prover.shard_process", *args]
            + ([str(die_after)] if die_after is not None else []),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        self.procs[part] = proc
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.startswith("serving "), f"shard {part} did not start: {line!r}"
        _, seconds, epoch = line.split()
        run.ready.append((time.monotonic(), float(seconds), int(epoch)))

    def kill(self, part: int, run: Run) -> None:
        self.procs[part].send_signal(signal.SIGKILL)
        self.procs[part].wait(10)
        run.deaths.append((part, "kill", time.monotonic()))

    async def died(self, part: int, run: Run, within: float) -> None:
        """Wait for part ``part`` to die on its own."""
        await asyncio.wait_for(asyncio.to_thread(self.procs[part].wait), within)
        assert self.procs[part].returncode == -signal.SIGKILL
        run.deaths.append((part, "die-after-save", time.monotonic()))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for errors in self.errors:
            errors.close()


def test_shards_killed_mid_stream_give_the_single_process_records(
    names: Names,  # noqa: F811
    tmp_path: Path,
) -> None:
    if not POSTGRES_URL:
        pytest.skip(SKIP_PG)
    with postgres_schema_url() as url:
        Store.open(url).close()  # migrated once, before the shards start
        shards = Shards(names, url, tmp_path)
        try:
            run = asyncio.run(asyncio.wait_for(scenario(names, shards), 50))
        finally:
            shards.stop()
    compare(run)
    last = run.epochs[-1]
    assert last.cut >= max(seq for seq, _, _ in run.acks)
    balances: dict[tuple[str, str], int] = {}
    for _, _, updates in sorted(run.acks):
        balances.update({(u, a): m for _, u, a, m in updates})
    for asset in ASSETS:
        assert last.roots[asset][2] == sum(m for (_, a), m in balances.items() if a == asset)
    assert [how for _, how, _ in run.deaths] == [
        "kill",
        "kill",
        "kill",
        "die-after-save",
        "kill",
        "kill",
        "kill",
        "die-after-save",
    ]
    resumed = []
    for part, how, when in run.deaths:
        after = [e for e in run.epochs if e.asked > when]
        assert after, f"no epoch after shard {part} died ({how})"
        resumed.append(after[0].done - when)
    restarts = [ready for ready in run.ready[2:]]
    print(
        f"\n{len(run.acks)} batches, {sum(len(u) for _, _, u in run.acks)} updates,"
        f" {len(run.epochs)} epochs, {sum(e.retries for e in run.epochs)} retries;"
        f" restarted and serving after a death (s): "
        f"{[round(r[0] - d[2], 2) for r, d in zip(restarts, run.deaths, strict=False)]};"
        f" restores (s): {[round(r[1], 3) for r in restarts]} after epochs"
        f" {[r[2] for r in restarts]}; next epoch after a death (s):"
        f" {[round(r, 2) for r in resumed]}"
    )
    assert max(resumed) < RESUME_LIMIT
    assert all(epoch >= 0 for _, _, epoch in restarts[1:])  # restored, not started empty


async def scenario(names: Names, shards: Shards) -> Run:  # noqa: F811
    run = Run()
    for part in range(ROUTER.parts):
        await shards.start(part, run)
    nc = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=0)
    try:
        done = asyncio.Event()
        producing = asyncio.create_task(produce(nc, names, run, done))
        closing = asyncio.create_task(coordinate(nc, names, run, done))
        await kill_and_restart(shards, run)
        done.set()
        await producing
        await closing
    finally:
        await nc.close()
    return run


async def kill_and_restart(shards: Shards, run: Run) -> None:
    """``PLAN``, one step every second or so, alternating parts: a kill and
    a restart at once; or a kill, then a restart that dies right after
    saving the next epoch but one, and a restart after that."""
    rnd = random.Random(11)
    for step, how in enumerate(PLAN):
        part = step % ROUTER.parts
        await asyncio.sleep(rnd.uniform(0.6, 1.4))
        shards.kill(part, run)
        if how == "kill":
            await shards.start(part, run)
            continue
        closed = run.epochs[-1].number if run.epochs else -1
        await shards.start(part, run, die_after=closed + 2)
        await shards.died(part, run, within=15)
        await shards.start(part, run)
    while len(run.epochs) < 3 or run.epochs[-1].asked < run.deaths[-1][2]:
        await asyncio.sleep(0.05)


async def produce(nc: nats.NATS, names: Names, run: Run, done: asyncio.Event) -> None:  # noqa: F811
    """Batches of two sources until ``done``: users come, change and leave."""
    js = nc.jetstream()
    rnd = random.Random(5)
    seqs = {"p0": 0, "p1": 0}
    while not done.is_set():
        source = rnd.choice(sorted(seqs))
        first = seqs[source]
        updates = [
            (first + i, rnd.choice(USERS), rnd.choice(ASSETS), rnd.choice([0, *range(1, 8)]))
            for i in range(20)
        ]
        seqs[source] += len(updates)
        parts = []
        for shard in range(ROUTER.parts):
            mine = tuple(u for u in updates if ROUTER.shard(u[1]) == shard)
            if mine:
                data = wire.encode(wire.Part(source, mine))
                subject = wire.part_subject(names.prefix, shard)
                ack = await js.publish(
                    subject, data, headers={"Nats-Msg-Id": wire.message_id(data)}
                )
                parts.append((shard, ack.seq))
        data = wire.encode(wire.Commit(source, first, updates[-1][0], tuple(parts)))
        subject = wire.commit_subject(names.prefix)
        ack = await js.publish(subject, data, headers={"Nats-Msg-Id": wire.message_id(data)})
        run.acks.append((ack.seq, source, updates))
        await asyncio.sleep(0.02)


async def coordinate(nc: nats.NATS, names: Names, run: Run, done: asyncio.Event) -> None:  # noqa: F811
    """Epochs at the stream's end, each retried (the same cut, Stage then
    Close to every shard) until every shard answers; after ``done``, until
    one covers every acknowledged batch."""
    js = nc.jetstream()
    bits = ROUTER.bits
    assets = {a: height_for_parts(0, bits) for a in ASSETS}
    heights = dict(assets)

    async def ask(part: int, request: Request) -> object:
        subject = control_subject(names.prefix, part)
        return decode_reply((await nc.request(subject, encode(request), 3)).data)

    number = 0
    while True:
        cut = (await js.stream_info(names.stream)).state.last_seq
        stage, asked, retries = Stage(number, cut, assets), time.monotonic(), 0
        while True:
            try:
                staged = [expect(await ask(p, stage), Staged) for p in range(ROUTER.parts)]
                wanted: dict[str, int] = {}
                for s in staged:
                    for asset, n in s.growth.items():
                        wanted[asset] = max(wanted.get(asset, 0), n)
                close = Close(
                    number, {a: grown_height(heights[a], n, bits) for a, n in wanted.items()}
                )
                closed = [expect(await ask(p, close), ClosedPart) for p in range(ROUTER.parts)]
                break
            except (ProverError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                retries += 1
                await asyncio.sleep(0.05)
        roots: Roots = {}
        for asset in ASSETS:
            mine = [next(r for r in c.roots if r.asset == asset) for c in closed]
            top = TopTree.combine([r.record for r in mine])
            heights[asset] = mine[0].height
            roots[asset] = (mine[0].height, top.root, top.total)
        run.epochs.append(Epoch(number, cut, roots, asked, time.monotonic(), retries))
        number += 1
        if done.is_set() and run.acks and cut >= run.acks[-1][0]:
            return
        await asyncio.sleep(0.1)


def compare(run: Run) -> None:
    """Each epoch equals one ``Ledger`` of every part fed the acknowledged
    batches committed up to its cut, in commit order, cut at the same places."""
    single = Ledger.build(PERIOD, ASSETS, [], router=ROUTER)
    acks = sorted(run.acks)
    after = 0
    for epoch in run.epochs:
        single.stage_rows(
            [
                (u, a, m)
                for seq, _, updates in acks
                if after < seq <= epoch.cut
                for _, u, a, m in updates
            ]
        )
        single.close_epoch()
        assert epoch.roots == {r.asset: (r.height, r.root, r.total) for r in single.roots()}, (
            f"epoch {epoch.number}"
        )
        after = epoch.cut
