"""The numpy sum tree (prover/tree.py) against a naive tree written here."""

from __future__ import annotations

import copy
import hashlib
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prover.tree
from prover.tree import SumTree, TreeError, Undo
from verifier.hashing import (
    HASHER,
    MAX_BALANCE,
    SumTreeHasher,
    leaf_hash,
    node_hash,
    padding_hash,
)

ASSET = "BTC"
KEY = bytes(range(32))

Node = tuple[bytes, int]
Leaves = dict[int, tuple[bytes, int]]  # slot -> (commitment, amount)


# The reference: a dict of nodes per level, straight from docs/PROTOCOL.md §2.


def reference(height: int, leaves: Leaves, hasher: SumTreeHasher = HASHER) -> list[dict[int, Node]]:
    level: dict[int, Node] = {}
    for slot in range(1 << height):
        if slot in leaves:
            c, amount = leaves[slot]
            level[slot] = (hasher.leaf_hash(ASSET, c, amount), amount)
        else:
            level[slot] = (hasher.padding_hash(ASSET, KEY, slot), 0)
    levels = [level]
    for lvl in range(height):
        below = levels[lvl]
        levels.append(
            {
                i: (
                    hasher.node_hash(*below[2 * i], *below[2 * i + 1]),
                    below[2 * i][1] + below[2 * i + 1][1],
                )
                for i in range(1 << (height - lvl - 1))
            }
        )
    return levels


def reference_path(levels: list[dict[int, Node]], slot: int) -> list[Node]:
    return [levels[lvl][(slot >> lvl) ^ 1] for lvl in range(len(levels) - 1)]


def dirty_nodes(height: int, slots: set[int]) -> int:
    """How many distinct nodes (leaves included) lie on the paths of ``slots``."""
    return sum(len({s >> lvl for s in slots}) for lvl in range(height + 1)) if slots else 0


