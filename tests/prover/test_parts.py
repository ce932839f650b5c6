"""Trees split into parts (docs/SCALING.md): shards that each hold one part of
every tree, combined by the top levels, give the roots, totals, heights and
proofs of the single process that holds every part, whatever the flushes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover.errors import ProverError
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.routing import SINGLE, Router
from prover.sizing import grown_height
from prover.top import TopTree
from tests.prover.test_ledger import check_all_proofs
from verifier.hashing import HASHER

PERIOD = SaltPeriod(1, 0, bytes(range(32)))
ASSETS = ["BTC", "ETH", "SOL"]
USERS = [f"u{i}" for i in range(40)]


class Sharded:
    """``2**bits`` shard ledgers and the coordinator's part of the work, in one
    process: each shard staged its users' rows in stream order, heights
    decided from every shard's ``growth``, roots combined by ``TopTree``."""

    def __init__(self, router: Router, balances: list[tuple[str, str, int]], heights: dict) -> None:
        self.router = router
        self.shards = [
            Ledger.build(
                PERIOD,
                ASSETS,
                [row for row in balances if router.shard(row[0]) == part],
                router=router,
                part=part,
                heights=heights,
            )
            for part in range(router.parts)
        ]

    def stage_rows(self, rows: list[tuple[str, str, int]]) -> None:
        for part, shard in enumerate(self.shards):
            shard.stage_rows([row for row in rows if self.router.shard(row[0]) == part])

    def close_epoch(self) -> dict[str, tuple[int, bytes, int]]:
        wanted: dict[str, int] = {}
        for shard in self.shards:
            for asset, largest in shard.growth().items():
                wanted[asset] = max(wanted.get(asset, 0), largest)
        first = self.shards[0]
        heights = {
            a: grown_height(first.full_height(a), n, self.router.bits) for a, n in wanted.items()
        }
        parts = [{r.asset: r for r in shard.close_epoch(heights)} for shard in self.shards]
        self.tops = {
            asset: TopTree.combine([(p[asset].root, p[asset].total) for p in parts])
            for asset in ASSETS
        }
        return {
            asset: (first.full_height(asset), top.root, top.total)
            for asset, top in self.tops.items()
        }

    def proof(self, user: str) -> list[tuple[str, int, int, list[tuple[bytes, int]]]] | None:
        """The user's shard's paths, each followed by the top path above its part,
        as of the last ``close_epoch``."""
        part = self.router.shard(user)
        found = self.shards[part].proof(user)
        if found is None:
            return None
        entries = []
        for asset, slot, amount, path in found.entries:
            top = self.tops[asset].path(part)
            entries.append((asset, slot, amount, [(p.hash, p.sum) for p in path] + top))
        return entries


def single_roots(ledger: Ledger) -> dict[str, tuple[int, bytes, int]]:
    return {r.asset: (r.height, r.root, r.total) for r in ledger.roots()}


def single_proof(ledger: Ledger, user: str) -> list | None:
    found = ledger.proof(user)
    if found is None:
        return None
    return [(a, s, m, [(p.hash, p.sum) for p in path]) for a, s, m, path in found.entries]


script = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.sampled_from(ASSETS),
        st.sampled_from([0, 0, 1, 2, 7]),
        st.sampled_from(["", "", "", "flush", "close"]),
    ),
    max_size=150,
)


def compare(bits: int, balances: list, rows: list, batch: int, rnd: random.Random) -> int:
    """Run both on the same balances and rows (staged ``batch`` at a time),
    flushed at random, independently; compare at every close. Returns how
    many trees grew."""
    router = Router(bytes(range(100, 132)), bits)
    balances = list({(u, a): (u, a, m) for u, a, m in balances}.values())
    single = Ledger.build(PERIOD, ASSETS, balances, router=router)
    heights = {r.asset: r.height for r in single.roots()}
    sharded = Sharded(router, balances, heights)
    assert sharded.close_epoch() == single_roots(single)
    queue: list[tuple[str, str, int]] = []
    grown, touched = 0, set()
    for user, asset, amount, then in [*rows, ("u0", "BTC", 1, "close")]:
        queue.append((user, asset, amount))
        touched.add(user)
        if len(queue) >= batch or then:
            single.stage_rows(queue)
            sharded.stage_rows(queue)
            queue.clear()
        if then == "flush" or rnd.random() < 0.1:
            single.flush()
        for shard in sharded.shards:
            if rnd.random() < 0.1:
                shard.flush()
        if then == "close":
            single.close_epoch()
            grown += len(single.grown)
            assert sharded.close_epoch() == single_roots(single)
            for user in touched:
                assert sharded.proof(user) == single_proof(single, user)
            touched.clear()
    for user in single.users:
        assert sharded.proof(user) == single_proof(single, user)
    check_all_proofs(single)
    return grown


