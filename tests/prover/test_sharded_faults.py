"""Faults of a sharded prover deployed over several "machines"
(tests/prover/sharded_deployment.py: the coordinator on the host, two shards
and two front-ends each in a network namespace, a three-node NATS cluster,
PostgreSQL): a front-end killed, a NATS node stopped, a shard's network
cut, the coordinator killed with a standby taking over.

Each runs producers throughout, each waiting for its acks and sending
again from its last ack on another front-end when one fails, and
``solvency-verify watch`` on the coordinator's /roots. Each checks that
the last record's liabilities are exactly those of the balances the
producers' acknowledged batches leave (after old batches are sent again:
applied twice, they would lower it), so nothing acknowledged was lost or
applied twice; that the auditor verified consecutive epochs and raised no
alarm. The pauses and resume times measured are printed at teardown
(``pytest -s``, or with a failure's report).

Below the deployment, a shard's consumers made while a NATS node is down
(prover/shards/pull.py ``open_puller``): NATS 2.9.10 places about one in
three on the stopped node, where nothing answers its creation.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from prover.shards import wire
from prover.shards.control import Stage
from prover.shards.pull import CREATE_WAITS, Puller, open_puller
from prover.shards.stream import ensure_stream
from tests.nats_cluster import NatsCluster, nats_cluster  # noqa: F401 (fixture)
from tests.prover.sharded_deployment import (
    Auditor,
    ControlTap,
    Deployment,
    Producer,
    Relay,
    deployment,
    producing,
    requires_deployment,
    send_reserves,
    wait_until,
)

PRODUCERS = 4
REPLAYED = 10  # batches each producer sends again at the end
COVER_DEADLINE = 15.0  # seconds for an epoch to cover the last ack
RESUME_DEADLINE = 20.0  # seconds for epochs to resume after a fault ends
# The ledger stream's replicas where the fault is not a NATS node's: 3, as in
# production. A consumer may answer "no messages" for a message its stream
# stored already (on a follower lagging the leader, and, more rarely, on one
# server); shards check such an answer on the stream leader
# (prover/shards/pull.py) instead of breaking on it.
REPLICAS = 3
# Seconds after freezing a coordinator for what it sent before to land (a
# request the tap has not seen yet, a commit PostgreSQL has not answered):
# nothing signals that nothing more is on its way.
QUIET = 0.3
pytestmark = requires_deployment


@pytest.fixture
def timings(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    """What a test measured, in seconds, printed at its end, failed or not."""
    found: dict[str, float] = {}
    yield found
    print(f"\n{request.node.name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in found.items()))


def producers_for(d: Deployment) -> list[Producer]:
    """``PRODUCERS`` producers, alternately starting on each front-end."""
    urls = d.front_end_urls()
    return [Producer(f"p{i}", urls, d.token, at=i % len(urls)) for i in range(PRODUCERS)]


def all_acked(producers: list[Producer], more: int) -> tuple[Callable[[], bool], str]:
    """For ``wait_until``: every producer has ``more`` acks past those it has now."""
    wanted = [p.acked + more for p in producers]

    def acked() -> bool:
        return all(p.acked >= w for p, w in zip(producers, wanted, strict=True))

    return acked, f"{more} more acks from every producer"


def epochs_after(d: Deployment, number: int, more: int = 1) -> tuple[Callable[[], bool], str]:
    """For ``wait_until``: ``more`` epochs stored after epoch ``number``."""
    return (lambda: d.latest_epoch() >= number + more), f"{more} epochs after epoch {number}"


def start_auditing(d: Deployment, url: str | None = None) -> Auditor:
    """Reserves sent, then an auditor on ``url`` (the first coordinator's /roots)."""
    asyncio.run(send_reserves(d.front_end_urls()[-1], d.token))
    return d.audit(url or d.coordinator_url(next(iter(d.coordinator_ports))))


def check_the_end(
    d: Deployment, producers: list[Producer], auditor: Auditor, timings: dict[str, float]
) -> None:
    """Old batches sent again; the epoch covering every ack holds exactly the
    acknowledged balances, as does every epoch after it; the auditor
    verified consecutive epochs up to it, without alarm."""
    began = time.monotonic()

    async def replay() -> None:
        await asyncio.gather(*(p.replay(REPLAYED) for p in producers))

    asyncio.run(replay())
    last = max(p.stream_seq for p in producers)
    covering = d.wait_covered(last, COVER_DEADLINE)
    timings["replayed and covered"] = time.monotonic() - began
    expected = sum(sum(p.expected().values()) for p in producers)
    later = [e for e in d.epochs(max(-1, covering.number - 10)) if e.cut >= last]
    assert [e.liabilities for e in later] == [expected] * len(later), (
        f"acknowledged balances sum to {expected}; epochs {later[0].number}.. say"
        f" {[e.liabilities for e in later]}"
    )
    wait_until(
        lambda: max(auditor.verified(), default=-1) >= covering.number,
        f"the auditor verifying epoch {covering.number}",
        COVER_DEADLINE,
    )
    auditor.stop()
    assert auditor.alarms() == []
    verified = auditor.verified()
    assert verified and verified == list(range(verified[0], verified[-1] + 1)), verified


def longest_pause(producers: list[Producer], start: float, end: float) -> float:
    return max(p.longest_pause(start, end) for p in producers)


def covering_acks(d: Deployment, producers: list[Producer], since: float) -> float:
    """Wait, until ``RESUME_DEADLINE`` after ``since`` (``time.monotonic()``),
    for an epoch cut at or past the producers' last acks: epochs that prove
    what was acknowledged, not only epochs (a coordinator that stopped reading
    the commits goes on closing epochs at its last cut). The seconds since
    ``since``."""
    last = max(p.stream_seq for p in producers)
    d.wait_covered(last, max(0.0, RESUME_DEADLINE - (time.monotonic() - since)))
    return time.monotonic() - since


# 1


def test_a_front_end_killed_mid_stream(tmp_path: Path, timings: dict[str, float]) -> None:
    began = time.monotonic()
    with deployment(tmp_path, replicas=REPLICAS) as d:
        timings["started"] = time.monotonic() - began
        auditor = start_auditing(d)
        producers = producers_for(d)
        with producing(producers) as finish:
            wait_until(*all_acked(producers, 50), timeout=15)
            moved = [p for p in producers if p.at == 0]
            killed = time.monotonic()
            d.processes["front-end0"].kill()
            timings["first ack of a moved producer"] = wait_until(*all_acked(moved, 1), timeout=15)
            wait_until(*all_acked(producers, 50), timeout=15)
            finish()
        timings["longest ack pause"] = longest_pause(producers, killed, time.monotonic())
        assert moved and all(p.at == 1 and len(p.failovers) == 1 for p in moved)
        assert all(not p.failovers for p in producers if p not in moved)
        check_the_end(d, producers, auditor, timings)


# 2


def test_a_nats_node_stopped_and_restarted(tmp_path: Path, timings: dict[str, float]) -> None:
    began = time.monotonic()
    with deployment(tmp_path, replicas=3) as d:
        timings["started"] = time.monotonic() - began
        auditor = start_auditing(d)
        producers = producers_for(d)
        with producing(producers) as finish:
            wait_until(*all_acked(producers, 50), timeout=15)
            node, last = d.stream_leader(), d.latest_epoch()
            stopped = time.monotonic()
            d.nats.stop(node)  # the stream's leader
            timings["every producer acked after the stop"] = wait_until(
                *all_acked(producers, 1), timeout=20
            )
            wait_until(*epochs_after(d, last, 2), timeout=RESUME_DEADLINE)
            timings["2 epochs after the stop"] = time.monotonic() - stopped
            timings["an epoch covering an ack after the stop"] = covering_acks(
                d, producers, stopped
            )
            wait_until(*all_acked(producers, 30), timeout=20)
            restarted = time.monotonic()
            timings["longest ack pause, 2 nodes"] = longest_pause(producers, stopped, restarted)
            d.nats.start(node)
            timings["node back in the cluster"] = time.monotonic() - restarted
            last = d.latest_epoch()
            wait_until(*all_acked(producers, 30), timeout=20)
            wait_until(*epochs_after(d, last, 2), timeout=20)
            timings["2 epochs after the restart"] = time.monotonic() - restarted
            timings["an epoch covering an ack after the restart"] = covering_acks(
                d, producers, restarted
            )
            finish()
        timings["longest ack pause, after the restart"] = longest_pause(
            producers, restarted, time.monotonic()
        )
        check_the_end(d, producers, auditor, timings)


# 3


def test_a_shard_cut_from_the_network(tmp_path: Path, timings: dict[str, float]) -> None:
    began = time.monotonic()
    with deployment(tmp_path, replicas=REPLICAS) as d:
        timings["started"] = time.monotonic() - began
        auditor = start_auditing(d)
        producers = producers_for(d)
        with producing(producers) as finish:
            wait_until(*all_acked(producers, 50), timeout=15)
            cut_at, cut_ms = time.monotonic(), int(time.time() * 1000)
            d.net.cut(1)  # shard 1's namespace
            answers: list[tuple[int, str]] = []

            def names_the_shard() -> bool:
                answers.append(d.coordinator_health("coordinator"))
                return answers[-1][0] == 503 and answers[-1][1].startswith("shard 1 down since")

            timings["503 naming shard 1"] = wait_until(names_the_shard, "/healthz 503", 20, 0.2)
            wait_until(*all_acked(producers, 30), timeout=15)  # ingest goes on
            paused = d.latest_epoch()
            wait_until(lambda: time.monotonic() > cut_at + 8, "8 s of cut", 10, 0.2)
            assert d.latest_epoch() == paused, "an epoch without shard 1"
            mended, mend_ms = time.monotonic(), int(time.time() * 1000)
            d.net.mend(1)
            timings["cut for"] = mended - cut_at
            wait_until(*epochs_after(d, paused), timeout=RESUME_DEADLINE)
            timings["first epoch after the mend"] = time.monotonic() - mended
            wait_until(lambda: d.coordinator_health("coordinator")[0] == 200, "healthy", 10)
            timings["healthy after the mend"] = time.monotonic() - mended
            wait_until(*epochs_after(d, paused, 3), timeout=15)
            wait_until(*all_acked(producers, 30), timeout=15)
            finish()
        during = [e for e in d.epochs() if cut_ms + 1000 < e.created_ms < mend_ms]
        assert during == [], f"epochs appended while shard 1 was cut: {during}"
        assert {status for status, _ in answers} <= {200, 503}
        timings["longest ack pause"] = longest_pause(producers, cut_at, time.monotonic())
        check_the_end(d, producers, auditor, timings)


# 4


def takeover(
    tmp_path: Path,
    timings: dict[str, float],
    moment: Callable[[Deployment, ControlTap], None],
    warm: bool,
) -> None:
    """Coordinator ``c1`` active and ``c2`` a standby (``warm``: from the
    start, else started once ``c1`` is frozen, knowing the log as it is
    then); ``moment`` freezes ``c1`` (SIGSTOP) at the moment to kill it;
    then SIGKILL, and ``c2`` must take the lease and go on with the log,
    which the auditor follows from one to the other."""
    began = time.monotonic()
    coordinators = ("c1", "c2") if warm else ("c1",)
    with (
        deployment(tmp_path, coordinators, replicas=REPLICAS, lease_ttl=3.0) as d,
        ControlTap(d.nats.urls) as tap,
        Relay(("127.0.0.1", d.coordinator_ports["c1"])) as relay,
    ):
        timings["started"] = time.monotonic() - began
        auditor = start_auditing(d, f"ws://127.0.0.1:{relay.port}")
        producers = producers_for(d)
        with producing(producers) as finish:
            wait_until(*all_acked(producers, 50), timeout=15)
            moment(d, tap)
            if not warm:
                d.start_coordinator("c2")
                d.wait_listening("c2")
            c2 = d.processes["c2"]
            last = d.latest_epoch()
            killed = time.monotonic()
            d.processes["c1"].kill()
            try:
                wait_until(lambda: bool(c2.lines("holds the log")), "c2 holding the log", 15)
                timings["c2 holds the log"] = time.monotonic() - killed
                wait_until(*epochs_after(d, last), timeout=15)
            finally:
                answered = [
                    f"{x.request!r} to shard {x.shard}: {brief(x.reply)}" for x in tap.seen()
                ]
                print(f"\nthe log at epoch {last}; the last requests to the shards, answered:")
                print(*answered[-4:], sep="\n  ")
                print("c2's failures:", *c2.lines("failed")[:2], sep="\n  ")
            timings["first epoch by c2"] = time.monotonic() - killed
            relay.switch(("127.0.0.1", d.coordinator_ports["c2"]))
            wait_until(*epochs_after(d, last, 5), timeout=15)
            wait_until(*all_acked(producers, 30), timeout=15)
            finish()
        timings["longest ack pause"] = longest_pause(producers, killed, time.monotonic())
        check_the_end(d, producers, auditor, timings)


def brief(reply: object) -> str:
    """A reply as the report shows it: whole, unless it carries hashes."""
    text = repr(reply)
    return text if len(text) < 200 else f"{type(reply).__name__}(...)"


def freeze_between_epochs(d: Deployment, tap: ControlTap) -> None:
    """Freeze c1 at a moment when every epoch it asked the shards to stage
    is stored: the shards are at the log's last epoch."""
    c1 = d.processes["c1"]
    for _ in range(50):
        c1.signal(signal.SIGSTOP)
        time.sleep(QUIET)
        staged = max(
            (x.request.epoch for x in tap.seen() if isinstance(x.request, Stage)), default=-1
        )
        if staged <= d.latest_epoch():
            return
        c1.signal(signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError("c1 never rested between epochs")


def freeze_after_staging(d: Deployment, tap: ControlTap) -> None:
    """Freeze c1 as it sends ``Stage`` for an epoch, before it stores it: the
    shards are one step ahead of the log."""
    c1 = d.processes["c1"]
    for _ in range(20):
        tap.freeze_on(lambda request: isinstance(request, Stage), c1)
        wait_until(lambda: tap.frozen is not None, "c1 staging an epoch", 10)
        frozen = tap.frozen
        assert frozen is not None and isinstance(frozen.request, Stage)
        time.sleep(QUIET)
        if d.latest_epoch() < frozen.request.epoch:
            return
        c1.signal(signal.SIGCONT)  # too late: the epoch was stored already
    raise AssertionError("c1 was never frozen before storing an epoch it staged")


def test_the_coordinator_killed_between_epochs_a_standby_takes_over(
    tmp_path: Path, timings: dict[str, float]
) -> None:
    takeover(tmp_path, timings, freeze_between_epochs, warm=True)


def test_the_coordinator_killed_after_staging_a_standby_takes_over(
    tmp_path: Path, timings: dict[str, float]
) -> None:
    takeover(tmp_path, timings, freeze_after_staging, warm=False)


# 5


LOST_CREATIONS = 2  # consumers placed on the stopped node that the test waits to see
MAX_CREATIONS = 40  # with one in three placed there, fewer than 2 in 40: 1 run in 500,000


def test_consumers_made_with_a_nats_node_down_land_on_live_nodes(
    nats_cluster: NatsCluster,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stream leader's node stopped, consumers are made (as a shard
    restarting its reading makes them) until ``LOST_CREATIONS`` of them were
    placed on it: each ``open_puller`` returns a consumer on a running node
    that reads, each consumer placed on the stopped node costing one short
    wait of ``CREATE_WAITS`` and its deletion (not a request's 5 s timeout);
    none is left on the stopped node."""
    cluster = nats_cluster
    caplog.set_level(logging.WARNING, logger="solvency.prover")
    lost = re.compile(r"consumer (\S+) of \S+: creation not answered")

    async def body() -> None:
        nc = await nats.connect(servers=cluster.urls, connect_timeout=2)
        try:
            js = nc.jetstream(timeout=5.0)
            prefix = wire.DEFAULT_PREFIX
            subject = wire.commit_subject(prefix)
            await ensure_stream(js, "ledger", prefix, 3, 60.0)
            for k in range(4):
                await js.publish(subject, f"c{k}".encode())
            info = await js.stream_info("ledger")
            assert info.cluster is not None and info.cluster.leader is not None
            stopped = info.cluster.leader
            await asyncio.to_thread(cluster.stop, cluster.index(stopped))
            made: list[tuple[Puller, int, float]] = []  # a puller, its losses, its time
            while len(made) < MAX_CREATIONS:
                before, began = len(lost.findall(caplog.text)), time.monotonic()
                puller = await open_puller(nc, js, "ledger", subject, 1, "test", 60.0)
                losses = len(lost.findall(caplog.text)) - before
                made.append((puller, losses, time.monotonic() - began))
                if before + losses >= LOST_CREATIONS:
                    break
            abandoned = lost.findall(caplog.text)
            assert len(abandoned) >= LOST_CREATIONS, f"{len(made)} made, {len(abandoned)} lost"
            for puller, losses, took in made:
                placed = await js.consumer_info("ledger", puller.name, timeout=2)
                assert placed.cluster is not None and placed.cluster.leader != stopped
                # each loss: a wait, and as long at most for its deletion
                assert took < 2 * sum(CREATE_WAITS[:losses]) + 0.5, (losses, took)
                await puller.pull(16, 1 << 20, info.state.last_seq, 5.0)
                assert [seq for seq, _, _ in puller.held] == [1, 2, 3, 4]
            for name in abandoned:  # deleted, or made late on a running node
                try:
                    late = await js.consumer_info("ledger", name, timeout=2)
                except NotFoundError:
                    continue
                assert late.cluster is not None and late.cluster.leader != stopped
        finally:
            await nc.close()

    asyncio.run(body())
