"""A shard that saves its closes (prover/shards/core.py, saved.py) into a
store (storage/shards.py), on SQLite and PostgreSQL, and is restarted from
it at any point (before a stage, between stage and close, between saving a
close and answering it, after answering it) answers every request as a
shard that never stopped: the same Staged and ClosedPart, byte for byte,
and the same proofs; trees grow through it, and a close saved is never
saved again."""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover.errors import ProverError
from prover.routing import Router
from prover.shards.control import (
    Close,
    ClosedPart,
    Prove,
    Refused,
    Reply,
    ShardStatus,
    Stage,
    Staged,
    Status,
    encode,
    expect,
)
from prover.shards.core import Save, ShardCore
from prover.sizing import grown_height, height_for_parts
from storage.errors import EpochConflictError
from storage.shards import HoldingChanges, ShardState
from storage.store import Store
from tests.databases import BACKENDS, backend_url
from tests.prover.test_shard_role import (
    ASSETS,
    KEY,
    PERIOD,
    USERS,
    Batch,
    Message,
    ask,
    batches_strategy,
    feed,
    numbered,
    publish,
)

PHASES = ("before-stage", "after-stage", "after-save", "after-reply")
_streams = itertools.count()


class Killed(Exception):
    """The process died here."""


@pytest.fixture(scope="module", params=BACKENDS)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    with backend_url(request.param, tmp_path_factory.mktemp("shards")) as url:
        store = Store.open(url)
        yield store
        store.close()


def started(store: Store, name: str, router: Router, part: int, die: bool = False) -> ShardCore:
    """Part ``part`` started as a process would be: from what ``store``
    saved, or empty. ``die``: its next save is its last (``Killed`` after it)."""
    save: Save = functools.partial(store.save_shard, name, part)
    if die:

        def save(after: int | None, state: ShardState, changes: HoldingChanges) -> None:
            store.save_shard(name, part, after, state, changes)
            raise Killed

    state = store.shard_state(name, part)
    if state is None:
        return ShardCore.empty(PERIOD, router, part, save=save)
    holdings = store.shard_holdings(name, part, state.epoch, chunk_size=7)
    return ShardCore.restore(state, holdings, PERIOD, router, part, save=save)


def run(
    store: Store, bits: int, batches: list[Batch], rnd: random.Random, cuts: int
) -> tuple[int, int]:
    """Shards that never stop and shards saved and killed at random phases,
    fed the same stream and asked the same requests (asked again after a
    kill, as a coordinator retries); their replies compared at every step.
    Returns how many kills there were, and how many trees grew."""
    router = Router(KEY, bits)
    name = f"recovery{next(_streams)}"
    stream, _ = publish(batches, router, rnd)
    steady = [ShardCore.empty(PERIOD, router, i) for i in range(router.parts)]
    saving = [started(store, name, router, i) for i in range(router.parts)]
    assets = {a: height_for_parts(0, bits) for a in ASSETS}
    heights = dict(assets)
    ends = sorted(rnd.sample(range(1, len(stream) + 1), min(cuts, len(stream))))
    kills = grown = 0
    for epoch, cut in enumerate([*ends, len(stream)]):
        stage = Stage(epoch, cut, assets)
        for core in steady:
            feed(core, stream, cut)
        staged = [expect(ask(core, stage), Staged) for core in steady]
        wanted: dict[str, int] = {}
        for s in staged:
            for asset, n in s.growth.items():
                wanted[asset] = max(wanted.get(asset, 0), n)
        close = Close(epoch, {a: grown_height(heights[a], n, bits) for a, n in wanted.items()})
        closed = [expect(ask(core, close), ClosedPart) for core in steady]
        grown += len(close.heights)
        heights.update({r.asset: r.height for r in closed[0].roots})
        for part in range(router.parts):
            phase = rnd.choice(PHASES) if rnd.random() < 0.5 else None
            kills += phase is not None
            saving[part] = one_epoch(
                store, name, router, saving[part], stream, cut, phase, (stage, close)
            )
            same = [(stage, staged[part]), (close, closed[part])]
            for request, reply in same:  # asked again: the same answer, byte for byte
                assert encode(ask(saving[part], request)) == encode(reply), (phase, request)
            status = ask(saving[part], Status())
            assert status == ask(steady[part], Status()) == ShardStatus(epoch, cut, -1, 0)
        for user in rnd.sample(USERS, 5):
            part = router.shard(user)
            assert ask(saving[part], Prove(user)) == ask(steady[part], Prove(user))
    return kills, grown