@pytest.fixture(autouse=True, scope="module", params=["c", "python"])
def hashing(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test twice: hashed by the C extension, and by hashlib alone."""
    saved = prover.tree._C_HASHING
    if request.param == "c" and saved is None:
        pytest.skip("prover._sumhash is not built: tests/prover/test_sumhash.py says why")
    if request.param == "python":
        prover.tree._C_HASHING = None
    yield
    prover.tree._C_HASHING = saved


# Helpers


def arrays(leaves: Leaves) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    slots = sorted(leaves)
    commitments = np.frombuffer(b"".join(leaves[s][0] for s in slots), np.uint8)
    return (
        np.array(slots, np.int64),
        commitments.reshape(len(slots), 32),
        np.array([leaves[s][1] for s in slots], np.uint64),
    )


def build(height: int, leaves: Leaves) -> SumTree:
    return SumTree.build(ASSET, height, KEY, *arrays(leaves))


@contextmanager
def chunk(size: int) -> Iterator[None]:
    """Hash in chunks of ``size`` rows, so that small trees cross chunk boundaries."""
    saved = prover.tree.HASH_CHUNK
    prover.tree.HASH_CHUNK = size
    try:
        yield
    finally:
        prover.tree.HASH_CHUNK = saved


def climb(height: int, slot: int, leaf: Node, path: list[Node]) -> Node:
    """Recompute (root, total) from a leaf and its path with verifier.hashing."""
    node, total = leaf
    assert len(path) == height
    for lvl, (h, s) in enumerate(path):
        node = node_hash(h, s, node, total) if (slot >> lvl) & 1 else node_hash(node, total, h, s)
        total += s
    return node, total


# Strategies

commitments = st.binary(min_size=32, max_size=32)
amounts = st.one_of(st.integers(0, MAX_BALANCE), st.sampled_from([0, 1, MAX_BALANCE]))
chunks = st.sampled_from([2, 4, 6, 2048])


@st.composite
def trees(draw: st.DrawFn, min_height: int = 0) -> tuple[int, Leaves]:
    height = draw(st.integers(min_height, 6))
    slots = draw(st.sets(st.integers(0, (1 << height) - 1)))
    return height, {s: (draw(commitments), draw(amounts)) for s in slots}


Batch = tuple[Leaves, list[int]]  # (sets, clears)


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, Leaves, list[Batch]]:
    height, leaves = draw(trees(min_height=1))
    state = dict(leaves)
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        touched = draw(st.lists(st.integers(0, (1 << height) - 1), unique=True, max_size=20))
        sets: Leaves = {}
        clears = []
        for slot in touched:
            action = draw(st.sampled_from(["clear", "amount", "replace"]))
            if slot in state and action == "clear":
                clears.append(slot)
                del state[slot]
            elif slot in state and action == "amount":  # same holder, new balance
                sets[slot] = state[slot] = (state[slot][0], draw(amounts))
            else:  # insert into padding, or a new holder in the slot
                sets[slot] = state[slot] = (draw(commitments), draw(amounts))
        batches.append((sets, clears))
    return height, leaves, batches


# Properties


@given(trees(), chunks)
@settings(max_examples=120, deadline=None)
def test_build_matches_the_reference(case: tuple[int, Leaves], size: int) -> None:
    height, leaves = case
    with chunk(size):
        tree = build(height, leaves)
    levels = reference(height, leaves)
    assert (tree.root, tree.total) == levels[height][0]
    assert tree.total == sum(a for _, a in leaves.values())
    assert (tree.asset, tree.height, tree.capacity) == (ASSET, height, 1 << height)
    assert tree.amounts().tolist() == [levels[0][s][1] for s in range(1 << height)]
    for slot in range(1 << height):
        assert tree.leaf(slot) == levels[0][slot]
        assert tree.path(slot) == reference_path(levels, slot)


@given(trees())
@settings(max_examples=60, deadline=None)
def test_every_path_leads_to_the_root(case: tuple[int, Leaves]) -> None:
    height, leaves = case
    tree = build(height, leaves)
    for slot in range(tree.capacity):
        if slot in leaves:
            c, amount = leaves[slot]
            leaf = (leaf_hash(ASSET, c, amount), amount)
        else:
            leaf = (padding_hash(ASSET, KEY, slot), 0)
        assert climb(height, slot, leaf, tree.path(slot)) == (tree.root, tree.total)


@given(histories(), chunks)
@settings(max_examples=120, deadline=None)
def test_batches_equal_a_fresh_build(case: tuple[int, Leaves, list[Batch]], size: int) -> None:
    height, leaves, batches = case
    state = dict(leaves)
    with chunk(size):
        tree = build(height, leaves)
        for sets, clears in batches:
            hashed = tree.apply(*arrays(sets), np.array(clears, np.int64))
            assert hashed == dirty_nodes(height, set(sets) | set(clears))
            state.update(sets)
            for slot in clears:
                del state[slot]
    fresh = build(height, state)
    assert (tree.root, tree.total) == (fresh.root, fresh.total)
    assert tree.total == sum(a for _, a in state.values())
    assert tree.amounts().tolist() == fresh.amounts().tolist()
    for slot in range(tree.capacity):
        assert tree.leaf(slot) == fresh.leaf(slot)


@given(histories(), chunks, st.data())
@settings(max_examples=120, deadline=None)
def test_partial_batches_then_a_full_one_equal_a_fresh_build(
    case: tuple[int, Leaves, list[Batch]], size: int, data: st.DataObject
) -> None:
    """Batches applied ``upto`` some level keep the root, and the paths read
    through their undo records, as before them; the full batch that follows
    makes the tree what a fresh build of the end state is."""
    height, leaves, batches = case
    state = dict(leaves)
    with chunk(size):
        tree = build(height, leaves)
        before = build(height, leaves)
        undo: list[Undo] = []
        for i, (sets, clears) in enumerate(batches):
            upto = None if i == len(batches) - 1 else data.draw(st.integers(0, height - 1))
            tree.apply(*arrays(sets), np.array(clears, np.int64), undo, upto)
            state.update(sets)
            for slot in clears:
                del state[slot]
            if upto is not None:
                assert (tree.root, tree.total) == (before.root, before.total)
            for slot in range(tree.capacity):
                assert tree.path(slot, undo) == before.path(slot)
                assert tree.leaf(slot, undo) == before.leaf(slot)
    assert not tree.stale
    fresh = build(height, state)
    assert (tree.root, tree.total) == (fresh.root, fresh.total)
    for slot in range(tree.capacity):
        assert (tree.leaf(slot), tree.path(slot)) == (fresh.leaf(slot), fresh.path(slot))


# Examples


def test_height_zero_is_a_single_leaf() -> None:
    c = bytes(32)
    tree = build(0, {0: (c, 7)})
    assert (tree.root, tree.total, tree.path(0)) == (leaf_hash(ASSET, c, 7), 7, [])
    assert tree.apply([], np.zeros((0, 32), np.uint8), [], [0]) == 1
    assert (tree.root, tree.total) == (padding_hash(ASSET, KEY, 0), 0)


def test_sums_carry_past_64_bits() -> None:
    full = {s: (bytes([s]) * 32, MAX_BALANCE) for s in range(8)}
    tree = build(3, full)
    assert tree.total == 8 * MAX_BALANCE
    assert [s for _, s in tree.path(0)] == [MAX_BALANCE, 2 * MAX_BALANCE, 4 * MAX_BALANCE]
    assert (tree.root, tree.total) == reference(3, full)[3][0]


@pytest.mark.parametrize("scalar_nodes", [0, 8, 1 << 20])
def test_one_by_one_and_vector_rehashing_agree(
    scalar_nodes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Levels of few dirty nodes are rehashed one by one (``SCALAR_NODES``),
    wider ones by numpy: both give the tree a fresh build gives, sums past 64
    bits included."""
    monkeypatch.setattr(prover.tree, "SCALAR_NODES", scalar_nodes)
    full = {s: (bytes([s]) * 32, MAX_BALANCE) for s in range(16)}
    tree = build(4, full)
    for slots in ([3], [0, 9], list(range(1, 16, 2))):
        sets = {s: (bytes([s + 100]) * 32, MAX_BALANCE - s) for s in slots}
        tree.apply(*arrays(sets), np.zeros(0, np.int64))
        full.update(sets)
        assert (tree.root, tree.total) == reference(4, full)[4][0]
        for slot in range(16):
            assert tree.path(slot) == build(4, full).path(slot)


def test_an_empty_batch_changes_nothing() -> None:
    tree = build(4, {3: (bytes(32), 5)})
    before = (tree.root, tree.total)
    assert tree.apply([], np.zeros((0, 32), np.uint8), []) == 0
    assert tree.apply(np.zeros(0, np.int64), [], [], []) == 0
    assert (tree.root, tree.total) == before


def test_a_larger_tree_crosses_many_chunks() -> None:
    rng = np.random.default_rng(7)
    height = 9
    slots = rng.permutation(1 << height)[:300]
    leaves = {int(s): (rng.bytes(32), int(rng.integers(0, 2**63))) for s in slots}
    with chunk(16):
        tree = build(height, leaves)
        tree.apply(*arrays({int(s): (bytes(32), 5) for s in slots[:40]}), slots[40:90])
    for s in slots[:40]:
        leaves[int(s)] = (bytes(32), 5)
    for s in slots[40:90]:
        del leaves[int(s)]
    assert (tree.root, tree.total) == reference(height, leaves)[height][0]


def test_copies_and_pickles_are_independent_and_consistent() -> None:
    tree = build(3, {1: (bytes(32), 5)})
    twins = [copy.deepcopy(tree), pickle.loads(pickle.dumps(tree))]
    change = ([2], np.ones((1, 32), np.uint8), [9])
    tree.apply(*change)
    for twin in twins:
        assert twin.total == 5
        twin.apply(*change)
        assert (twin.root, twin.total) == (tree.root, tree.total)


def test_a_tree_hashes_with_its_hasher() -> None:
    """Every node, through builds, batches and copies, by the hasher given to build."""
    other = SumTreeHasher(hashlib.sha3_256, 0x63, 0x6C, 0x70, 0x6E)
    leaves: Leaves = {1: (bytes(32), 5), 6: (bytes([7]) * 32, MAX_BALANCE)}
    with chunk(2):
        tree = SumTree.build(ASSET, 3, KEY, *arrays(leaves), hasher=other)
        assert tree.hasher is other and build(3, leaves).hasher is HASHER
        twins = [copy.deepcopy(tree), pickle.loads(pickle.dumps(tree))]
        leaves[3] = (bytes([9]) * 32, 2)
        del leaves[1]
        for t in [tree, *twins]:
            t.apply([3], np.full((1, 32), 9, np.uint8), [2], [1])
            expected = reference(3, leaves, other)
            assert (t.root, t.total) == expected[3][0] != reference(3, leaves)[3][0]
            for slot in range(8):
                assert t.leaf(slot) == expected[0][slot]
                assert t.path(slot) == reference_path(expected, slot)


def test_inputs_in_other_integer_dtypes() -> None:
    leaves = {3: (bytes(32), 4), 1: (bytes([1]) * 32, 2**64 - 1)}
    slots, cs, amounts_ = arrays(leaves)
    expected = build(2, leaves)
    for s, a in [
        (slots.astype(np.uint8), amounts_),
        (slots.astype(">i4"), amounts_.astype(">u8")),
        (slots.tolist(), amounts_.tolist()),
    ]:
        assert SumTree.build(ASSET, 2, KEY, s, cs, a).root == expected.root


# Errors

ONE = np.zeros((1, 32), np.uint8)
TWO = np.zeros((2, 32), np.uint8)
EMPTY = np.zeros((0, 32), np.uint8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.apply([16], ONE, [1]), r"leaf slot 16 is outside 0\.\.15"),
        (lambda t: t.apply([-1], ONE, [1]), r"leaf slot -1 is outside"),
        (lambda t: t.apply([], EMPTY, [], [16]), r"clear slot 16 is outside"),
        (lambda t: t.apply([1, 1], TWO, [1, 2]), r"slot 1 is set twice in one batch"),
        (lambda t: t.apply([], EMPTY, [], [3, 3]), r"slot 3 is cleared twice"),
        (lambda t: t.apply([3], ONE, [1], [3]), r"slot 3 is both set and cleared"),
        (lambda t: t.apply([1], np.zeros((1, 31), np.uint8), [1]), r"shape \(1, 32\)"),
        (lambda t: t.apply([1, 2], ONE, [1, 2]), r"shape \(2, 32\)"),
        (lambda t: t.apply([1], np.zeros((1, 32), np.int64), [1]), "uint8"),
        (lambda t: t.apply([1], ONE, [2**64]), r"amount 18446744073709551616 is outside"),
        (lambda t: t.apply([1], ONE, [-5]), r"amount -5 is outside"),
        (lambda t: t.apply([1], ONE, [1.5]), "integers"),
        (lambda t: t.apply([1], ONE, [True]), "integers"),
        (lambda t: t.apply([1, 2], TWO, [2**64 - 1, 2**64]), r"amount 18446744073709551616 is"),
        (lambda t: t.apply([1, 2], TWO, [2**64 - 1, 1.0]), "integers"),
        (lambda t: t.apply([1], ONE, ["x"]), "integers"),
        (lambda t: t.apply([1], ONE, [1, 2]), "one amount per slot"),
        (lambda t: t.apply([1.0], ONE, [1]), "integers"),
        (lambda t: t.apply([[1]], ONE, [1]), "one-dimensional"),
        (lambda t: t.leaf(16), "slot 16 is outside"),
        (lambda t: t.path(-1), "slot -1 is outside"),
        (lambda t: t.path("1"), "integer"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    call: Callable[[SumTree], Any], message: str
) -> None:
    tree = build(4, {3: (bytes(32), 5)})
    before = (tree.root, tree.total, tree.amounts().tolist())
    with pytest.raises(TreeError, match=message):
        call(tree)
    assert (tree.root, tree.total, tree.amounts().tolist()) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": -1}, r"height -1 is outside 0\.\.32"),
        ({"height": 33}, r"height 33 is outside 0\.\.32"),
        ({"height": True}, "integer"),
        ({"height": 2.0}, "integer"),
        ({"padding_key": bytes(16)}, "padding key must be 32 bytes"),
        ({"padding_key": "k" * 32}, "padding key must be 32 bytes"),
        ({"asset": "btc"}, "invalid asset id"),
        ({"asset": ""}, "invalid asset id"),
        ({"slots": [1, 1], "commitments": TWO, "amounts": [1, 2]}, "slot 1 is set twice among"),
        ({"slots": [4], "commitments": ONE, "amounts": [1]}, r"leaf slot 4 is outside 0\.\.3"),
    ],
)
def test_bad_build_arguments(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "asset": ASSET,
        "height": 2,
        "padding_key": KEY,
        "slots": [],
        "commitments": EMPTY,
        "amounts": [],
    }
    with pytest.raises(TreeError, match=message):
        SumTree.build(**(args | kwargs))


def test_tree_error_is_a_value_error() -> None:
    assert issubclass(TreeError, ValueError)
    with pytest.raises(TypeError):
        SumTree(ASSET, 2, KEY)  # type: ignore[call-arg]  # only build() makes a tree