@given(
    st.integers(1, 2),
    st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ASSETS), st.integers(0, 9))),
    script,
    st.integers(1, 20),
    st.randoms(use_true_random=False),
)
@settings(max_examples=100, deadline=None)
def test_shards_combined_equal_the_single_process(
    bits: int, balances: list, rows: list, batch: int, rnd: random.Random
) -> None:
    compare(bits, balances, rows, batch, rnd)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_trees_that_grow_grow_alike(bits: int) -> None:
    """Many new holders, leaving and coming back: trees grow several times,
    with holders waiting in several parts at once."""
    grown = 0
    for seed in range(4):
        rnd = random.Random(seed)
        users = [f"n{seed}.{i}" for i in range(150)]
        rows = [
            (
                rnd.choice(users),
                rnd.choice(ASSETS),
                rnd.choice([0, 1, 2, 3]),
                rnd.choice(["", "", "", "", "", "", "", "", "flush", "close"]),
            )
            for _ in range(600)
        ]
        grown += compare(bits, [], rows, rnd.randint(1, 40), rnd)
    assert grown >= 4


def test_one_part_is_the_single_process_rule() -> None:
    """With no bits, the parts rule is today's: same slots, same roots."""
    rows = [(f"u{i}", "BTC", i + 1) for i in range(50)]
    plain = Ledger.build(PERIOD, ["BTC"], rows)
    routed = Ledger.build(PERIOD, ["BTC"], rows, router=Router(bytes(range(32)), 0))
    assert plain.roots() == routed.roots()
    assert plain.router is SINGLE
    assert (PERIOD.slot_order("BTC", 6, 0, 0) == PERIOD.slot_order("BTC", 6)).all()


def test_each_part_has_its_own_slot_order() -> None:
    order = [PERIOD.slot_order("BTC", 6, 2, part) for part in range(4)]
    for part, slots in enumerate(order):
        assert sorted(slots.tolist()) == list(range(part * 16, part * 16 + 16))
    with pytest.raises(ValueError, match="no part 4"):
        PERIOD.slot_order("BTC", 6, 2, 4)


def test_a_shard_grows_only_at_the_height_it_is_given() -> None:
    router = Router(bytes(range(32)), 1)
    mine = [u for u in USERS if router.shard(u) == 0]
    shard = Ledger.build(PERIOD, ["BTC"], [], router=router, part=0, heights={"BTC": 5})
    shard.stage_rows([(u, "BTC", 1) for u in mine[:17]])  # a part of 16 slots
    assert shard.growth() == {"BTC": 17}
    with pytest.raises(ProverError, match="grows at a height it is given"):
        shard.close_epoch()


def test_the_top_levels_need_a_power_of_two_parts() -> None:
    with pytest.raises(ProverError, match="power of two"):
        TopTree.combine([(bytes(32), 1)] * 3)
    top = TopTree.combine([(bytes(32), 1), (bytes([1]) * 32, 2)])
    assert top.total == 3 and top.root == HASHER.node_hash(bytes(32), 1, bytes([1]) * 32, 2)
    assert top.path(0) == [(bytes([1]) * 32, 2)] and top.bits == 1


def test_the_router_is_the_hmac_of_its_rule() -> None:
    import hashlib
    import hmac

    key = bytes(range(7, 39))
    for bits in (1, 3, 8):
        router = Router(key, bits)
        for user in ("alice", "bob", "ü" * 40, "x" * 255):
            mac = hmac.new(key, b"shard" + user.encode(), hashlib.sha256).digest()
            assert router.shard(user) == mac[0] >> (8 - bits)
    assert Router(key, 0).shard("alice") == 0
    with pytest.raises(ValueError, match="shard bits"):
        Router(key, 9)