def one_epoch(
    store: Store,
    name: str,
    router: Router,
    core: ShardCore,
    stream: list[Message],
    cut: int,
    phase: str | None,
    requests: tuple[Stage, Close],
) -> ShardCore:
    """``core``'s epoch, killed and started again at ``phase`` (if any);
    the core that ends it."""
    stage, close = requests

    def restart() -> ShardCore:
        again = started(store, name, router, core.part)
        feed(again, stream, cut)
        return again

    if phase == "before-stage":
        core = restart()
    feed(core, stream, cut)
    expect(ask(core, stage), Staged)
    if phase == "after-stage":  # the staging is lost: staged again, the same
        core = restart()
        expect(ask(core, stage), Staged)
    if phase == "after-save":
        dying = started(store, name, router, core.part, die=True)
        feed(dying, stream, cut)
        if dying.epoch == core.epoch:  # not closed yet: its close is saved, not answered
            expect(ask(dying, stage), Staged)
            reply: Reply = ask(dying, close)
            assert isinstance(reply, Refused) and reply.code == "internal"
            assert dying.broken is not None
            core = restart()  # asked Close again: answered from what was saved
    expect(ask(core, close), ClosedPart)
    if phase == "after-reply":
        core = restart()
    return core


@given(
    st.integers(1, 2),
    batches_strategy(USERS),
    st.integers(1, 2),
    st.integers(1, 4),
    st.randoms(use_true_random=False),
)
@settings(max_examples=25, deadline=None)
def test_a_restarted_shard_answers_as_one_that_never_stopped(
    store: Store, bits: int, raw: list, sources: int, cuts: int, rnd: random.Random
) -> None:
    run(store, bits, numbered(raw, sources), rnd, cuts)


def test_trees_grow_across_restarts(store: Store) -> None:
    kills = grown = 0
    for seed in range(2):
        rnd = random.Random(seed)
        users = [f"g{seed}.{i}" for i in range(120)]
        raw = [
            [(rnd.choice(users), rnd.choice(ASSETS), rnd.choice([0, 1, 5])) for _ in range(12)]
            for _ in range(30)
        ]
        more = run(store, 2, numbered(raw, 2), rnd, cuts=5)
        kills, grown = kills + more[0], grown + more[1]
    assert kills >= 5 and grown >= 2


def test_a_close_is_saved_once(store: Store) -> None:
    """Two processes of one part (one started before the other's close was
    saved): the second's close of the same epoch is refused, and it breaks."""
    router = Router(KEY, 1)
    name = f"recovery{next(_streams)}"
    rows = [(i, u, "BTC", 1) for i, u in enumerate(USERS[:10])]
    stream, _ = publish([("p0", rows)], router, random.Random(1), orphan=0)
    first, second = (started(store, name, router, 0) for _ in "12")
    stage, close = Stage(0, len(stream), {"BTC": 5, "ETH": 5}), Close(0, {})
    for core in (first, second):
        feed(core, stream, len(stream))
        expect(ask(core, stage), Staged)
    expect(ask(first, close), ClosedPart)
    reply = ask(second, close)
    assert isinstance(reply, Refused) and reply.code == "internal"
    assert "holds epoch 0 already" in reply.message
    state = store.shard_state(name, 0)
    assert state is not None and state.epoch == 0
    with pytest.raises(EpochConflictError):
        store.save_shard(name, 0, None, state, HoldingChanges())


def test_a_state_of_another_period_or_roots_is_refused(store: Store) -> None:
    router = Router(KEY, 1)
    name = f"recovery{next(_streams)}"
    rows = [(i, u, "BTC", 1 + i) for i, u in enumerate(USERS[:10])]
    stream, _ = publish([("p0", rows)], router, random.Random(1), orphan=0)
    core = started(store, name, router, 0)
    feed(core, stream, len(stream))
    expect(ask(core, Stage(0, len(stream), {"BTC": 5})), Staged)
    expect(ask(core, Close(0, {})), ClosedPart)
    state = store.shard_state(name, 0)
    assert state is not None
    holdings = list(store.shard_holdings(name, 0, 0))
    other = PERIOD.__class__(PERIOD.number + 1, 0, bytes(32))
    with pytest.raises(ProverError, match="salt period"):
        ShardCore.restore(state, holdings, other, router, 0)
    user, asset, amount, slot = holdings[0][0]
    wrong = [[(user, asset, amount + 1, slot), *holdings[0][1:]]]
    with pytest.raises(ProverError, match="do not give the roots of epoch 0"):
        ShardCore.restore(state, wrong, PERIOD, router, 0)
    assert ShardCore.restore(state, holdings, PERIOD, router, 0).epoch == 0
